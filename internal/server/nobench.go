//go:build !bench

package server

import "github.com/plexsphere/signer/internal/audit"

// withoutTree is never reached outside a bench build (skipMerkle is only
// set there).
func withoutTree(o audit.WriterOptions) audit.WriterOptions { return o }
