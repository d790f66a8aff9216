package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
)

// Store is everything the log needs from a store.
type Store interface {
	Appender
	// PutCheckpoint keeps a signed checkpoint unless one of that size is
	// already kept (replicas sign the same sizes).
	PutCheckpoint(ctx context.Context, size uint64, note []byte) error
	// LatestCheckpoint returns the signed note of the largest size kept, or
	// nil if there is none.
	LatestCheckpoint(ctx context.Context) ([]byte, error)
	// Checkpoints returns the signed notes of sizes above after, ascending,
	// at most limit.
	Checkpoints(ctx context.Context, after uint64, limit int) ([][]byte, error)
	// PrunedUpTo is the seq up to which entries were exported and pruned
	// (0: none). Leaves at or below it are gone; their tree nodes stay.
	PrunedUpTo(ctx context.Context) (uint64, error)
}

// ReplayStore replays every entry the store holds (from the prune point)
// against its stored tree nodes and every stored checkpoint, each verified
// with v. The error is a *BreakError when the log is broken.
func ReplayStore(ctx context.Context, s Store, v *auditlog.Verifier) (*Replay, error) {
	var cps []auditlog.Checkpoint
	for after := uint64(0); ; {
		notes, err := s.Checkpoints(ctx, after, 1000)
		if err != nil {
			return nil, err
		}
		for _, n := range notes {
			cp, err := v.Open(n)
			if err != nil {
				return nil, &BreakError{Problem: fmt.Sprintf("a stored checkpoint does not verify: %v", err)}
			}
			cps = append(cps, cp)
			after = cp.Size
		}
		if len(notes) < 1000 {
			break
		}
	}
	pruned, err := s.PrunedUpTo(ctx)
	if err != nil {
		return nil, err
	}
	start, err := TreeAt(ctx, s, pruned)
	if err != nil {
		if errors.Is(err, ErrTreeBroken) {
			return nil, &BreakError{From: 0, To: pruned, Problem: err.Error()}
		}
		return nil, err
	}
	size, err := s.AuditSize(ctx)
	if err != nil {
		return nil, err
	}
	r := NewReplay(start, cps, s.Nodes)
	const page = 4096
	for from := pruned; from < size; {
		to := min(size, from+page)
		leaves, err := s.Leaves(ctx, from, to)
		if errors.Is(err, ErrTreeBroken) {
			// Replay what is there, one by one, so the gap is named.
			for seq := from + 1; seq <= to; seq++ {
				one, err := s.Leaves(ctx, seq-1, seq)
				if errors.Is(err, ErrTreeBroken) {
					continue
				}
				if err != nil {
					return r, err
				}
				if err := r.Add(ctx, seq, one[0]); err != nil {
					return r, err
				}
			}
			if r.Size() < to {
				return r, &BreakError{Seq: r.Size() + 1, Problem: fmt.Sprintf("entry %d is missing", r.Size()+1)}
			}
			from = to
			continue
		}
		if err != nil {
			return r, err
		}
		for i, leaf := range leaves {
			if err := r.Add(ctx, from+uint64(i)+1, leaf); err != nil {
				return r, err
			}
		}
		from = to
	}
	return r, r.Finish(ctx)
}

// LogConfig wires a Log.
type LogConfig struct {
	Store  Store
	Writer *Writer // the writer whose commits this log checkpoints
	Signer *NoteSigner
	// Verifier checks checkpoints read back from the store or the file.
	Verifier *auditlog.Verifier
	// Interval between checks and checkpoints; default 10s.
	Interval time.Duration
	// SweepInterval between full replays of the stored log; default 1h.
	// Run sweeps once at its start.
	SweepInterval time.Duration
	// File, if set, gets every checkpoint this signer signs, one JSON line
	// each, and its last line is trusted at start-up like the store's.
	File string
	Log  *slog.Logger
	// Observe, if set, is told the outcome of every check (for metrics).
	Observe func(size uint64, broken bool)
}

// Log checks the stored tree against the last signed checkpoint and signs
// new checkpoints. A mismatch stops the writer (fail closed): no entry is
// appended and so no signature is released until an operator acts.
type Log struct {
	cfg LogConfig

	mu     sync.Mutex          // serialises checks
	last   auditlog.Checkpoint // the newest checkpoint known good
	kick   chan chan error
	broken error
}

