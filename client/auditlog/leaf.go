package auditlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
)

// LeafVersion is the newest version AppendLeaf writes: the first byte of a
// leaf. ParseLeaf reads every version up to it, so leaves written before a
// version change stay readable and keep their hash.
//
// A new entry is written in the oldest version that can hold it: version 3
// only for a Sign that records a variant (Ed25519ph, Ed25519ctx), version 2
// for everything else. A pure Sign's leaf is byte for byte what it was
// before version 3 existed, costs nothing more, and stays readable by
// signers and auditors that predate version 3 (a rolling upgrade, an
// auditor's older signerctl) until a scope actually signs in a variant.
const LeafVersion = 3

// baseVersion is what a new entry without a sign variant is written in.
const baseVersion = 2

// The canonical leaf encoding. Every field the contract pins is in it, so
// the Merkle tree commits to exactly what a reader is shown
// (docs/audit.md has the byte tables):
//
//	u8        version (1, 2 or 3)
//	[16]byte  request id
//	sym       subject   (1 "service:signer"; 2 "service:signer:peer=" + str)
//	sym       relation
//	obj       object    (1 "signing-key:" + str scope + ":" + str key id)
//	sym       reason
//	uvarint   number of caveats, then each as str
//	varint    timestamp, microseconds since the Unix epoch, UTC
//	sym       method
//	sym       code
//	u8        present: bit 0 payload digest, bit 1 signature digest,
//	          bit 2 detail (version 2 on), bit 3 sign variant and bit 4
//	          context digest (version 3)
//	[32]byte  payload SHA-256, if present
//	[32]byte  signature SHA-256, if present
//	str       detail, if present (version 2): a log record's statement
//	sym       sign variant, if present (version 3)
//	[32]byte  context SHA-256, if present (version 3)
//
// str is a uvarint length and the bytes; sym is a u8 tag, 0 followed by a
// str for a value outside the field's dictionary, else the value's index in
// it plus one. Each version's dictionaries are frozen with it: version 2's
// extend version 1's at their ends (so a version 1 index means the same in
// version 2), and a value a version lacks is written as a literal. Encoding
// is deterministic and decoding refuses any input that does not re-encode to
// the same bytes in its own version, so one entry has exactly one leaf per
// version.

// dicts are each version's dictionaries; dicts[v-1] is version v's.
var dicts = [LeafVersion]struct{ relation, reason, method, variant []string }{
	{relation: dictRelation[:6], reason: dictReason, method: dictMethod[:16]},
	{relation: dictRelation, reason: dictReason, method: dictMethod},
	{relation: dictRelation, reason: dictReason, method: dictMethod, variant: dictVariant},
}

var (
	dictRelation = []string{RelationConnect, RelationSign, RelationPublicKey, RelationRotate, RelationAudit, RelationUnknown,
		// version 2
		RelationLog}
	dictReason = []string{ReasonGranted, ReasonInsufficientRelation, ReasonCaveatViolation}
	dictMethod = []string{
		"/plexsphere.signer.v1.SignerService/Sign",
		"/plexsphere.signer.v1.SignerService/PublicKey",
		"/plexsphere.signer.v1.RotationService/Open",
		"/plexsphere.signer.v1.RotationService/Commit",
		"/plexsphere.signer.v1.RotationService/Abort",
		"/plexsphere.signer.v1.RotationService/Retire",
		"/plexsphere.signer.v1.RotationService/ListKeys",
		"/plexsphere.signer.v1.AuditService/List",
		"/plexsphere.signer.v1.AuditService/Verify",
		"/plexsphere.signer.v1.AuditService/Checkpoint",
		"/plexsphere.signer.v1.AuditService/ProveInclusion",
		"/plexsphere.signer.v1.AuditService/ProveConsistency",
		"bootstrap",
		"auto-rotate/open",
		"auto-rotate/commit",
		"auto-rotate/retire",
		// version 2
		"/plexsphere.signer.v1.AuditService/ListCheckpoints",
		"/plexsphere.signer.v1.AuditService/CheckpointVerifierKey",
		"/plexsphere.signer.v1.SignerService/Prove",
		MethodEpoch,
		MethodPrune,
	}
	// version 3
	dictVariant = []string{VariantEd25519, VariantEd25519ph, VariantEd25519ctx}
	// gRPC status code names, in code order (codes.Code(i).String()); the
	// same in every version.
	dictCode = []string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
		"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
		"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}
)

