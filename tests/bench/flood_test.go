package bench

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// BenchmarkF_DenialFlood: admitted Sign calls (64 in flight, durable bbolt,
// the signer in this process) while an attacker process (cmd/flooder: 64
// certificate-less connections from another loopback source, 4 calls in
// flight on each, 10 s deadlines, reconnecting whenever a connection is
// refused or closed) floods the signer with calls it must deny. Every
// denied call is still audited, at the denial rate; the flood control
// (internal/server/guard.go) answers the rest at the connection, and a
// source whose connections keep being denied before the TLS handshake.
//
// The attacker runs twice per signer: in a cgroup v1 CPU quota of its own
// (BENCH_FLOODER_CPU cores, default 0.5), as an attacker on another machine
// takes none of the signer's CPU (rows left out where there is no cgroup v1
// cpu controller to write), and unconstrained on this machine. Each
// flooded row has a fresh source address (the flood's onset is in the
// window). The signer runs twice: with the production flood settings, and
// with the per-source penalty out of the way
// (SIGNER_DENIED_CONNECTION_RATE=1e9, rows named penalty-off/): the rule
// measured against its absence in one run.
//
// Reported for each flooded run: the admitted throughput as a ratio to the
// same signer without the flood, measured just before (target ≥ 0.8), the
// p99 as a ratio to quiet (target ≤ 2), the denials audited a second (at
// most SIGNER_DENIAL_RATE, 200), the connections refused or closed a
// second (source_penalised ones apart), the CPU of this process (client and
// signer) per admitted call, the attacker's CPU (cores) and how
// hard it tried (TCP connections dialled and calls made a second), the
// admitted ratio against the CPU left to the signer and its client, and
// the peak of goroutines in this process.
func BenchmarkF_DenialFlood(b *testing.B) {
	quota := 0.5
	if v := os.Getenv("BENCH_FLOODER_CPU"); v != "" {
		var err error
		if quota, err = strconv.ParseFloat(v, 64); err != nil || quota <= 0 {
			b.Fatalf("BENCH_FLOODER_CPU=%q: want a number of cores above 0", v)
		}
	}
	modes := []floodMode{
		{name: fmt.Sprintf("flooder-quota=%g", quota), shared: true, confine: func(b *testing.B, p *proc) { limitCPU(b, "flooder", p, quota) }},
		{name: "flooder-unconstrained", shared: true},
	}
	// The quota needs the cgroup v1 cpu controller, writable (root): where
	// it is not, the unconstrained rows run alone and the log says so.
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err != nil || os.Geteuid() != 0 {
		b.Logf("no flooder-quota rows: a CPU quota needs the cgroup v1 cpu controller and root (%v)", err)
		modes = modes[1:]
	}
	// The attacker on a core of its own, as on another machine: this
	// process (client and signer) pinned to CPU 0 with one P, the attacker
	// to CPU 1, quiet and flooded alike. What the flood then costs the
	// admitted calls is the signer's own work for it (accepting, refusing,
	// auditing), not the attacker's CPU.
	pinned := cpusetUsable() && runtime.NumCPU() >= 2
	if !pinned {
		b.Logf("no one-core rows: pinning needs the cgroup v1 cpuset controller, root and two CPUs")
	}
	source := 1
	for _, signer := range []struct {
		name     string
		deniedCR int
	}{{"", 1}, {"penalty-off/", 1_000_000_000}} {
		env := signertest.Start(b, signertest.WithConfig(func(c *config.Signer) {
			// The production defaults (signertest relaxes them for its tests).
			c.MaxConnections, c.MaxConnectionsPerSource, c.ConnectionRate, c.ConnectionTimeout = 4096, 64, 100, 5*time.Second
			c.DenialRate, c.DenialsPerConnection, c.MaxPendingDenials, c.DenialMaxWait = 200, 8, 400, time.Second
			c.DeniedConnectionRate = signer.deniedCR
		}))
		call := directCall(b, env)
		var quiet result
		b.Run(signer.name+"quiet", func(b *testing.B) { quiet = drive(b, 64, call, clientCPU("client+signer")) })
		for _, mode := range modes {
			source++
			floodRow(b, signer.name+"flooded/"+mode.name, env, call, quiet, mode, fmt.Sprintf("127.0.0.%d", source))
		}
		if pinned {
			source++
			oneCore(b, func() {
				b.Run(signer.name+"one-core/quiet", func(b *testing.B) { quiet = drive(b, 64, call, clientCPU("client+signer")) })
				other := floodMode{name: "flooder-other-core", confine: func(b *testing.B, p *proc) { pinCPUs(b, "flooder", p.pid, "1") }}
				floodRow(b, signer.name+"one-core/flooded/"+other.name, env, call, quiet, other, fmt.Sprintf("127.0.0.%d", source))
			})
		}
	}
}

// floodMode is where the attacker runs: confine (nil: anywhere) puts it in
// its cgroup; shared says it competes for this process's CPUs.
type floodMode struct {
	name    string
	shared  bool
	confine func(*testing.B, *proc)
}

