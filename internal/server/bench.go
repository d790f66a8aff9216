//go:build bench

package server

import "github.com/plexsphere/signer/internal/audit"

// WithoutMerkle is o for a signer that stores audit entries without the
// Merkle tree and without checkpoints: the benchmarks price the tree with
// it in the same run. Only builds with the bench tag have it.
func WithoutMerkle(o Options) Options {
	o.skipMerkle = true
	return o
}

func withoutTree(o audit.WriterOptions) audit.WriterOptions { return audit.WithoutTree(o) }
