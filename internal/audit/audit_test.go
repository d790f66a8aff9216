package audit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
)

// memLog is an Appender in memory whose commits can be held and failed.
type memLog struct {
	mu      sync.Mutex
	leaves  [][]byte
	nodes   map[audit.NodeID][]byte
	batches []int
	locked  int // AppendAuditLocked calls
	fast    int // AppendAudit calls
	// noCatchUp: AppendAuditLocked hands no leaves (a store that cannot),
	// so the writer rebuilds its tree from the nodes.
	noCatchUp bool
	hold      chan struct{} // if set, the first commit closes started and waits for it
	started   chan struct{}
	fail      func(b *audit.Batch) error
}

func held() *memLog { return &memLog{hold: make(chan struct{}), started: make(chan struct{})} }

// wait holds the first commit if the test asked to.
func (m *memLog) wait() {
	if m.hold != nil {
		close(m.started)
		<-m.hold
		m.hold = nil
	}
}

func (m *memLog) AppendAudit(_ context.Context, b *audit.Batch) error {
	m.wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fast++
	return m.appendLocked(b)
}

func (m *memLog) appendLocked(b *audit.Batch) error {
	if m.fail != nil {
		if err := m.fail(b); err != nil {
			return err
		}
	}
	if b.Start != uint64(len(m.leaves))+1 {
		moved := &audit.MovedError{Size: uint64(len(m.leaves))}
		if !m.noCatchUp && b.Start-1 <= uint64(len(m.leaves)) {
			moved.Leaves = m.leaves[b.Start-1:]
		}
		return moved
	}
	if m.nodes == nil {
		m.nodes = map[audit.NodeID][]byte{}
	}
	m.leaves = append(m.leaves, b.Leaves...)
	for _, n := range b.Nodes {
		m.nodes[audit.NodeID{Level: uint(n.Level), Index: n.Index}] = n.Hash
	}
	m.batches = append(m.batches, len(b.Leaves))
	return nil
}

func (m *memLog) AppendAuditLocked(ctx context.Context, after uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	m.wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locked++
	h := audit.LockedHead{Size: uint64(len(m.leaves)), Reader: lockedView{m}}
	if after < h.Size && !m.noCatchUp {
		h.Leaves = m.leaves[after:]
	}
	b, err := build(h)
	if err != nil {
		return err
	}
	return m.appendLocked(b)
}

func (m *memLog) AuditSize(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(len(m.leaves)), nil
}

func (m *memLog) Leaves(ctx context.Context, from, to uint64) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return lockedView{m}.Leaves(ctx, from, to)
}

func (m *memLog) Nodes(ctx context.Context, ids []audit.NodeID) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return lockedView{m}.Nodes(ctx, ids)
}

// lockedView reads m with its lock held.
type lockedView struct{ m *memLog }

func (v lockedView) Leaves(_ context.Context, from, to uint64) ([][]byte, error) {
	if to > uint64(len(v.m.leaves)) {
		return nil, audit.ErrTreeBroken
	}
	return v.m.leaves[from:to], nil
}

func (v lockedView) Nodes(_ context.Context, ids []audit.NodeID) ([][]byte, error) {
	var out [][]byte
	for _, id := range ids {
		h, ok := v.m.nodes[id]
		if !ok {
			return nil, audit.ErrTreeBroken
		}
		out = append(out, h)
	}
	return out, nil
}

func entry(i int) auditlog.Entry {
	var req auditlog.RequestID
	copy(req[:], fmt.Sprintf("%016d", i))
	e := auditlog.New(req, auditlog.SubjectSigner, "sign", "/plexsphere.signer.v1.SignerService/Sign", time.Unix(int64(i), 0))
	e.Reason, e.Code = auditlog.ReasonGranted, "OK"
	return e
}

// Entries queued while a commit runs share the next commit.
func TestWriterGroupsConcurrentEntries(t *testing.T) {
	log := held()
	w := audit.NewWriter(log, audit.WriterOptions{})
	defer w.Close()
	ctx := context.Background()
	first := w.Submit(ctx, audit.LaneAdmitted, entry(0))
	<-log.started
	// The first commit is held; 99 more entries queue behind it.
	var pend []*audit.Pending
	for i := 1; i < 100; i++ {
		pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, entry(i)))
	}
	close(log.hold)
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The first commit found no tree loaded: it took the locked path.
	if len(log.batches) != 2 || log.batches[0] != 1 || log.batches[1] != 99 {
		t.Fatalf("batches = %v, want [1 99]", log.batches)
	}
	if got := pend[98].Committed()[0]; got.Seq != 100 {
		t.Fatalf("committed entry = %+v", got)
	}
	tree, err := audit.TreeAt(ctx, log, 100)
	if err != nil {
		t.Fatal(err)
	}
	if h := w.Head(); h.Size != 100 || string(h.Root) != string(tree.Root()) {
		t.Fatalf("writer head = %d, want the stored tree's root at 100", h.Size)
	}
}

