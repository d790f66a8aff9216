package auditlog_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	tlog "github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
)

// testLog is a log built here from the public format alone: leaves, an
// RFC 6962 tree (transparency-dev/merkle) and checkpoints signed as C2SP
// notes under the log's key, for any epoch's origin.
type testLog struct {
	origin string
	priv   ed25519.PrivateKey
	vkey   string
	leaves [][]byte
}

func newTestLog(t testing.TB, origin string) *testLog {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{origin: origin, priv: priv, vkey: vkey}
}

func (l *testLog) add(t testing.TB, n int) {
	for range n {
		e := sample()
		e.RequestID = auditlog.NewRequestID()
		leaf, err := auditlog.AppendLeaf(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		l.leaves = append(l.leaves, leaf)
	}
}

func (l *testLog) root(size uint64) []byte {
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, leaf := range l.leaves[:size] {
		h := auditlog.LeafHash(leaf)
		r.Append(h[:], nil)
	}
	if size == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, _ := r.GetRootHash(nil)
	return root
}

// signer signs under name with the log's key (the name picks the epoch).
type keySigner struct {
	name string
	priv ed25519.PrivateKey
	hash uint32
}

func (s keySigner) Name() string                    { return s.name }
func (s keySigner) KeyHash() uint32                 { return s.hash }
func (s keySigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.priv, msg), nil }

func (l *testLog) checkpoint(t testing.TB, epoch int, size uint64) []byte {
	origin := auditlog.EpochOrigin(l.origin, epoch)
	vkey, _ := note.NewEd25519VerifierKey(origin, l.priv.Public().(ed25519.PublicKey))
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	body := tlog.Checkpoint{Origin: origin, Size: size, Hash: l.root(size)}.Marshal()
	n, err := note.Sign(&note.Note{Text: string(body)}, keySigner{origin, l.priv, v.KeyHash()})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (l *testLog) inclusion(t testing.TB, index, size uint64) [][]byte {
	n, err := proof.Inclusion(index, size)
	if err != nil {
		t.Fatal(err)
	}
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	hashes := make([][]byte, len(n.IDs))
	for i, id := range n.IDs {
		b, e := id.Coverage()
		r := rf.NewEmptyRange(b)
		for _, leaf := range l.leaves[b:e] {
			h := auditlog.LeafHash(leaf)
			r.Append(h[:], nil)
		}
		hashes[i] = r.Hashes()[0]
	}
	out, err := n.Rehash(hashes, rfc6962.DefaultHasher.HashChildren)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testWitness cosigns as a C2SP tlog-cosignature/v1 witness would.
type testWitness struct {
	name string
	s    *fnote.Signer
	vkey string
}

func newTestWitness(t testing.TB, name string) testWitness {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return testWitness{name: name, s: s, vkey: cv}
}

// cosign returns the witness's signature line for a signed note.
func (w testWitness) cosign(t testing.TB, signed []byte) []byte {
	i := bytes.LastIndex(signed, []byte("\n\n"))
	n, err := note.Sign(&note.Note{Text: string(signed[:i+1])}, w.s)
	if err != nil {
		t.Fatal(err)
	}
	j := bytes.LastIndex(n, []byte("\n\n"))
	return n[j+2:]
}

func policyOf(quorum string, ws ...testWitness) []byte {
	var b strings.Builder
	var names []string
	for _, w := range ws {
		fmt.Fprintf(&b, "witness %s %s https://%s\n", w.name, w.vkey, w.name)
		names = append(names, w.name)
	}
	fmt.Fprintf(&b, "group g %s %s\nquorum g\n", quorum, strings.Join(names, " "))
	return []byte(b.String())
}

// A checkpoint with a second signature line under the log's own name and
// key hash whose signature is garbage is refused (C2SP signed-note: a
// signature by a known key that fails to verify rejects the note), wherever
// the line stands.
func TestOpenRefusesAKnownKeysBadSignature(t *testing.T) {
	l := newTestLog(t, "example.org/log")
	l.add(t, 3)
	v, err := auditlog.NewVerifier(l.vkey)
	if err != nil {
		t.Fatal(err)
	}
	cp := l.checkpoint(t, 1, 3)
	if _, err := v.Open(cp); err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndex(cp, []byte("\n\n"))
	line := string(cp[i+2:])
	name, b64, _ := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(line, "— "), "\n"), " ")
	sig, _ := base64.StdEncoding.DecodeString(b64)
	garbage := append(bytes.Clone(sig[:4]), bytes.Repeat([]byte{7}, 64)...)
	bad := fmt.Sprintf("— %s %s\n", name, base64.StdEncoding.EncodeToString(garbage))
	for _, forged := range [][]byte{
		append(bytes.Clone(cp), bad...),
		append(append(bytes.Clone(cp[:i+2]), bad...), line...),
	} {
		if _, err := v.Open(forged); !errors.Is(err, auditlog.ErrCheckpoint) {
			t.Fatalf("a note with a bad signature line under the log's key: %v\n%s", err, forged)
		}
	}
	// A line under an unknown key is ignored.
	other := newTestWitness(t, "stranger.example")
	if _, err := v.Open(append(bytes.Clone(cp), other.cosign(t, cp)...)); err != nil {
		t.Fatalf("an unknown cosigner's line: %v", err)
	}
}

