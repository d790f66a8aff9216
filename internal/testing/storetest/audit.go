package storetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/witnesstest"
)

// Tamper is an attacker with write access to one store's data (the bbolt
// file; the Postgres tables as their owner, triggers disabled).
type Tamper interface {
	// PutLeaf overwrites the stored bytes of entry seq.
	PutLeaf(t testing.TB, seq uint64, leaf []byte)
	// DeleteLeaves removes entries from..to, inclusive.
	DeleteLeaves(t testing.TB, from, to uint64)
	// SetSize makes the store report size entries (bbolt keeps a head;
	// Postgres derives its size from the rows, so it does nothing).
	SetSize(t testing.TB, size uint64)
	// PutNode overwrites (or inserts) a stored tree node.
	PutNode(t testing.TB, level uint8, index uint64, hash []byte)
	// DeleteCheckpoints removes every stored checkpoint above size.
	DeleteCheckpoints(t testing.TB, above uint64)
	// Wipe removes every entry, node, request and checkpoint.
	Wipe(t testing.TB)
	// Pruner is the store as --prune-audit-upto opens it (bbolt: the same
	// store; Postgres: the prune role, since the serving role may not).
	Pruner(t testing.TB) store.Pruner
	// Rollback makes the store what a backup taken at size would restore:
	// every entry, tree node, seal, checkpoint and witnessed checkpoint
	// above size gone.
	Rollback(t testing.TB, size uint64)
	// AppendRaw stores a leaf after the newest entry, as one INSERT (the
	// runtime role's privilege): no tree nodes, no seal.
	AppendRaw(t testing.TB, leaf []byte)
	// PutCheckpointAt stores a note under a size of the attacker's choice.
	PutCheckpointAt(t testing.TB, size uint64, note []byte)
	// ForgePruneMark sets the prune mark to upto, naming record (0: none),
	// deleting nothing.
	ForgePruneMark(t testing.TB, upto, record uint64)
}