// A failed commit fails exactly the entries in it.
func TestWriterFailsOnlyTheFailedBatch(t *testing.T) {
	log := &memLog{}
	log.fail = func(b *audit.Batch) error {
		if len(b.Leaves) > 1 {
			return errors.New("disk full")
		}
		return nil
	}
	w := audit.NewWriter(log, audit.WriterOptions{})
	defer w.Close()
	ctx := context.Background()
	if err := w.Write(ctx, entry(0)); err != nil { // loads the tree
		t.Fatal(err)
	}
	log.hold, log.started = make(chan struct{}), make(chan struct{})
	first := w.Submit(ctx, audit.LaneAdmitted, entry(1))
	<-log.started
	a, b := w.Submit(ctx, audit.LaneAdmitted, entry(2)), w.Submit(ctx, audit.LaneAdmitted, entry(3))
	close(log.hold)
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*audit.Pending{a, b} {
		if err := p.Wait(ctx); !errors.Is(err, signerr.ErrAuditUnavailable) {
			t.Fatalf("entry in the failed batch: %v", err)
		}
	}
	if err := w.Write(ctx, entry(4)); err != nil {
		t.Fatalf("after the failure: %v", err)
	}
	if len(log.leaves) != 3 {
		t.Fatalf("%d entries stored, want 3", len(log.leaves))
	}
}

// Entries submitted together share a commit and stay in order.
func TestWriterKeepsGroupsTogether(t *testing.T) {
	log := &memLog{}
	w := audit.NewWriter(log, audit.WriterOptions{MaxBatch: 3})
	ctx := context.Background()
	var pend []*audit.Pending
	for i := range 10 {
		pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, entry(2*i), entry(2*i+1)))
	}
	w.Close()
	for i, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		c := p.Committed()
		if len(c) != 2 || c[0].RequestID != entry(2*i).RequestID || c[1].Seq != c[0].Seq+1 {
			t.Fatalf("group %d committed as %+v", i, c)
		}
	}
	for _, n := range log.batches {
		if n%2 != 0 {
			t.Fatalf("a group was split across commits: batches %v", log.batches)
		}
	}
}

func TestWriterCloseDrains(t *testing.T) {
	log := &memLog{}
	w := audit.NewWriter(log, audit.WriterOptions{MaxBatch: 3})
	ctx := context.Background()
	var pend []*audit.Pending
	for i := range 10 {
		pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, entry(i)))
	}
	w.Close()
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(log.leaves) != 10 {
		t.Fatalf("%d entries after Close, want 10", len(log.leaves))
	}
	for _, n := range log.batches {
		if n > 3 {
			t.Fatalf("batch of %d over MaxBatch 3", n)
		}
	}
	if err := w.Write(ctx, entry(11)); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// Another writer moved the head: the writer catches up under the lock
// (with the leaves the store hands it, or, from a store that hands none,
// by rebuilding its tree from the stored nodes) and the log stays one tree.
func TestWriterReloadsWhenTheHeadMoves(t *testing.T) {
	for _, noCatchUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("noCatchUp=%v", noCatchUp), func(t *testing.T) {
			log := &memLog{noCatchUp: noCatchUp}
			ctx := context.Background()
			a := audit.NewWriter(log, audit.WriterOptions{})
			b := audit.NewWriter(log, audit.WriterOptions{})
			defer a.Close()
			defer b.Close()
			for i := range 40 {
				w := a
				if i%3 == 0 {
					w = b
				}
				if err := w.Write(ctx, entry(i)); err != nil {
					t.Fatal(err)
				}
			}
			tree, err := audit.TreeAt(ctx, log, 40)
			if err != nil {
				t.Fatal(err)
			}
			r := audit.NewReplay(audit.NewTree(), nil, log.Nodes)
			for i, leaf := range log.leaves {
				if err := r.Add(ctx, uint64(i+1), leaf); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Finish(ctx); err != nil || string(r.Root()) != string(tree.Root()) {
				t.Fatalf("replay: %v", err)
			}
			if h := b.Head(); h.Size != 40 || string(h.Root) != string(tree.Root()) {
				t.Fatalf("the last writer's head is %d %x, the log's %d %x", h.Size, h.Root, 40, tree.Root())
			}
			if log.locked < 2 {
				t.Fatalf("%d locked appends; each writer catches up at least once", log.locked)
			}
		})
	}
}

