//go:build bench

package bench

import (
	"fmt"
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
// signer storing the same leaves without them. The difference is a few
// percent and one run of each moves more than that (the variant measured
// second in a process ran 0.80-0.85x of the first, and the first signer of
// a process runs slower than later ones), so after a warm-up round that is
// not counted the variants run in rounds ordered with, without, without,
// with, each on a fresh signer, and the last reports x-without-tree: the
// mean throughput with the tree over the mean without (target >= 0.95).
// Each row reports its signs/s and CPU µs per call (this process: client
// and signer).
func BenchmarkG_MerkleCost(b *testing.B) {
	order := []int{-1, 1, 0, 0, 1} // -1: the warm-up, with the tree
	rates := make([]float64, len(order))
	for round, with := range order {
		name, opts := "with-tree", []signertest.Option(nil)
		if with < 0 {
			name = "warm-up"
		}
		if with == 0 {
			name, opts = "without-tree", []signertest.Option{signertest.WithoutMerkle()}
		}
		env := signertest.Start(b, opts...)
		call := directCall(b, env)
		b.Run(fmt.Sprintf("%s/round=%d", name, round), func(b *testing.B) {
			c0 := processCPU()
			rates[round] = drive(b, 64, call).rate // the last b.N's run is the one that counts
			b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/call")
			if round == len(order)-1 {
				var sum [2]float64
				for i, r := range rates {
					if order[i] >= 0 {
						sum[order[i]] += r
					}
				}
				b.ReportMetric(sum[1]/sum[0], "x-without-tree")
			}
		})
		env.Stop()
	}
}
