package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
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
	RelationConnect   = "connect"    // admission (peeridentity interceptor)
	RelationSign      = "sign"       // SignerService/Sign
	RelationPublicKey = "public_key" // SignerService/PublicKey
	RelationRotate    = "rotate"     // RotationService/*
	RelationAudit     = "audit_read" // AuditService/*
)

// SubjectSigner is the fixed subject of every middleware entry; the peer's
// identity lives on the separate admission entry (SubjectPeer).
const SubjectSigner = "service:signer"

// SubjectPeer is the admission entry's subject for a peer; id is empty when the
// peer presented no certificate.
func SubjectPeer(id string) string { return "service:signer:peer=" + id }

// Object names the key an entry is about. keyID is "-" when no key was
// resolved; scope is "-" when the request carried no valid scope.
func Object(scope, keyID string) string {
	if scope == "" {
		scope = "-"
	}
	if keyID == "" {
		keyID = "-"
	}
	return "signing-key:" + scope + ":" + keyID
}

// Entry is one audit record. Subject, Relation, Object, Reason, CaveatContext
// and Timestamp are the contract; the rest makes entries joinable (RequestID
// links an RPC's admission and middleware entries) and tamper-evident (Seq,
// PrevHash, Hash are assigned by the store when the entry is committed).
type Entry struct {
	Seq       uint64
	ID        string
	RequestID string

	Subject       string
	Relation      string
	Object        string
	Reason        string
	CaveatContext []string
	Timestamp     time.Time

	Method          string // full gRPC method name
	Code            string // gRPC status code name returned to the caller
	PayloadSHA256   string // hex; Sign only
	SignatureSHA256 string // hex; Sign only, when a signature was produced

	PrevHash string // hex SHA-256 of the previous entry, "" for the first
	Hash     string // hex SHA-256 over PrevHash and every field above
}

// NewID returns a random identifier for an entry or a request.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("audit: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// ComputeHash returns the chain hash of e given its PrevHash and Seq. The
// encoding is length-prefixed so no two different entries share an input.
func (e *Entry) ComputeHash() string {
	h := sha256.New()
	var n [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	put("plexsphere-signer/audit/v1")
	binary.BigEndian.PutUint64(n[:], e.Seq)
	h.Write(n[:])
	put(e.PrevHash)
	put(e.ID)
	put(e.RequestID)
	put(e.Subject)
	put(e.Relation)
	put(e.Object)
	put(e.Reason)
	binary.BigEndian.PutUint64(n[:], uint64(len(e.CaveatContext)))
	h.Write(n[:])
	for _, c := range e.CaveatContext {
		put(c)
	}
	put(e.Timestamp.UTC().Format(time.RFC3339Nano))
	put(e.Method)
	put(e.Code)
	put(e.PayloadSHA256)
	put(e.SignatureSHA256)
	return hex.EncodeToString(h.Sum(nil))
}

// Chain assigns Seq, PrevHash and Hash to batch, continuing from the head
// (lastSeq, lastHash) of a log, and returns the new head. Stores call it
// inside the transaction that appends the batch.
func Chain(batch []Entry, lastSeq uint64, lastHash string) (uint64, string) {
	for i := range batch {
		// Stores keep microseconds (Postgres timestamptz); hash what they keep.
		batch[i].Timestamp = batch[i].Timestamp.UTC().Truncate(time.Microsecond)
		lastSeq++
		batch[i].Seq = lastSeq
		batch[i].PrevHash = lastHash
		batch[i].Hash = batch[i].ComputeHash()
		lastHash = batch[i].Hash
	}
	return lastSeq, lastHash
}

// ErrChainBroken reports an edited, deleted, inserted or reordered entry.
var ErrChainBroken = errors.New("audit: hash chain broken")

// Verifier checks a log incrementally, in Seq order, from its first entry.
type Verifier struct {
	n        uint64
	lastSeq  uint64
	lastHash string
}

// Add checks the next entry; the error wraps ErrChainBroken and names the seq.
func (v *Verifier) Add(e Entry) error {
	switch {
	case e.Seq != v.lastSeq+1:
		return fmt.Errorf("%w at seq %d: expected seq %d (entry missing or reordered)", ErrChainBroken, e.Seq, v.lastSeq+1)
	case e.PrevHash != v.lastHash:
		return fmt.Errorf("%w at seq %d: prev_hash does not match the previous entry", ErrChainBroken, e.Seq)
	case e.ComputeHash() != e.Hash:
		return fmt.Errorf("%w at seq %d: entry content does not match its hash", ErrChainBroken, e.Seq)
	}
	v.n++
	v.lastSeq, v.lastHash = e.Seq, e.Hash
	return nil
}

// Count is the number of entries verified so far.
func (v *Verifier) Count() uint64 { return v.n }

// Admission carries a granted call's admission entry from the peeridentity
// interceptor to the audit middleware, which commits it in the same
// transaction as the call's outcome entry, admission first. One commit per
// call instead of two halves the latency a durable log adds, and the log
// never holds an admission without its outcome or an outcome without its
// admission.
type Admission struct {
	Entry   Entry
	claimed atomic.Bool
}

// Claim hands the entry to its committer; it returns true exactly once.
func (a *Admission) Claim() bool { return a.claimed.CompareAndSwap(false, true) }

type admissionKey struct{}

// WithAdmission attaches a granted admission to the call's context.
func WithAdmission(ctx context.Context, a *Admission) context.Context {
	return context.WithValue(ctx, admissionKey{}, a)
}

// AdmissionOf returns the call's admission, or nil.
func AdmissionOf(ctx context.Context) *Admission {
	a, _ := ctx.Value(admissionKey{}).(*Admission)
	return a
}
