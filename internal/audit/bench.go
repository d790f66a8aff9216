//go:build bench

package audit

// WithoutTree is o for a writer that stores leaves without the Merkle tree:
// the benchmarks price the tree with it (tests/bench, make bench). It exists
// only in builds with the bench tag, never in the signer's.
func WithoutTree(o WriterOptions) WriterOptions {
	o.skipTree = true
	return o
}
