package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/plexsphere/signer/client/auditlog"
)

// A restore is a rollback: the witnesses (and the checkpoint file) hold
// checkpoints the restored store is short of, so the signer refuses it as
// broken, as it must, since a store writer's rollback looks the same. An
// operator who restores on purpose says so with SIGNER_AUDIT_EPOCH: the log
// continues from the restored store under a new origin, "<origin>/epoch-<n>"
// (witnesses must list it; the checkpoint key is the same), and its first
// entry, an EpochRecord, records what the previous epoch's newest
// checkpoint was, the restored size and root, and why. A store writer
// cannot start an epoch (it is the signer's configuration), and an epoch
// start cannot hide a rollback (it is in the log, under the new
// checkpoints, for every auditor to see).

// CurrentEpoch is the newest epoch the store or the checkpoint file holds a
// checkpoint of, each verified with v; 0 for a log without checkpoints.
func CurrentEpoch(ctx context.Context, s Store, v *auditlog.Verifier, file string) (int, error) {
	epoch := 0
	for _, get := range []func(context.Context) ([]byte, error){
		s.LatestCheckpoint,
		func(ctx context.Context) ([]byte, error) { return s.Witnessed(ctx, math.MaxUint64) },
	} {
		note, err := get(ctx)
		if err != nil {
			return 0, err
		}
		if note == nil {
			continue
		}
		cp, err := v.Open(note)
		if err != nil {
			return 0, broken("the store's newest checkpoint does not verify with this log's key: %v", err)
		}
		epoch = max(epoch, cp.Epoch)
	}
	if file != "" {
		a, err := readAnchor(file, v.Origin())
		if err != nil {
			return 0, err
		}
		if e := a.maxEpoch(); e > 0 {
			if _, err := v.Open(a.largest[e]); err != nil {
				return 0, broken("the checkpoint file %s: the newest checkpoint of epoch %d does not verify with this log's key: %v", file, e, err)
			}
			epoch = max(epoch, e)
		}
	}
	return epoch, nil
}

// BeginEpoch starts the log's epoch (the Log's signer signs under its
// origin) on the store as it is, before Start: it checks the store against
// its newest checkpoint of the previous epoch (the store alone: the anchors
// are what the restore went behind), appends the EpochRecord, and signs the
// epoch's first checkpoint.
func (l *Log) BeginEpoch(ctx context.Context, reason string) (auditlog.EpochRecord, error) {
	v := l.cfg.Verifier
	epoch := auditlog.EpochOf(v.Origin(), l.EpochOrigin())
	prev := epoch - 1
	rec := auditlog.EpochRecord{Epoch: epoch, Origin: l.EpochOrigin(), VerifierKey: v.EpochVerifierKey(epoch),
		PreviousOrigin: auditlog.EpochOrigin(v.Origin(), prev), Reason: reason}
	if epoch < 2 {
		return rec, errors.New("audit: epoch 1 is the log's first: nothing to begin")
	}
	if reason == "" {
		return rec, errors.New("audit: an epoch needs a reason (SIGNER_AUDIT_EPOCH_REASON)")
	}
	// The newest checkpoint of the previous epoch the signer can find:
	// the store's (restored, so old), its witnessed ones, the file's.
	var newest, trusted auditlog.Checkpoint
	take := func(note []byte, fromStore bool) {
		cp, err := v.Open(note)
		if err != nil || cp.Epoch != prev {
			return
		}
		if cp.Size > newest.Size || newest.Note == nil || cp.Size == newest.Size && len(cp.Note) > len(newest.Note) {
			newest = cp
		}
		if fromStore && (cp.Size > trusted.Size || trusted.Note == nil) {
			trusted = cp
		}
	}
	if note, err := l.cfg.Store.LatestCheckpoint(ctx); err != nil {
		return rec, err
	} else if note != nil {
		take(note, true)
	}
	if note, err := l.cfg.Store.Witnessed(ctx, math.MaxUint64); err != nil {
		return rec, err
	} else if note != nil {
		take(note, true)
	}
	if l.cfg.File != "" {
		a, err := readAnchor(l.cfg.File, v.Origin())
		if err != nil {
			return rec, err
		}
		if note := a.largest[prev]; note != nil {
			take(note, false)
		}
	}
	rec.PreviousCheckpoint = string(newest.Note)
	size, err := l.cfg.Store.AuditSize(ctx)
	if err != nil {
		return rec, err
	}
	if trusted.Note == nil {
		trusted = auditlog.Checkpoint{Root: EmptyRoot()}
	}
	if size < trusted.Size {
		return rec, broken("the restored store holds %d entries, its own newest checkpoint has size %d: the backup is not whole", size, trusted.Size)
	}
	t, err := l.extend(ctx, trusted, size)
	if err != nil {
		return rec, fmt.Errorf("the restored store does not check against its own checkpoint of size %d: %w", trusted.Size, err)
	}
	rec.RestoredSize, rec.RestoredRoot = size, t.Root()
	detail, err := json.Marshal(rec)
	if err != nil {
		return rec, err
	}
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationLog, auditlog.MethodEpoch, l.cfg.Clock())
	e.Object, e.Reason, e.Code, e.Detail = "audit-log:"+rec.Origin, auditlog.ReasonGranted, "OK", detail
	if err := l.cfg.Writer.Write(ctx, e); err != nil {
		return rec, fmt.Errorf("audit: the epoch record could not be committed: %w", err)
	}
	head := l.cfg.Writer.Head()
	cp, err := SignCheckpoint(l.cfg.Signer, head.Size, head.Root)
	if err != nil {
		return rec, err
	}
	if err := l.cfg.Store.PutCheckpoint(ctx, cp.Size, cp.Note); err != nil {
		return rec, err
	}
	if err := l.toFile(cp, l.cfg.Clock()); err != nil {
		return rec, err
	}
	l.cfg.Log.Warn("audit log epoch begun: the log continues from the restored store under a new origin; add it to every witness",
		"epoch", epoch, "origin", rec.Origin, "verifier_key", rec.VerifierKey, "restored_size", size,
		"previous_checkpoint_size", newest.Size, "reason", reason)
	return rec, nil
}
