package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/plexsphere/signer/client/auditlog"
)

// A prune is an act in the log, not only in the store: before any entry is
// deleted, the pruner appends an auditlog.PruneRecord (sealed, like every
// commit, and then checkpointed and cosigned), and the store's prune mark
// names the record's seq. A mark that names no record, or a record that
// does not state this prune (its size, and the root of the tree of the
// pruned entries, which the tree nodes that stay must still give), is the
// log broken: a store writer who deletes entries and forges a mark
// (bbolt's meta key, the Postgres audit_pruned table) is caught by the
// signer, its replay and every auditor's verify.

// RecordPrune appends rec to the log and returns its seq. The Log's writer
// seals it; Check then signs (and has the witnesses cosign) a checkpoint
// covering it.
func (l *Log) RecordPrune(ctx context.Context, rec auditlog.PruneRecord) (uint64, error) {
	detail, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationLog, auditlog.MethodPrune, l.cfg.Clock())
	e.Object, e.Reason, e.Code, e.Detail = fmt.Sprintf("audit-log:%s:entries-1-%d", l.EpochOrigin(), rec.UpTo), auditlog.ReasonGranted, "OK", detail
	p := l.cfg.Writer.Submit(ctx, LaneAdmitted, e)
	if err := p.Wait(ctx); err != nil {
		return 0, fmt.Errorf("audit: the prune record could not be committed: %w", err)
	}
	return p.Committed()[0].Seq, nil
}

// checkPruneMark checks the store's prune mark against the record it names
// and returns the mark.
func checkPruneMark(ctx context.Context, s Store) (uint64, error) {
	pruned, err := s.PrunedUpTo(ctx)
	if err != nil || pruned == 0 {
		return pruned, err
	}
	seq, err := s.PruneRecord(ctx)
	if err != nil {
		return pruned, err
	}
	if seq == 0 {
		return pruned, broken("entries up to seq %d were deleted, but no prune record in the log names them: a store writer erased them (a prune made before prune records existed: run the prune again with its export to record it; docs/audit.md)", pruned)
	}
	leaves, err := s.Leaves(ctx, seq-1, seq)
	if err != nil {
		if errors.Is(err, ErrTreeBroken) || errors.Is(err, ErrPruned) {
			return pruned, broken("the prune mark (up to seq %d) names entry %d, which the store does not hold: %v", pruned, seq, err)
		}
		return pruned, err
	}
	e, err := auditlog.ParseLeaf(leaves[0])
	if err != nil {
		return pruned, broken("the prune mark (up to seq %d) names entry %d, which is not an entry: %v", pruned, seq, err)
	}
	r, err := auditlog.ParseRecord(e)
	rec, ok := r.(*auditlog.PruneRecord)
	if err != nil || !ok || rec.UpTo != pruned {
		return pruned, broken("the prune mark (up to seq %d) names entry %d, which is not the record of that prune: a store writer forged the mark", pruned, seq)
	}
	t, err := TreeAt(ctx, s, pruned)
	if err != nil {
		if errors.Is(err, ErrTreeBroken) {
			return pruned, broken("the tree nodes kept for the entries pruned up to seq %d: %v", pruned, err)
		}
		return pruned, err
	}
	if !bytes.Equal(t.Root(), rec.RootAtUpTo) {
		return pruned, broken("the tree nodes kept for the entries pruned up to seq %d do not give the root the prune record (entry %d) states", pruned, seq)
	}
	return pruned, nil
}
