package witnesstest_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/formats/witness"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/internal/testing/witnesstest"
)

// tlog is a tiny in-memory log: leaf hashes, RFC 6962 roots and consistency
// proofs from compact ranges, checkpoints signed as notes.
type tlog struct {
	origin string
	signer note.Signer
	vkey   string
	leaves [][]byte
}

func newLog(t *testing.T, origin, keyName string, n int, salt string) *tlog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, keyName)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l := &tlog{origin: origin, signer: s, vkey: vkey}
	l.grow(n, salt)
	return l
}

func (l *tlog) grow(n int, salt string) {
	for range n {
		l.leaves = append(l.leaves, rfc6962.DefaultHasher.HashLeaf(fmt.Appendf(nil, "%s leaf %d", salt, len(l.leaves))))
	}
}

func (l *tlog) wlog() witnesstest.Log { return witnesstest.Log{Origin: l.origin, VKey: l.vkey} }

var rf = &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// hash is the root of leaves [begin, end): the tree's root if begin is 0,
// else a perfect subtree (a proof node), the one hash of its compact range.
func (l *tlog) hash(t *testing.T, begin, end uint64) []byte {
	t.Helper()
	r := rf.NewEmptyRange(begin)
	for _, h := range l.leaves[begin:end] {
		if err := r.Append(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	if begin > 0 {
		if len(r.Hashes()) != 1 {
			t.Fatalf("test log: [%d, %d) is not a perfect subtree", begin, end)
		}
		return r.Hashes()[0]
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatal(err)
	}
	if root == nil { // the empty tree
		root = rfc6962.DefaultHasher.EmptyRoot()
	}
	return root
}

func (l *tlog) consistency(t *testing.T, size1, size2 uint64) [][]byte {
	t.Helper()
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		t.Fatal(err)
	}
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		b, e := id.Coverage()
		hashes[i] = l.hash(t, b, e)
	}
	p, err := nodes.Rehash(hashes, rfc6962.DefaultHasher.HashChildren)
	if err != nil {
		t.Fatal(err)
	}
	// Check our own proof with the library before the witness sees it.
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, size1, size2, p, l.hash(t, 0, size1), l.hash(t, 0, size2)); size1 > 0 && err != nil {
		t.Fatalf("test log: own consistency proof %d→%d: %v", size1, size2, err)
	}
	return p
}

// checkpoint is the signed note of the tree of the first size leaves.
func (l *tlog) checkpoint(t *testing.T, size uint64) []byte {
	t.Helper()
	cp := log.Checkpoint{Origin: l.origin, Size: size, Hash: l.hash(t, 0, size)}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, l.signer)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// body is an add-checkpoint request body (c2sp.org/tlog-witness).