// NewLog returns a Log; call Check once before serving, then Run.
func NewLog(cfg LogConfig) *Log {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Log{cfg: cfg, kick: make(chan chan error)}
}

// VerifierKey-independent accessors.

// Origin is the log's origin line.
func (l *Log) Origin() string { return l.cfg.Verifier.Origin() }

// Latest returns the newest checkpoint this log signed or verified.
func (l *Log) Latest() auditlog.Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Broken returns why the log is refused, or nil.
func (l *Log) Broken() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// Run checks and checkpoints every interval, and sweeps at its start and
// every sweep interval, until ctx ends.
func (l *Log) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	sweep := time.NewTicker(l.cfg.SweepInterval)
	defer sweep.Stop()
	swept := make(chan struct{}, 1)
	go func() {
		if err := l.Sweep(ctx); err != nil && !errors.Is(err, signerr.ErrAuditLogBroken) && ctx.Err() == nil {
			l.cfg.Log.Warn("audit log sweep could not run", "err", err)
		}
		swept <- struct{}{}
	}()
	for {
		select {
		case <-ctx.Done():
			<-swept
			return
		case <-t.C:
			l.Check(ctx)
		case <-sweep.C:
			select {
			case <-swept: // the previous sweep is done: start the next
				go func() { l.Sweep(ctx); swept <- struct{}{} }()
			default:
			}
		case reply := <-l.kick:
			reply <- l.Check(ctx)
		}
	}
}

// Sweep replays every stored entry against the stored tree and every
// checkpoint (ReplayStore) and, like Check, breaks the log on a mismatch.
// Check covers the tail since the last checkpoint on every interval; Sweep
// covers everything, at start-up and every SweepInterval.
func (l *Log) Sweep(ctx context.Context) error {
	_, err := ReplayStore(ctx, l.cfg.Store, l.cfg.Verifier)
	var be *BreakError
	if errors.As(err, &be) {
		err = fmt.Errorf("%w: %v", signerr.ErrAuditLogBroken, be)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.fail(err)
	}
	return err
}

// Checkpoint returns a checkpoint covering every entry committed before the
// call, signing one now if the latest does not (coalesced with the periodic
// check when Run is running).
func (l *Log) Checkpoint(ctx context.Context) (auditlog.Checkpoint, error) {
	reply := make(chan error, 1)
	select {
	case l.kick <- reply:
		select {
		case err := <-reply:
			if err != nil {
				return auditlog.Checkpoint{}, err
			}
		case <-ctx.Done():
			return auditlog.Checkpoint{}, ctx.Err()
		}
	default:
		// Run is not running (or busy with a check that may predate the
		// call): check here; Check serialises.
		if err := l.Check(ctx); err != nil {
			return auditlog.Checkpoint{}, err
		}
	}
	return l.Latest(), nil
}

// Check compares the store with the newest trusted checkpoint and, if it
// matches and has grown, signs a new one. The newest trusted checkpoint is
// the one this process last signed or verified, else the newest of the
// store's and the file's (each verified with the checkpoint key). A store
// that holds fewer entries, a different tree at the checkpoint's size, or
// leaves since the checkpoint that do not hash to what this signer
// committed, breaks the log.
func (l *Log) Check(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.check(ctx)
	switch {
	case err == nil:
		if l.broken != nil {
			l.cfg.Log.Warn("audit log matches its checkpoint again; signing resumes", "size", l.last.Size)
		}
		l.broken = nil
		l.cfg.Writer.SetBroken(nil)
	case errors.Is(err, signerr.ErrAuditLogBroken):
		l.fail(err)
	default:
		l.cfg.Log.Warn("audit log check could not run", "err", err)
	}
	if l.cfg.Observe != nil {
		l.cfg.Observe(l.last.Size, l.broken != nil)
	}
	return err
}

