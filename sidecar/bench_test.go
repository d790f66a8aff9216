package sidecar_test

import (
	"testing"

	"github.com/plexsphere/signer/internal/testing/signertest"
)

// BenchmarkSidecar signs through the sidecar, 64 calls in flight, against
// one in-process signer (durable bbolt): a quick check, not the project's
// bench (make bench).
func BenchmarkSidecar(b *testing.B) {
	{
		b.Run("sidecar", func(b *testing.B) {
			env := signertest.Start(b)
			sc := signertest.StartSidecar(b, env.Addr, env.Source(env.Issue(b, signertest.CoreID)))
			c := dialClient(b, sc.Socket)
			if _, err := c.Sign(ctx10s(b), scope, []byte("warm")); err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 64)
			b.SetParallelism(32) // 64 in flight on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Sign(ctx10s(b), scope, msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
