package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
)

// ErrClosed is returned for entries submitted after Close.
var ErrClosed = errors.New("audit: writer closed")

// ErrHeadMoved is returned by an Appender whose log is not at the size the
// batch extends: another replica appended first (or, if the log shrank,
// someone removed entries). The writer reloads the tree and retries.
var ErrHeadMoved = errors.New("audit: log head moved")

// MovedError is ErrHeadMoved with what the store saw in the same round
// trip: the log's size and, when it could read them all, the leaves after
// the size the batch extended (as LockedHead.Leaves). With them the writer
// catches up and tries again without taking the log's lock.
type MovedError struct {
	Size   uint64
	Leaves [][]byte
}

func (e *MovedError) Error() string {
	return fmt.Sprintf("audit: log head moved (the log holds %d entries)", e.Size)
}

// Is makes errors.Is(err, ErrHeadMoved) hold.
func (e *MovedError) Is(target error) bool { return target == ErrHeadMoved }

// Batch is one commit: the leaves for seqs Start.., the tree nodes they
// complete (levels StoredLevel and up) and the seal of the log's size and
// root after them (seal.go), which the store keeps with them.
type Batch struct {
	Start  uint64
	Leaves [][]byte
	Nodes  []Node
	Seal   []byte
}

// Appender is the store side of the writer.
type Appender interface {
	Reader
	// AppendAudit makes a batch durable atomically, all of it or nothing.
	// It fails with ErrHeadMoved unless the log holds exactly Start-1
	// entries (pruned ones included) and its lock is free: the cheap path
	// of a writer alone on the log, one round trip. A store that can says
	// where the head went (MovedError).
	AppendAudit(ctx context.Context, b *Batch) error
	// AppendAuditLocked holds the log's write lock (replicas wait), calls
	// build with the log's head as it is under the lock, and commits the
	// batch build returns in the same transaction. The writer takes this
	// path while other writers append to the log too: one attempt a
	// commit, where racing for the lock lost most attempts. A store reads
	// the lock, the size and the leaves after the writer's own size in one
	// round trip, and commits in a second; it keeps its durability wait
	// out of the lock (Postgres: see asyncCommit), so replicas that take
	// turns each wait about one round trip and a statement, and their
	// flushes merge.
	AppendAuditLocked(ctx context.Context, after uint64, build func(LockedHead) (*Batch, error)) error
	// AuditSize is the number of entries ever appended (pruned ones
	// included): the seq of the newest entry.
	AuditSize(ctx context.Context) (uint64, error)
}

// LockedHead is the log as AppendAuditLocked finds it under the lock.
type LockedHead struct {
	// Size is the number of entries ever appended (pruned ones included).
	Size uint64
	// Leaves are the leaves after the size the writer named (seqs
	// after+1..Size), when the store could read them all: at most
	// MaxCatchUp of them, none pruned. Otherwise nil, and the writer
	// rebuilds its tree from Reader.
	Leaves [][]byte
	// Reader reads the log consistently with Size.
	Reader Reader
}

// MaxCatchUp is the most leaves a store hands a writer to catch up with
// (LockedHead.Leaves): a writer further behind rebuilds its tree from the
// stored nodes instead.
const MaxCatchUp = 4096

// CommitPath is how a commit reached the store, for metrics.
type CommitPath string

const (
	// PathFast: onto the head this writer knew, in one round trip, without
	// waiting for the lock (no other writer appended within SharedFor).
	PathFast CommitPath = "fast"
	// PathCatchUp: the head had moved since this writer's last commit
	// (other replicas appended); it caught up with their entries and
	// committed under the log's write lock.
	PathCatchUp CommitPath = "catchup"
	// PathLocked: under the log's write lock onto the head this writer
	// knew (other writers append to the log, but none did since its last
	// commit), or with its first tree.
	PathLocked CommitPath = "locked"
)

// sharedFor is WriterOptions.SharedFor's default.
const sharedFor = time.Second

// Lane says how an entry competes for commits. Entries of calls refused at
// admission go in LaneDenied, which has a small queue of its own and a
// bounded share of each commit: a flood of denied callers waits for its own
// lane and never crowds out admitted calls, while every denial is still
// committed before the caller hears of it.
type Lane int

const (
	LaneAdmitted Lane = iota
	LaneDenied
)

// Pending is a group of entries on its way to the store.
type Pending struct {
	entries []auditlog.Entry
	leaves  [][]byte
	hashes  [][32]byte
	done    chan struct{}
	err     error
}

