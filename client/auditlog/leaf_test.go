package auditlog_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
)

func sample() auditlog.Entry {
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign,
		"/plexsphere.signer.v1.SignerService/Sign", time.Date(2026, 11, 29, 8, 0, 0, 123456789, time.FixedZone("CET", 3600)))
	e.Object = auditlog.Object("payments", "abcdefghijklmnopqrstuvwx")
	e.Reason, e.Code = auditlog.ReasonGranted, "OK"
	p, s := sha256.Sum256([]byte("payload")), sha256.Sum256([]byte("signature"))
	e.PayloadSHA256, e.SignatureSHA256 = p[:], s[:]
	return e
}

func TestLeafRoundTrip(t *testing.T) {
	adm := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectPeer("spiffe://example.org/ns/plexsphere/sa/plexsphere-core"),
		auditlog.RelationConnect, "/plexsphere.signer.v1.SignerService/Sign", time.Now())
	adm.Reason, adm.Code = auditlog.ReasonGranted, "OK"
	odd := sample()
	odd.Subject, odd.Relation, odd.Object, odd.Method, odd.Code = "other", "custom", "no-prefix", "auto-rotate/other", "Teapot"
	odd.CaveatContext = []string{"a", ""}
	odd.SignatureSHA256 = nil
	for _, e := range []auditlog.Entry{sample(), adm, odd} {
		leaf, err := auditlog.AppendLeaf(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := auditlog.ParseLeaf(leaf)
		if err != nil {
			t.Fatal(err)
		}
		if got.RequestID != e.RequestID || got.Subject != e.Subject || got.Relation != e.Relation || got.Object != e.Object ||
			got.Reason != e.Reason || strings.Join(got.CaveatContext, "|") != strings.Join(e.CaveatContext, "|") ||
			got.CaveatContext == nil || !got.Timestamp.Equal(e.Timestamp) || got.Timestamp.Location() != time.UTC ||
			got.Method != e.Method || got.Code != e.Code || !bytes.Equal(got.PayloadSHA256, e.PayloadSHA256) ||
			!bytes.Equal(got.SignatureSHA256, e.SignatureSHA256) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
		}
	}
}

// Both of a granted Sign's entries fit the storage budget with room for the
// store's own overhead (docs/performance.md: ≤ 400 bytes per Sign).
func TestLeafIsCompact(t *testing.T) {
	adm := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectPeer("spiffe://example.org/ns/plexsphere/sa/plexsphere-core"),
		auditlog.RelationConnect, "/plexsphere.signer.v1.SignerService/Sign", time.Now())
	adm.Object, adm.Reason, adm.Code = auditlog.Object("payments", ""), auditlog.ReasonGranted, "OK"
	mw := sample()
	a, _ := auditlog.AppendLeaf(nil, &adm)
	b, _ := auditlog.AppendLeaf(nil, &mw)
	if n := len(a) + len(b); n > 260 {
		t.Fatalf("a Sign's two leaves take %d bytes", n)
	} else {
		t.Logf("admission %d + middleware %d = %d bytes", len(a), len(b), n)
	}
}

// One entry has one leaf: anything else that decodes is refused.
func TestLeafIsCanonical(t *testing.T) {
	e := sample()
	leaf, _ := auditlog.AppendLeaf(nil, &e)
	// The relation "sign" spelled as a literal instead of its dictionary tag.
	i := 1 + 16 + 1 // version, request id, subject tag
	literal := append(append(bytes.Clone(leaf[:i]), 0, 4, 's', 'i', 'g', 'n'), leaf[i+1:]...)
	if _, err := auditlog.ParseLeaf(literal); err == nil {
		t.Fatal("a literal where the dictionary has the value decoded")
	}
	for n := 0; n < len(leaf); n++ {
		if _, err := auditlog.ParseLeaf(leaf[:n]); err == nil {
			t.Fatalf("a truncated leaf (%d of %d bytes) decoded", n, len(leaf))
		}
	}
	if _, err := auditlog.ParseLeaf(append(bytes.Clone(leaf), 0)); err == nil {
		t.Fatal("a leaf with trailing bytes decoded")
	}
	for _, v := range []byte{0, auditlog.LeafVersion + 1} {
		bad := bytes.Clone(leaf)
		bad[0] = v
		if _, err := auditlog.ParseLeaf(bad); err == nil {
			t.Fatalf("version %d decoded", v)
		}
	}
}