// fail breaks the log: the writer appends nothing more. l.mu is held.
func (l *Log) fail(err error) {
	if l.broken == nil || l.broken.Error() != err.Error() {
		l.cfg.Log.Error("audit log broken: refusing every RPC until an operator acts (see docs/audit.md)", "err", err)
	}
	l.broken = err
	l.cfg.Writer.SetBroken(err)
	if l.cfg.Observe != nil {
		l.cfg.Observe(l.last.Size, true)
	}
}

func broken(format string, args ...any) error {
	return fmt.Errorf("%w: %s", signerr.ErrAuditLogBroken, fmt.Sprintf(format, args...))
}

func (l *Log) check(ctx context.Context) error {
	if l.last.Note == nil {
		cp, err := l.trusted(ctx)
		if err != nil {
			return err
		}
		l.last = cp
	}
	last := l.last
	size, err := l.cfg.Store.AuditSize(ctx)
	if err != nil {
		return err
	}
	if size < last.Size {
		return broken("the store holds %d entries, the checkpoint signed at size %d (entries after seq %d were removed)", size, last.Size, size)
	}
	var t *Tree
	if last.Size == 0 {
		t = NewTree()
	} else {
		if t, err = TreeAt(ctx, l.cfg.Store, last.Size); err != nil {
			if errors.Is(err, ErrTreeBroken) {
				return broken("at size %d: %v", last.Size, err)
			}
			return err
		}
		if !bytes.Equal(t.Root(), last.Root) {
			return broken("the stored tree at size %d does not match the signed checkpoint (entries at or before seq %d were changed)", last.Size, last.Size)
		}
	}
	// Leaves since the checkpoint: recompute from their bytes, compare with
	// the roots this signer committed, and with the stored nodes.
	const page = 4096
	for t.Size() < size {
		to := min(size, t.Size()+page)
		leaves, err := l.cfg.Store.Leaves(ctx, t.Size(), to)
		if err != nil {
			if errors.Is(err, ErrTreeBroken) || errors.Is(err, ErrPruned) {
				return broken("reading entries %d..%d: %v", t.Size()+1, to, err)
			}
			return err
		}
		if uint64(len(leaves)) != to-t.Size() {
			return broken("entries %d..%d: %d of them are missing", t.Size()+1, to, to-t.Size()-uint64(len(leaves)))
		}
		for _, leaf := range leaves {
			h := auditlog.LeafHash(leaf)
			t.Append(h[:], nil)
			if want, ok := l.cfg.Writer.RootAt(t.Size()); ok && !bytes.Equal(want, t.Root()) {
				return broken("entries up to seq %d do not hash to what this signer committed", t.Size())
			}
		}
	}
	root := t.Root()
	if size > last.Size {
		stored, err := TreeAt(ctx, l.cfg.Store, size)
		if err != nil && !errors.Is(err, ErrTreeBroken) {
			return err
		}
		if err != nil || !bytes.Equal(stored.Root(), root) {
			return broken("the stored tree nodes up to seq %d do not match the entries", size)
		}
	}
	if size == last.Size && last.Note != nil {
		return nil
	}
	cp, err := SignCheckpoint(l.cfg.Signer, size, root)
	if err != nil {
		return err
	}
	if err := l.cfg.Store.PutCheckpoint(ctx, cp.Size, cp.Note); err != nil {
		return err
	}
	if l.cfg.File != "" {
		if err := appendFile(l.cfg.File, cp); err != nil {
			l.cfg.Log.Error("checkpoint not appended to the checkpoint log file", "file", l.cfg.File, "err", err)
		}
	}
	l.last = cp
	return nil
}

// trusted returns the newest checkpoint of the store and the file, each
// verified; a signature that does not verify breaks the log (someone wrote
// a checkpoint this signer did not sign). With neither, the empty log.
func (l *Log) trusted(ctx context.Context) (auditlog.Checkpoint, error) {
	best := auditlog.Checkpoint{Origin: l.Origin(), Root: EmptyRoot()}
	stored, err := l.cfg.Store.LatestCheckpoint(ctx)
	if err != nil {
		return best, err
	}
	var fromFile []byte
	if l.cfg.File != "" {
		if fromFile, err = lastInFile(l.cfg.File); err != nil {
			return best, err
		}
	}
	for _, src := range []struct {
		name string
		note []byte
	}{{"store", stored}, {"file " + l.cfg.File, fromFile}} {
		if src.note == nil {
			continue
		}
		cp, err := l.cfg.Verifier.Open(src.note)
		if err != nil {
			return best, broken("the newest checkpoint in the %s does not verify with this log's key: %v", src.name, err)
		}
		if cp.Size > best.Size || best.Note == nil {
			best = cp
		}
	}
	return best, nil
}