// KnownMethod reports whether m has a dictionary entry (and so costs one
// byte in a leaf).
func KnownMethod(m string) bool { return indexOf(dicts[LeafVersion-1].method, m) >= 0 }

func indexOf(dict []string, s string) int {
	for i, d := range dict {
		if d == s {
			return i
		}
	}
	return -1
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendSym(b []byte, dict []string, s string) []byte {
	if i := indexOf(dict, s); i >= 0 {
		return append(b, byte(i+1))
	}
	return appendStr(append(b, 0), s)
}

// MaxLeafSize bounds one leaf; AppendLeaf refuses larger entries (they would
// only come from a bug: every field is bounded upstream).
const MaxLeafSize = 8 << 10

// AppendLeaf appends e's canonical encoding to b, in e.Version (0: the
// oldest version that holds e, see LeafVersion).
func AppendLeaf(b []byte, e *Entry) ([]byte, error) {
	start := len(b)
	hasVariant := e.SignVariant != "" || e.ContextSHA256 != nil
	v := e.Version
	if v == 0 {
		v = baseVersion
		if hasVariant {
			v = 3
		}
	}
	if v > LeafVersion {
		return b, fmt.Errorf("auditlog: leaf version %d, this package writes up to %d", v, LeafVersion)
	}
	if v < 2 && e.Detail != nil {
		return b, fmt.Errorf("auditlog: leaf version %d has no detail", v)
	}
	if v < 3 && hasVariant {
		return b, fmt.Errorf("auditlog: leaf version %d has no sign variant", v)
	}
	if e.ContextSHA256 != nil && len(e.ContextSHA256) != 32 {
		return b, fmt.Errorf("auditlog: context digest of %d bytes, want 32", len(e.ContextSHA256))
	}
	d := dicts[v-1]
	b = append(b, v)
	b = append(b, e.RequestID[:]...)
	switch {
	case e.Subject == SubjectSigner:
		b = append(b, 1)
	case strings.HasPrefix(e.Subject, subjectPeerPrefix):
		b = appendStr(append(b, 2), e.Subject[len(subjectPeerPrefix):])
	default:
		b = appendStr(append(b, 0), e.Subject)
	}
	b = appendSym(b, d.relation, e.Relation)
	if scope, key, ok := splitObject(e.Object); ok {
		b = appendStr(appendStr(append(b, 1), scope), key)
	} else {
		b = appendStr(append(b, 0), e.Object)
	}
	b = appendSym(b, d.reason, e.Reason)
	b = binary.AppendUvarint(b, uint64(len(e.CaveatContext)))
	for _, c := range e.CaveatContext {
		b = appendStr(b, c)
	}
	b = binary.AppendVarint(b, e.Timestamp.UnixMicro())
	b = appendSym(b, d.method, e.Method)
	b = appendSym(b, dictCode, e.Code)
	var flags byte
	for i, d := range [][]byte{e.PayloadSHA256, e.SignatureSHA256} {
		switch len(d) {
		case 0:
		case 32:
			flags |= 1 << i
		default:
			return b[:start], fmt.Errorf("auditlog: digest of %d bytes, want 32", len(d))
		}
	}
	if e.Detail != nil {
		flags |= 4
	}
	if e.SignVariant != "" {
		flags |= 8
	}
	if e.ContextSHA256 != nil {
		flags |= 16
	}
	b = append(b, flags)
	b = append(b, e.PayloadSHA256...)
	b = append(b, e.SignatureSHA256...)
	if e.Detail != nil {
		b = binary.AppendUvarint(b, uint64(len(e.Detail)))
		b = append(b, e.Detail...)
	}
	if e.SignVariant != "" {
		b = appendSym(b, d.variant, e.SignVariant)
	}
	b = append(b, e.ContextSHA256...)
	if len(b)-start > MaxLeafSize {
		return b[:start], fmt.Errorf("auditlog: entry encodes to %d bytes, limit %d", len(b)-start, MaxLeafSize)
	}
	return b, nil
}

// splitObject recognises "signing-key:<scope>:<key id>" with a scope free of
// ':' — the form every object this signer writes has.
func splitObject(o string) (scope, key string, ok bool) {
	rest, ok := strings.CutPrefix(o, objectPrefix)
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, ":")
}

