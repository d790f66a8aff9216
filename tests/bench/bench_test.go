// Package bench measures the signing paths side by side in one run, each
// reported as signs/s, latency percentiles, CPU µs per call of every process
// involved (client, sidecar, signer, Postgres, read from /proc and the
// container's cgroup), peak RSS, store bytes per call, and ratios: to
// in-process ed25519.Sign and to the floors measured in the same run (a bare
// grpc-go mTLS signer, cmd/floorsigner; an L4 TLS relay in the sidecar seat,
// cmd/floorrelay). The signer and the sidecar run as their own processes,
// configured through their environment. Run `make bench` (and `make
// bench-scale`); how to read each figure is in docs/performance.md. Nothing
// here asserts a time.
package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

const scope = signertest.Scope

var payload = []byte("bench payload: 64 bytes of something a core would sign ........")

// baseline is in-process signs/s with 2 goroutines, set by the first
// benchmark and used by the later ones for their ratio.
var baseline float64

// result is one measured run.
type result struct {
	rate     float64 // calls/s
	p50, p99 time.Duration
}

// measured keeps the last result of a named run ("floor-signer/inflight=64",
// say) for the ratios of later runs in the same bench process. A ratio is
// reported only when its reference ran first: a -bench filter must keep it.
var measured = map[string]result{}

// vs reports r against the reference run named ref, as x-<name> (throughput
// ratio) and p50-over-<name>-µs (added median latency).
func vs(b *testing.B, r result, ref, name string) {
	b.Helper()
	base, ok := measured[ref]
	if !ok || base.rate == 0 {
		return
	}
	b.ReportMetric(r.rate/base.rate, "x-"+name)
	b.ReportMetric(float64((r.p50 - base.p50).Microseconds()), "p50-over-"+name+"-µs")
}

// drive makes b.N calls with inflight concurrent callers and reports
// throughput, p50/p99 latency, the ratio to the baseline and, for every
// meter, its change per call (CPU µs of a process, store bytes) or its
// value after the run (peak RSS).
func drive(b *testing.B, inflight int, call func(context.Context) error, meters ...meter) result {
	b.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, inflight)
	ctx := context.Background()
	var wg sync.WaitGroup
	before := make([]float64, len(meters))
	for i, m := range meters {
		if m.reset != nil {
			m.reset()
		}
		if !m.peak && m.read != nil {
			v, err := m.read()
			if err != nil {
				b.Fatalf("%s: %v", m.unit, err)
			}
			before[i] = v
		}
	}
	b.ResetTimer()
	start := time.Now()
	for g := range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, b.N/inflight+1)
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := call(ctx); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				mine = append(mine, time.Since(t0))
			}
			lat[g] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d calls failed, first: %v", n, b.N, firstErr.Load())
	}
	for i, m := range meters {
		if m.after != nil {
			m.after(b)
		}
		if m.read == nil {
			continue
		}
		v, err := m.read()
		if err != nil {
			b.Fatalf("%s: %v", m.unit, err)
		}
		if m.peak {
			b.ReportMetric(v, m.unit)
		} else {
			b.ReportMetric((v-before[i])/float64(b.N), m.unit)
		}
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	r := result{rate: float64(b.N) / elapsed.Seconds(), p50: all[len(all)/2], p99: all[len(all)*99/100]}
	b.ReportMetric(r.rate, "signs/s")
	b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs")
	if baseline > 0 {
		b.ReportMetric(r.rate/baseline, "x-inprocess")
	}
	b.ReportMetric(0, "ns/op") // signs/s says it better
	return r
}

// run is b.Run of drive, keeping the result (under the sub-benchmark's
// full name) for the ratios of later runs.
func run(b *testing.B, name string, inflight int, call func(context.Context) error, then func(*testing.B, result), meters ...meter) {
	b.Helper()
	b.Run(fmt.Sprintf("%s/inflight=%d", name, inflight), func(b *testing.B) {
		r := drive(b, inflight, call, meters...)
		measured[b.Name()] = r
		if then != nil {
			then(b, r)
		}
	})
}

// against returns a then for run reporting r against other runs at the same
// in-flight count: pairs of (run, ratio name). A run is named relative to
// the same benchmark ("floor-relay") or in full ("BenchmarkD_Sidecar/sidecar").
func against(inflight int, refs ...string) func(*testing.B, result) {
	return func(b *testing.B, r result) {
		parent := b.Name()[:strings.Index(b.Name(), "/")]
		for i := 0; i+1 < len(refs); i += 2 {
			ref := refs[i]
			if !strings.HasPrefix(ref, "Benchmark") {
				ref = parent + "/" + ref
			}
			vs(b, r, fmt.Sprintf("%s/inflight=%d", ref, inflight), refs[i+1])
		}
	}
}

