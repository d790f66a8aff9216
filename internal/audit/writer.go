package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrUnavailable means an entry could not be made durable. The RPC it belongs
// to must fail: no signature leaves the signer without its committed entry.
var ErrUnavailable = errors.New("audit: store unavailable")

// ErrClosed is returned for entries submitted after Close.
var ErrClosed = errors.New("audit: writer closed")

// Appender makes a batch durable atomically (all entries or none) and assigns
// each entry its Seq, PrevHash and Hash (see Chain).
type Appender interface {
	AppendAudit(ctx context.Context, batch []Entry) error
}

// Sink takes entries for durable storage. Submit never waits for the commit;
// the returned Pending does. Entries submitted together are committed in
// one transaction, in order, with adjacent seqs.
type Sink interface {
	Submit(ctx context.Context, entries ...Entry) *Pending
}

// Pending is a group of entries on its way to the store.
type Pending struct {
	entries []Entry
	done    chan struct{}
	err     error
}

// Wait blocks until the entry is committed (nil) or failed (wrapping
// ErrUnavailable), or ctx ends. An entry whose caller gave up is still
// committed: the outcome it records happened.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func settled(es []Entry, err error) *Pending {
	p := &Pending{entries: es, done: make(chan struct{}), err: err}
	close(p.done)
	return p
}

// BatchObserver is told about every commit (for metrics).
type BatchObserver func(size int, took time.Duration, err error)

// WriterOptions tune a Writer; zero values take the defaults.
type WriterOptions struct {
	MaxBatch      int           // entries per commit; default 256
	QueueSize     int           // entries waiting; default 8192
	CommitTimeout time.Duration // per commit; default 5s
	Observe       BatchObserver
}

// Writer is a group-commit sink: one goroutine commits whatever has queued
// while the previous commit ran, so concurrent RPCs share a transaction and
// durability does not serialise the service. A serial caller pays one commit
// and no added wait: there is no timer.
type Writer struct {
	app  Appender
	opts WriterOptions

	mu     sync.RWMutex // guards closed against Submit racing Close
	closed bool
	queue  chan *Pending
	done   chan struct{}
}

// NewWriter starts a Writer over app. Close it to drain and stop.
func NewWriter(app Appender, opts WriterOptions) *Writer {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 8192
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = 5 * time.Second
	}
	w := &Writer{app: app, opts: opts, queue: make(chan *Pending, opts.QueueSize), done: make(chan struct{})}
	go w.loop()
	return w
}

// Submit queues entries as one unit. It blocks only while the queue is
// full, and gives up with ctx.
func (w *Writer) Submit(ctx context.Context, entries ...Entry) *Pending {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return settled(entries, fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed))
	}
	p := &Pending{entries: entries, done: make(chan struct{})}
	select {
	case w.queue <- p:
		return p
	case <-ctx.Done():
		return settled(entries, fmt.Errorf("%w: queue full: %w", ErrUnavailable, ctx.Err()))
	}
}

// Write submits entries and waits for their commit.
func (w *Writer) Write(ctx context.Context, entries ...Entry) error {
	return w.Submit(ctx, entries...).Wait(ctx)
}

// Close stops accepting entries, commits everything already queued and waits.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	<-w.done
}

func (w *Writer) loop() {
	defer close(w.done)
	batch := make([]*Pending, 0, w.opts.MaxBatch)
	entries := make([]Entry, 0, w.opts.MaxBatch)
	for first := range w.queue {
		batch = append(batch[:0], first)
		n := len(first.entries)
	drain:
		for n < w.opts.MaxBatch {
			select {
			case p, ok := <-w.queue:
				if !ok {
					break drain
				}
				batch = append(batch, p)
				n += len(p.entries)
			default:
				break drain
			}
		}
		entries = entries[:0]
		for _, p := range batch {
			entries = append(entries, p.entries...)
		}
		err := w.commit(entries)
		i := 0
		for _, p := range batch {
			if err != nil {
				p.err = fmt.Errorf("%w: %w", ErrUnavailable, err)
			} else {
				p.entries = append(p.entries[:0:0], entries[i:i+len(p.entries)]...)
			}
			i += len(p.entries)
			close(p.done)
		}
	}
}

func (w *Writer) commit(entries []Entry) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.CommitTimeout)
	defer cancel()
	start := time.Now()
	err := w.app.AppendAudit(ctx, entries)
	if w.opts.Observe != nil {
		w.opts.Observe(len(entries), time.Since(start), err)
	}
	return err
}

// Committed returns the entries as stored (with Seq and Hash) once Wait has
// returned nil.
func (p *Pending) Committed() []Entry { return p.entries }

// Done returns an already-committed Pending (for sinks that keep nothing).
func Done() *Pending { return settled(nil, nil) }