func entry(i int, rel string) auditlog.Entry {
	var req auditlog.RequestID
	copy(req[:], fmt.Sprintf("req-%012d", i))
	e := auditlog.New(req, auditlog.SubjectSigner, rel, "/plexsphere.signer.v1.SignerService/Sign", t0.Add(time.Duration(i)*time.Millisecond))
	e.Object, e.Reason, e.Code = auditlog.Object("s", fmt.Sprint("k", i%3)), auditlog.ReasonGranted, "OK"
	return e
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLog is a writer, a checkpoint key, a seal key and a Log over one
// store, anchored by a checkpoint file (and witnesses, when given): a
// signer as it runs, started (Log.Start) before its first entry.
type testLog struct {
	w      *audit.Writer
	log    *audit.Log
	sign   *audit.NoteSigner
	v      *auditlog.Verifier
	vkey   string
	origin string
	sealer *audit.Sealer
	file   string
	policy *auditlog.WitnessPolicy
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	epoch  int
	// clock and maxUnanchored, when set, are the Log's.
	clock         func() time.Time
	maxUnanchored time.Duration
}

// logOption adjusts a testLog before it starts.
type logOption func(*testLog)

// withWitnesses has the log's checkpoints cosigned by ws, all of them.
func withWitnesses(t *testing.T, ws ...*witnesstest.Witness) logOption {
	return func(l *testLog) {
		var b strings.Builder
		var names []string
		for _, w := range ws {
			b.WriteString(w.PolicyLine() + "\n")
			names = append(names, w.Name)
		}
		fmt.Fprintf(&b, "group all-of-them all %s\nquorum all-of-them\n", strings.Join(names, " "))
		p, err := auditlog.ParseWitnessPolicy([]byte(b.String()))
		must(t, err)
		l.policy = p
	}
}

// withoutFile leaves the checkpoint file out.
func withoutFile() logOption { return func(l *testLog) { l.file = "" } }

const testOrigin = "example.org/storetest"

// newKeyPair is a log's checkpoint key and verifier key, before any log.
func newKeyPair(t *testing.T) *testLog {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	vkey, err := note.NewEd25519VerifierKey(testOrigin, pub)
	must(t, err)
	v, err := auditlog.NewVerifier(vkey)
	must(t, err)
	var seal [32]byte
	copy(seal[:], priv.Seed())
	return &testLog{v: v, vkey: vkey, origin: testOrigin, sealer: audit.NewSealer(seal), pub: pub, priv: priv, epoch: 1,
		file: filepath.Join(t.TempDir(), "checkpoints.jsonl")}
}

// witnessLog is the log as a witness is configured with it.
func (l *testLog) witnessLog(epoch int) witnesstest.Log {
	return witnesstest.Log{Origin: auditlog.EpochOrigin(l.origin, epoch), VKey: l.v.EpochVerifierKey(epoch)}
}

func newLog(t *testing.T, s store.Store, opts ...logOption) *testLog {
	t.Helper()
	l := newKeyPair(t)
	return l.open(t, s, opts...)
}

// open starts a signer's writer and Log over s with l's keys: a first
// start, or a restart with nothing in memory.
func (l *testLog) open(t *testing.T, s store.Store, opts ...logOption) *testLog {
	t.Helper()
	for _, o := range opts {
		o(l)
	}
	l.configure(t, s)
	l.log.Start(context.Background())
	return l
}

func (l *testLog) configure(t *testing.T, s store.Store) {
	signer, _, err := audit.NewNoteSigner(auditlog.EpochOrigin(l.origin, l.epoch), l.pub, func(m []byte) ([]byte, error) { return ed25519.Sign(l.priv, m), nil })
	must(t, err)
	l.sign = signer
	l.w = audit.NewWriter(s, audit.WriterOptions{Sealer: l.sealer})
	t.Cleanup(l.w.Close)
	var ws *audit.Witnesses
	if l.policy != nil {
		ws = audit.NewWitnesses(l.policy, 5*time.Second, nil)
	}
	l.log = audit.NewLog(audit.LogConfig{Store: s, Writer: l.w, Signer: signer, Verifier: l.v, Sealer: l.sealer,
		Witnesses: ws, File: l.file, Clock: l.clock, MaxUnanchored: l.maxUnanchored, Log: quiet()})
}

// restart is the same signer started again: a new writer and Log over the
// same store, keys, checkpoint file and witnesses, with nothing in memory.
func (l *testLog) restart(t *testing.T, s store.Store) *audit.Log {
	t.Helper()
	again := *l
	again.open(t, s)
	return again.log
}

// write commits n entries starting at entry number first, one request each.
func (l *testLog) write(t *testing.T, first, n int) {
	t.Helper()
	ctx := context.Background()
	var pend []*audit.Pending
	for i := first; i < first+n; i++ {
		pend = append(pend, l.w.Submit(ctx, audit.LaneAdmitted, entry(i, "sign")))
	}
	for _, p := range pend {
		must(t, p.Wait(ctx))
	}
}

func testAuditAppend(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := newLog(t, s)
	p := l.w.Submit(ctx, audit.LaneAdmitted, entry(1, "connect"), entry(1, "sign"))
	must(t, p.Wait(ctx))
	if c := p.Committed(); c[0].Seq != 1 || c[1].Seq != 2 {
		t.Fatalf("seqs = %d, %d", c[0].Seq, c[1].Seq)
	}
	l.write(t, 2, 40)
	size, err := s.AuditSize(ctx)
	must(t, err)
	if size != 42 || l.w.Head().Size != 42 {
		t.Fatalf("size = %d, writer head %d, want 42", size, l.w.Head().Size)
	}
	leaves, err := s.Leaves(ctx, 0, size)
	must(t, err)
	tree := audit.NewTree()
	for i, leaf := range leaves {
		e, err := auditlog.ParseLeaf(leaf)
		must(t, err)
		if i == 1 && (e.Subject != auditlog.SubjectSigner || e.Relation != "sign" || e.Object != "signing-key:s:k1" || e.Reason != "granted" ||
			e.CaveatContext == nil || len(e.CaveatContext) != 0 || !e.Timestamp.Equal(t0.Add(time.Millisecond)) || e.Timestamp.Location() != time.UTC) {
			t.Fatalf("entry read back = %+v", e)
		}
		h := auditlog.LeafHash(leaf)
		tree.Append(h[:], nil)
	}
	stored, err := audit.TreeAt(ctx, s, size)
	must(t, err)
	if !bytes.Equal(stored.Root(), tree.Root()) || !bytes.Equal(l.w.Head().Root, tree.Root()) {
		t.Fatal("the stored tree, the writer's and the leaves' roots differ")
	}
	if _, err := s.Leaves(ctx, 40, 43); !errors.Is(err, audit.ErrTreeBroken) {
		t.Fatalf("Leaves beyond the log: %v", err)
	}
}

// Requests are found by their id without an index (the id starts with its
// time): in a log of hundreds of requests minted over time, each one, the
// first and the last included; an unknown id is ErrKeyNotFound.
func testFindRequest(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := audit.NewWriter(s, audit.WriterOptions{})
	defer w.Close()
	var ids []auditlog.RequestID
	var seqs []uint64
	for i := range 300 {
		req := auditlog.NewRequestID()
		e := entry(i, "sign")
		e.RequestID = req
		adm := e
		adm.Relation = auditlog.RelationConnect
		p := w.Submit(ctx, audit.LaneAdmitted, adm, e)
		must(t, p.Wait(ctx))
		ids, seqs = append(ids, req), append(seqs, p.Committed()[0].Seq)
	}
	for _, i := range []int{0, 1, 150, 298, 299} {
		seq, err := audit.FindRequest(ctx, s, ids[i])
		must(t, err)
		if seq != seqs[i] {
			t.Fatalf("FindRequest(%d) = %d, want %d", i, seq, seqs[i])
		}
	}
	if _, err := audit.FindRequest(ctx, s, auditlog.NewRequestID()); !errors.Is(err, signerr.ErrKeyNotFound) {
		t.Fatalf("unknown request: %v", err)
	}
	var old auditlog.RequestID // the epoch: before every entry
	if _, err := audit.FindRequest(ctx, s, old); !errors.Is(err, signerr.ErrKeyNotFound) {
		t.Fatalf("an id from before the log: %v", err)
	}
}

func testAuditHeadMoved(t *testing.T, s store.Store) {
	ctx := context.Background()
	leaf, err := auditlog.AppendLeaf(nil, ptr(entry(1, "sign")))
	must(t, err)
	must(t, s.AppendAudit(ctx, &audit.Batch{Start: 1, Leaves: [][]byte{leaf}}))
	for _, start := range []uint64{1, 3} {
		if err := s.AppendAudit(ctx, &audit.Batch{Start: start, Leaves: [][]byte{leaf}}); !errors.Is(err, audit.ErrHeadMoved) {
			t.Fatalf("append at %d onto a log of 1: %v, want ErrHeadMoved", start, err)
		}
	}
	if size, _ := s.AuditSize(ctx); size != 1 {
		t.Fatalf("size after refused appends = %d", size)
	}
}

func ptr[T any](v T) *T { return &v }

func testAuditQuery(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := newLog(t, s)
	var es []auditlog.Entry
	for i := range 10 {
		rel := "sign"
		if i%2 == 1 {
			rel = "public_key"
		}
		e := entry(i, rel)
		if i == 4 {
			e.Reason = auditlog.ReasonCaveatViolation
		}
		es = append(es, e)
	}
	must(t, l.w.Write(ctx, es...))
	got, err := store.ListAudit(ctx, s, store.AuditQuery{Relation: "public_key"})
	must(t, err)
	if len(got) != 5 {
		t.Fatalf("relation filter: %d", len(got))
	}
	got, err = store.ListAudit(ctx, s, store.AuditQuery{AfterSeq: 7})
	must(t, err)
	if len(got) != 3 || got[0].Seq != 8 {
		t.Fatalf("after seq 7: %d entries", len(got))
	}
	got, err = store.ListAudit(ctx, s, store.AuditQuery{Limit: 2, Reason: auditlog.ReasonGranted})
	must(t, err)
	if len(got) != 2 || got[1].Seq != 2 {
		t.Fatalf("limit: %+v", got)
	}
	got, err = store.ListAudit(ctx, s, store.AuditQuery{ObjectPrefix: "signing-key:s:k1", Reason: auditlog.ReasonCaveatViolation})
	must(t, err)
	if len(got) != 1 || got[0].Seq != 5 {
		t.Fatalf("object prefix + reason: %+v", got)
	}
}

// Two writers on one store stand for two replicas: they race for the same
// seqs, the loser reloads the tree, and the log stays one gapless tree in
// which every commit carries a seal that starts where the one before ended
// (a replica's Log checks the other's commits).
func testAuditConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := newLog(t, s)
	w1 := audit.NewWriter(s, audit.WriterOptions{MaxBatch: 8, Sealer: l.sealer})
	w2 := audit.NewWriter(s, audit.WriterOptions{MaxBatch: 8, Sealer: l.sealer})
	defer w1.Close()
	defer w2.Close()
	const per = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*per)
	for wi, w := range []*audit.Writer{w1, w2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pend []*audit.Pending
			for i := range per {
				pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, entry(wi*1000+i, "sign")))
			}
			for _, p := range pend {
				errs <- p.Wait(ctx)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	size, err := s.AuditSize(ctx)
	must(t, err)
	if size != 2*per {
		t.Fatalf("%d entries, want %d", size, 2*per)
	}
	leaves, err := s.Leaves(ctx, 0, size)
	must(t, err)
	seen := map[auditlog.RequestID]bool{}
	r := audit.NewReplay(audit.NewTree(), nil, s.Nodes)
	for i, leaf := range leaves {
		e, err := auditlog.ParseLeaf(leaf)
		must(t, err)
		if seen[e.RequestID] {
			t.Fatalf("entry %v committed twice", e.RequestID)
		}
		seen[e.RequestID] = true
		must(t, r.Add(ctx, uint64(i+1), leaf))
	}
	must(t, r.Finish(ctx))
	cp, err := l.log.Checkpoint(ctx)
	must(t, err)
	if cp.Size != 2*per {
		t.Fatalf("the Log checkpointed size %d, want %d", cp.Size, 2*per)
	}
}