// BenchmarkA_InProcess is the baseline: ed25519.Sign in this process with 2
// goroutines, no network, no audit.
func BenchmarkA_InProcess(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	baseline = 0 // Go calls this once per b.N; only the last run counts
	baseline = drive(b, 2, func(context.Context) error { ed25519.Sign(priv, payload); return nil }).rate
}

// discard is a store whose audit log keeps nothing: the same path without
// durability, to price the durable audit. It reports an empty log, which
// the signer's periodic check (rightly) takes for entries removed: the
// discarding signers run with checks an hour apart (discardSigner).
type discard struct {
	store.Store
}

// discardSigner is an in-process signer on a discarding store, its log
// check and anchoring deadline pushed past any bench run.
func discardSigner(b *testing.B) *signertest.Env {
	return signertest.Start(b, signertest.WithStore(&discard{Store: signertest.OpenBolt(b)}),
		signertest.WithConfig(func(c *config.Signer) { c.CheckpointInterval, c.AuditMaxUnanchored = time.Hour, 3*time.Hour }))
}

func (d *discard) AppendAudit(context.Context, *audit.Batch) error { return nil }

func (d *discard) AppendAuditLocked(_ context.Context, _ uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	_, err := build(audit.LockedHead{Reader: d})
	return err
}

func (d *discard) AuditSize(context.Context) (uint64, error) { return 0, nil }

func directCall(b *testing.B, env *signertest.Env) func(context.Context) error {
	cc := env.Dial(b, env.Issue(b, signertest.CoreID))
	rpc := signerv1.NewSignerServiceClient(cc)
	return func(ctx context.Context) error {
		_, err := rpc.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: payload})
		return err
	}
}

