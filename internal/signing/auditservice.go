package signing

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// MaxAuditPage caps one List or ListCheckpoints response.
const MaxAuditPage = 1000

// AuditReader implements AuditService: reads, proofs and checkpoints of
// the audit log, every one checkable with the checkpoint verifier key (and
// the witness policy), and the proofs a core asks for its own requests
// (SignerService.Prove).
type AuditReader struct {
	signerv1.UnimplementedAuditServiceServer
	store    store.Store
	log      *audit.Log
	verifier *auditlog.Verifier
	vkey     string
	verify   *verifyCache
}

// NewAuditReader serves s's audit log; log checkpoints it, vkey is its
// verifier key.
func NewAuditReader(s store.Store, log *audit.Log, vkey string) (*AuditReader, error) {
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	a := &AuditReader{store: s, log: log, verifier: v, vkey: vkey}
	a.verify = newVerifyCache(a.replay)
	return a, nil
}

// List returns entries after AfterSeq, filtered, at most MaxAuditPage.
func (a *AuditReader) List(ctx context.Context, req *signerv1.ListAuditRequest) (*signerv1.ListAuditResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	entries, err := store.ListAudit(ctx, a.store, store.AuditQuery{AfterSeq: req.GetAfterSeq(), Limit: limit,
		Subject: req.GetSubject(), Relation: req.GetRelation(), Reason: req.GetReason(), ObjectPrefix: req.GetObjectPrefix()})
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ListAuditResponse{Entries: make([]*signerv1.AuditEntry, 0, len(entries))}
	for i := range entries {
		resp.Entries = append(resp.Entries, EntryProto(&entries[i]))
	}
	return resp, nil
}

// Verify replays every stored entry against the stored tree and every
// stored checkpoint. Replays are shared and bounded (verifyCache): one
// auditor cannot take the signer's CPU.
func (a *AuditReader) Verify(ctx context.Context, _ *signerv1.VerifyAuditRequest) (*signerv1.VerifyAuditResponse, error) {
	return a.verify.get(ctx)
}

// replay is one full replay, up to a fresh checkpoint.
func (a *AuditReader) replay(ctx context.Context) (*signerv1.VerifyAuditResponse, error) {
	latest, err := a.log.Checkpoint(ctx)
	if err != nil && !errors.Is(err, signerr.ErrAuditLogBroken) {
		return nil, err
	}
	resp := &signerv1.VerifyAuditResponse{Checkpoint: latest.Note}
	r, err := audit.ReplayStore(ctx, a.store, a.verifier)
	if r != nil {
		resp.Entries, resp.Size = r.Checked, r.Size()
	}
	var be *audit.BreakError
	switch {
	case errors.As(err, &be):
		resp.BrokenAtSeq, resp.Problem = be.Seq, be.Error()
		return resp, nil
	case err != nil:
		return nil, err
	}
	if broken := a.log.Broken(); broken != nil {
		resp.Problem = broken.Error()
		return resp, nil
	}
	resp.Ok = true
	return resp, nil
}

// Checkpoint returns a checkpoint covering every entry committed before it,
// and the newest one the witnesses cosigned.
func (a *AuditReader) Checkpoint(ctx context.Context, _ *signerv1.CheckpointRequest) (*signerv1.CheckpointResponse, error) {
	cp, err := a.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return &signerv1.CheckpointResponse{Checkpoint: cp.Note, Witnessed: a.log.Witnessed().Note}, nil
}

// ProveInclusion proves a request's entries (or one seq) are in the log.
func (a *AuditReader) ProveInclusion(ctx context.Context, req *signerv1.ProveInclusionRequest) (*signerv1.ProveInclusionResponse, error) {
	var seqs []uint64
	switch e := req.GetEntry().(type) {
	case *signerv1.ProveInclusionRequest_RequestId:
		var err error
		if seqs, _, err = a.request(ctx, e.RequestId); err != nil {
			return nil, err
		}
	case *signerv1.ProveInclusionRequest_Seq:
		if e.Seq == 0 {
			return nil, signerr.Invalid("seq", "must be at least 1")
		}
		seqs = []uint64{e.Seq}
	default:
		return nil, signerr.Invalid("entry", "set request_id or seq")
	}
	return a.prove(ctx, seqs, req.GetTreeSize())
}