// ErrMalformedLeaf is returned for bytes that are not a canonical leaf.
var ErrMalformedLeaf = errors.New("auditlog: malformed leaf")

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = ErrMalformedLeaf
	}
	r.b = nil
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.fail()
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) str() string {
	n := r.uvarint()
	if n > MaxLeafSize {
		r.fail()
		return ""
	}
	return string(r.bytes(int(n)))
}

func (r *reader) sym(dict []string) string {
	t := int(r.u8())
	switch {
	case t == 0:
		return r.str()
	case t <= len(dict):
		return dict[t-1]
	}
	r.fail()
	return ""
}

// ParseLeaf decodes a canonical leaf. Seq is left zero: the caller knows the
// leaf's position.
func ParseLeaf(leaf []byte) (Entry, error) {
	if len(leaf) == 0 || leaf[0] < 1 || leaf[0] > LeafVersion || len(leaf) > MaxLeafSize {
		return Entry{}, ErrMalformedLeaf
	}
	d := dicts[leaf[0]-1]
	r := &reader{b: leaf[1:]}
	e := Entry{Version: leaf[0]}
	copy(e.RequestID[:], r.bytes(len(e.RequestID)))
	switch r.u8() {
	case 0:
		e.Subject = r.str()
	case 1:
		e.Subject = SubjectSigner
	case 2:
		e.Subject = subjectPeerPrefix + r.str()
	default:
		r.fail()
	}
	e.Relation = r.sym(d.relation)
	switch r.u8() {
	case 0:
		e.Object = r.str()
	case 1:
		scope := r.str()
		e.Object = objectPrefix + scope + ":" + r.str()
	default:
		r.fail()
	}
	e.Reason = r.sym(d.reason)
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		// Each caveat takes at least a byte: more than the bytes left is
		// malformed, and must not size the slice below (a leaf claiming
		// 2^40 caveats made a verifier reserve terabytes).
		r.fail()
		n = 0
	}
	e.CaveatContext = make([]string, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		e.CaveatContext = append(e.CaveatContext, r.str())
	}
	e.Timestamp = time.UnixMicro(r.varint()).UTC()
	e.Method = r.sym(d.method)
	e.Code = r.sym(dictCode)
	flags := r.u8()
	// The present bits each version knows; any other is refused, so a
	// leaf cannot carry a field its version's readers would skip.
	known := [LeafVersion]byte{3, 3 | 4, 3 | 4 | 8 | 16}[e.Version-1]
	if flags&^known != 0 {
		r.fail()
	}
	if flags&1 != 0 {
		e.PayloadSHA256 = bytes.Clone(r.bytes(32))
	}
	if flags&2 != 0 {
		e.SignatureSHA256 = bytes.Clone(r.bytes(32))
	}
	if flags&4 != 0 {
		n := r.uvarint()
		e.Detail = bytes.Clone(r.bytes(int(min(n, MaxLeafSize+1))))
	}
	if flags&8 != 0 {
		if e.SignVariant = r.sym(d.variant); e.SignVariant == "" {
			r.fail()
		}
	}
	if flags&16 != 0 {
		e.ContextSHA256 = bytes.Clone(r.bytes(32))
	}
	if r.err != nil || len(r.b) != 0 {
		return Entry{}, ErrMalformedLeaf
	}
	// One entry, one encoding per version: a literal where the version's
	// dictionary has the value, a non-minimal varint and the like are
	// refused.
	if again, err := AppendLeaf(nil, &e); err != nil || !bytes.Equal(again, leaf) {
		return Entry{}, fmt.Errorf("%w: not canonical", ErrMalformedLeaf)
	}
	return e, nil
}

// LeafHash is the RFC 6962 leaf hash of a leaf: SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) [32]byte {
	var h [32]byte
	copy(h[:], rfc6962.DefaultHasher.HashLeaf(leaf))
	return h
}
