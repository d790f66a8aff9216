// Package audit defines the signer's audit record (Entry), its hash chain, and
// the group-commit Writer that makes entries durable before an RPC may return.
//
// The package must never see payloads or key material: an Entry carries only
// names, outcomes and SHA-256 digests.
package audit
