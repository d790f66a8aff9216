package auditlog_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
)

// docs/audit.md documents the leaf byte for byte, with an example: the
// example decodes with the code to the entry the page says it is, its hash
// is the hash the page gives, and the code encodes that entry to the same
// bytes. The page and the code cannot drift apart.
func TestAuditDocFormats(t *testing.T) {
	doc, err := os.ReadFile("../../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("<!-- leaf-example -->\n`([0-9a-f]+)`").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/audit.md has no leaf example")
	}
	leaf, err := hex.DecodeString(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	e, err := auditlog.ParseLeaf(leaf)
	if err != nil {
		t.Fatal(err)
	}
	p, s := sha256.Sum256([]byte("payload")), sha256.Sum256([]byte("signature"))
	if e.Version != 2 || e.Subject != auditlog.SubjectSigner || e.Relation != auditlog.RelationSign ||
		e.Object != "signing-key:payments:abcdefghijklmnopqrstuvwx" || e.Reason != auditlog.ReasonGranted ||
		len(e.CaveatContext) != 0 || !e.Timestamp.Equal(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)) ||
		e.Method != "/plexsphere.signer.v1.SignerService/Sign" || e.Code != "OK" ||
		!bytes.Equal(e.PayloadSHA256, p[:]) || !bytes.Equal(e.SignatureSHA256, s[:]) || e.RequestID[15] != 15 {
		t.Fatalf("the documented leaf decodes to %+v", e)
	}
	h := auditlog.LeafHash(leaf)
	if !bytes.Contains(doc, []byte(hex.EncodeToString(h[:]))) {
		t.Fatalf("docs/audit.md does not give the example's leaf hash %x", h)
	}
	if !regexp.MustCompile(`Example: the middleware entry of a granted Sign \(`+"131"+` bytes`).Match(doc) || len(leaf) != 131 {
		t.Fatalf("the example is %d bytes; the page says otherwise", len(leaf))
	}

	// The version 3 example: the same entry with a sign variant and the
	// context's digest, and nothing else changed.
	m = regexp.MustCompile("<!-- leaf-example-v3 -->\n`([0-9a-f]+)`").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/audit.md has no version 3 leaf example")
	}
	leaf3, err := hex.DecodeString(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	e3, err := auditlog.ParseLeaf(leaf3)
	if err != nil {
		t.Fatal(err)
	}
	c := sha256.Sum256([]byte("invoices/v1"))
	if e3.Version != 3 || e3.SignVariant != auditlog.VariantEd25519ctx || !bytes.Equal(e3.ContextSHA256, c[:]) {
		t.Fatalf("the documented version 3 leaf decodes to %+v", e3)
	}
	e3.Version, e3.SignVariant, e3.ContextSHA256, e.Version = 0, "", nil, 0
	if a, b := fmt.Sprintf("%+v", e3), fmt.Sprintf("%+v", e); a != b {
		t.Fatalf("the version 3 example is not the version 2 example's entry:\n%s\n%s", a, b)
	}
	h = auditlog.LeafHash(leaf3)
	if !bytes.Contains(doc, []byte(hex.EncodeToString(h[:]))) {
		t.Fatalf("docs/audit.md does not give the version 3 example's leaf hash %x", h)
	}
	if !bytes.Contains(doc, []byte("`invoices/v1`\n("+fmt.Sprint(len(leaf3))+" bytes)")) {
		t.Fatalf("the version 3 example is %d bytes; the page says otherwise", len(leaf3))
	}
}
