package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/witnesstest"
)

// The attacks a store writer (or an operator restoring a backup) can make
// on a history that looks whole to the store itself, and what catches each
// outside the store: the checkpoint file, real witnesses (omniwitness,
// C2SP tlog-witness), the writer's memory of its own commits, and the
// seals. Each was shown to succeed before the anchors existed.
var anchorAttacks = []struct {
	name string
	fn   func(t *testing.T, s store.Store, x Tamper)
}{
	{"RollbackCaughtByCheckpointFile", rollbackCaughtByFile},
	{"RollbackCaughtByAnotherReplicasFile", rollbackCaughtByDirectory},
	{"RollbackCaughtByWitness", rollbackCaughtByWitness},
	{"ForkCaughtByWitness", forkCaughtByWitness},
	{"TruncationCaughtByTheWriter", truncationCaughtByWriter},
	{"ACommitDuringTheCheckIsNoTruncation", commitDuringTheCheck},
	{"CheckpointFileUnreadableOrGone", checkpointFileGone},
	{"InsertedEntryHasNoSeal", insertedEntryHasNoSeal},
	{"InsertedEntryBeforeACommit", insertedEntryBeforeACommit},
	{"CheckpointReplayedUnderALargerSize", checkpointReplayed},
	{"RestoreIsANewEpoch", restoreIsANewEpoch},
	{"ForgedPruneMark", forgedPruneMark},
	{"PruneMarkNamingAnotherEntry", pruneMarkNamingAnotherEntry},
	{"PruneRecordForgedByTheStore", pruneRecordForged},
	{"WitnessOutageIsBounded", witnessOutageIsBounded},
}

func checkpoint(t *testing.T, l *testLog) auditlog.Checkpoint {
	t.Helper()
	cp, err := l.log.Checkpoint(context.Background())
	must(t, err)
	return cp
}

// wantBroken asserts err breaks the log and names each of want.
func wantBroken(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("%s: %v, want the log broken", what, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: %v, want it to say %q", what, err, w)
		}
	}
}

// refuses asserts the writer appends nothing.
func refuses(t *testing.T, l *testLog) {
	t.Helper()
	if err := l.w.Write(context.Background(), entry(999, "sign")); err == nil {
		t.Fatal("the writer appended to a log it should refuse")
	}
}

// A backup taken at size 21 restored after the signer checkpointed 41: a
// restarted signer finds its checkpoint file ahead of the store.
func rollbackCaughtByFile(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 21)
	checkpoint(t, l)
	l.write(t, 21, 20)
	if cp := checkpoint(t, l); cp.Size != 41 {
		t.Fatalf("checkpoint at %d", cp.Size)
	}
	x.Rollback(t, 21)
	again := l.restart(t, s)
	wantBroken(t, "a restarted signer over the restored store", again.Check(ctx), "holds 21 entries", "size 41")
	if again.Broken() == nil {
		t.Fatal("the restarted signer does not refuse")
	}
}

// The checkpoint file as a directory shared by replicas: the checkpoint
// that catches the restore is in the file of a pod that is gone (a
// Deployment's replacement has another name).
func rollbackCaughtByDirectory(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newKeyPair(t)
	l.file = t.TempDir()
	l.open(t, s)
	l.write(t, 0, 21)
	checkpoint(t, l)
	l.write(t, 21, 20)
	checkpoint(t, l)
	files, err := filepath.Glob(filepath.Join(l.file, "*.jsonl"))
	must(t, err)
	if len(files) != 1 {
		t.Fatalf("files in the checkpoint directory: %v", files)
	}
	must(t, os.Rename(files[0], filepath.Join(l.file, "signer-7d9f8-gone.jsonl")))
	x.Rollback(t, 21)
	wantBroken(t, "a new replica over the restored store", l.restart(t, s).Check(ctx), "holds 21 entries", "size 41")
}