// BenchmarkB_Direct: a client calling the signer directly over mTLS; the
// signer (its own process) commits every entry to bbolt (fsync) before
// answering. Beside it, in the same run, the framework floor: a bare
// grpc-go mTLS server whose Sign is ed25519.Sign (cmd/floorsigner), also
// its own process. Rows: floor-signer and signer at 1 and 64 in flight;
// the signer reports x-floor (its throughput over the floor's) and the CPU
// µs per call of the client and of the process in the signer seat.
func BenchmarkB_Direct(b *testing.B) {
	ca := signertest.NewCA(b)
	fp, fenv := startFloorSigner(b, ca)
	sp := startSigner(b, ca, nil)
	floor, call := directCall(b, fenv), directCall(b, sp.Env)
	for _, c := range []func(context.Context) error{floor, call} {
		if err := waitReady(c); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range []int{1, 64} {
		run(b, "floor-signer", n, floor, nil, clientCPU("client"), fp.cpu(), fp.rss())
		run(b, "signer", n, call, against(n, "floor-signer", "floor"),
			clientCPU("client"), sp.cpu(), sp.rss(), boltMeter(sp.BoltPath))
	}
}

// BenchmarkC_DirectAuditDiscarded: the same path with the audit discarded,
// to price durability. The signer runs in the bench process (the discarding
// store is a test double that only exists there), so its CPU is reported
// together with the client's.
func BenchmarkC_DirectAuditDiscarded(b *testing.B) {
	env := discardSigner(b)
	call := directCall(b, env)
	for _, n := range []int{1, 64} {
		run(b, "signer", n, call, nil, clientCPU("client+signer"))
	}
}

// BenchmarkD_Sidecar: the full path a core takes: client → sidecar (its own
// process, on a Unix socket) → signer (its own process, durable bbolt).
// Against one signer, in the same run: the client calling it directly
// (direct), the sidecar seat's floor (floor-relay: cmd/floorrelay, plaintext
// in, one mTLS connection out per accepted connection, bytes copied) and
// plexsphere-sidecar. The sidecar rows report x-floor (over the relay) and
// x-direct, the added p50 over each, the CPU µs per call of client, seat
// and signer, and the seat's peak RSS during the run.
func BenchmarkD_Sidecar(b *testing.B) {
	sp := startSigner(b, signertest.NewCA(b), nil)
	seats(b, sp.Env, []meter{sp.cpu(), boltMeter(sp.BoltPath)}, clientCPU("client"))
}

// BenchmarkE_SidecarAuditDiscarded: direct, relay and sidecar in front of a
// signer whose audit is discarded (in the bench process, so its CPU counts
// with the client's): the sidecar seat's own cost with the least behind it.
func BenchmarkE_SidecarAuditDiscarded(b *testing.B) {
	env := discardSigner(b)
	seats(b, env, nil, clientCPU("client+signer"))
}

// seats measures direct, floor-relay and sidecar rows in front of env,
// then the sidecar at 64 in flight with 128 idle core connections open
// (sidecar-128-idle: its peak RSS) and with the calls spread over 1,000
// core connections (sidecar-1000-conns: no call may fail); upstream are the
// meters of what is behind the seat.
func seats(b *testing.B, env *signertest.Env, upstream []meter, client meter) {
	b.Helper()
	relaySock, rp := startRelay(b, env)
	sideSock, scp := startSidecarProcess(b, env, "SIDECAR_MAX_CONNECTIONS=1200")
	direct := directCall(b, env)
	relay, side := unixCall(b, relaySock), unixCall(b, sideSock)
	for _, c := range []func(context.Context) error{direct, relay, side} {
		if err := waitReady(c); err != nil {
			b.Fatal(err)
		}
	}
	sideMeters := append(append([]meter{client, scp.cpu(), scp.rss(), scp.profile()}, scp.syscalls()...), upstream...)
	// BENCH_SIDECAR_BEFORE: an earlier build of plexsphere-sidecar in a
	// seat of its own, measured right before the sidecar at 64 in flight.
	var before func(context.Context) error
	var beforeMeters []meter
	if bin := os.Getenv("BENCH_SIDECAR_BEFORE"); bin != "" {
		sock, bp := startSidecarBinary(b, env, "sidecar-before", bin, "SIDECAR_MAX_CONNECTIONS=1200")
		before = unixCall(b, sock)
		if err := waitReady(before); err != nil {
			b.Fatal(err)
		}
		beforeMeters = append(append([]meter{client, bp.cpu(), bp.rss()}, bp.syscalls()...), upstream...)
	}
	for _, n := range []int{1, 64} {
		run(b, "direct", n, direct, nil, append([]meter{client}, upstream...)...)
		run(b, "floor-relay", n, relay, against(n, "direct", "direct"),
			append(append([]meter{client, rp.cpu(), rp.rss()}, rp.syscalls()...), upstream...)...)
		if before != nil && n == 64 {
			run(b, "sidecar-before", n, before, against(n, "floor-relay", "floor", "direct", "direct"), beforeMeters...)
			run(b, "sidecar", n, side, against(n, "floor-relay", "floor", "direct", "direct", "sidecar-before", "before"), sideMeters...)
			continue
		}
		run(b, "sidecar", n, side, against(n, "floor-relay", "floor", "direct", "direct"), sideMeters...)
	}
	idle := idleConns(b, sideSock, 128)
	run(b, "sidecar-128-idle", 64, side, against(64, "floor-relay", "floor", "direct", "direct"), sideMeters...)
	for _, c := range idle {
		c.Close()
	}
	run(b, "sidecar-1000-conns", 64, spread(b, sideSock, 1000), against(64, "floor-relay", "floor", "direct", "direct"), sideMeters...)
}

// idleConns opens n core connections that send the HTTP/2 preface and an
// empty SETTINGS frame, then nothing.
func idleConns(b *testing.B, sock string, n int) []net.Conn {
	b.Helper()
	cs := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(append([]byte(http2.ClientPreface), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
	}
	b.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

// spread is a Sign call that takes the next of n core connections (each
// its own client), all connected before it returns.
func spread(b *testing.B, sock string, n int) func(context.Context) error {
	b.Helper()
	calls := make([]func(context.Context) error, n)
	for i := range calls {
		calls[i] = unixCall(b, sock)
		if err := waitReady(calls[i]); err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
	}
	var next atomic.Uint64
	return func(ctx context.Context) error { return calls[next.Add(1)%uint64(n)](ctx) }
}

// unixCall is the core's client (package client) on a Unix socket.
func unixCall(b *testing.B, sock string) func(context.Context) error {
	c, err := client.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return func(ctx context.Context) error { _, err := c.Sign(ctx, scope, payload); return err }
}

func waitReady(call func(context.Context) error) error {
	var err error
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = call(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

func init() {
	// The comparisons assume this machine's two cores; say so if it differs.
	if runtime.NumCPU() != 2 {
		fmt.Fprintf(os.Stderr, "bench: %d CPUs (the recorded results are from 2)\n", runtime.NumCPU())
	}
}
