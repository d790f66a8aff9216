package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
)

// check is one run of the log's check (see Log). It returns a break or why
// the check could not run (err), or, having run, why the log is not
// anchored up to the size it checked (problem).
func (l *Log) check(ctx context.Context, start time.Time) (problem, err error) {
	if err := l.load(ctx); err != nil {
		return nil, err
	}
	st := l.cfg.Store
	l.mu.Lock()
	last := l.last
	l.mu.Unlock()

	// What this signer had committed, read before the store's size: a
	// commit landing in between only makes the store larger. Read after,
	// a commit of this signer's between the two reads looks like entries
	// removed from the store (and Fail breaks the writer for good).
	head := l.cfg.Writer.Head()
	size, err := st.AuditSize(ctx)
	if err != nil {
		return nil, err
	}
	// Whatever the size counts is made durable before it is checkpointed.
	if err := st.SyncAudit(ctx); err != nil {
		return nil, err
	}
	if size < head.Size {
		err := broken("the store holds %d entries, this signer committed %d (entries after seq %d were removed)", size, head.Size, size)
		l.cfg.Writer.Fail(err)
		l.keepHead(ctx, head)
		return nil, err
	}
	if _, err := checkPruneMark(ctx, st); err != nil {
		return nil, err
	}
	if size < last.Size {
		return nil, broken("the store holds %d entries, the trusted checkpoint (%s) has size %d (entries after seq %d were removed or the store was restored from a backup)", size, last.Origin, last.Size, size)
	}
	t, err := l.extend(ctx, last, size)
	if err != nil {
		return nil, err
	}
	root := t.Root()
	if head := l.cfg.Writer.Head(); head.Size == size && head.Root != nil && !bytes.Equal(head.Root, root) {
		return nil, broken("the entries up to seq %d are not the ones this signer committed", size)
	}

	var problems []error
	if size > last.Size || last.Note == nil {
		cp, err := SignCheckpoint(l.cfg.Signer, size, root)
		if err != nil {
			return nil, err
		}
		cp.Epoch = l.epoch
		if err := st.PutCheckpoint(ctx, cp.Size, cp.Note); err != nil {
			return nil, err
		}
		if err := l.toFile(cp, start); err != nil {
			problems = append(problems, err)
		}
		last = cp
		l.mu.Lock()
		l.last, l.pending = cp, cp.Note
		l.mu.Unlock()
	}
	if p, err := l.witness(ctx, last); err != nil {
		return nil, err
	} else if p != nil {
		problems = append(problems, p)
	}
	problem = errors.Join(problems...)
	if problem == nil {
		l.mu.Lock()
		l.anchoredAt = start
		l.mu.Unlock()
	}
	return problem, nil
}

// extend rebuilds the stored tree at the trusted checkpoint, compares it
// with the checkpoint's root, and extends it to size with the stored
// entries, each commit's seal checked (checkSealed) and the stored nodes at
// size compared.
func (l *Log) extend(ctx context.Context, trusted auditlog.Checkpoint, size uint64) (*Tree, error) {
	st := l.cfg.Store
	t := NewTree()
	if trusted.Size > 0 {
		var err error
		if t, err = TreeAt(ctx, st, trusted.Size); err != nil {
			if errors.Is(err, ErrTreeBroken) {
				return nil, broken("at size %d: %v", trusted.Size, err)
			}
			return nil, err
		}
		if !bytes.Equal(t.Root(), trusted.Root) {
			return nil, broken("the stored tree at size %d does not match the trusted checkpoint (entries at or before seq %d were changed)", trusted.Size, trusted.Size)
		}
	}
	if err := l.checkSealed(ctx, t, size); err != nil {
		return nil, err
	}
	if size > trusted.Size {
		stored, err := TreeAt(ctx, st, size)
		if err != nil && !errors.Is(err, ErrTreeBroken) {
			return nil, err
		}
		if err != nil || !bytes.Equal(stored.Root(), t.Root()) {
			return nil, broken("the stored tree nodes up to seq %d do not match the entries", size)
		}
	}
	return t, nil
}

