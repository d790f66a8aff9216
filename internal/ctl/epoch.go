package ctl

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/plexsphere/signer/client/auditlog"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A checkpoint saved before a restore is of an earlier epoch than the log
// (docs/audit.md, "Restore"): the log went back to a backup and continued
// under a new origin, and the first entry of each epoch, its EpochRecord,
// says to which size. Whether the saved checkpoint survived is a question
// of sizes: the restores kept it if none went below it, and then the log
// below the restored size is the same tree, so the old checkpoint must
// prove consistent with the new epoch's first checkpoint. If one went
// below it, entries it covers are gone: not a broken log (the record says
// so, under the log's checkpoints) but not the history the operator saved
// either, which is ExitRestored.

// epochRecord is an epoch record with the seq of its entry.
type epochRecord struct {
	Seq uint64
	auditlog.EpochRecord
}

// epochJSON is an epoch record in audit verify's JSON.
type epochJSON struct {
	Epoch          int    `json:"epoch"`
	Origin         string `json:"origin"`
	Seq            uint64 `json:"seq"`
	RestoredSize   uint64 `json:"restored_size"`
	RestoredRoot   []byte `json:"restored_root"`
	Reason         string `json:"reason"`
	PreviousOrigin string `json:"previous_origin"`
	// PreviousCheckpoint is the previous epoch's newest checkpoint the
	// signer found when the epoch began; null if it found none.
	PreviousCheckpoint *checkpointJSON `json:"previous_checkpoint"`
}

// savedResult is what audit verify found about a saved checkpoint.
type savedResult struct {
	epochs   []epochJSON // the epochs begun since its own
	restored error       // a restoredError, or nil: it is consistent
	text     string      // the lines audit verify prints about it
}

// savedConsistency checks the checkpoint saved in file against the log:
// consistency within its epoch, or across the epochs begun since.
func (s *auditSession) savedConsistency(ctx context.Context, file string) (savedResult, error) {
	res := savedResult{epochs: []epochJSON{}}
	b, err := os.ReadFile(file)
	if err != nil {
		return res, usageError(err.Error())
	}
	old, err := s.v.Open(b)
	if err != nil {
		return res, brokenError{fmt.Sprintf("%s: %v", file, err)}
	}
	latest := s.latest
	switch {
	case old.Epoch == latest.Epoch:
		if err := s.sameEpochConsistency(ctx, file, old); err != nil {
			return res, err
		}
		res.text = fmt.Sprintf("consistent with the checkpoint in %s\n", file)
		return res, nil
	case old.Epoch > latest.Epoch:
		return res, brokenError{fmt.Sprintf("%s is a checkpoint of epoch %d (%s), the log is in epoch %d (%s): the store went back behind an epoch the log began",
			file, old.Epoch, old.Origin, latest.Epoch, latest.Origin)}
	}
	recs, err := s.epochRecords(ctx)
	if err != nil {
		return res, err
	}
	since, lost, err := restoreVerdict(old, latest.Epoch, recs)
	if err != nil {
		return res, brokenError{fmt.Sprintf("%s is a checkpoint of epoch %d, the log is in epoch %d: %v", file, old.Epoch, latest.Epoch, err)}
	}
	var text strings.Builder
	for _, r := range since {
		res.epochs = append(res.epochs, s.epochJSON(r))
		fmt.Fprintf(&text, "epoch %d began at entry %d (%s): restored to size %d; reason: %q; %s\n",
			r.Epoch, r.Seq, r.Origin, r.RestoredSize, r.Reason, s.describePrevious(r))
	}
	if lost != nil {
		res.text = text.String()
		res.restored = restoredError{fmt.Sprintf("the log was restored behind your checkpoint: %s (epoch %d, size %d) covers entries %d..%d, which the restore that began epoch %d lost (it restored size %d; reason: %q)",
			file, old.Epoch, old.Size, lost.RestoredSize+1, old.Size, lost.Epoch, lost.RestoredSize, lost.Reason)}
		return res, nil
	}
	// Kept: below the restored size it is the same tree, so the saved
	// checkpoint is a prefix of the newest epoch's first checkpoint (its
	// record is the epoch's first entry, signed at once).
	first := since[len(since)-1]
	if old.Size > 0 {
		to, hashes, err := s.proveConsistency(ctx, old.Size, first.Seq)
		if err != nil {
			return res, err
		}
		if to.Epoch != first.Epoch {
			return res, brokenError{fmt.Sprintf("the checkpoint of size %d is of epoch %d, not the first of epoch %d its record says", to.Size, to.Epoch, first.Epoch)}
		}
		if err := auditlog.VerifyConsistency(old, to, hashes); err != nil {
			return res, brokenError{fmt.Sprintf("the restored log is not the one %s saw: consistency fails from size %d (epoch %d) to the first checkpoint of epoch %d (size %d): %v",
				file, old.Size, old.Epoch, first.Epoch, to.Size, err)}
		}
	}
	fmt.Fprintf(&text, "consistent with the checkpoint in %s (epoch %d, size %d): the restore kept it; proved to the first checkpoint of epoch %d (size %d)\n",
		file, old.Epoch, old.Size, first.Epoch, first.Seq)
	res.text = text.String()
	return res, nil
}

