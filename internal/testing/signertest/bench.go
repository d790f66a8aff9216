//go:build bench

package signertest

import "github.com/plexsphere/signer/internal/server"

// WithoutMerkle stores the audit log without its Merkle tree and
// checkpoints: for the benchmark that prices the tree (build tag bench),
// never elsewhere.
func WithoutMerkle() Option { return func(o *options) { o.noMerkle = true } }

func withoutMerkle(o server.Options) server.Options { return server.WithoutMerkle(o) }