// The same restore seen by a real witness alone (no checkpoint file): the
// witness cosigned 41 and says so; the signer refuses and names both sizes.
func rollbackCaughtByWitness(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newKeyPair(t)
	w := witnesstest.Start(t, "w1.example", l.witnessLog(1))
	l.open(t, s, withoutFile(), withWitnesses(t, w))
	l.write(t, 0, 21)
	checkpoint(t, l)
	l.write(t, 21, 20)
	checkpoint(t, l)
	if got := l.log.Witnessed(); got.Size != 41 {
		t.Fatalf("witnessed size %d, want 41", got.Size)
	}
	x.Rollback(t, 21)
	again := l.restart(t, s)
	wantBroken(t, "a restarted signer over the restored store", again.Check(ctx), "witness w1.example cosigned size 41", "holds 21 entries")
}

// The restored signer goes on and signs 20 other entries: a second
// checkpoint at size 41 with another root (equivocation). The witness
// refuses to cosign it, and the signer refuses to serve.
func forkCaughtByWitness(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newKeyPair(t)
	w := witnesstest.Start(t, "w1.example", l.witnessLog(1))
	l.open(t, s, withoutFile(), withWitnesses(t, w))
	l.write(t, 0, 21)
	checkpoint(t, l)
	l.write(t, 21, 20)
	first := checkpoint(t, l)
	x.Rollback(t, 21)
	// The store's owner has the log continue without the signer's
	// anchors: 20 other entries, sealed as a replica would (the seal key
	// is the signer's), so only what the witness remembers differs.
	forger := audit.NewWriter(s, audit.WriterOptions{Sealer: l.sealer})
	var es []auditlog.Entry
	for i := range 20 {
		es = append(es, entry(500+i, "sign"))
	}
	must(t, forger.Write(ctx, es...))
	forger.Close()
	again := l.restart(t, s)
	err := again.Check(ctx)
	wantBroken(t, "the forked log", err, "witness w1.example cosigned another tree at size 41")
	if got := again.Latest(); got.Size == 41 && !bytes.Equal(got.Root, first.Root) && again.Witnessed().Size == 41 {
		t.Fatal("the fork was witnessed")
	}
}

// The newest entries deleted and the size rewound while the signer runs:
// its writer remembers what it committed. The check refuses, never signs
// the shortened log, never clears the writer's refusal, and leaves the
// writer's head in the checkpoint file, so a restart refuses too.
func truncationCaughtByWriter(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 30)
	checkpoint(t, l)
	l.write(t, 30, 5) // not yet checkpointed: only the writer knows them
	x.DeleteLeaves(t, 31, 35)
	x.SetSize(t, 30)
	wantBroken(t, "the check after the newest entries vanished", l.log.Check(ctx), "holds 30 entries, this signer committed 35")
	for range 2 {
		wantBroken(t, "a later check", l.log.Check(ctx), "this signer committed 35")
	}
	refuses(t, l)
	if cp := l.log.Latest(); cp.Size != 30 {
		t.Fatalf("a checkpoint over the shortened log: size %d", cp.Size)
	}
	wantBroken(t, "a restart", l.restart(t, s).Check(ctx), "holds 30 entries", "size 35")
}

// The writer's check is no false alarm: a commit of this signer's that
// lands while a check reads the store's size (replicas sign all the time)
// is no entry removed. Seen on the kind e2e before the check read the
// writer's head first: "the store holds 9795 entries, this signer
// committed 9797", and the replica refused every RPC for good.
func commitDuringTheCheck(t *testing.T, s store.Store, _ Tamper) {
	ctx := context.Background()
	r := &commitAfterSize{Store: s}
	l := newLog(t, r)
	l.write(t, 0, 10)
	checkpoint(t, l)
	// The store's size is read (10), then 3 more entries of this writer
	// commit, then the check goes on.
	r.arm(func() { l.write(t, 10, 3) })
	if err := l.log.Check(ctx); err != nil {
		t.Fatalf("a check that raced a commit: %v", err)
	}
	if err := l.log.Broken(); err != nil {
		t.Fatalf("the writer refuses after a check that raced a commit: %v", err)
	}
	l.write(t, 13, 1)
	if cp := checkpoint(t, l); cp.Size != 14 {
		t.Fatalf("the next checkpoint has size %d, want 14", cp.Size)
	}
}

