package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// PutWitnessed keeps a checkpoint with the cosignatures that met the
	// witness policy, unless one of that size is kept.
	PutWitnessed(ctx context.Context, size uint64, note []byte) error
	// Witnessed returns the note of the largest witnessed checkpoint at or
	// below size, or nil.
	Witnessed(ctx context.Context, atOrBelow uint64) ([]byte, error)
	// Seals returns the seals of sizes in (after, upto], ascending.
	Seals(ctx context.Context, after, upto uint64) ([]StoredSeal, error)
	// Sealed reports whether any commit was ever stored with a seal.
	Sealed(ctx context.Context) (bool, error)
	// PrunedUpTo is the seq up to which entries were exported and pruned
	// (0: none). Leaves at or below it are gone; their tree nodes stay.
	PrunedUpTo(ctx context.Context) (uint64, error)
	// PruneRecord is the seq of the log record (auditlog.PruneRecord) the
	// prune mark names, 0 if it names none.
	PruneRecord(ctx context.Context) (uint64, error)
	// SyncAudit returns once every entry the store has shown is durable:
	// a store may show a commit before its flush (Postgres: to keep the
	// flush out of the log's lock), and a checkpoint must never cover
	// entries a crash could still take.
	SyncAudit(ctx context.Context) error
}

// LogConfig wires a Log.
type LogConfig struct {
	Store  Store
	Writer *Writer // the writer whose commits this log checkpoints
	// Signer signs checkpoints under the origin of the log's epoch.
	Signer *NoteSigner
	// Verifier checks checkpoints read back from the store, the file and
	// witnesses.
	Verifier *auditlog.Verifier
	// Sealer checks the seals of the commits since the newest checkpoint.
	Sealer *Sealer
	// Witnesses, if set with a policy that asks for cosignatures, get every
	// checkpoint; a checkpoint anchors the log once their quorum cosigned it.
	Witnesses *Witnesses
	// File, if set, gets every checkpoint signed and cosigned, one JSON line
	// each, before it counts; its largest checkpoint is trusted at start-up.
	File string
	// InitFile accepts a missing or empty checkpoint file beside a store
	// that holds entries, and starts it (SIGNER_CHECKPOINT_LOG_INIT: once,
	// deliberately, for a log that never had one).
	InitFile bool
	// MaxUnanchored bounds how long the signer goes on appending while its
	// log has not been checked whole and anchored (witnessed, written to the
	// file) up to its size; default one minute.
	MaxUnanchored time.Duration
	// Interval between checks and checkpoints; default 10s.
	Interval time.Duration
	// SweepInterval between full replays of the stored log; default 1h.
	SweepInterval time.Duration
	Clock         func() time.Time
	Log           *slog.Logger
	// Observe, if set, is told the log's status after every check.
	Observe func(Status)
	// OnEntry, if set, sees every entry the log replays or checks (the
	// start-up sweep before anything is served, then each check's new
	// entries), in log order within each: what the log says of the keys
	// (keyring.History) comes from here.
	OnEntry func(seq uint64, leaf []byte)
}

// Status is the log's state, for metrics and readiness.
type Status struct {
	Size          uint64    // the newest checkpoint's size
	WitnessedSize uint64    // the newest witnessed checkpoint's size
	AnchoredAt    time.Time // when the log was last checked whole and anchored
	Broken        error     // a break, or nil
	Unanchored    error     // not anchored for longer than the bound, or nil
	Problem       error     // why the last check did not anchor the log, or nil
}

// Log checks the stored log and anchors it outside the store. Every
// Interval it checks the store against the newest trusted checkpoint and
// the writer's own head, checks the seals of every commit since, signs a
// checkpoint, has its witnesses cosign it and writes it to the checkpoint
// file. A mismatch anywhere breaks the log; a log not checked and anchored
// for longer than MaxUnanchored is refused too. Either way the writer
// appends nothing, so no signature leaves the signer (fail closed): a break
// until the store is whole again, the other until a check succeeds.
type Log struct {
	cfg   LogConfig
	epoch int // the epoch the signer signs under

	checkMu sync.Mutex // serialises checks

	mu         sync.Mutex // guards what follows
	loaded     bool
	last       auditlog.Checkpoint // the newest checkpoint signed or trusted
	witnessed  auditlog.Checkpoint // the newest witnessed checkpoint
	pending    []byte              // last's note with the cosignatures so far
	pushed     bool                // pushed to the witnesses in this process
	anchoredAt time.Time
	broken     error
	problem    error
	unanchored error

	kick chan chan error
}