// ProveOwn proves a request of caller's own: its admission entry names the
// caller. Any other request id is not found, whether it exists or not.
func (a *AuditReader) ProveOwn(ctx context.Context, caller string, req *signerv1.ProveRequest) (*signerv1.ProveInclusionResponse, error) {
	seqs, first, err := a.request(ctx, req.GetRequestId())
	if err != nil {
		return nil, err
	}
	if first.Subject != auditlog.SubjectPeer(caller) || caller == "" {
		// Answered as a request not in the log is: no oracle for
		// another caller's request ids.
		return nil, a.missing(ctx, "request "+req.GetRequestId(), 0)
	}
	return a.prove(ctx, seqs, req.GetTreeSize())
}

// request finds a request's entries: its first (the admission entry) and
// the next when it carries the same id.
func (a *AuditReader) request(ctx context.Context, rid string) ([]uint64, auditlog.Entry, error) {
	id, err := auditlog.ParseRequestID(rid)
	if err != nil {
		return nil, auditlog.Entry{}, signerr.Invalid("request_id", "must be 32 hex digits")
	}
	first, err := audit.FindRequest(ctx, a.store, id)
	if errors.Is(err, signerr.ErrKeyNotFound) || errors.Is(err, audit.ErrPruned) {
		return nil, auditlog.Entry{}, a.missing(ctx, "request "+rid, 0)
	}
	if err != nil {
		return nil, auditlog.Entry{}, err
	}
	es, err := store.ListAudit(ctx, a.store, store.AuditQuery{AfterSeq: first - 1, Limit: 2})
	if err != nil {
		return nil, auditlog.Entry{}, err
	}
	seqs := []uint64{first}
	if len(es) == 2 && es[1].RequestID == id {
		seqs = append(seqs, es[1].Seq)
	}
	return seqs, es[0], nil
}

// missing is ErrEntryNotFound for what, with the prune mark: whether the
// store ever held it is not known, but the caller learns that entries up
// to the mark are only in the exports.
func (a *AuditReader) missing(ctx context.Context, what string, size uint64) error {
	pruned, err := a.store.PrunedUpTo(ctx)
	if err != nil {
		return err
	}
	return &signerr.MissingError{What: what, Size: size, PrunedUpTo: pruned}
}

// prove builds the inclusion proofs of seqs to the checkpoint of treeSize
// (checkpointAt).
func (a *AuditReader) prove(ctx context.Context, seqs []uint64, treeSize uint64) (*signerv1.ProveInclusionResponse, error) {
	cp, err := a.checkpointAt(ctx, treeSize, seqs[len(seqs)-1])
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ProveInclusionResponse{Checkpoint: cp.Note}
	for _, seq := range seqs {
		if seq > cp.Size {
			return nil, &signerr.MissingError{What: fmt.Sprintf("entry %d", seq), Size: cp.Size}
		}
		leaves, err := a.store.Leaves(ctx, seq-1, seq)
		if errors.Is(err, audit.ErrPruned) {
			return nil, a.missing(ctx, fmt.Sprintf("entry %d", seq), cp.Size)
		}
		if err != nil {
			return nil, err
		}
		e, err := auditlog.ParseLeaf(leaves[0])
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", seq, err)
		}
		e.Seq = seq
		hashes, err := audit.InclusionProof(ctx, a.store, seq-1, cp.Size)
		if err != nil {
			return nil, err
		}
		resp.Proofs = append(resp.Proofs, &signerv1.InclusionProof{Entry: EntryProto(&e), Hashes: hashes})
	}
	return resp, nil
}