func testCheckpoints(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := newLog(t, s)
	first, err := l.log.Checkpoint(ctx)
	must(t, err)
	if first.Size != 0 || !bytes.Equal(first.Root, audit.EmptyRoot()) {
		t.Fatalf("checkpoint of the empty log: size %d", first.Size)
	}
	l.write(t, 0, 20)
	cp, err := l.log.Checkpoint(ctx)
	must(t, err)
	if cp.Size != 20 {
		t.Fatalf("checkpoint size %d, want 20", cp.Size)
	}
	// A replica signing the same size is not an error, and keeps one copy.
	must(t, s.PutCheckpoint(ctx, cp.Size, cp.Note))
	latest, err := s.LatestCheckpoint(ctx)
	must(t, err)
	if !bytes.Equal(latest, cp.Note) {
		t.Fatal("LatestCheckpoint is not the newest")
	}
	all, err := s.Checkpoints(ctx, 0, 10)
	must(t, err)
	if len(all) != 1 {
		t.Fatalf("Checkpoints(after 0) = %d notes, want 1 (size 20; the empty one is size 0)", len(all))
	}
	opened, err := l.v.Open(latest)
	must(t, err)
	if opened.Size != 20 || !bytes.Equal(opened.Root, l.w.Head().Root) {
		t.Fatal("the stored checkpoint does not sign the writer's head")
	}
}