// oneCore runs fn with this process pinned to CPU 0 and GOMAXPROCS 1, and
// puts both back after.
func oneCore(b *testing.B, fn func()) {
	undo := pinCPUs(b, "bench", os.Getpid(), "0")
	prev := runtime.GOMAXPROCS(1)
	defer func() {
		undo()
		runtime.GOMAXPROCS(prev)
	}()
	fn()
}

// floodRow measures the admitted calls while a flooder from source
// (confined as mode says) floods env's signer.
func floodRow(b *testing.B, name string, env *signertest.Env, call func(context.Context) error, quiet result, mode floodMode, source string) {
	stats := filepath.Join(b.TempDir(), "flooder.stats")
	args := []string{"--addr", env.Addr, "--source", source, "--stats", stats}
	if n := os.Getenv("BENCH_FLOODER_CONNS"); n != "" {
		if c, err := strconv.Atoi(n); err != nil || c <= 0 {
			b.Fatalf("BENCH_FLOODER_CONNS=%q: want a whole number of connections above 0", n)
		}
		args = append(args, "--conns", n) // a harder attacker (default 64)
	}
	flooder := startProc(b, "flooder", binPath(b, "flooder"), nil, args...)
	defer flooder.stop()
	if mode.confine != nil {
		mode.confine(b, flooder)
	}
	// The flood is under way once its calls are being answered (denied,
	// or refused at the connection).
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := readFlooder(stats); err == nil && st.calls > 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the flooder got no call answered in 30 s")
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
	b.Run(name, func(b *testing.B) {
		cpu0, _ := procCPU(flooder.pid)
		st0, _ := readFlooder(stats)
		d0 := metricSum(b, env, `plexsphere_signer_admissions_total{outcome="denied`)
		r0 := metricSum(b, env, `plexsphere_signer_connections_refused_total{`)
		p0 := metricSum(b, env, `plexsphere_signer_connections_refused_total{reason="source_penalised"`)
		peak := 0
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // a reading, not a synchronisation
			defer wg.Done()
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				peak = max(peak, runtime.NumGoroutine())
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		t0 := time.Now()
		// The bench process's CPU per admitted call (the client and the
		// signer): what the flood costs the signer shows here, apart from
		// the CPU the machine has left for it.
		flooded := drive(b, 64, call, clientCPU("client+signer"))
		elapsed := time.Since(t0).Seconds()
		close(stop)
		wg.Wait()
		cpu1, _ := procCPU(flooder.pid)
		st1, _ := readFlooder(stats)
		flooderCores := (cpu1 - cpu0) / 1e6 / elapsed
		if quiet.rate > 0 {
			b.ReportMetric(flooded.rate/quiet.rate, "x-admitted-under-flood")
			b.ReportMetric(float64(flooded.p99)/float64(quiet.p99), "x-p99-under-flood")
			// An attacker on this machine takes CPU the signer and its
			// client had when quiet: the ratio against the share of the
			// machine left to them is what the flood control itself
			// costs (derived, and only as good as "CPU-bound").
			if left := 1 - flooderCores/float64(runtime.NumCPU()); mode.shared && left > 0 {
				b.ReportMetric(flooded.rate/quiet.rate/left, "x-admitted-per-cpu-left")
			}
		}
		b.ReportMetric((metricSum(b, env, `plexsphere_signer_admissions_total{outcome="denied`)-d0)/elapsed, "denials-audited/s")
		b.ReportMetric((metricSum(b, env, `plexsphere_signer_connections_refused_total{`)-r0)/elapsed, "conns-refused/s")
		b.ReportMetric((metricSum(b, env, `plexsphere_signer_connections_refused_total{reason="source_penalised"`)-p0)/elapsed, "penalised-refused/s")
		b.ReportMetric(flooderCores, "flooder-cores")
		// How hard the attacker tried: a quota slows it down, and the
		// rows say by how much.
		b.ReportMetric(float64(st1.dials-st0.dials)/elapsed, "flooder-dials/s")
		b.ReportMetric(float64(st1.calls-st0.calls)/elapsed, "flooder-calls/s")
		b.ReportMetric(float64(peak), "peak-goroutines")
	})
}

// flooderStats are cmd/flooder's counters (its --stats file).
type flooderStats struct{ dials, calls, denied, unavailable, other int64 }

func readFlooder(path string) (flooderStats, error) {
	var st flooderStats
	raw, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	_, err = fmt.Sscan(string(raw), &st.dials, &st.calls, &st.denied, &st.unavailable, &st.other)
	return st, err
}

// metricSum adds up the samples of the signer's /metrics whose line starts
// with prefix (a metric name and the start of its labels).
func metricSum(b *testing.B, env *signertest.Env, prefix string) float64 {
	b.Helper()
	rec := httptest.NewRecorder()
	env.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sum := 0.0
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			b.Fatalf("%s: %v", line, err)
		}
		sum += v
	}
	return sum
}