// checkSealed extends t (the tree at the trusted checkpoint) to size with
// the stored entries, checking that every commit since carries a seal of
// the log at its end that verifies and starts where the one before ended:
// an entry no replica committed, or one changed since, has none.
func (l *Log) checkSealed(ctx context.Context, t *Tree, size uint64) error {
	st := l.cfg.Store
	seals, err := st.Seals(ctx, t.Size(), size)
	if err != nil {
		return err
	}
	legacy := false
	if len(seals) == 0 && size > t.Size() {
		// Entries before the first seal ever were written by a signer that
		// did not seal (before version 2 leaves): accepted once, if the
		// store holds no seal at all and they are all such entries.
		sealed, err := st.Sealed(ctx)
		if err != nil {
			return err
		}
		legacy = !sealed
	}
	from := t.Size() // the start of the commit the next seal covers, minus one
	const page = 4096
	for t.Size() < size {
		to := min(size, t.Size()+page)
		leaves, err := st.Leaves(ctx, t.Size(), to)
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
			if legacy && (len(leaf) == 0 || leaf[0] != 1) {
				return broken("entry %d carries no seal: no replica committed it", t.Size()+1)
			}
			h := auditlog.LeafHash(leaf)
			t.Append(h[:], nil)
			if l.cfg.OnEntry != nil {
				l.cfg.OnEntry(t.Size(), leaf)
			}
			if len(seals) == 0 || seals[0].Size != t.Size() {
				continue
			}
			if !l.cfg.Sealer.Check(sealedRange(from, t.Size()), t.Root(), seals[0].MAC) {
				return broken("entries %d..%d do not carry the seal of the commit that wrote them: a store writer inserted or changed them", from+1, t.Size())
			}
			from, seals = t.Size(), seals[1:]
		}
	}
	if !legacy && from != size {
		return broken("entries %d..%d carry no seal: no replica committed them", from+1, size)
	}
	return nil
}

// keepHead records, where the store cannot erase it, that this signer
// committed head: a checkpoint of it in the checkpoint file, so a restart
// still finds the store short.
func (l *Log) keepHead(ctx context.Context, head Head) {
	if l.cfg.File == "" || head.Root == nil {
		return
	}
	cp, err := SignCheckpoint(l.cfg.Signer, head.Size, head.Root)
	if err == nil {
		err = l.toFile(cp, l.cfg.Clock())
	}
	if err != nil {
		l.cfg.Log.Error("the checkpoint of this signer's last commit could not be written to the checkpoint file", "err", err)
	}
}

func (l *Log) toFile(cp auditlog.Checkpoint, at time.Time) error {
	if l.cfg.File == "" {
		return nil
	}
	if err := appendFile(l.cfg.File, cp, at); err != nil {
		return fmt.Errorf("checkpoint file %s (SIGNER_CHECKPOINT_LOG): %w", l.cfg.File, err)
	}
	return nil
}

// witness has the witnesses cosign last, once per size (and once per
// process, so that a restarted signer learns what they hold before it
// trusts its store). It returns a break (a witness holds more than the
// store, or another tree) or why the quorum was not reached.
func (l *Log) witness(ctx context.Context, last auditlog.Checkpoint) (problem, err error) {
	ws := l.cfg.Witnesses
	if ws == nil || !ws.Policy().Required() {
		return nil, nil
	}
	l.mu.Lock()
	done := l.witnessed.Size == last.Size && l.witnessed.Note != nil && l.pushed
	pending := l.pending
	l.mu.Unlock()
	if done {
		return nil, nil
	}
	if pending == nil {
		pending = last.Note
	}
	skip := map[string]bool{}
	for _, n := range ws.Policy().Cosigners(pending) {
		skip[n] = true
	}
	if !l.pushed {
		skip = nil // ask every witness once per process
	}
	cp := last
	cp.Note = last.Note
	note, results := ws.push(ctx, cp, func(ctx context.Context, old uint64) ([][]byte, error) {
		return ConsistencyProof(ctx, l.cfg.Store, old, last.Size)
	}, skip)
	if pending != nil {
		note, _ = ws.Policy().Cosign(note, pending[bytes.LastIndex(pending, []byte("\n\n"))+2:])
	}
	var problems []error
	for _, r := range results {
		switch {
		case r.fork:
			return nil, broken("witness %s cosigned another tree at size %d than the store holds: the store's history is not the one it saw (restored from a backup, or rewritten)", r.name, r.forkAt)
		case r.holds > 0:
			size, err := l.cfg.Store.AuditSize(ctx)
			if err != nil {
				return nil, err
			}
			if size < r.holds {
				return nil, broken("witness %s cosigned size %d, the store holds %d entries (entries after seq %d were removed, or the store was restored from a backup; docs/operations.md, \"Restore\")", r.name, r.holds, size, size)
			}
			problems = append(problems, fmt.Errorf("witness %s holds size %d, newer than this check's %d (another replica's checkpoint): next check", r.name, r.holds, last.Size))
		case r.err != nil:
			problems = append(problems, fmt.Errorf("witness %s: %w", r.name, r.err))
		}
	}
	l.mu.Lock()
	l.pending, l.pushed = note, true
	l.mu.Unlock()
	if !ws.Policy().Satisfied(note) {
		problems = append(problems, fmt.Errorf("the witness quorum has not cosigned size %d (cosigned by %v)", last.Size, ws.Policy().Cosigners(note)))
		return errors.Join(problems...), nil
	}
	cp.Note = note
	if err := l.cfg.Store.PutWitnessed(ctx, cp.Size, cp.Note); err != nil {
		return nil, err
	}
	if err := l.toFile(cp, l.cfg.Clock()); err != nil {
		problems = append(problems, err)
	}
	l.mu.Lock()
	l.witnessed = cp
	l.mu.Unlock()
	return errors.Join(problems...), nil
}

