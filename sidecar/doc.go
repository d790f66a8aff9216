// Package sidecar is the small mTLS-terminating proxy that sits beside a core
// container in its pod. The core speaks plaintext gRPC to it over a Unix
// socket or loopback; it forwards SignerService/Sign, SignerService/PublicKey
// and SignerService/Prove (the proof of one of the pod's own requests), and
// nothing else, to the signer over mTLS with the pod's SPIFFE identity,
// accepting only the expected signer SPIFFE ID.
//
// It is one forwarding path in two halves: core.go is a small HTTP/2 server
// for the core (a request is held until it is whole, then sent on), and
// upstream.go keeps one mTLS HTTP/2 connection per signer replica and sends
// each call to the least loaded one. Messages pass through as raw bytes (no
// protobuf decode or re-encode; only headers are decoded), so the sidecar
// adds little latency and holds no payload longer than one call.
// It never holds signing key material; its only secret is the pod's SVID.
// It must never link server-side code (store, key providers, audit writer,
// signerr): tests/integration's TestCoreBinaryLinksNoServerCode enforces it.
//
// Run is a whole sidecar (proxy, metrics, health); New and Serve are its
// parts for tests and embedders. Identity comes in as go-spiffe sources
// (x509svid.Source and x509bundle.Source), so a workloadapi.X509Source or
// any file-backed source plugs in.
package sidecar