// restoreVerdict finds the epochs begun since saved's, up to latest (since,
// in order, each one's record present), and the first restore among them
// that went below saved's size (lost), or nil if every one kept it.
func restoreVerdict(saved auditlog.Checkpoint, latest int, recs []epochRecord) (since []epochRecord, lost *epochRecord, err error) {
	byEpoch := map[int]epochRecord{}
	for _, r := range recs {
		if _, dup := byEpoch[r.Epoch]; dup {
			return nil, nil, fmt.Errorf("two records begin epoch %d", r.Epoch)
		}
		byEpoch[r.Epoch] = r
	}
	for e := saved.Epoch + 1; e <= latest; e++ {
		r, ok := byEpoch[e]
		if !ok {
			return nil, nil, fmt.Errorf("the record that began epoch %d is not in the store (pruned? it is in the export that holds it)", e)
		}
		if r.Seq != r.RestoredSize+1 {
			return nil, nil, fmt.Errorf("the record of epoch %d is entry %d but says the epoch began after size %d", e, r.Seq, r.RestoredSize)
		}
		since = append(since, r)
	}
	for i := range since {
		if since[i].RestoredSize < saved.Size {
			return since, &since[i], nil
		}
	}
	return since, nil, nil
}

// epochRecords reads the log's epoch records, in log order, from their
// leaves (what the checkpoints sign), not from the fields served beside
// them.
func (s *auditSession) epochRecords(ctx context.Context) ([]epochRecord, error) {
	var out []epochRecord
	for after := uint64(0); ; {
		cctx, cancel := s.c.call(ctx)
		r, err := s.a.List(cctx, &signerv1.ListAuditRequest{AfterSeq: after, Limit: auditPage, Relation: auditlog.RelationLog})
		cancel()
		if err != nil {
			return nil, err
		}
		if len(r.Entries) == 0 {
			return out, nil
		}
		for _, pe := range r.Entries {
			after = pe.Seq
			e, err := auditlog.ParseLeaf(pe.Leaf)
			if err != nil {
				return nil, brokenError{fmt.Sprintf("entry %d: %v", pe.Seq, err)}
			}
			if e.Method != auditlog.MethodEpoch {
				continue
			}
			rec, err := auditlog.ParseRecord(e)
			if err != nil {
				return nil, brokenError{fmt.Sprintf("entry %d: %v", pe.Seq, err)}
			}
			er := rec.(*auditlog.EpochRecord)
			if er.Origin != auditlog.EpochOrigin(s.v.Origin(), er.Epoch) {
				return nil, brokenError{fmt.Sprintf("entry %d: the record of epoch %d names origin %q, not this log's", pe.Seq, er.Epoch, er.Origin)}
			}
			out = append(out, epochRecord{Seq: pe.Seq, EpochRecord: *er})
		}
	}
}

func (s *auditSession) epochJSON(r epochRecord) epochJSON {
	j := epochJSON{Epoch: r.Epoch, Origin: r.Origin, Seq: r.Seq, RestoredSize: r.RestoredSize, RestoredRoot: r.RestoredRoot,
		Reason: r.Reason, PreviousOrigin: r.PreviousOrigin}
	if cp, err := s.v.Open([]byte(r.PreviousCheckpoint)); err == nil {
		cj := toCheckpointJSON(cp)
		j.PreviousCheckpoint = &cj
	}
	return j
}

// describePrevious says what the record holds of the previous epoch.
func (s *auditSession) describePrevious(r epochRecord) string {
	if r.PreviousCheckpoint == "" {
		return fmt.Sprintf("the signer found no checkpoint of %s", r.PreviousOrigin)
	}
	cp, err := s.v.Open([]byte(r.PreviousCheckpoint))
	if err != nil {
		return fmt.Sprintf("its checkpoint of %s does not verify: %v", r.PreviousOrigin, err)
	}
	return fmt.Sprintf("the newest checkpoint of epoch %d it found: size %d, root %s, %s",
		cp.Epoch, cp.Size, base64.StdEncoding.EncodeToString(cp.Root), s.describeCosigners(cp.Note))
}
