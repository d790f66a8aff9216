// Package keyring is the signer's key domain, off the wire: resolving a
// scope or key id to the record and the provider's key (Keyring, cached and
// bounded), the key lifecycle every path shares (Lifecycle: open, commit,
// abort, retire, bootstrap; a retired key's material is destroyed),
// automatic rotation (AutoRotator), and what the audit log says of each key
// (History). It never sees gRPC or protobuf: internal/signing serves it.
//
// A key's state only moves on (store.Forward). The keyring refuses a record
// that went back, behind a state it read before or behind the audit log's
// History: a key the log retired never signs and is never published again,
// whatever a store writer does to its record.
package keyring