// A leaf written by version 1 (before the two AuditService methods below
// had dictionary entries, with them as literals) still decodes and
// re-encodes to the same bytes, so its hash in the tree is unchanged. The
// bytes are what the version 1 encoder wrote (main at 977b8d3).
func TestVersionOneLeavesStayReadable(t *testing.T) {
	v1, _ := hex.DecodeString("0130313233343536373839616263646566021c7370696666653a2f2f6578616d706c652e6f72672f61756469746f720501012d012d01008080efe0b5d9b00600322f706c65787370686572652e7369676e65722e76312e4175646974536572766963652f4c697374436865636b706f696e74730100")
	e, err := auditlog.ParseLeaf(v1)
	if err != nil {
		t.Fatal(err)
	}
	if e.Version != 1 || e.Method != "/plexsphere.signer.v1.AuditService/ListCheckpoints" || e.Subject != auditlog.SubjectPeer("spiffe://example.org/auditor") {
		t.Fatalf("version 1 leaf read as %+v", e)
	}
	again, err := auditlog.AppendLeaf(nil, &e)
	if err != nil || !bytes.Equal(again, v1) {
		t.Fatalf("a version 1 leaf re-encodes to other bytes: %x (%v)", again, err)
	}
	// The same entry written today is version 2, with the method as one byte.
	e.Version = 0
	v2, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	if v2[0] != 2 || len(v2) != len(v1)-len(e.Method)-1 {
		t.Fatalf("version 2 leaf of %d bytes (version 1: %d)", len(v2), len(v1))
	}
	// Version 1 has no tag for the method: its tag spelled in a version 1
	// leaf is refused.
	forged := bytes.Clone(v2)
	forged[0] = 1
	if _, err := auditlog.ParseLeaf(forged); err == nil {
		t.Fatal("a version 1 leaf with a version 2 dictionary tag decoded")
	}
}

// A log record carries a detail (version 2 only), round-trips, and is part
// of the one encoding.
func TestLogRecordDetail(t *testing.T) {
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationLog, auditlog.MethodEpoch, time.Now())
	e.Object, e.Reason, e.Code = "audit-log:example.org/plexsphere-signer/epoch-2", auditlog.ReasonGranted, "OK"
	e.Detail = []byte(`{"epoch":2}`)
	leaf, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := auditlog.ParseLeaf(leaf)
	if err != nil || string(got.Detail) != string(e.Detail) || got.Relation != auditlog.RelationLog || got.Method != auditlog.MethodEpoch {
		t.Fatalf("record read back as %+v (%v)", got, err)
	}
	e.Version = 1
	if _, err := auditlog.AppendLeaf(nil, &e); err == nil {
		t.Fatal("a version 1 leaf with a detail encoded")
	}
	// An empty detail is a detail (flag set, length 0), not its absence.
	e.Version, e.Detail = 0, []byte{}
	empty, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := auditlog.ParseLeaf(empty); err != nil || got.Detail == nil {
		t.Fatalf("empty detail read back as %v (%v)", got.Detail, err)
	}
}