func testLogKey(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.LogKey(ctx); !errors.Is(err, signerr.ErrKeyNotFound) {
		t.Fatalf("LogKey of a new store: %v", err)
	}
	k := newKey("log1", store.LogKeyScope, store.Active, t0)
	got, err := s.CreateLogKey(ctx, k)
	must(t, err)
	if got.ID != "log1" {
		t.Fatalf("CreateLogKey = %q", got.ID)
	}
	// A second replica racing to create one gets the first.
	got, err = s.CreateLogKey(ctx, newKey("log2", store.LogKeyScope, store.Active, t0))
	must(t, err)
	if got.ID != "log1" || !bytes.Equal(got.Public, k.Public) || !bytes.Equal(got.Handle, k.Handle) {
		t.Fatalf("second CreateLogKey = %+v", got)
	}
	keys, err := s.Keys(ctx, "")
	must(t, err)
	if len(keys) != 0 {
		t.Fatalf("the log key is listed with the signing keys: %+v", keys)
	}
}

func testProofs(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 37)
	old, err := l.log.Checkpoint(ctx)
	must(t, err)
	l.write(t, 100, 70)
	cp, err := l.log.Checkpoint(ctx)
	must(t, err)
	for _, seq := range []uint64{1, 2, 16, 17, 33, 37, 64, 100, 107} {
		leaves, err := s.Leaves(ctx, seq-1, seq)
		must(t, err)
		p, err := audit.InclusionProof(ctx, s, seq-1, cp.Size)
		must(t, err)
		if err := auditlog.VerifyInclusion(cp, seq-1, leaves[0], p); err != nil {
			t.Fatalf("inclusion of %d: %v", seq, err)
		}
		if err := auditlog.VerifyInclusion(cp, seq%cp.Size, leaves[0], p); err == nil && seq%cp.Size != seq-1 {
			t.Fatalf("the proof of %d verifies at another index", seq)
		}
	}
	p, err := audit.ConsistencyProof(ctx, s, old.Size, cp.Size)
	must(t, err)
	if err := auditlog.VerifyConsistency(old, cp, p); err != nil {
		t.Fatal(err)
	}
	bad := old
	bad.Root = bytes.Clone(cp.Root)
	if auditlog.VerifyConsistency(bad, cp, p) == nil {
		t.Fatal("consistency verified from a wrong old root")
	}
}