// commitAfterSize runs a commit once, right after it read the store's size
// and before it returns it.
type commitAfterSize struct {
	store.Store
	mu    sync.Mutex
	after func()
}

func (c *commitAfterSize) arm(f func()) {
	c.mu.Lock()
	c.after = f
	c.mu.Unlock()
}

func (c *commitAfterSize) AuditSize(ctx context.Context) (uint64, error) {
	n, err := c.Store.AuditSize(ctx)
	c.mu.Lock()
	f := c.after
	c.after = nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
	return n, err
}

// The checkpoint file is the anchor: a line that does not parse, or the
// file gone or emptied while the store holds entries, is refused at
// start-up, never read as "nothing to compare".
func checkpointFileGone(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 10)
	checkpoint(t, l)
	b, err := os.ReadFile(l.file)
	must(t, err)
	must(t, os.WriteFile(l.file, append(b, []byte("{not json\n")...), 0o644))
	wantBroken(t, "an unparseable line", l.restart(t, s).Check(ctx), "line 3 does not parse")
	must(t, os.WriteFile(l.file, nil, 0o644))
	wantBroken(t, "an emptied file", l.restart(t, s).Check(ctx), "missing or empty", "holds 10 entries")
	must(t, os.Remove(l.file))
	wantBroken(t, "a deleted file", l.restart(t, s).Check(ctx), "missing or empty")
	// Deliberately started again, it anchors from here on.
	again := *l
	again.configure(t, s)
	init := audit.NewLog(audit.LogConfig{Store: s, Writer: again.w, Signer: again.sign, Verifier: l.v, Sealer: l.sealer,
		File: l.file, InitFile: true, Log: quiet()})
	init.Start(ctx)
	if err := init.Broken(); err != nil {
		t.Fatalf("SIGNER_CHECKPOINT_LOG_INIT: %v", err)
	}
}

// A row the runtime role inserts after the newest entry reaches no seal:
// the next check refuses to sign it into a checkpoint.
func insertedEntryHasNoSeal(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 20)
	checkpoint(t, l)
	l.write(t, 20, 3)
	leaf, err := auditlog.AppendLeaf(nil, ptr(entry(777, "sign")))
	must(t, err)
	x.AppendRaw(t, leaf)
	wantBroken(t, "a check over the inserted entry", l.log.Check(ctx), "entries 24..24 carry no seal")
	if cp := l.log.Latest(); cp.Size > 23 {
		t.Fatalf("the inserted entry was checkpointed (size %d)", cp.Size)
	}
	refuses(t, l)
}

// An inserted row followed by a genuine commit: the writer reloads the
// tree past the row and seals its own commit, whose seal starts after the
// row, so the row stays outside every seal; a replica (here: a restarted
// signer) refuses it.
func insertedEntryBeforeACommit(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 20)
	checkpoint(t, l)
	leaf, err := auditlog.AppendLeaf(nil, ptr(entry(777, "sign")))
	must(t, err)
	x.AppendRaw(t, leaf)
	other := audit.NewWriter(s, audit.WriterOptions{Sealer: l.sealer}) // another replica
	must(t, other.Write(ctx, entry(30, "sign"), entry(31, "sign")))
	other.Close()
	wantBroken(t, "the inserted entry under a genuine commit", l.restart(t, s).Check(ctx), "entries 21..23 do not carry the seal")
}

// A genuine checkpoint note stored under a larger size than it signs: the
// replay refuses the store's checkpoints.
func checkpointReplayed(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 16)
	cp := checkpoint(t, l)
	l.write(t, 16, 16)
	checkpoint(t, l)
	x.PutCheckpointAt(t, 60, cp.Note)
	if _, err := audit.ReplayStore(ctx, s, l.v); err == nil || !strings.Contains(err.Error(), "a stored checkpoint of size 16 is kept above size 32") {
		t.Fatalf("replay: %v", err)
	}
	if err := l.log.Sweep(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("sweep: %v", err)
	}
}