// Epochs: the same key signs under the epoch's origin; a checkpoint naming
// an epoch's origin but signed under another name, or naming no epoch of
// the log, is refused.
func TestEpochOrigins(t *testing.T) {
	l := newTestLog(t, "example.org/log")
	l.add(t, 4)
	v, _ := auditlog.NewVerifier(l.vkey)
	cp, err := v.Open(l.checkpoint(t, 3, 4))
	if err != nil {
		t.Fatal(err)
	}
	if cp.Epoch != 3 || cp.Origin != "example.org/log/epoch-3" || cp.Size != 4 {
		t.Fatalf("epoch 3 checkpoint read as %+v", cp)
	}
	if got := v.EpochVerifierKey(3); !strings.HasPrefix(got, "example.org/log/epoch-3+") {
		t.Fatalf("EpochVerifierKey(3) = %q", got)
	}
	// The epoch-1 signature on an epoch-3 body.
	body := tlog.Checkpoint{Origin: "example.org/log/epoch-3", Size: 4, Hash: l.root(4)}.Marshal()
	ev, _ := note.NewVerifier(l.vkey)
	n, _ := note.Sign(&note.Note{Text: string(body)}, keySigner{"example.org/log", l.priv, ev.KeyHash()})
	if _, err := v.Open(n); !errors.Is(err, auditlog.ErrCheckpoint) {
		t.Fatalf("epoch-3 body under the epoch-1 key name: %v", err)
	}
	for _, o := range []string{"example.org/log/epoch-1", "example.org/log/epoch-02", "example.org/log/epoch-", "example.org/logx", "example.org/log/epoch-2/x"} {
		if got := auditlog.EpochOf("example.org/log", o); got != 0 {
			t.Errorf("EpochOf(%q) = %d", o, got)
		}
	}
}