// fileLine is one checkpoint in the checkpoint log file.
type fileLine struct {
	Origin string    `json:"origin"`
	Size   uint64    `json:"size"`
	Root   []byte    `json:"root"`
	Note   string    `json:"note"`
	Time   time.Time `json:"time"`
}

func appendFile(path string, cp auditlog.Checkpoint) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	line, err := json.Marshal(fileLine{Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Note: string(cp.Note), Time: time.Now().UTC()})
	if err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// lastInFile returns the note of the file's last complete line, nil for a
// missing or empty file.
func lastInFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var last []byte
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			last = line
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if last == nil {
		return nil, nil
	}
	var fl fileLine
	if err := json.Unmarshal(last, &fl); err != nil {
		return nil, fmt.Errorf("audit: checkpoint log %s: last line: %w", path, err)
	}
	return []byte(fl.Note), nil
}

// ReadCheckpointFile parses every line of a checkpoint log file (for
// signerctl and witnesses).
func ReadCheckpointFile(r io.Reader) ([][]byte, error) {
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var fl fileLine
		if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
			return nil, fmt.Errorf("audit: checkpoint log line %d: %w", len(out)+1, err)
		}
		out = append(out, []byte(fl.Note))
	}
	return out, sc.Err()
}

// findWindow is how far around its time a request's entries are looked
// for: request ids carry the admission time, leaves are in commit order,
// and the two differ by a request's latency and the replicas' clock skew.
const findWindow = 5 * time.Second

// FindRequest returns the seq of the first entry of request id. The log
// keeps no index for it (an index costs every commit more than lookups
// save): request ids start with their time, so a binary search by that
// time finds the neighbourhood and a scan of it the entry. The error wraps
// signerr.ErrKeyNotFound when the request is not in the (unpruned) log.
func FindRequest(ctx context.Context, s Store, id auditlog.RequestID) (uint64, error) {
	pruned, err := s.PrunedUpTo(ctx)
	if err != nil {
		return 0, err
	}
	size, err := s.AuditSize(ctx)
	if err != nil {
		return 0, err
	}
	from := id.Time().Add(-findWindow)
	leafTime := func(i uint64) (time.Time, error) {
		l, err := s.Leaves(ctx, i, i+1)
		if err != nil {
			return time.Time{}, err
		}
		return requestTime(l[0])
	}
	lo, hi := pruned, size // leaf indexes
	for lo < hi {
		mid := lo + (hi-lo)/2
		t, err := leafTime(mid)
		if err != nil {
			return 0, err
		}
		if t.Before(from) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	until := id.Time().Add(findWindow)
	const page = 1024
	for i := lo; i < size; i += page {
		leaves, err := s.Leaves(ctx, i, min(size, i+page))
		if err != nil {
			return 0, err
		}
		for j, l := range leaves {
			if len(l) > len(id) && bytes.Equal(l[1:1+len(id)], id[:]) {
				return i + uint64(j) + 1, nil
			}
			if t, err := requestTime(l); err == nil && t.After(until) {
				return 0, fmt.Errorf("audit: request %s: %w", id, signerr.ErrKeyNotFound)
			}
		}
	}
	return 0, fmt.Errorf("audit: request %s: %w", id, signerr.ErrKeyNotFound)
}

// requestTime reads the time in a leaf's request id without decoding the
// rest.
func requestTime(leaf []byte) (time.Time, error) {
	var id auditlog.RequestID
	if len(leaf) < 1+len(id) || leaf[0] < 1 || leaf[0] > auditlog.LeafVersion {
		return time.Time{}, fmt.Errorf("%w: leaf too short", ErrTreeBroken)
	}
	copy(id[:], leaf[1:])
	return id.Time(), nil
}
