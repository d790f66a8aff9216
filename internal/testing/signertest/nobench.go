//go:build !bench

package signertest

import "github.com/plexsphere/signer/internal/server"

// withoutMerkle is never reached outside a bench build.
func withoutMerkle(o server.Options) server.Options { return o }
