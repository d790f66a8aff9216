// Package client is what a core binary imports to get Ed25519 signatures
// without holding a signing key.
//
// It talks plaintext gRPC to the plexsphere sidecar in the same pod, over a
// Unix socket (preferred) or a loopback address, and refuses any other
// target: the sidecar owns the pod's mTLS identity and forwards to the
// signer. The client caches public halves only, so it can verify locally.
//
// This package never holds private key material: no Ed25519 private key, no
// seed, no TLS key. tests/integration/signer_core_binary_no_material_test.go
// enforces that for this package and everything it imports.
package client