// prune records a prune up to upto in the log (its root computed from the
// entries), checkpoints it and prunes as the owner; it returns the record's
// seq.
func (l *testLog) prune(t *testing.T, s store.Store, pr store.Pruner, upto uint64) uint64 {
	t.Helper()
	ctx := context.Background()
	pruned, err := s.PrunedUpTo(ctx)
	must(t, err)
	start, err := audit.TreeAt(ctx, s, pruned)
	must(t, err)
	leaves, err := s.Leaves(ctx, pruned, upto)
	must(t, err)
	for _, leaf := range leaves {
		h := auditlog.LeafHash(leaf)
		start.Append(h[:], nil)
	}
	cp := checkpoint(t, l)
	seq, err := l.log.RecordPrune(ctx, auditlog.PruneRecord{UpTo: upto, RootAtUpTo: start.Root(), ExportFrom: pruned + 1, ExportTo: upto,
		ExportCheckpoint: string(cp.Note), ExportSHA256: make([]byte, 32), Reason: "storetest"})
	must(t, err)
	checkpoint(t, l)
	must(t, pr.PruneAudit(ctx, upto, seq))
	return seq
}

func testPrune(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	pr := x.Pruner(t)
	l := newLog(t, s)
	l.write(t, 0, 50)
	cp, err := l.log.Checkpoint(ctx)
	must(t, err)
	for _, bad := range []struct{ upto, record uint64 }{{0, 40}, {17, 40}, {64, 40}, {32, 20}, {32, 51}} {
		if err := pr.PruneAudit(ctx, bad.upto, bad.record); err == nil {
			t.Fatalf("prune up to %d (record %d) accepted", bad.upto, bad.record)
		}
	}
	record := l.prune(t, s, pr, 32)
	if record != 51 {
		t.Fatalf("the prune record is entry %d, want 51", record)
	}
	if err := pr.PruneAudit(ctx, 32, record); err == nil {
		t.Fatal("pruning the same range twice accepted")
	}
	if n, _ := s.PrunedUpTo(ctx); n != 32 {
		t.Fatalf("PrunedUpTo = %d", n)
	}
	if n, _ := s.PruneRecord(ctx); n != 51 {
		t.Fatalf("PruneRecord = %d", n)
	}
	if _, err := s.Leaves(ctx, 10, 11); !errors.Is(err, audit.ErrPruned) {
		t.Fatalf("a pruned entry: %v", err)
	}
	// Later entries still prove, the tree still extends, the log still
	// checks and replays (its mark names its record).
	leaves, err := s.Leaves(ctx, 40, 41)
	must(t, err)
	p, err := audit.InclusionProof(ctx, s, 40, cp.Size)
	must(t, err)
	must(t, auditlog.VerifyInclusion(cp, 40, leaves[0], p))
	l.write(t, 100, 5)
	must(t, l.log.Check(ctx))
	must(t, replay(t, s, l.v))
	if size, _ := s.AuditSize(ctx); size != 56 {
		t.Fatalf("size after prune and append = %d", size)
	}
	got, err := store.ListAudit(ctx, s, store.AuditQuery{})
	must(t, err)
	if len(got) != 24 || got[0].Seq != 33 {
		t.Fatalf("ListAudit after prune: %d entries from %d", len(got), got[0].Seq)
	}
	if seals, _ := s.Seals(ctx, 0, 32); len(seals) != 0 {
		t.Fatalf("%d seals of pruned commits kept", len(seals))
	}
}