// Wait blocks until the entries are committed (nil) or failed (wrapping
// signerr.ErrAuditUnavailable), or ctx ends. Entries whose caller gave up
// are still committed: the outcome they record happened.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done returns an already-committed Pending (for sinks that keep nothing).
func Done() *Pending { return settled(nil, nil) }

// Committed returns the entries with their Seq once Wait has returned nil.
func (p *Pending) Committed() []auditlog.Entry { return p.entries }

func settled(es []auditlog.Entry, err error) *Pending {
	p := &Pending{entries: es, done: make(chan struct{}), err: err}
	close(p.done)
	return p
}

// Sink takes entries for durable storage. Submit never waits for the commit;
// the returned Pending does. Entries submitted together are committed in one
// transaction, in order, with adjacent seqs.
type Sink interface {
	Submit(ctx context.Context, lane Lane, entries ...auditlog.Entry) *Pending
}

// BatchObserver is told about every commit (for metrics).
type BatchObserver func(entries int, took time.Duration, path CommitPath, err error)

// WriterOptions tune a Writer; zero values take the defaults.
type WriterOptions struct {
	MaxBatch      int           // entries per commit; default 256
	QueueSize     int           // admitted entries waiting; default 8192
	DeniedQueue   int           // denied entries waiting; default 256
	CommitTimeout time.Duration // per commit; default 5s
	// SharedFor is how long the writer takes the log for shared, and
	// appends under its lock, after it last met other writers' entries;
	// default 1s.
	SharedFor time.Duration
	Observe   BatchObserver
	// Sealer seals every commit. Without one, commits carry no seal and
	// the log's checks refuse them: only stores' own tests go without.
	Sealer *Sealer
	// skipTree stores leaves without extending the Merkle tree, so the
	// benchmarks can price the tree (docs/performance.md). Only a build for
	// benchmarks can set it (WithoutTree, build tag bench): without the
	// tree the log cannot be checked.
	skipTree bool
}

// Writer is a group-commit sink that extends the Merkle tree: one goroutine
// commits whatever queued while the previous commit ran, so concurrent RPCs
// share a transaction and durability does not serialise the service. A
// serial caller pays one commit and no added wait: there is no timer.
// Entries are encoded and hashed by the submitting goroutine; the writer
// only extends the tree and hands the batch to the store.
type Writer struct {
	app  Appender
	opts WriterOptions

	mu     sync.RWMutex // guards closed against Submit racing Close
	closed bool
	queue  chan *Pending
	denied chan *Pending
	done   chan struct{}

	// refusal is the Log's verdict (broken, or not checked and anchored
	// for too long), set and cleared by it; broken is the writer's own
	// finding (the store lost entries this writer committed), which nothing
	// clears: the evidence exists only in this process.
	refusal atomic.Pointer[error]
	broken  atomic.Pointer[error]

	headMu sync.Mutex
	tree   *Tree  // owned by loop; nil until loaded
	root   []byte // tree's root, owned by loop
	head   Head
	// sharedUntil: until then, other writers append to the log too and
	// commits take the lock (commit); set whenever the writer meets their
	// entries.
	sharedUntil time.Time
}

// Head is the log's size and root as of a writer's last commit.
type Head struct {
	Size uint64
	Root []byte
}

// NewWriter starts a Writer over app. Close it to drain and stop.
func NewWriter(app Appender, opts WriterOptions) *Writer {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 8192
	}
	if opts.DeniedQueue <= 0 {
		opts.DeniedQueue = 256
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = 5 * time.Second
	}
	if opts.SharedFor <= 0 {
		opts.SharedFor = sharedFor
	}
	w := &Writer{app: app, opts: opts, queue: make(chan *Pending, opts.QueueSize),
		denied: make(chan *Pending, opts.DeniedQueue), done: make(chan struct{})}
	go w.loop()
	return w
}

// Submit encodes entries (in the caller's goroutine) and queues them as one
// unit. It blocks only while the lane's queue is full, and gives up with
// ctx.
func (w *Writer) Submit(ctx context.Context, lane Lane, entries ...auditlog.Entry) *Pending {
	if err := w.Broken(); err != nil {
		return settled(entries, err)
	}
	p := &Pending{entries: entries, leaves: make([][]byte, len(entries)), hashes: make([][32]byte, len(entries)), done: make(chan struct{})}
	for i := range entries {
		leaf, err := auditlog.AppendLeaf(nil, &entries[i])
		if err != nil {
			return settled(entries, fmt.Errorf("%w: %w", signerr.ErrAuditUnavailable, err))
		}
		p.leaves[i] = leaf
		if !w.opts.skipTree {
			p.hashes[i] = auditlog.LeafHash(leaf)
		}
	}
	q := w.queue
	if lane == LaneDenied {
		q = w.denied
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return settled(entries, fmt.Errorf("%w: %w", signerr.ErrAuditUnavailable, ErrClosed))
	}
	select {
	case q <- p:
		return p
	case <-ctx.Done():
		return settled(entries, fmt.Errorf("%w: queue full: %w", signerr.ErrAuditUnavailable, ctx.Err()))
	}
}