// A restore done on purpose is an epoch: the log continues from the
// restored store under "<origin>/epoch-2", and its first entry records the
// newest checkpoint of epoch 1 the signer knew (41, cosigned, from the
// checkpoint file) and the restored size and root. Without the epoch the
// same store is refused (above): a store writer cannot make a rollback look
// like a restore, and a restore does not look like tampering.
func restoreIsANewEpoch(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newKeyPair(t)
	w := witnesstest.Start(t, "w1.example", l.witnessLog(1))
	l.open(t, s, withWitnesses(t, w))
	l.write(t, 0, 21)
	checkpoint(t, l)
	l.write(t, 21, 20)
	checkpoint(t, l)
	x.Rollback(t, 21)
	wantBroken(t, "the restored store in epoch 1", l.restart(t, s).Check(ctx), "holds 21 entries", "size 41")

	cur, err := audit.CurrentEpoch(ctx, s, l.v, l.file)
	must(t, err)
	if cur != 1 {
		t.Fatalf("CurrentEpoch = %d", cur)
	}
	w.AddLogs(t, l.witnessLog(2))
	next := *l
	next.epoch = 2
	next.configure(t, s)
	rec, err := next.log.BeginEpoch(ctx, "restored the backup of 2026-12-01 after the disk failed")
	must(t, err)
	if rec.RestoredSize != 21 || rec.Epoch != 2 || !strings.HasSuffix(rec.Origin, "/epoch-2") || rec.PreviousOrigin != l.origin {
		t.Fatalf("epoch record %+v", rec)
	}
	prev, err := l.v.OpenWitnessed([]byte(rec.PreviousCheckpoint), l.policy)
	if err != nil || prev.Size != 41 {
		t.Fatalf("the record's previous checkpoint: size %d, %v (want the cosigned 41 from the file)", prev.Size, err)
	}
	next.log.Start(ctx)
	if err := next.log.Broken(); err != nil {
		t.Fatalf("epoch 2 refused: %v", err)
	}
	next.write(t, 100, 5)
	cp := checkpoint(t, &next)
	if cp.Origin != auditlog.EpochOrigin(l.origin, 2) || cp.Epoch != 2 || cp.Size != 27 {
		t.Fatalf("epoch 2 checkpoint %+v", cp)
	}
	if got := next.log.Witnessed(); got.Size != 27 {
		t.Fatalf("epoch 2 witnessed at %d", got.Size)
	}
	// The record is entry 22, in the log for every auditor.
	leaves, err := s.Leaves(ctx, 21, 22)
	must(t, err)
	e, err := auditlog.ParseLeaf(leaves[0])
	must(t, err)
	r, err := auditlog.ParseRecord(e)
	must(t, err)
	if er, ok := r.(*auditlog.EpochRecord); !ok || er.Reason != rec.Reason || !bytes.Equal(er.RestoredRoot, rec.RestoredRoot) {
		t.Fatalf("entry 22 is %+v", r)
	}
	// And the epoch stays: a signer configured for epoch 1 again refuses.
	if again := l.restart(t, s); !errors.Is(again.Check(ctx), signerr.ErrAuditLogBroken) {
		t.Fatal("a signer of epoch 1 accepted the log of epoch 2")
	}
}

// Entries 1..64 deleted and the prune mark set to 64, as a store writer
// would erase history (bbolt's meta key; the Postgres owner's INSERT into
// audit_pruned with its triggers off): no prune record names the mark. The
// signer's check, its sweep, a restarted signer and the replay behind
// every auditor's verify refuse it.
func forgedPruneMark(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 80)
	checkpoint(t, l)
	x.DeleteLeaves(t, 1, 64)
	x.ForgePruneMark(t, 64, 0)
	wantBroken(t, "the check", l.log.Check(ctx), "entries up to seq 64 were deleted, but no prune record")
	if err := l.log.Sweep(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("sweep: %v", err)
	}
	if err := replay(t, s, l.v); err == nil || !strings.Contains(err.Error(), "no prune record") {
		t.Fatalf("replay: %v", err)
	}
	wantBroken(t, "a restart", l.restart(t, s).Check(ctx), "no prune record")
}

