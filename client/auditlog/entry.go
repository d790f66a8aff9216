// Package auditlog is the public format of the signer's audit log, and
// everything needed to check it without trusting the signer or its
// database: the Entry the audit contract pins, its compact canonical
// encoding (a leaf of an RFC 6962 Merkle tree), signed checkpoints (C2SP
// tlog-checkpoint in a signed note) and inclusion and consistency proofs.
//
// A verifier needs only the log's checkpoint verifier key
// ("<origin>+<hash>+<key>", printed by `signerctl audit checkpoint-key`)
// and, to know that no one was shown another history, the witness policy:
// WitnessPolicy checks C2SP tlog-cosignatures on checkpoints, and
// Verifier.VerifyProof a signature's C2SP tlog-proof offline
// (Example_verifyProof). The package holds no key material and signs
// nothing.
package auditlog

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

// Reasons are a closed set: operator dashboards and SIEM rules filter on these
// exact values.
const (
	ReasonGranted              = "granted"
	ReasonInsufficientRelation = "insufficient_relation"
	ReasonCaveatViolation      = "caveat_violation"
)

// Relations name the operation an entry records.
const (
	RelationConnect   = "connect"    // admission, one per RPC
	RelationSign      = "sign"       // SignerService/Sign
	RelationPublicKey = "public_key" // SignerService/PublicKey
	RelationRotate    = "rotate"     // RotationService/*, bootstrap, auto-rotation
	RelationAudit     = "audit_read" // AuditService/*
	RelationUnknown   = "unknown"    // a method the signer does not serve
	RelationLog       = "log"        // a record of the log itself (MethodEpoch, MethodPrune)
)

// The log's own records: entries the signer writes about the log, with a
// Detail (docs/audit.md, "Log records").
const (
	// MethodEpoch starts a log epoch after a restore.
	MethodEpoch = "log/epoch"
	// MethodPrune records a prune before the pruned entries are deleted.
	MethodPrune = "log/prune"
)

// Sign variants a version 3 leaf records (RFC 8032).
const (
	VariantEd25519    = "ed25519"
	VariantEd25519ph  = "ed25519ph"
	VariantEd25519ctx = "ed25519ctx"
)

// SubjectSigner is the fixed subject of every middleware entry; the peer's
// identity lives on the separate admission entry (SubjectPeer).
const SubjectSigner = "service:signer"

// subjectPeerPrefix starts every admission entry's subject.
const subjectPeerPrefix = SubjectSigner + ":peer="

// SubjectPeer is the admission entry's subject for a peer; id is empty when the
// peer presented no certificate.
func SubjectPeer(id string) string { return subjectPeerPrefix + id }

// objectPrefix starts every object this signer writes.
const objectPrefix = "signing-key:"

// Object names the key an entry is about. keyID is "-" when no key was
// resolved; scope is "-" when the request carried no valid scope.
func Object(scope, keyID string) string {
	if scope == "" {
		scope = "-"
	}
	if keyID == "" {
		keyID = "-"
	}
	return objectPrefix + scope + ":" + keyID
}

// RequestID links the admission and middleware entries of one RPC.
type RequestID [16]byte

// NewRequestID returns a fresh request id: the time in microseconds (8
// bytes, big-endian) and 8 random bytes. Ids sort by time, so the stores'
// request index grows at its end (a random key costs a random page per
// insert: measured 5x slower group commits in bbolt).
func NewRequestID() RequestID {
	var r RequestID
	binary.BigEndian.PutUint64(r[:8], uint64(time.Now().UnixMicro()))
	if _, err := rand.Read(r[8:]); err != nil {
		panic("auditlog: crypto/rand failed: " + err.Error())
	}
	return r
}

func (r RequestID) String() string { return hex.EncodeToString(r[:]) }

// Time is when the request id was minted (at admission).
func (r RequestID) Time() time.Time {
	return time.UnixMicro(int64(binary.BigEndian.Uint64(r[:8]))).UTC()
}

// ParseRequestID is the inverse of String.
func ParseRequestID(s string) (RequestID, error) {
	var r RequestID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(r) {
		return r, fmt.Errorf("auditlog: %q is not a request id (32 hex digits)", s)
	}
	copy(r[:], b)
	return r, nil
}

// Entry is one audit record. Subject, Relation, Object, Reason, CaveatContext
// and Timestamp are the contract; RequestID joins an RPC's two entries;
// Method, Code and the digests say what happened on the wire.
type Entry struct {
	// Seq is the entry's position in the log, from 1, assigned when it is
	// committed. It is not part of the leaf: the Merkle tree binds each
	// leaf to its index (Seq-1).
	Seq       uint64
	RequestID RequestID

	Subject       string
	Relation      string
	Object        string
	Reason        string
	CaveatContext []string
	Timestamp     time.Time

	Method          string // full gRPC method name, or "bootstrap", "auto-rotate/<step>"
	Code            string // gRPC status code name returned to the caller
	PayloadSHA256   []byte // 32 bytes; Sign only
	SignatureSHA256 []byte // 32 bytes; Sign only, when a signature was produced
	// Detail is a log record's statement (relation "log"), nil for every
	// RPC's entry.
	Detail []byte
	// SignVariant is the RFC 8032 variant a Sign asked for when it was not
	// pure Ed25519 (VariantEd25519ph, VariantEd25519ctx), or
	// VariantEd25519 for a pure request that carried a context; "" for a
	// plain pure Sign and every other entry. ContextSHA256 is the SHA-256
	// of the request's context when it had one. Both need leaf version 3.
	SignVariant   string
	ContextSHA256 []byte
	// Version is the leaf version the entry was read from, 0 for a new
	// entry (written in the oldest version that can hold it: 3 with a sign
	// variant, else 2). It is the leaf's first byte, not a field of its own.
	Version byte
}

// New returns an entry with the contract's fixed fields filled in: an empty,
// non-nil CaveatContext (the signer never records caveats) and the time at
// admission in UTC, at the microsecond precision every store keeps. It is the
// one place an Entry is made.
func New(req RequestID, subject, relation, method string, at time.Time) Entry {
	return Entry{
		RequestID:     req,
		Subject:       subject,
		Relation:      relation,
		Object:        Object("", ""),
		CaveatContext: []string{},
		Timestamp:     at.UTC().Truncate(time.Microsecond),
		Method:        method,
	}
}