// The attacks: each with write access to the store after entries were
// committed and a checkpoint signed. Each must be caught by the signer's
// own check (the Log, which then refuses to append) and by a replay of the
// entries against the signed checkpoints (signerctl audit verify).
var tampers = []struct {
	name string
	fn   func(t *testing.T, s store.Store, x Tamper)
}{
	{"EntryBytesChanged", tamperEntry},
	{"MiddleEntryDeleted", tamperMiddle},
	{"NewestEntryDeleted", tamperNewest},
	{"TailDeletedHeadRewound", tamperTail},
	{"NodeRewritten", tamperNode},
	{"WholeLogRewritten", tamperRewrite},
	{"CheckpointByAnotherKey", tamperForeignCheckpoint},
}

// setup writes 40 entries, signs a checkpoint, then 10 more.
func setup(t *testing.T, s store.Store) (*testLog, auditlog.Checkpoint) {
	l := newLog(t, s)
	l.write(t, 0, 40)
	cp, err := l.log.Checkpoint(context.Background())
	must(t, err)
	l.write(t, 40, 10)
	return l, cp
}

// caught asserts the signer's sweep breaks the log (and the writer then
// refuses), and the replay's error names want.
func caught(t *testing.T, s store.Store, l *testLog, want string) {
	t.Helper()
	ctx := context.Background()
	if err := l.log.Sweep(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("Log.Sweep after tampering: %v, want ErrAuditLogBroken", err)
	}
	if l.log.Broken() == nil {
		t.Fatal("the log is not marked broken")
	}
	if err := l.w.Write(ctx, entry(999, "sign")); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("the writer appended to a broken log: %v", err)
	}
	if err := replay(t, s, l.v); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("replay: %v, want an error containing %q", err, want)
	}
}

// replay checks every stored entry against the stored tree and checkpoints,
// as AuditService.Verify and the signer's sweep do.
func replay(t *testing.T, s store.Store, v *auditlog.Verifier) error {
	t.Helper()
	_, err := audit.ReplayStore(context.Background(), s, v)
	return err
}

func tamperEntry(t *testing.T, s store.Store, x Tamper) {
	l, _ := setup(t, s)
	e := entry(20, "sign")
	e.Reason = auditlog.ReasonCaveatViolation // a granted call rewritten as refused
	leaf, err := auditlog.AppendLeaf(nil, &e)
	must(t, err)
	x.PutLeaf(t, 21, leaf)
	caught(t, s, l, "entries 17..32 do not match the stored tree node")
}

