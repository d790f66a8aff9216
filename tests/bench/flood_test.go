package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// BenchmarkF_DenialFlood: admitted Sign calls (64 in flight, durable bbolt)
// while 64 certificate-less callers flood the signer with denied calls,
// reconnecting whenever their connection is closed. Every denied call is
// still audited; the flood control (the denial rate, the denied lane of the
// writer, closing connections that keep being denied, the per-source
// connection rate) keeps it from starving admitted calls. Reported: the
// admitted throughput under the flood as a ratio to the same signer without
// it, measured in the same run (target ≥ 0.8), and the denials served.
func BenchmarkF_DenialFlood(b *testing.B) {
	env := signertest.Start(b, signertest.WithConfig(func(c *config.Signer) {
		// The production defaults (signertest relaxes them for its tests).
		c.ConnectionRate, c.DenialRate, c.DenialsPerConnection = 100, 200, 8
	}))
	call := directCall(b, env)
	quiet := 0.0
	b.Run("quiet", func(b *testing.B) { quiet = drive(b, 64, call).rate })

	ctx, stop := context.WithCancel(context.Background())
	var denied, closed atomic.Int64
	var wg sync.WaitGroup
	tlsCfg := env.ClientTLS(nil)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cc, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
				if err != nil {
					return
				}
				rpc := signerv1.NewSignerServiceClient(cc)
				for ctx.Err() == nil {
					cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					_, err := rpc.Sign(cctx, &signerv1.SignRequest{Scope: scope, Payload: payload})
					cancel()
					if status.Code(err) == codes.PermissionDenied {
						denied.Add(1)
						continue
					}
					closed.Add(1)
					break // refused or closed: reconnect, as a flood would
				}
				cc.Close()
			}
		}()
	}
	b.Run("flooded", func(b *testing.B) {
		d0, c0, t0 := denied.Load(), closed.Load(), time.Now()
		flooded := drive(b, 64, call).rate
		elapsed := time.Since(t0).Seconds()
		if quiet > 0 {
			b.ReportMetric(flooded/quiet, "x-admitted-under-flood")
		}
		b.ReportMetric(float64(denied.Load()-d0)/elapsed, "denied/s")
		b.ReportMetric(float64(closed.Load()-c0)/elapsed, "reconnects/s")
	})
	stop()
	wg.Wait()
}
