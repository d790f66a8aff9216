package ctl

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// BenchReport is the closing report of signerctl bench.
type BenchReport struct {
	Target      string         `json:"target"`
	Concurrency int            `json:"concurrency"`
	PayloadSize int            `json:"payload_bytes"`
	Seconds     float64        `json:"seconds"`
	Calls       int64          `json:"calls"`
	OK          int64          `json:"ok"`
	PerSecond   float64        `json:"signs_per_second"`
	P50Micros   int64          `json:"p50_us"`
	P90Micros   int64          `json:"p90_us"`
	P99Micros   int64          `json:"p99_us"`
	MaxMicros   int64          `json:"max_us"`
	Errors      map[string]int `json:"errors_by_code"`
}

// runBench is `signerctl bench`: sign as fast as allowed through a sidecar
// (--sidecar, plaintext on its socket or loopback) or directly against the
// signer over mTLS with the global identity flags, and report.
func (c *cli) runBench(ctx context.Context, args []string) error {
	fs := c.flagSet("bench", "[flags]", "Load a sidecar (or the signer over mTLS) with Sign calls and report throughput,\np50/p90/p99/max latency and errors by code.")
	sidecar := fs.String("sidecar", "", "sign through this sidecar (unix:///path or loopback host:port) instead of the signer directly")
	scope := fs.String("scope", "payments", "scope to sign for")
	conc := fs.Int("concurrency", 16, "calls in flight")
	dur := fs.Duration("duration", 10*time.Second, "how long to run (ignored with --count)")
	count := fs.Int64("count", 0, "stop after this many calls")
	rate := fs.Float64("rate", 0, "calls per second across all workers (0: as fast as possible)")
	size := fs.Int("payload-size", 64, "payload bytes")
	every := fs.Duration("progress", time.Second, "progress line interval on stderr (0: none)")
	asJSON := fs.Bool("json", false, "another spelling of the global --output json")
	if _, err := c.parse(fs, args, 0); err != nil {
		return err
	}
	if *conc < 1 || *size < 0 {
		return usageError("bench: --concurrency must be at least 1, --payload-size at least 0")
	}
	payload := make([]byte, *size)
	rand.Read(payload)

	var sign func(context.Context) error
	target := *sidecar
	if target != "" {
		cl, err := client.Dial(ctx, target)
		if err != nil {
			return usageError(err.Error())
		}
		defer cl.Close()
		sign = func(ctx context.Context) error { _, err := cl.Sign(ctx, *scope, payload); return err }
	} else {
		if c.cfgErr != nil {
			return configError{fmt.Errorf("without --sidecar, bench calls the signer over mTLS: %w", c.cfgErr)}
		}
		cc, err := c.conn(ctx)
		if err != nil {
			return err
		}
		rpc := signerv1.NewSignerServiceClient(cc)
		target = c.cfg.Signer
		sign = func(ctx context.Context) error {
			_, err := rpc.Sign(ctx, &signerv1.SignRequest{Scope: *scope, Payload: payload})
			return err
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if *count == 0 {
		runCtx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	var issued, ok atomic.Int64
	var mu sync.Mutex
	errs := map[string]int{}
	lats := make([][]time.Duration, *conc)
	var interval time.Duration
	if *rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(*conc) / *rate)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now()
			for runCtx.Err() == nil {
				if *count > 0 && issued.Add(1) > *count {
					return
				} else if *count == 0 {
					issued.Add(1)
				}
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-time.After(d):
						case <-runCtx.Done():
							return
						}
					}
					next = next.Add(interval)
				}
				callCtx, callCancel := context.WithTimeout(runCtx, c.cfg.Timeout)
				t0 := time.Now()
				err := sign(callCtx)
				took := time.Since(t0)
				callCancel()
				if err != nil && runCtx.Err() != nil {
					return // the run ended mid-call: not a failure
				}
				lats[w] = append(lats[w], took)
				if err != nil {
					mu.Lock()
					errs[status.Code(err).String()]++
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if *every > 0 {
		tick := time.NewTicker(*every)
	progress:
		for {
			select {
			case <-done:
				break progress
			case <-tick.C:
				el := time.Since(start).Seconds()
				mu.Lock()
				nerr := 0
				for _, n := range errs {
					nerr += n
				}
				mu.Unlock()
				fmt.Fprintf(c.errw, "bench: %5.1fs  ok %d  errors %d  %.0f signs/s\n", el, ok.Load(), nerr, float64(ok.Load())/el)
			}
		}
		tick.Stop()
	}
	<-done
	elapsed := time.Since(start)
	r := report(target, *conc, *size, elapsed, ok.Load(), errs, slices.Concat(lats...))
	if *asJSON || c.cfg.Output == "json" {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	printReport(c.out, r)
	return nil
}

func report(target string, conc, size int, elapsed time.Duration, ok int64, errs map[string]int, lats []time.Duration) BenchReport {
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	pct := func(p float64) int64 {
		if len(lats) == 0 {
			return 0
		}
		return lats[min(len(lats)-1, int(p*float64(len(lats))))].Microseconds()
	}
	r := BenchReport{Target: target, Concurrency: conc, PayloadSize: size, Seconds: elapsed.Seconds(), Calls: int64(len(lats)),
		OK: ok, PerSecond: float64(ok) / elapsed.Seconds(), P50Micros: pct(0.50), P90Micros: pct(0.90), P99Micros: pct(0.99),
		Errors: errs}
	if len(lats) > 0 {
		r.MaxMicros = lats[len(lats)-1].Microseconds()
	}
	return r
}

func printReport(w io.Writer, r BenchReport) {
	fmt.Fprintf(w, "target        %s\nconcurrency   %d\npayload       %d bytes\nduration      %.2fs\n", r.Target, r.Concurrency, r.PayloadSize, r.Seconds)
	fmt.Fprintf(w, "calls         %d (%d ok)\nthroughput    %.0f signs/s\n", r.Calls, r.OK, r.PerSecond)
	fmt.Fprintf(w, "latency       p50 %dµs  p90 %dµs  p99 %dµs  max %dµs\n", r.P50Micros, r.P90Micros, r.P99Micros, r.MaxMicros)
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "errors        none")
		return
	}
	codes := make([]string, 0, len(r.Errors))
	for c := range r.Errors {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, c := range codes {
		fmt.Fprintf(w, "errors        %s: %d\n", c, r.Errors[c])
	}
}