// A genuine prune up to 32, then a forged mark up to 64 that names the
// genuine record (or an ordinary entry): the record states another prune.
func pruneMarkNamingAnotherEntry(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 80)
	record := l.prune(t, s, x.Pruner(t), 32)
	must(t, l.log.Check(ctx))
	x.DeleteLeaves(t, 33, 64)
	x.ForgePruneMark(t, 64, record)
	wantBroken(t, "a mark naming the record of another prune", l.log.Check(ctx), "is not the record of that prune")
	x.ForgePruneMark(t, 64, 70)
	wantBroken(t, "a mark naming an ordinary entry", l.log.Check(ctx), "names entry 70, which is not the record")
}

// A prune record the store writer fabricates (the Postgres prune role can
// append one and call audit_prune with it): it states the prune exactly,
// the root of the first 64 entries included, which anyone can compute from
// the kept tree nodes. But no replica committed it, so it carries no seal:
// the check refuses it, before and after a restart, and never checkpoints
// it.
func pruneRecordForged(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newLog(t, s)
	l.write(t, 0, 80)
	cp := checkpoint(t, l)
	at64, err := audit.TreeAt(ctx, s, 64)
	must(t, err)
	rec := auditlog.PruneRecord{UpTo: 64, RootAtUpTo: at64.Root(), ExportFrom: 1, ExportTo: 64, ExportCheckpoint: string(cp.Note)}
	detail, err := json.Marshal(rec)
	must(t, err)
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationLog, auditlog.MethodPrune, t0)
	e.Object, e.Reason, e.Code, e.Detail = "audit-log:"+l.origin+":entries-1-64", auditlog.ReasonGranted, "OK", detail
	leaf, err := auditlog.AppendLeaf(nil, &e)
	must(t, err)
	x.AppendRaw(t, leaf)
	x.DeleteLeaves(t, 1, 64)
	x.ForgePruneMark(t, 64, 81)
	wantBroken(t, "the check over the forged record", l.log.Check(ctx), "81..81 carry no seal")
	if got := l.log.Latest(); got.Size > 80 {
		t.Fatalf("the forged record was checkpointed (size %d)", got.Size)
	}
	wantBroken(t, "a restart", l.restart(t, s).Check(ctx), "carry no seal")
}

// A witness that stops answering: signing goes on while the log was
// anchored within the bound, then the writer refuses (unanchored, named),
// and resumes on its own once the witness answers again.
func witnessOutageIsBounded(t *testing.T, s store.Store, x Tamper) {
	ctx := context.Background()
	l := newKeyPair(t)
	w := witnesstest.Start(t, "w1.example", l.witnessLog(1))
	clock := &fakeClock{now: t0}
	l.open(t, s, withoutFile(), withWitnesses(t, w), func(l *testLog) { l.clock, l.maxUnanchored = clock.Now, time.Minute })
	l.write(t, 0, 5)
	must(t, l.log.Check(ctx))
	w.Stop()
	clock.advance(30 * time.Second)
	l.write(t, 5, 5)
	must(t, l.log.Check(ctx))
	if st := l.log.Status(); st.Problem == nil || st.Unanchored != nil || l.w.Broken() != nil {
		t.Fatalf("30 s into the outage: %+v", st)
	}
	clock.advance(31 * time.Second)
	must(t, l.log.Check(ctx))
	err := l.w.Write(ctx, entry(20, "sign"))
	if !errors.Is(err, signerr.ErrAuditLogUnanchored) || !strings.Contains(err.Error(), "witness w1.example") {
		t.Fatalf("61 s into the outage, a write: %v", err)
	}
	w.Restart(t)
	clock.advance(10 * time.Second)
	must(t, l.log.Check(ctx))
	if err := l.w.Write(ctx, entry(21, "sign")); err != nil {
		t.Fatalf("after the witness is back: %v", err)
	}
	if got := l.log.Witnessed(); got.Size != 10 {
		t.Fatalf("witnessed %d after the outage, want 10", got.Size)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