// checkpointAt is the checkpoint a proof leads to: the stored one of size
// (with its cosignatures when the witnesses cosigned it), or for size 0 the
// newest after a fresh check, preferring the newest witnessed one when it
// covers need.
func (a *AuditReader) checkpointAt(ctx context.Context, size, need uint64) (auditlog.Checkpoint, error) {
	if size == 0 {
		cp, err := a.log.Checkpoint(ctx)
		if err != nil {
			return cp, err
		}
		if w := a.log.Witnessed(); w.Note != nil && w.Size >= need {
			return w, nil
		}
		return cp, nil
	}
	notes, err := a.store.Checkpoints(ctx, size-1, 1)
	if err != nil {
		return auditlog.Checkpoint{}, err
	}
	if len(notes) == 0 {
		return auditlog.Checkpoint{}, fmt.Errorf("no checkpoint of size %d (AuditService.ListCheckpoints lists them): %w", size, signerr.ErrEntryNotFound)
	}
	note := notes[0]
	if w, err := a.store.Witnessed(ctx, size); err == nil && w != nil && bytes.HasPrefix(w, note[:bytes.LastIndex(note, []byte("\n\n"))+2]) {
		note = w
	}
	cp, err := a.verifier.Open(note)
	if err != nil {
		return cp, fmt.Errorf("the stored checkpoint of size %d: %v: %w", size, err, signerr.ErrAuditLogBroken)
	}
	if cp.Size != size {
		return auditlog.Checkpoint{}, fmt.Errorf("no checkpoint of size %d (AuditService.ListCheckpoints lists them): %w", size, signerr.ErrEntryNotFound)
	}
	return cp, nil
}

// ProveConsistency proves the log at old_size is a prefix of the checkpoint
// of new_size (the newest by default).
func (a *AuditReader) ProveConsistency(ctx context.Context, req *signerv1.ProveConsistencyRequest) (*signerv1.ProveConsistencyResponse, error) {
	cp, err := a.checkpointAt(ctx, req.GetNewSize(), req.GetOldSize())
	if err != nil {
		return nil, err
	}
	if req.GetOldSize() == 0 || req.GetOldSize() > cp.Size {
		return nil, signerr.Invalid("old_size", fmt.Sprintf("must be 1..%d, the checkpoint's size", cp.Size))
	}
	hashes, err := audit.ConsistencyProof(ctx, a.store, req.GetOldSize(), cp.Size)
	if err != nil {
		return nil, err
	}
	return &signerv1.ProveConsistencyResponse{Hashes: hashes, Checkpoint: cp.Note}, nil
}

// ListCheckpoints returns stored checkpoints above after_size, each with
// its cosignatures when the witnesses cosigned it.
func (a *AuditReader) ListCheckpoints(ctx context.Context, req *signerv1.ListCheckpointsRequest) (*signerv1.ListCheckpointsResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	notes, err := a.store.Checkpoints(ctx, req.GetAfterSize(), limit)
	if err != nil {
		return nil, err
	}
	for i, n := range notes {
		cp, err := a.verifier.Open(n)
		if err != nil {
			continue // served as stored: the caller's verification names it
		}
		if w, err := a.store.Witnessed(ctx, cp.Size); err == nil && w != nil && bytes.HasPrefix(w, n[:bytes.LastIndex(n, []byte("\n\n"))+2]) {
			notes[i] = w
		}
	}
	return &signerv1.ListCheckpointsResponse{Checkpoints: notes}, nil
}

// CheckpointVerifierKey returns the log's verifier key.
func (a *AuditReader) CheckpointVerifierKey(context.Context, *signerv1.CheckpointVerifierKeyRequest) (*signerv1.CheckpointVerifierKeyResponse, error) {
	return &signerv1.CheckpointVerifierKeyResponse{VerifierKey: a.vkey}, nil
}

// EntryProto is an entry's wire form, with its leaf.
func EntryProto(e *auditlog.Entry) *signerv1.AuditEntry {
	leaf, _ := auditlog.AppendLeaf(nil, e) // e came from a leaf: it encodes
	return &signerv1.AuditEntry{Seq: e.Seq, RequestId: e.RequestID.String(), Subject: e.Subject, Relation: e.Relation,
		Object: e.Object, Reason: e.Reason, CaveatContext: e.CaveatContext, Timestamp: timestamppb.New(e.Timestamp),
		Method: e.Method, Code: e.Code, PayloadSha256: hex.EncodeToString(e.PayloadSHA256),
		SignatureSha256: hex.EncodeToString(e.SignatureSHA256), Leaf: leaf, Detail: e.Detail,
		SignVariant: e.SignVariant, ContextSha256: hex.EncodeToString(e.ContextSHA256)}
}

// callerID is the SPIFFE ID admission granted.
func callerID(ctx context.Context) string { return peeridentity.PeerOf(ctx).ID }
