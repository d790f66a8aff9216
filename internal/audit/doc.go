// Package audit is the signer's side of the audit log: the group-commit
// Writer that encodes entries, extends the Merkle tree and makes both durable
// before an RPC's answer leaves the signer; the Tree glue that rebuilds the
// tree's edge and proofs from a store; and the Log that checks the stored
// tree against the last signed checkpoint (failing closed) and signs new
// checkpoints with the checkpoint key. The public format (Entry, leaf
// encoding, checkpoint and proof verification) is client/auditlog, which
// this package and every other user import directly.
//
// The package never sees payloads or key material: an Entry carries only
// names, outcomes and SHA-256 digests; checkpoints are signed through a
// key-provider function. It imports no gRPC and no store: stores import it.
package audit