func tamperMiddle(t *testing.T, s store.Store, x Tamper) {
	l, _ := setup(t, s)
	x.DeleteLeaves(t, 25, 25)
	caught(t, s, l, "entry 25 is missing")
}

func tamperNewest(t *testing.T, s store.Store, x Tamper) {
	l, cp := setup(t, s)
	// Remove everything after the checkpoint and its newest entry.
	x.DeleteLeaves(t, cp.Size, 50)
	x.SetSize(t, cp.Size-1)
	if err := l.log.Check(context.Background()); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("Log.Check of a truncated log: %v", err)
	}
	caught(t, s, l, "entries after seq 39 were removed")
}

func tamperTail(t *testing.T, s store.Store, x Tamper) {
	l, cp := setup(t, s)
	x.DeleteLeaves(t, 31, 50)
	x.SetSize(t, 30)
	if err := l.log.Check(context.Background()); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("Log.Check of a rewound log: %v", err)
	}
	caught(t, s, l, fmt.Sprintf("a checkpoint was signed at size %d", cp.Size))
}

func tamperNode(t *testing.T, s store.Store, x Tamper) {
	l, _ := setup(t, s)
	x.PutNode(t, 4, 1, bytes.Repeat([]byte{7}, 32))
	caught(t, s, l, "entries 17..32 do not match the stored tree node")
}

// The whole log replaced by a consistent forgery, checkpoints deleted: the
// store is internally perfect. The signer's memory of its last checkpoint,
// a checkpoint an auditor saved, and the checkpoint file all expose it.
func tamperRewrite(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l, saved := setup(t, s)
	x.Wipe(t)
	forger := audit.NewWriter(s, audit.WriterOptions{})
	var forged []auditlog.Entry
	for i := range 60 {
		e := entry(i, "sign")
		e.Reason = auditlog.ReasonCaveatViolation
		forged = append(forged, e)
	}
	must(t, forger.Write(ctx, forged...))
	forger.Close()
	if err := l.log.Check(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("the signer's own check: %v", err)
	}
	// An auditor with the saved checkpoint: the consistency proof fails.
	latest := audit.NewTree()
	leaves, err := s.Leaves(ctx, 0, 60)
	must(t, err)
	for _, leaf := range leaves {
		h := auditlog.LeafHash(leaf)
		latest.Append(h[:], nil)
	}
	p, err := audit.ConsistencyProof(ctx, s, saved.Size, 60)
	must(t, err)
	if err := auditlog.VerifyConsistency(saved, auditlog.Checkpoint{Size: 60, Root: latest.Root()}, p); err == nil {
		t.Fatal("a rewritten log proved consistent with a checkpoint saved before")
	}
	// The signer restarted, nothing in memory: its checkpoint file still
	// holds the checkpoint the forgery does not extend.
	if err := l.restart(t, s).Check(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("a restarted signer with its checkpoint file: %v", err)
	}
}

func tamperForeignCheckpoint(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l, _ := setup(t, s)
	x.DeleteCheckpoints(t, 0)
	mallory := newKeyPair(t)
	mallory.configure(t, s)
	forged, err := audit.SignCheckpoint(mallory.sign, 50, l.w.Head().Root)
	must(t, err)
	// Mallory's checkpoint names this log's origin but another key.
	must(t, s.PutCheckpoint(ctx, forged.Size, forged.Note))
	if _, err := l.v.Open(forged.Note); !errors.Is(err, auditlog.ErrCheckpoint) {
		t.Fatalf("Verifier.Open of a foreign checkpoint: %v", err)
	}
	if err := l.restart(t, s).Check(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("a restarted signer trusting the store's newest checkpoint: %v", err)
	}
	if err := replay(t, s, l.v); err == nil || !strings.Contains(err.Error(), "a stored checkpoint does not verify") {
		t.Fatalf("replay: %v, want the foreign checkpoint refused", err)
	}
}
