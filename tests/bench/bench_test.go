// Package bench measures the signing paths side by side in one run, each
// reported as signs/s, latency percentiles and a ratio to in-process
// ed25519.Sign measured in the same run (run `make bench`; results and the
// command are recorded in docs/performance.md). Nothing here asserts a time.
package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

const scope = signertest.Scope

var payload = []byte("bench payload: 64 bytes of something a core would sign ........")

// baseline is in-process signs/s with 2 goroutines, set by the first
// benchmark and used by the later ones for their ratio.
var baseline float64

// drive makes b.N calls with inflight concurrent callers and reports
// throughput, p50/p99 latency and the ratio to the baseline.
func drive(b *testing.B, inflight int, call func(context.Context) error) float64 {
	b.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, inflight)
	ctx := context.Background()
	var wg sync.WaitGroup
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
	all := slices.Concat(lat...)
	slices.Sort(all)
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "signs/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	if baseline > 0 {
		b.ReportMetric(rate/baseline, "x-inprocess")
	}
	b.ReportMetric(0, "ns/op") // signs/s says it better
	return rate
}

// BenchmarkA_InProcess is the baseline: ed25519.Sign in this process with 2
// goroutines, no network, no audit.
func BenchmarkA_InProcess(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	baseline = 0 // Go calls this once per b.N; only the last run counts
	baseline = drive(b, 2, func(context.Context) error { ed25519.Sign(priv, payload); return nil })
}

// discard is a store whose audit log keeps nothing: the same path without
// durability, to price the durable audit. It reports an empty log, so the
// checkpointer has nothing to check.
type discard struct {
	store.Store
}

func (d *discard) AppendAudit(context.Context, *audit.Batch) error { return nil }

func (d *discard) AppendAuditLocked(_ context.Context, build func(uint64, audit.Reader) (*audit.Batch, error)) error {
	_, err := build(0, d)
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
// signer commits every entry to bbolt (fsync) before answering.
func BenchmarkB_Direct(b *testing.B) {
	env := signertest.Start(b)
	call := directCall(b, env)
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) { drive(b, n, call) })
	}
}

// BenchmarkC_DirectAuditDiscarded: the same path with the audit discarded.
func BenchmarkC_DirectAuditDiscarded(b *testing.B) {
	env := signertest.Start(b, signertest.WithStore(&discard{Store: signertest.OpenBolt(b)}))
	call := directCall(b, env)
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) { drive(b, n, call) })
	}
}

// BenchmarkD_Sidecar: the full path a core takes: client → sidecar (a
// separate process, on a Unix socket) → signer → local provider → durable
// audit. The sidecar's peak resident memory is reported after the runs.
func BenchmarkD_Sidecar(b *testing.B) {
	sidecarPath(b, signertest.Start(b))
}

// BenchmarkE_SidecarAuditDiscarded: the full path without the audit's fsync,
// so the sidecar's own cost shows beside BenchmarkC (its seat ratio at 64 in
// flight, its added serial latency at 1).
func BenchmarkE_SidecarAuditDiscarded(b *testing.B) {
	sidecarPath(b, signertest.Start(b, signertest.WithStore(&discard{Store: signertest.OpenBolt(b)})))
}

func sidecarPath(b *testing.B, env *signertest.Env) {
	sock, pid := startSidecarProcess(b, env)
	c, err := client.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	call := func(ctx context.Context) error { _, err := c.Sign(ctx, scope, payload); return err }
	if err := waitReady(call); err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) {
			drive(b, n, call)
			b.ReportMetric(rssMiB(b, pid, "VmHWM"), "sidecar-peak-rss-MiB")
		})
	}
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

// startSidecarProcess builds and runs plexsphere-sidecar with the core's
// identity, in front of env.
func startSidecarProcess(b *testing.B, env *signertest.Env) (sock string, pid int) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "plexsphere-sidecar")
	// Built as the images build it: stripped, so RSS reflects production.
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/plexsphere/signer/cmd/plexsphere-sidecar")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build sidecar: %v\n%s", err, out)
	}
	files := writeSVID(b, env.CA, dir, signertest.CoreID)
	sock = filepath.Join(dir, "signer.sock")
	cmd := exec.Command(bin, "--listen", "unix://"+sock, "--upstream", env.Addr, "--signer-spiffe-id", signertest.SignerID,
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--trust-bundle", files.Bundle, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	return sock, cmd.Process.Pid
}

func writeSVID(b *testing.B, ca *devpki.CA, dir, id string) devpki.Files {
	svid, err := ca.Issue(id)
	if err != nil {
		b.Fatal(err)
	}
	f, err := ca.WriteFiles(dir, "core", svid)
	if err != nil {
		b.Fatal(err)
	}
	return f
}

// rssMiB reads a VmRSS/VmHWM line of /proc/<pid>/status.
func rssMiB(b *testing.B, pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return float64(kb) / 1024
		}
	}
	b.Fatalf("%s not in /proc/%d/status", field, pid)
	return 0
}

func init() {
	// The comparisons assume this machine's two cores; say so if it differs.
	if runtime.NumCPU() != 2 {
		fmt.Fprintf(os.Stderr, "bench: %d CPUs (the recorded results are from 2)\n", runtime.NumCPU())
	}
}
