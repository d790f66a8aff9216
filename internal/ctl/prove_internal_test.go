package ctl

import (
	"crypto/sha256"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signing"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// audit prove prints the served fields of a proved entry, but only its leaf
// is covered by the proof: a served field that differs from the leaf (here
// a signer claiming pure Ed25519 for an Ed25519ph signature, or another
// payload digest) fails the command instead of being printed as verified.
func TestServedEntryMatchesLeaf(t *testing.T) {
	p, s, c := sha256.Sum256([]byte("p")), sha256.Sum256([]byte("s")), sha256.Sum256([]byte("c"))
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign,
		"/plexsphere.signer.v1.SignerService/Sign", time.Unix(1700000000, 123000).UTC())
	e.Object, e.Reason, e.Code = auditlog.Object("payments", "k1"), auditlog.ReasonGranted, "OK"
	e.PayloadSHA256, e.SignatureSHA256 = p[:], s[:]
	e.SignVariant, e.ContextSHA256 = auditlog.VariantEd25519ph, c[:]
	leaf, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := auditlog.ParseLeaf(leaf)
	if err != nil {
		t.Fatal(err)
	}
	parsed.Seq = 7
	served := signing.EntryProto(&parsed)
	if f := servedMismatch(parsed, served); f != "" {
		t.Fatalf("the entry as the signer serves it differs in %s", f)
	}
	other := sha256.Sum256([]byte("other"))
	for field, edit := range map[string]func(*signerv1.AuditEntry){
		"request_id":       func(a *signerv1.AuditEntry) { a.RequestId = auditlog.NewRequestID().String() },
		"timestamp":        func(a *signerv1.AuditEntry) { a.Timestamp = timestamppb.New(e.Timestamp.Add(time.Second)) },
		"subject":          func(a *signerv1.AuditEntry) { a.Subject = "service:signer:peer=spiffe://x/y" },
		"relation":         func(a *signerv1.AuditEntry) { a.Relation = auditlog.RelationPublicKey },
		"object":           func(a *signerv1.AuditEntry) { a.Object = auditlog.Object("payments", "k2") },
		"reason":           func(a *signerv1.AuditEntry) { a.Reason = auditlog.ReasonCaveatViolation },
		"caveat_context":   func(a *signerv1.AuditEntry) { a.CaveatContext = []string{"x"} },
		"method":           func(a *signerv1.AuditEntry) { a.Method = "/plexsphere.signer.v1.SignerService/PublicKey" },
		"code":             func(a *signerv1.AuditEntry) { a.Code = "FailedPrecondition" },
		"payload_sha256":   func(a *signerv1.AuditEntry) { a.PayloadSha256 = "" },
		"signature_sha256": func(a *signerv1.AuditEntry) { a.SignatureSha256 = string(other[:4]) },
		"detail":           func(a *signerv1.AuditEntry) { a.Detail = []byte("{}") },
		"sign_variant":     func(a *signerv1.AuditEntry) { a.SignVariant = "" },
		"context_sha256":   func(a *signerv1.AuditEntry) { a.ContextSha256 = "" },
	} {
		forged := proto.Clone(served).(*signerv1.AuditEntry)
		edit(forged)
		if f := servedMismatch(parsed, forged); f != field {
			t.Errorf("a served entry with another %s: mismatch %q", field, f)
		}
	}
}
