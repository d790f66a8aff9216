package bench

import (
	"syscall"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/signertest"
)

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkG_MerkleCost prices the audit log's Merkle tree: the direct path
// (64 in flight, durable bbolt) with the tree and checkpoints, and the same
// signer storing the same leaves without them, in one run. Reported per
// variant: signs/s and CPU µs per call (this process: client and signer);
// on the second, the throughput ratio with/without (target ≥ 0.95).
func BenchmarkG_MerkleCost(b *testing.B) {
	var rate [2]float64
	for i, v := range []struct {
		name string
		opts []signertest.Option
	}{
		{"without-tree", []signertest.Option{signertest.WithoutMerkle()}},
		{"with-tree", nil},
	} {
		env := signertest.Start(b, v.opts...)
		call := directCall(b, env)
		b.Run(v.name, func(b *testing.B) {
			c0 := processCPU()
			rate[i] = drive(b, 64, call).rate
			b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/call")
			if i == 1 && rate[0] > 0 {
				b.ReportMetric(rate[1]/rate[0], "x-without-tree")
			}
		})
		env.Stop()
	}
}
