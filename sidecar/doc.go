// Package sidecar is the small mTLS-terminating proxy that sits beside a core
// container in its pod. The core speaks plaintext gRPC to it over a Unix
// socket or loopback; it forwards SignerService/Sign and
// SignerService/PublicKey, and nothing else, to the signer over mTLS with the
// pod's SPIFFE identity, accepting only the expected signer SPIFFE ID.
//
// Messages pass through as raw bytes (no protobuf decode or re-encode), so
// the proxy adds little latency and holds no payload longer than one call.
// It never holds signing key material; its only secret is the pod's SVID.
package sidecar