// load reads, once, what the log trusts: the newest checkpoint of its
// epoch among the store's (verified), the checkpoint file's (its largest,
// verified) and the witnessed ones, and when the log was last anchored (the
// witnesses' own time on the newest witnessed checkpoint). A checkpoint
// that does not verify, an unreadable file, or a file that is missing
// while the store holds entries, breaks the log.
func (l *Log) load(ctx context.Context) error {
	l.mu.Lock()
	loaded := l.loaded
	l.mu.Unlock()
	if loaded {
		return nil
	}
	v, origin := l.cfg.Verifier, l.EpochOrigin()
	epoch := auditlog.EpochOf(v.Origin(), origin)
	best := auditlog.Checkpoint{Origin: origin, Epoch: epoch, Root: EmptyRoot()}
	consider := func(src string, note []byte) error {
		if note == nil {
			return nil
		}
		cp, err := v.Open(note)
		if err != nil {
			return broken("the newest checkpoint in the %s does not verify with this log's key: %v", src, err)
		}
		if cp.Epoch > epoch {
			return broken("the %s holds a checkpoint of epoch %d (%s), this signer serves epoch %d: set SIGNER_AUDIT_EPOCH to %d, or the store was replaced", src, cp.Epoch, cp.Origin, epoch, cp.Epoch)
		}
		if cp.Epoch == epoch && (cp.Size > best.Size || best.Note == nil) {
			best = cp
		}
		return nil
	}
	stored, err := l.cfg.Store.LatestCheckpoint(ctx)
	if err != nil {
		return err
	}
	if err := consider("store", stored); err != nil {
		return err
	}
	var witnessed auditlog.Checkpoint
	if ws := l.cfg.Witnesses; ws != nil && ws.Policy().Required() {
		note, err := l.cfg.Store.Witnessed(ctx, math.MaxUint64)
		if err != nil {
			return err
		}
		if note != nil {
			// Cosignatures are the witnesses' own: a store writer cannot
			// make one, so a witnessed checkpoint that does not verify is
			// someone's forgery; one under another policy is not counted.
			if cp, err := v.OpenWitnessed(note, ws.Policy()); err == nil && cp.Epoch == epoch {
				witnessed = cp
			} else if errors.Is(err, auditlog.ErrCheckpoint) {
				return broken("the newest witnessed checkpoint in the store does not verify: %v", err)
			}
		}
		if err := consider("store's witnessed checkpoints", witnessed.Note); err != nil {
			return err
		}
	}
	if l.cfg.File != "" {
		a, err := readAnchor(l.cfg.File, v.Origin())
		if err != nil {
			return err
		}
		size, err := l.cfg.Store.AuditSize(ctx)
		if err != nil {
			return err
		}
		if a.lines == 0 && size > 0 && l.cfg.InitFile {
			l.cfg.Log.Warn("the checkpoint file is started from the store's newest checkpoint (SIGNER_CHECKPOINT_LOG_INIT): it anchors the log from here on, not before", "file", l.cfg.File, "size", size)
		} else if a.lines == 0 && size > 0 {
			return broken("the checkpoint file %s (SIGNER_CHECKPOINT_LOG) is missing or empty, but the store holds %d entries: restore the file from its off-box copy; to start a file for a log that never had one, set SIGNER_CHECKPOINT_LOG_INIT=true once (docs/operations.md)", l.cfg.File, size)
		}
		if err := consider("checkpoint file "+l.cfg.File, a.largest[epoch]); err != nil {
			return err
		}
		if e := a.maxEpoch(); e > epoch {
			return broken("the checkpoint file %s holds checkpoints of epoch %d, this signer serves epoch %d", l.cfg.File, e, epoch)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last, l.pending, l.witnessed, l.loaded = best, best.Note, witnessed, true
	if witnessed.Note != nil && l.anchoredAt.IsZero() {
		l.anchoredAt = l.cfg.Witnesses.Policy().CosignedAt(witnessed.Note)
	}
	return nil
}

// sealedRange is the commit that ends at end and starts after from.
func sealedRange(from, end uint64) SealedRange { return SealedRange{Start: from + 1, End: end} }