// Write submits admitted entries and waits for their commit.
func (w *Writer) Write(ctx context.Context, entries ...auditlog.Entry) error {
	return w.Submit(ctx, LaneAdmitted, entries...).Wait(ctx)
}

// Refuse stops the writer from appending: every later Submit fails with
// err (wrapping signerr.ErrAuditLogBroken or ErrAuditLogUnanchored). nil
// lifts it. The Log decides; it never lifts what the writer found itself
// (Fail).
func (w *Writer) Refuse(err error) {
	if err == nil {
		w.refusal.Store(nil)
		return
	}
	w.refusal.Store(&err)
}

// Fail breaks the writer for good: the store lost entries it committed.
func (w *Writer) Fail(err error) {
	w.broken.CompareAndSwap(nil, &err)
}

// Failed returns what Fail recorded, or nil.
func (w *Writer) Failed() error {
	if p := w.broken.Load(); p != nil {
		return *p
	}
	return nil
}

// Broken returns why the writer refuses to append, or nil: its own finding
// first, then the Log's verdict.
func (w *Writer) Broken() error {
	if err := w.Failed(); err != nil {
		return err
	}
	if p := w.refusal.Load(); p != nil {
		return *p
	}
	return nil
}

// Head returns the size and root after this writer's last commit (zero
// before its first).
func (w *Writer) Head() Head {
	w.headMu.Lock()
	defer w.headMu.Unlock()
	return w.head
}

func (w *Writer) committed(size uint64, root []byte) {
	w.headMu.Lock()
	defer w.headMu.Unlock()
	w.head = Head{Size: size, Root: root}
}

// Close stops accepting entries, commits everything already queued and waits.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
		close(w.denied)
	}
	w.mu.Unlock()
	<-w.done
}

// deniedShare is the most of one commit that denied entries may take while
// admitted entries wait.
const deniedShare = 4

func (w *Writer) loop() {
	defer close(w.done)
	batch := make([]*Pending, 0, w.opts.MaxBatch)
	queue, denied := w.queue, w.denied
	for queue != nil || denied != nil {
		batch = batch[:0]
		n := 0
		// Block for the first unit, admitted first.
		select {
		case p, ok := <-queue:
			if !ok {
				queue = nil
				continue
			}
			batch, n = append(batch, p), len(p.entries)
		default:
			select {
			case p, ok := <-queue:
				if !ok {
					queue = nil
					continue
				}
				batch, n = append(batch, p), len(p.entries)
			case p, ok := <-denied:
				if !ok {
					denied = nil
					continue
				}
				batch, n = append(batch, p), len(p.entries)
			}
		}
		// Then whatever else is waiting: admitted entries up to the batch
		// size, denied ones up to their share.
	admitted:
		for n < w.opts.MaxBatch {
			select {
			case p, ok := <-queue:
				if !ok {
					queue = nil
					break admitted
				}
				batch, n = append(batch, p), n+len(p.entries)
			default:
				break admitted
			}
		}
		limit := n + max(1, w.opts.MaxBatch/deniedShare)
	deniedLoop:
		for n < limit {
			select {
			case p, ok := <-denied:
				if !ok {
					denied = nil
					break deniedLoop
				}
				batch, n = append(batch, p), n+len(p.entries)
			default:
				break deniedLoop
			}
		}
		err := w.commit(batch, n)
		for _, p := range batch {
			if err != nil {
				p.err = err
			}
			close(p.done)
		}
	}
}