func body(old uint64, p [][]byte, cp []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range p {
		b.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	b.WriteString("\n")
	b.Write(cp)
	return b.Bytes()
}

type answer struct {
	status      int
	contentType string
	body        string
}

func (a answer) String() string {
	return fmt.Sprintf("%d Content-Type=%q body=%q", a.status, a.contentType, a.body)
}

func addCheckpoint(t *testing.T, w *witnesstest.Witness, reqBody []byte) answer {
	t.Helper()
	resp, err := http.Post(w.URL+"/add-checkpoint", "text/plain", bytes.NewReader(reqBody))
	if err != nil {
		t.Fatalf("add-checkpoint: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), string(b)}
}

// expect checks an answer's status, Content-Type and body.
func expect(t *testing.T, what string, got answer, status int, contentType, body string) {
	t.Helper()
	if got.status != status || got.contentType != contentType || got.body != body {
		t.Errorf("%s: got %v, want %d Content-Type=%q body=%q", what, got, status, contentType, body)
	} else {
		t.Logf("%s: %v", what, got)
	}
}

// cosigned checks a 200 answer: one cosignature line by the witness that
// verifies over cp, and returns cp with it appended.
func cosigned(t *testing.T, what string, w *witnesstest.Witness, cp []byte, a answer) []byte {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("%s: got %v, want 200 and a cosignature", what, a)
	}
	t.Logf("%s: %d Content-Type=%q, %d byte cosignature", what, a.status, a.contentType, len(a.body))
	if a.contentType != sniffed {
		t.Errorf("%s: Content-Type %q, want Go's sniffed text/plain; charset=utf-8", what, a.contentType)
	}
	if !strings.HasPrefix(a.body, "— "+w.Name+" ") || strings.Count(a.body, "\n") != 1 {
		t.Fatalf("%s: body %q is not one signature line by %s", what, a.body, w.Name)
	}
	v, err := fnote.NewVerifierForCosignatureV1(w.VKey)
	if err != nil {
		t.Fatal(err)
	}
	full := append(append([]byte(nil), cp...), a.body...)
	n, err := note.Open(full, note.VerifierList(v))
	if err != nil {
		t.Fatalf("%s: cosignature does not verify with %s: %v\n%s", what, w.VKey, err, full)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != w.Name {
		t.Fatalf("%s: verified signatures %+v", what, n.Sigs)
	}
	ts, err := fnote.CoSigV1Timestamp(n.Sigs[0])
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(ts); d < -time.Minute || d > time.Minute {
		t.Errorf("%s: cosignature timestamp %v is %v away from now", what, ts, d)
	}
	return full
}

const (
	sizeType = "text/x.tlog.size"
	sniffed  = "text/plain; charset=utf-8"
)

func TestWitness(t *testing.T) {
	a := newLog(t, "example.org/log/a", "example.org/log/a", 7, "a")
	b := newLog(t, "example.org/log/b", "example.org/log/b", 3, "b")
	c := newLog(t, "example.org/log/c", "example.org/log/c", 2, "c")
	// fork has log a's key and origin and its first 3 leaves, then differs.
	fork := &tlog{origin: a.origin, signer: a.signer, vkey: a.vkey, leaves: append([][]byte(nil), a.leaves[:3]...)}
	fork.grow(4, "fork")

	w := witnesstest.Start(t, "witness.example/test", a.wlog(), b.wlog())

	// The policy line parses, and names the add-checkpoint endpoint and the key.
	policy, err := witness.ParsePolicy([]byte(w.PolicyLine() + "\nquorum " + w.Name + "\n"))
	if err != nil {
		t.Fatalf("ParsePolicy(%q): %v", w.PolicyLine(), err)
	}
	eps := policy.Endpoints()
	if v, ok := eps[w.URL+"/add-checkpoint"]; len(eps) != 1 || !ok || v.Name() != w.Name {
		t.Fatalf("policy endpoints %v", eps)
	}

	// a. The first checkpoint of a log, old 0: cosigned (trust on first use).
	cp3 := a.checkpoint(t, 3)
	full := cosigned(t, "a. first checkpoint, old 0", w, cp3, addCheckpoint(t, w, body(0, nil, cp3)))
	if !policy.Satisfied(full) {
		t.Errorf("policy %q not satisfied by the cosigned checkpoint", w.PolicyLine())
	}

	// a'. The first checkpoint of a log with a non-zero old size: the spec
	// wants 409 and "0"; this omniwitness trusts it on first use whatever
	// old says (its TOFU branch does not look at old).
	cpB := b.checkpoint(t, 3)
	cosigned(t, "a'. first checkpoint, old 2", w, cpB, addCheckpoint(t, w, body(2, b.consistency(t, 2, 3), cpB)))

	// b. A wrong old size: 409 and the witness's size.
	cp5 := a.checkpoint(t, 5)
	expect(t, "b. wrong old size (2, witness has 3)", addCheckpoint(t, w, body(2, a.consistency(t, 2, 5), cp5)),
		http.StatusConflict, sizeType, "3\n")

	// c. A correct consistency proof 3 → 5: cosigned.
	cosigned(t, "c. consistent 3→5", w, cp5, addCheckpoint(t, w, body(3, a.consistency(t, 3, 5), cp5)))

	// d. Forks: a different tree at a larger size with a proof from that
	// tree; the same with a tampered proof of the real tree; a different
	// tree at the same size.
	fork7 := fork.checkpoint(t, 7)
	expect(t, "d. fork at a larger size (7)", addCheckpoint(t, w, body(5, fork.consistency(t, 5, 7), fork7)),
		http.StatusUnprocessableEntity, "", "")
	bad := a.consistency(t, 5, 7)
	bad[0] = append([]byte(nil), bad[0]...)
	bad[0][0] ^= 1
	expect(t, "d. tampered consistency proof 5→7", addCheckpoint(t, w, body(5, bad, a.checkpoint(t, 7))),
		http.StatusUnprocessableEntity, "", "")
	expect(t, "d. fork at the same size (5)", addCheckpoint(t, w, body(5, nil, fork.checkpoint(t, 5))),
		http.StatusUnprocessableEntity, "", "")

	// e. The checkpoint the witness already has (old = size, no proof):
	// cosigned again, with a fresh timestamp.
	cosigned(t, "e. same checkpoint again", w, cp5, addCheckpoint(t, w, body(5, nil, cp5)))

	// f. A checkpoint smaller than the witness's: with the witness's size
	// as old, old > checkpoint size (400); with its own size as old, 409.
	expect(t, "f. smaller checkpoint (3), old 5", addCheckpoint(t, w, body(5, nil, cp3)),
		http.StatusBadRequest, "", "")
	expect(t, "f. smaller checkpoint (3), old 3", addCheckpoint(t, w, body(3, nil, cp3)),
		http.StatusConflict, sizeType, "5\n")

	// g. A log the witness does not know: the spec says 404; this
	// omniwitness with a sqlite --db_file answers 500, empty body (its
	// sqlite LogConfig returns sql.ErrNoRows as an error instead of "not
	// found"; the in-memory one would give 404).
	cpC := c.checkpoint(t, 2)
	expect(t, "g. unknown origin", addCheckpoint(t, w, body(0, nil, cpC)), http.StatusInternalServerError, "", "")
	// g. A's origin and key name, signed by another key: the spec says 403;
	// this omniwitness answers 500 (formats/log.ParseCheckpoint's error does
	// not wrap witness.ErrNoValidSignature), with an empty body.
	other := newLog(t, a.origin, a.origin, 0, "")
	other.leaves = a.leaves
	expect(t, "g. signed by another key", addCheckpoint(t, w, body(5, a.consistency(t, 5, 7), other.checkpoint(t, 7))),
		http.StatusInternalServerError, "", "")
	// g. The right key's signature line over other text (size 7 → 6): 500.
	cp7 := a.checkpoint(t, 7)
	text, sigs, _ := bytes.Cut(cp7, []byte("\n\n"))
	forged := append(bytes.Replace(text, []byte("\n7\n"), []byte("\n6\n"), 1), append([]byte("\n\n"), sigs...)...)
	expect(t, "g. right key, bad signature", addCheckpoint(t, w, body(5, a.consistency(t, 5, 6), forged)),
		http.StatusInternalServerError, "", "")
	expect(t, "g. not a request body", addCheckpoint(t, w, []byte("hello\n")), http.StatusBadRequest, "", "")

	// h. A restart keeps the state: 5 is still the latest, 3 is refused,
	// and 5 → 7 goes on.
	w.Restart(t)
	// The first run's output is complete once it has exited (the process's
	// output is copied asynchronously while it runs).
	for _, l := range []string{
		"INCONSISTENT CHECKPOINTS!",         // d. the same-size fork
		"sql: no rows in result set",        // g. why the unknown origin got 500
		"note has no verifiable signatures", // g. another key
	} {
		if !strings.Contains(w.Logs(), l) {
			t.Errorf("the witness did not log %q", l)
		}
	}
	expect(t, "h. after restart, old 3", addCheckpoint(t, w, body(3, nil, cp3)), http.StatusConflict, sizeType, "5\n")
	cosigned(t, "h. after restart, consistent 5→7", w, cp7, addCheckpoint(t, w, body(5, a.consistency(t, 5, 7), cp7)))

	// AddLogs: c becomes known, a keeps its state across that restart too.
	w.AddLogs(t, c.wlog())
	cosigned(t, "h. after AddLogs, new log c", w, cpC, addCheckpoint(t, w, body(0, nil, cpC)))
	expect(t, "h. after AddLogs, a old 5", addCheckpoint(t, w, body(5, nil, cp5)), http.StatusConflict, sizeType, "7\n")
}
