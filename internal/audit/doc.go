// Package audit is the signer's side of the audit log: the group-commit
// Writer that encodes entries, extends the Merkle tree and makes both durable
// before an RPC's answer leaves the signer; the Tree glue that rebuilds the
// tree's edge and proofs from a store; and the Log that checks the stored
// tree against the last signed checkpoint (failing closed) and signs new
// checkpoints with the checkpoint key. The public format (Entry, leaf
// encoding, checkpoint and proof verification) is client/auditlog.
//
// The package never sees payloads or key material: an Entry carries only
// names, outcomes and SHA-256 digests; checkpoints are signed through a
// key-provider function. It imports no gRPC and no store: stores import it.
package audit

import "github.com/plexsphere/signer/client/auditlog"

// The contract's names, defined once in auditlog.
type (
	Entry      = auditlog.Entry
	RequestID  = auditlog.RequestID
	Checkpoint = auditlog.Checkpoint
	Verifier   = auditlog.Verifier
)

const (
	ReasonGranted              = auditlog.ReasonGranted
	ReasonInsufficientRelation = auditlog.ReasonInsufficientRelation
	ReasonCaveatViolation      = auditlog.ReasonCaveatViolation

	RelationConnect   = auditlog.RelationConnect
	RelationSign      = auditlog.RelationSign
	RelationPublicKey = auditlog.RelationPublicKey
	RelationRotate    = auditlog.RelationRotate
	RelationAudit     = auditlog.RelationAudit
	RelationUnknown   = auditlog.RelationUnknown

	SubjectSigner = auditlog.SubjectSigner
)

var (
	New            = auditlog.New
	NewRequestID   = auditlog.NewRequestID
	ParseRequestID = auditlog.ParseRequestID
	Object         = auditlog.Object
	SubjectPeer    = auditlog.SubjectPeer
	AppendLeaf     = auditlog.AppendLeaf
	ParseLeaf      = auditlog.ParseLeaf
	NewVerifier    = auditlog.NewVerifier
	ErrCheckpoint  = auditlog.ErrCheckpoint
)

// LeafHash is the RFC 6962 leaf hash of a leaf.
func LeafHash(leaf []byte) [32]byte { return auditlog.LeafHash(leaf) }