// NewLog returns a Log; call Start before serving, then Run.
func NewLog(cfg LogConfig) *Log {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = time.Hour
	}
	if cfg.MaxUnanchored <= 0 {
		cfg.MaxUnanchored = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Log{cfg: cfg, epoch: auditlog.EpochOf(cfg.Verifier.Origin(), cfg.Signer.Name()), kick: make(chan chan error)}
}

// Origin is the log's epoch-1 origin.
func (l *Log) Origin() string { return l.cfg.Verifier.Origin() }

// EpochOrigin is the origin this log signs under.
func (l *Log) EpochOrigin() string { return l.cfg.Signer.Name() }

// Latest returns the newest checkpoint this log signed or trusts.
func (l *Log) Latest() auditlog.Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Witnessed returns the newest checkpoint its witnesses cosigned (zero
// without witnesses, or before the first).
func (l *Log) Witnessed() auditlog.Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.witnessed
}

// Broken returns why the log is refused (broken, or not anchored for too
// long), or nil.
func (l *Log) Broken() error { return l.cfg.Writer.Broken() }

// Status is the log's state.
func (l *Log) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.statusLocked()
}

func (l *Log) statusLocked() Status {
	b := l.broken
	if f := l.cfg.Writer.Failed(); f != nil {
		b = f
	}
	return Status{Size: l.last.Size, WitnessedSize: l.witnessed.Size, AnchoredAt: l.anchoredAt,
		Broken: b, Unanchored: l.unanchored, Problem: l.problem}
}

// sweepProgressEvery is how often a long sweep says how far it got.
const sweepProgressEvery = 5 * time.Second

// Start sweeps the whole stored log and runs the first check: call it once
// before serving, so no RPC is answered before the log was found whole (or
// refused).
func (l *Log) Start(ctx context.Context) {
	if err := l.Sweep(ctx); err != nil && !errors.Is(err, signerr.ErrAuditLogBroken) {
		l.cfg.Log.Warn("audit log sweep could not run at start-up; the signer refuses to serve until a check succeeds", "err", err)
	}
	l.Check(ctx)
}

// Run checks and checkpoints every interval and sweeps every sweep
// interval, until ctx ends.
func (l *Log) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	sweep := time.NewTicker(l.cfg.SweepInterval)
	defer sweep.Stop()
	swept := make(chan struct{}, 1)
	swept <- struct{}{}
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
				go func() {
					if err := l.Sweep(ctx); err != nil && !errors.Is(err, signerr.ErrAuditLogBroken) && ctx.Err() == nil {
						l.cfg.Log.Warn("audit log sweep could not run", "err", err)
					}
					swept <- struct{}{}
				}()
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
	start := time.Now()
	l.cfg.Log.Info("audit log sweep started")
	lastReport := start
	progress := func(done, size uint64) {
		if now := time.Now(); now.Sub(lastReport) >= sweepProgressEvery {
			lastReport = now
			l.cfg.Log.Info("audit log sweep in progress", "entries", done, "of", size, "elapsed", now.Sub(start).Round(time.Millisecond))
		}
	}
	r, err := replayStore(ctx, l.cfg.Store, l.cfg.Verifier, l.cfg.OnEntry, progress)
	entries := uint64(0)
	if r != nil {
		entries = r.Checked
	}
	if err == nil {
		l.cfg.Log.Info("audit log sweep done", "entries", entries, "took", time.Since(start).Round(time.Millisecond))
	} else {
		l.cfg.Log.Warn("audit log sweep ended early", "entries", entries, "took", time.Since(start).Round(time.Millisecond), "err", err)
	}
	var be *BreakError
	if errors.As(err, &be) {
		err = fmt.Errorf("%w: %v", signerr.ErrAuditLogBroken, be)
		l.mu.Lock()
		l.setBrokenLocked(err)
		l.evaluateLocked()
		l.mu.Unlock()
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
	if err := l.Broken(); err != nil {
		return auditlog.Checkpoint{}, err
	}
	return l.Latest(), nil
}

// Check compares the store with what the log trusts and anchors it (see
// Log). It returns the break, or why the check could not run; a check that
// ran but could not anchor (a witness did not answer) returns nil and
// records the problem in Status.
func (l *Log) Check(ctx context.Context) error {
	l.checkMu.Lock()
	defer l.checkMu.Unlock()
	start := l.cfg.Clock()
	problem, err := l.check(ctx, start)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		if l.broken != nil {
			l.cfg.Log.Warn("audit log matches its anchors again; signing resumes", "size", l.last.Size)
		}
		l.broken = nil
		l.setProblemLocked(problem)
	case errors.Is(err, signerr.ErrAuditLogBroken):
		l.setBrokenLocked(err)
	default:
		l.setProblemLocked(fmt.Errorf("the check could not run: %w", err))
	}
	l.evaluateLocked()
	return err
}