func TestWitnessPolicy(t *testing.T) {
	l := newTestLog(t, "example.org/log")
	l.add(t, 5)
	v, _ := auditlog.NewVerifier(l.vkey)
	w1, w2, w3 := newTestWitness(t, "w1.example"), newTestWitness(t, "w2.example"), newTestWitness(t, "w3.example")
	p, err := auditlog.ParseWitnessPolicy(policyOf("2", w1, w2, w3))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Witnesses()) != 3 || p.Witnesses()[0].URL != "https://w1.example/add-checkpoint" || !p.Required() {
		t.Fatalf("witnesses %+v", p.Witnesses())
	}
	cp := l.checkpoint(t, 1, 5)
	one, added := p.Cosign(cp, w1.cosign(t, cp))
	if len(added) != 1 || added[0] != "w1.example" {
		t.Fatalf("Cosign added %v", added)
	}
	if _, err := v.OpenWitnessed(one, p); !errors.Is(err, auditlog.ErrNotWitnessed) {
		t.Fatalf("one of two cosignatures: %v", err)
	}
	// A line that does not verify (another witness's key, or cut) is not
	// added.
	stranger := newTestWitness(t, "w2.example")
	if _, added := p.Cosign(one, stranger.cosign(t, cp)); len(added) != 0 {
		t.Fatalf("a cosignature by another key under w2's name was added: %v", added)
	}
	two, _ := p.Cosign(one, w3.cosign(t, cp))
	got, err := v.OpenWitnessed(two, p)
	if err != nil || got.Size != 5 {
		t.Fatalf("two of three cosignatures: %+v %v", got, err)
	}
	if c := p.Cosigners(two); strings.Join(c, ",") != "w1.example,w3.example" {
		t.Fatalf("Cosigners = %v", c)
	}
	if at := p.CosignedAt(two); time.Since(at) > time.Minute || at.IsZero() {
		t.Fatalf("CosignedAt = %v", at)
	}
	// A bad cosignature line under a policy witness's name and key hash is
	// refused, even with the quorum met by others.
	line := w2.cosign(t, cp)
	name, b64, _ := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(string(line), "— "), "\n"), " ")
	sig, _ := base64.StdEncoding.DecodeString(b64)
	sig[len(sig)-1] ^= 1
	bad := fmt.Sprintf("— %s %s\n", name, base64.StdEncoding.EncodeToString(sig))
	if _, err := v.OpenWitnessed(append(bytes.Clone(two), bad...), p); err == nil {
		t.Fatal("a broken cosignature of a policy witness was accepted")
	}
	if _, err := auditlog.ParseWitnessPolicy([]byte("quorum none\n")); err != nil {
		t.Fatalf("quorum none: %v", err)
	}
	for _, bad := range []string{"", "witness a b c\nquorum a\n", "quorum missing\n"} {
		if _, err := auditlog.ParseWitnessPolicy([]byte(bad)); err == nil {
			t.Errorf("policy %q parsed", bad)
		}
	}
}

func TestProofRoundTrip(t *testing.T) {
	l := newTestLog(t, "example.org/log")
	l.add(t, 11)
	v, _ := auditlog.NewVerifier(l.vkey)
	w := newTestWitness(t, "w1.example")
	p, _ := auditlog.ParseWitnessPolicy(policyOf("all", w))
	cp := l.checkpoint(t, 1, 11)
	cosigned, _ := p.Cosign(cp, w.cosign(t, cp))
	pr := auditlog.Proof{Index: 6, Leaf: l.leaves[6], Hashes: l.inclusion(t, 6, 11), Checkpoint: cosigned}
	b, err := pr.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	e, got, err := v.VerifyProof(b, p)
	if err != nil || e.Seq != 7 || got.Size != 11 {
		t.Fatalf("VerifyProof = %+v, %+v, %v", e, got, err)
	}
	// Another leaf at that index, another index, a checkpoint without the
	// quorum: refused.
	for name, mut := range map[string]auditlog.Proof{
		"leaf":     {Index: 6, Leaf: l.leaves[5], Hashes: pr.Hashes, Checkpoint: cosigned},
		"index":    {Index: 5, Leaf: l.leaves[6], Hashes: pr.Hashes, Checkpoint: cosigned},
		"unsigned": {Index: 6, Leaf: l.leaves[6], Hashes: pr.Hashes, Checkpoint: cp},
	} {
		b, _ := mut.Marshal()
		if _, _, err := v.VerifyProof(b, p); err == nil {
			t.Errorf("%s: a wrong proof verified", name)
		}
	}
}
