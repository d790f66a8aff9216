package bench

import (
	"net/http/httptest"
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
// (internal/server/guard.go) answers the rest at the connection. Reported
// for the flooded run: the admitted throughput as a ratio to the same
// signer without the flood, measured in the same run (target ≥ 0.8), the
// p99 as a ratio to quiet (target ≤ 2), the denials audited a second
// (at most SIGNER_DENIAL_RATE, 200), the connections refused or closed a
// second, the attacker's CPU (cores; it shares this machine), the admitted
// ratio against the CPU left to the signer and its client, and the peak of
// goroutines in this process.
func BenchmarkF_DenialFlood(b *testing.B) {
	env := signertest.Start(b, signertest.WithConfig(func(c *config.Signer) {
		// The production defaults (signertest relaxes them for its tests).
		c.MaxConnections, c.MaxConnectionsPerSource, c.ConnectionRate, c.ConnectionTimeout = 4096, 64, 100, 5*time.Second
		c.DenialRate, c.DenialsPerConnection, c.MaxPendingDenials, c.DenialMaxWait = 200, 8, 400, time.Second
	}))
	call := directCall(b, env)
	var quiet result
	b.Run("quiet", func(b *testing.B) { quiet = drive(b, 64, call) })

	flooder := startProc(b, "flooder", binPath(b, "flooder"), nil, "--addr", env.Addr, "--source", "127.0.0.2")
	// The flood is under way once the signer has denied some of it.
	deadline := time.Now().Add(30 * time.Second)
	for metricSum(b, env, `plexsphere_signer_admissions_total{outcome="denied_no_client_cert"`) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("the flooder got no call denied in 30 s")
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
	b.Run("flooded", func(b *testing.B) {
		cpu0, _ := procCPU(flooder.pid)
		d0 := metricSum(b, env, `plexsphere_signer_admissions_total{outcome="denied`)
		r0 := metricSum(b, env, `plexsphere_signer_connections_refused_total{`)
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
		flooded := drive(b, 64, call)
		elapsed := time.Since(t0).Seconds()
		close(stop)
		wg.Wait()
		cpu1, _ := procCPU(flooder.pid)
		flooderCores := (cpu1 - cpu0) / 1e6 / elapsed
		if quiet.rate > 0 {
			b.ReportMetric(flooded.rate/quiet.rate, "x-admitted-under-flood")
			b.ReportMetric(float64(flooded.p99)/float64(quiet.p99), "x-p99-under-flood")
			// The attacker runs on this machine and takes CPU the signer
			// and its client had when quiet: the ratio against the share
			// of the machine left to them is what the flood control
			// itself costs (derived, and only as good as "CPU-bound").
			if left := 1 - flooderCores/float64(runtime.NumCPU()); left > 0 {
				b.ReportMetric(flooded.rate/quiet.rate/left, "x-admitted-per-cpu-left")
			}
		}
		b.ReportMetric((metricSum(b, env, `plexsphere_signer_admissions_total{outcome="denied`)-d0)/elapsed, "denials-audited/s")
		b.ReportMetric((metricSum(b, env, `plexsphere_signer_connections_refused_total{`)-r0)/elapsed, "conns-refused/s")
		b.ReportMetric(flooderCores, "flooder-cores")
		b.ReportMetric(float64(peak), "peak-goroutines")
	})
	flooder.stop()
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