// Final runs a last check after the writer drained, so that the last
// commits are signed, cosigned and written to the checkpoint file: after a
// graceful stop nothing the signer answered is outside a checkpoint.
func (l *Log) Final(ctx context.Context) error {
	err := l.Check(ctx)
	st := l.Status()
	if err == nil && st.Problem == nil {
		l.cfg.Log.Info("audit log anchored at stop", "size", st.Size, "witnessed_size", st.WitnessedSize)
	} else {
		l.cfg.Log.Warn("audit log not anchored at stop: the entries since the last anchored checkpoint rely on the store alone until the next start",
			"size", st.Size, "witnessed_size", st.WitnessedSize, "err", errors.Join(err, st.Problem))
	}
	return err
}

func (l *Log) setBrokenLocked(err error) {
	if l.broken == nil || l.broken.Error() != err.Error() {
		l.cfg.Log.Error("audit log broken: refusing every RPC until the store matches its anchors again (docs/audit.md)", "err", err)
	}
	l.broken = err
}

func (l *Log) setProblemLocked(p error) {
	if p != nil && (l.problem == nil || l.problem.Error() != p.Error()) {
		l.cfg.Log.Warn("audit log not anchored by this check", "err", p, "bound", l.cfg.MaxUnanchored)
	}
	if p == nil && l.problem != nil {
		l.cfg.Log.Info("audit log anchored again", "size", l.last.Size, "witnessed_size", l.witnessed.Size)
	}
	l.problem = p
}

// evaluateLocked is the one rule that decides whether the writer may
// append: not while the log is broken, nor while it has gone unanchored
// for longer than the bound (a check that cannot run, a witness quorum that
// does not answer, a checkpoint file that cannot be written all count).
func (l *Log) evaluateLocked() {
	var refusal error
	l.unanchored = nil
	if age := l.cfg.Clock().Sub(l.anchoredAt); l.broken == nil && age > l.cfg.MaxUnanchored {
		why := l.problem
		if why == nil {
			why = errors.New("no check has anchored it yet")
		}
		since := "never"
		if !l.anchoredAt.IsZero() {
			since = age.Round(time.Second).String() + " ago"
		}
		l.unanchored = fmt.Errorf("%w: last checked whole and anchored %s (bound %s, SIGNER_AUDIT_MAX_UNANCHORED): %v",
			signerr.ErrAuditLogUnanchored, since, l.cfg.MaxUnanchored, why)
	}
	switch {
	case l.broken != nil:
		refusal = l.broken
	case l.unanchored != nil:
		refusal = l.unanchored
	}
	prev := l.cfg.Writer.Broken()
	l.cfg.Writer.Refuse(refusal)
	if refusal != nil && (prev == nil || prev.Error() != refusal.Error()) && l.broken == nil {
		l.cfg.Log.Error("audit log not anchored for too long: refusing every RPC until a check anchors it (docs/audit.md)", "err", refusal)
	}
	if l.cfg.Observe != nil {
		l.cfg.Observe(l.statusLocked())
	}
}

func broken(format string, args ...any) error {
	return fmt.Errorf("%w: %s", signerr.ErrAuditLogBroken, fmt.Sprintf(format, args...))
}

// ReplayStore replays every entry the store holds (from the prune point)
// against its stored tree nodes and every stored checkpoint, each verified
// with v. The error is a *BreakError when the log is broken.
func ReplayStore(ctx context.Context, s Store, v *auditlog.Verifier) (*Replay, error) {
	return replayStore(ctx, s, v, nil, nil)
}

// replayStore is ReplayStore; onEntry, if set, sees every entry, and
// progress, if set, is told after each page how many entries of how many
// were replayed.
func replayStore(ctx context.Context, s Store, v *auditlog.Verifier, onEntry func(uint64, []byte), progress func(done, size uint64)) (*Replay, error) {
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
			if cp.Size <= after {
				return nil, &BreakError{Problem: fmt.Sprintf("a stored checkpoint of size %d is kept above size %d", cp.Size, after)}
			}
			cps = append(cps, cp)
			after = cp.Size
		}
		if len(notes) < 1000 {
			break
		}
	}
	pruned, err := checkPruneMark(ctx, s)
	if err != nil {
		var be *BreakError
		if errors.Is(err, signerr.ErrAuditLogBroken) && !errors.As(err, &be) {
			return nil, &BreakError{To: pruned, Problem: err.Error()}
		}
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
	r.onEntry = onEntry
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
		if progress != nil {
			progress(to-pruned, size-pruned)
		}
	}
	return r, r.Finish(ctx)
}