// commit appends the batch. A writer alone on the log appends onto the
// tree it knows, in one round trip, without waiting for the log's lock
// (PathFast). While other writers (replicas) append too, racing them for
// the lock costs more than queueing for it: a lost race is a wasted
// attempt, and with two or three replicas most attempts were lost. So a
// writer that met other writers' entries within SharedFor, or whose fast
// attempt found the head moved (after catching up with the entries the
// store's answer carried), appends under the lock: the store reads the
// head under it and commits what build makes of it, one attempt a commit.
func (w *Writer) commit(batch []*Pending, n int) error {
	if err := w.Broken(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.CommitTimeout)
	defer cancel()
	start := time.Now()
	path := PathFast
	var err error
	if w.tree != nil && !start.Before(w.sharedUntil) {
		if err = w.append(ctx, batch, n, w.tree, w.app.AppendAudit); err == nil {
			w.settle(batch)
		}
		var moved *MovedError
		if errors.As(err, &moved) {
			w.sharedUntil = time.Now().Add(w.opts.SharedFor)
			path = PathCatchUp
			if moved.Leaves != nil {
				t, rerr := w.reload(ctx, LockedHead{Size: moved.Size, Leaves: moved.Leaves})
				if rerr != nil {
					err = rerr
				} else {
					w.tree = t
				}
			}
		}
	}
	if w.tree == nil || path == PathFast && start.Before(w.sharedUntil) || errors.Is(err, ErrHeadMoved) {
		if path == PathFast {
			path = PathLocked
		}
		var after uint64
		if w.tree != nil {
			after = w.tree.Size()
		}
		err = w.app.AppendAuditLocked(ctx, after, func(h LockedHead) (*Batch, error) {
			if w.tree != nil && h.Size != w.tree.Size() {
				path = PathCatchUp
			}
			t, err := w.reload(ctx, h)
			if err != nil {
				return nil, err
			}
			var b *Batch
			err = w.append(ctx, batch, n, t, func(_ context.Context, built *Batch) error { b = built; return nil })
			return b, err
		})
		if err == nil {
			w.settle(batch)
		} else {
			w.tree = nil // what append kept was not committed
		}
	}
	if w.opts.Observe != nil {
		w.opts.Observe(n, time.Since(start), path, err)
	}
	if err != nil {
		if errors.Is(err, signerr.ErrAuditLogBroken) {
			return err
		}
		return fmt.Errorf("%w: %w", signerr.ErrAuditUnavailable, err)
	}
	return nil
}

// reload returns the tree at h: this writer's own if no one appended
// since, its own extended with the leaves others appended when the store
// handed them over, else (with a reader) rebuilt from the stored nodes. A
// log smaller than what this writer committed lost entries: that is the
// log broken, not a reason to append.
func (w *Writer) reload(ctx context.Context, h LockedHead) (*Tree, error) {
	if w.tree != nil && w.tree.Size() == h.Size {
		return w.tree, nil
	}
	if w.tree != nil {
		w.sharedUntil = time.Now().Add(w.opts.SharedFor) // others appended since
	}
	if head := w.Head(); h.Size < head.Size {
		err := fmt.Errorf("%w: the store holds %d entries, this signer committed %d (entries after seq %d were removed)", signerr.ErrAuditLogBroken, h.Size, head.Size, h.Size)
		w.Fail(err)
		return nil, err
	}
	if w.opts.skipTree {
		return &Tree{n: h.Size}, nil
	}
	base := w.tree
	if base == nil {
		base = NewTree()
	}
	if h.Leaves != nil && base.Size()+uint64(len(h.Leaves)) == h.Size {
		t := base.Clone()
		for _, leaf := range h.Leaves {
			lh := auditlog.LeafHash(leaf)
			t.Append(lh[:], nil)
		}
		return t, nil
	}
	if h.Reader == nil {
		return nil, &MovedError{Size: h.Size} // no leaves to catch up with: the lock
	}
	return TreeAt(ctx, h.Reader, h.Size)
}

// append extends a copy of base with the batch, seals it and hands it to
// store; on success the copy becomes the writer's tree.
func (w *Writer) append(ctx context.Context, batch []*Pending, n int, base *Tree, store func(context.Context, *Batch) error) error {
	t := base.Clone()
	b := &Batch{Start: t.Size() + 1, Leaves: make([][]byte, 0, n)}
	keep := func(nd Node) { b.Nodes = append(b.Nodes, nd) }
	for _, p := range batch {
		for i := range p.entries {
			t.Append(p.hashes[i][:], keep)
			b.Leaves = append(b.Leaves, p.leaves[i])
		}
	}
	root := t.Root()
	if w.opts.Sealer != nil && root != nil {
		b.Seal = w.opts.Sealer.Seal(SealedRange{Start: b.Start, End: t.Size()}, root)
	}
	if err := store(ctx, b); err != nil {
		return err
	}
	w.tree, w.root = t, root
	return nil
}

// settle records a committed batch: each entry's seq and the new head.
func (w *Writer) settle(batch []*Pending) {
	seq := w.tree.Size()
	for i := len(batch) - 1; i >= 0; i-- {
		p := batch[i]
		for j := len(p.entries) - 1; j >= 0; j-- {
			p.entries[j].Seq = seq
			seq--
		}
	}
	w.committed(w.tree.Size(), w.root)
}