// A Sign in Ed25519ph or Ed25519ctx records its variant and its context's
// digest in a version 3 leaf, 34 bytes more than the pure Sign's; a pure
// Sign keeps its version 2 leaf, and the fields no earlier version has are
// refused in one.
func TestSignVariantLeaf(t *testing.T) {
	pure := sample()
	pureLeaf, err := auditlog.AppendLeaf(nil, &pure)
	if err != nil || pureLeaf[0] != 2 {
		t.Fatalf("a pure Sign is written in version %d (%v), want 2", pureLeaf[0], err)
	}
	c := sha256.Sum256([]byte("invoices/v1"))
	for _, tc := range []struct {
		variant string
		context []byte
		extra   int
	}{
		{auditlog.VariantEd25519ph, nil, 1 + 1},
		{auditlog.VariantEd25519ph, c[:], 1 + 1 + 32},
		{auditlog.VariantEd25519ctx, c[:], 1 + 1 + 32},
		{auditlog.VariantEd25519, c[:], 1 + 1 + 32},        // a pure request that carried a context (refused)
		{"variant(7)", nil, 1 + 1 + 1 + len("variant(7)")}, // a literal: a number no dictionary has
	} {
		e := sample()
		e.SignVariant, e.ContextSHA256 = tc.variant, tc.context
		leaf, err := auditlog.AppendLeaf(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		if leaf[0] != 3 || len(leaf) != len(pureLeaf)+tc.extra-1 {
			t.Fatalf("%s: version %d, %d bytes (pure: %d)", tc.variant, leaf[0], len(leaf), len(pureLeaf))
		}
		got, err := auditlog.ParseLeaf(leaf)
		if err != nil || got.Version != 3 || got.SignVariant != tc.variant || !bytes.Equal(got.ContextSHA256, tc.context) ||
			!bytes.Equal(got.PayloadSHA256, e.PayloadSHA256) {
			t.Fatalf("%s read back as %+v (%v)", tc.variant, got, err)
		}
		if again, err := auditlog.AppendLeaf(nil, &got); err != nil || !bytes.Equal(again, leaf) {
			t.Fatalf("%s does not re-encode to its bytes: %v", tc.variant, err)
		}
		// The same bytes labelled version 2 carry bits version 2 lacks.
		old := bytes.Clone(leaf)
		old[0] = 2
		if _, err := auditlog.ParseLeaf(old); err == nil {
			t.Fatalf("%s: a version 2 leaf with a sign variant decoded", tc.variant)
		}
		e.Version = 2
		if _, err := auditlog.AppendLeaf(nil, &e); err == nil {
			t.Fatalf("%s encoded in version 2", tc.variant)
		}
	}
	// A present bit no version knows is refused.
	e := sample()
	e.SignVariant = auditlog.VariantEd25519ctx
	leaf, _ := auditlog.AppendLeaf(nil, &e)
	flags := len(leaf) - 1 - 64 - 1 // the present byte: before both digests and the variant tag
	if leaf[flags] != 1|2|8 {
		t.Fatalf("present byte %#x at %d", leaf[flags], flags)
	}
	for _, bit := range []byte{32, 64, 128} {
		bad := bytes.Clone(leaf)
		bad[flags] |= bit
		if _, err := auditlog.ParseLeaf(bad); err == nil {
			t.Fatalf("present bit %#x decoded", bit)
		}
	}
	// An empty literal is no variant.
	empty := append(bytes.Clone(leaf[:len(leaf)-1]), 0, 0)
	if _, err := auditlog.ParseLeaf(empty); err == nil {
		t.Fatal("an empty sign variant decoded")
	}
	e.ContextSHA256 = make([]byte, 31)
	if _, err := auditlog.AppendLeaf(nil, &e); err == nil {
		t.Fatal("a 31-byte context digest encoded")
	}
	// A version 3 leaf need not record a variant: written in version 3 on
	// purpose, a pure Sign's entry is still one leaf per version.
	pure.Version = 3
	v3, err := auditlog.AppendLeaf(nil, &pure)
	if err != nil || v3[0] != 3 || !bytes.Equal(v3[1:], pureLeaf[1:]) {
		t.Fatalf("pure Sign in version 3: %x (%v)", v3, err)
	}
}

func FuzzParseLeaf(f *testing.F) {
	e := sample()
	leaf, _ := auditlog.AppendLeaf(nil, &e)
	f.Add(leaf)
	c := sha256.Sum256([]byte("c"))
	e.SignVariant, e.ContextSHA256 = auditlog.VariantEd25519ctx, c[:]
	leaf, _ = auditlog.AppendLeaf(nil, &e)
	f.Add(leaf)
	f.Add([]byte{1})
	f.Add(bytes.Repeat([]byte{1}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := auditlog.ParseLeaf(b)
		if err != nil {
			return
		}
		again, err := auditlog.AppendLeaf(nil, &got)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded but does not re-encode to itself: %v", err)
		}
	})
}

// A leaf that claims more caveats than it has bytes is refused without
// sizing anything by the claim: the fuzzer's input below made ParseLeaf
// reserve 3.5 TB (2 s, then the fuzz worker died) before it was fixed.
func TestParseLeafBoundsTheCaveatCount(t *testing.T) {
	b := []byte("\x01\x00\x06aj`\xd8\xc5\xc0\x14\xc6\r\xcf\xef٨\xe0\x01\x02\x01\bpayments\x18abcdm\xc7\xeaZ*Gklmnopqrstuvwx\x01\xf9\xf7\x9aٰ\x06")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := auditlog.ParseLeaf(b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, auditlog.ErrMalformedLeaf) {
		t.Fatalf("ParseLeaf = %v, want ErrMalformedLeaf", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("ParseLeaf of a %d-byte leaf allocated %d bytes", len(b), n)
	}
}
