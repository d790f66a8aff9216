package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/plexsphere/signer/client/auditlog"
)

// BreakError reports where a log fails verification: the first bad seq when
// it is known (a missing or malformed entry, a tile whose stored node does
// not match its entries), else the range between the last checkpoint that
// matched and the first that did not.
type BreakError struct {
	Seq      uint64 // first bad seq, 0 if only the range is known
	From, To uint64 // the bad entry is in (From, To]
	Problem  string
}

func (e *BreakError) Error() string {
	if e.Seq != 0 {
		return fmt.Sprintf("audit log broken at seq %d: %s", e.Seq, e.Problem)
	}
	return fmt.Sprintf("audit log broken after seq %d, at or before seq %d: %s", e.From, e.To, e.Problem)
}

// Is makes errors.Is(err, ErrTreeBroken) hold.
func (e *BreakError) Is(target error) bool { return target == ErrTreeBroken }

// Replay recomputes a log's tree from its entries, in order, and checks it
// against signed checkpoints as it passes their sizes and, where the store
// is at hand, against the stored tree nodes. It is how `signerctl audit
// verify` and AuditService.Verify check every entry.
type Replay struct {
	t      *Tree
	cps    []auditlog.Checkpoint // verified, ascending by size, not yet reached
	good   uint64                // size of the last checkpoint matched
	nodes  []Node                // computed nodes awaiting comparison with the store
	stored func(ctx context.Context, ids []NodeID) ([][]byte, error)
	// Checked counts the entries replayed.
	Checked uint64
	onEntry func(uint64, []byte)
}

// NewReplay starts at start (NewTree(), or the tree at the prune point)
// with checkpoints already verified, ascending by size. stored, if not nil,
// reads the store's nodes to compare with the recomputed ones.
func NewReplay(start *Tree, cps []auditlog.Checkpoint, stored func(context.Context, []NodeID) ([][]byte, error)) *Replay {
	r := &Replay{t: start, stored: stored, good: start.Size()}
	for _, cp := range cps {
		if cp.Size > start.Size() {
			r.cps = append(r.cps, cp)
		}
	}
	return r
}

// Size is the number of entries the replayed tree holds.
func (r *Replay) Size() uint64 { return r.t.Size() }

// Root is the replayed tree's root.
func (r *Replay) Root() []byte { return r.t.Root() }

// Add replays the entry with seq.
func (r *Replay) Add(ctx context.Context, seq uint64, leaf []byte) error {
	if want := r.t.Size() + 1; seq != want {
		return &BreakError{Seq: want, Problem: fmt.Sprintf("entry %d is missing (the next stored entry is %d)", want, seq)}
	}
	if _, err := auditlog.ParseLeaf(leaf); err != nil {
		return &BreakError{Seq: seq, Problem: err.Error()}
	}
	if r.onEntry != nil {
		r.onEntry(seq, leaf)
	}
	h := auditlog.LeafHash(leaf)
	r.t.Append(h[:], func(n Node) {
		if r.stored != nil {
			r.nodes = append(r.nodes, n)
		}
	})
	r.Checked++
	if len(r.nodes) >= 256 {
		if err := r.compareNodes(ctx); err != nil {
			return err
		}
	}
	for len(r.cps) > 0 && r.cps[0].Size == r.t.Size() {
		cp := r.cps[0]
		r.cps = r.cps[1:]
		if !bytes.Equal(cp.Root, r.t.Root()) {
			if err := r.compareNodes(ctx); err != nil {
				return err
			}
			return &BreakError{From: r.good, To: cp.Size, Problem: fmt.Sprintf("the entries do not hash to the root signed in the checkpoint at size %d", cp.Size)}
		}
		r.good = cp.Size
	}
	return nil
}

// compareNodes checks the computed nodes against the stored ones.
func (r *Replay) compareNodes(ctx context.Context) error {
	if len(r.nodes) == 0 {
		return nil
	}
	ids := make([]NodeID, len(r.nodes))
	for i, n := range r.nodes {
		ids[i] = NodeID{Level: uint(n.Level), Index: n.Index}
	}
	got, err := r.stored(ctx, ids)
	if err != nil {
		var be *BreakError
		if errors.As(err, &be) {
			return err
		}
		if errors.Is(err, ErrTreeBroken) {
			begin, _ := ids[0].Coverage()
			return &BreakError{From: begin, To: r.t.Size(), Problem: err.Error()}
		}
		return err
	}
	for i, n := range r.nodes {
		if !bytes.Equal(got[i], n.Hash) {
			begin, end := ids[i].Coverage()
			return &BreakError{From: begin, To: end, Problem: fmt.Sprintf("entries %d..%d do not match the stored tree node", begin+1, end)}
		}
	}
	r.nodes = r.nodes[:0]
	return nil
}

// Finish compares the last stored nodes and reports a checkpoint the log
// never reached (entries removed from its end).
func (r *Replay) Finish(ctx context.Context) error {
	if err := r.compareNodes(ctx); err != nil {
		return err
	}
	if len(r.cps) > 0 {
		cp := r.cps[len(r.cps)-1]
		return &BreakError{From: r.t.Size(), To: cp.Size, Problem: fmt.Sprintf("the log holds %d entries but a checkpoint was signed at size %d: entries after seq %d were removed", r.t.Size(), cp.Size, r.t.Size())}
	}
	return nil
}