// A writer alone appends without the lock. Once it meets another writer's
// entries (its fast attempt finds the head moved) it catches up with them
// and, for as long as the log is shared, appends under the lock: one
// attempt a commit, never a race lost. From a store that hands no entries
// over, it rebuilds its tree from the stored nodes instead.
func TestWriterPathFollowsContention(t *testing.T) {
	for _, tc := range []struct {
		noCatchUp    bool
		want         []audit.CommitPath
		locked, fast int
	}{
		// a: 0 locked (no tree yet), 1 fast, 3 caught up (b wrote 2: a
		// fast attempt lost, then the lock), 5 caught up under the lock
		// (b wrote 4), 6 and 7 locked (the log is shared); b: 2 locked (no
		// tree), 4 caught up (a fast attempt lost, then the lock).
		{false, []audit.CommitPath{audit.PathLocked, audit.PathFast, audit.PathCatchUp, audit.PathCatchUp, audit.PathLocked, audit.PathLocked}, 7, 3},
		// Nothing handed over: the same paths, each catch-up a rebuild.
		{true, []audit.CommitPath{audit.PathLocked, audit.PathFast, audit.PathCatchUp, audit.PathCatchUp, audit.PathLocked, audit.PathLocked}, 7, 3},
	} {
		t.Run(fmt.Sprintf("noCatchUp=%v", tc.noCatchUp), func(t *testing.T) {
			log := &memLog{noCatchUp: tc.noCatchUp}
			ctx := context.Background()
			var mu sync.Mutex
			var paths []audit.CommitPath
			// The log stays shared for the whole test, however slow the
			// machine.
			a := audit.NewWriter(log, audit.WriterOptions{SharedFor: time.Hour, Observe: func(_ int, _ time.Duration, p audit.CommitPath, err error) {
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				paths = append(paths, p)
				mu.Unlock()
			}})
			b := audit.NewWriter(log, audit.WriterOptions{SharedFor: time.Hour})
			defer a.Close()
			defer b.Close()
			for i, w := range []*audit.Writer{a, a, b, a, b, a, a, a} {
				if err := w.Write(ctx, entry(i)); err != nil {
					t.Fatal(err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if fmt.Sprint(paths) != fmt.Sprint(tc.want) {
				t.Fatalf("a's commit paths %v, want %v", paths, tc.want)
			}
			if log.locked != tc.locked || log.fast != tc.fast {
				t.Fatalf("%d locked and %d fast appends, want %d and %d", log.locked, log.fast, tc.locked, tc.fast)
			}
			tree, err := audit.TreeAt(ctx, log, 8)
			if h := a.Head(); err != nil || h.Size != 8 || string(tree.Root()) != string(h.Root) {
				t.Fatalf("the log's tree does not match the last writer's head: %v", err)
			}
		})
	}
}

// A log that shrank under a writer is broken, not appended to.
func TestWriterRefusesAShrunkLog(t *testing.T) {
	log := &memLog{}
	ctx := context.Background()
	w := audit.NewWriter(log, audit.WriterOptions{})
	defer w.Close()
	for i := range 5 {
		if err := w.Write(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	log.mu.Lock()
	log.leaves = log.leaves[:3]
	log.mu.Unlock()
	if err := w.Write(ctx, entry(9)); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("append onto a shrunk log: %v, want ErrAuditLogBroken", err)
	}
	if err := w.Write(ctx, entry(10)); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("the writer kept appending: %v", err)
	}
}

// Denied entries wait in their own small lane and take at most a share of
// a commit: a flood of them does not crowd out admitted entries.
func TestWriterDeniedLane(t *testing.T) {
	log := held()
	w := audit.NewWriter(log, audit.WriterOptions{MaxBatch: 8, DeniedQueue: 4})
	defer w.Close()
	ctx := context.Background()
	first := w.Submit(ctx, audit.LaneAdmitted, entry(0))
	<-log.started
	var denied []*audit.Pending
	for i := range 4 {
		denied = append(denied, w.Submit(ctx, audit.LaneDenied, entry(100+i)))
	}
	// The denied lane is full: one more waits, and gives up with its context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := w.Submit(short, audit.LaneDenied, entry(200)).Wait(ctx); !errors.Is(err, signerr.ErrAuditUnavailable) {
		t.Fatalf("a denied entry past the full lane: %v", err)
	}
	var admitted []*audit.Pending
	for i := range 8 {
		admitted = append(admitted, w.Submit(ctx, audit.LaneAdmitted, entry(1+i)))
	}
	close(log.hold)
	for _, p := range append(append([]*audit.Pending{first}, admitted...), denied...) {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Batches: the first; then all 8 admitted plus at most 8/4 denied.
	if len(log.batches) < 3 || log.batches[1] != 8+2 {
		t.Fatalf("batches = %v, want [1 10 2]", log.batches)
	}
	if admitted[7].Committed()[0].Seq > denied[2].Committed()[0].Seq {
		t.Fatal("a denied entry was committed before the admitted ones waiting with it")
	}
}
