package signing

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// MaxAuditPage caps one List or ListCheckpoints response.
const MaxAuditPage = 1000

// AuditReader implements AuditService: reads, proofs and checkpoints of
// the audit log, every one checkable with the checkpoint verifier key.
type AuditReader struct {
	signerv1.UnimplementedAuditServiceServer
	store    store.Store
	log      *audit.Log
	verifier *auditlog.Verifier
	vkey     string
}

// NewAuditReader serves s's audit log; log checkpoints it, vkey is its
// verifier key.
func NewAuditReader(s store.Store, log *audit.Log, vkey string) (*AuditReader, error) {
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	return &AuditReader{store: s, log: log, verifier: v, vkey: vkey}, nil
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
// stored checkpoint, up to a fresh checkpoint.
func (a *AuditReader) Verify(ctx context.Context, _ *signerv1.VerifyAuditRequest) (*signerv1.VerifyAuditResponse, error) {
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

// Checkpoint returns a checkpoint covering every entry committed before it.
func (a *AuditReader) Checkpoint(ctx context.Context, _ *signerv1.CheckpointRequest) (*signerv1.CheckpointResponse, error) {
	cp, err := a.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return &signerv1.CheckpointResponse{Checkpoint: cp.Note}, nil
}

// ProveInclusion proves a request's entries (or one seq) are in the log, up
// to a checkpoint covering them.
func (a *AuditReader) ProveInclusion(ctx context.Context, req *signerv1.ProveInclusionRequest) (*signerv1.ProveInclusionResponse, error) {
	var seqs []uint64
	switch e := req.GetEntry().(type) {
	case *signerv1.ProveInclusionRequest_RequestId:
		id, err := auditlog.ParseRequestID(e.RequestId)
		if err != nil {
			return nil, signerr.Invalid("request_id", "must be 32 hex digits")
		}
		first, err := audit.FindRequest(ctx, a.store, id)
		if err != nil {
			return nil, err
		}
		seqs = []uint64{first}
		// A request's entries are adjacent: the admission entry and the
		// middleware entry.
		if next, err := store.ListAudit(ctx, a.store, store.AuditQuery{AfterSeq: first, Limit: 1}); err == nil && len(next) == 1 && next[0].RequestID == id {
			seqs = append(seqs, next[0].Seq)
		}
	case *signerv1.ProveInclusionRequest_Seq:
		if e.Seq == 0 {
			return nil, signerr.Invalid("seq", "must be at least 1")
		}
		seqs = []uint64{e.Seq}
	default:
		return nil, signerr.Invalid("entry", "set request_id or seq")
	}
	cp, err := a.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ProveInclusionResponse{Checkpoint: cp.Note}
	for _, seq := range seqs {
		if seq > cp.Size {
			return nil, fmt.Errorf("entry %d is beyond the log (size %d): %w", seq, cp.Size, signerr.ErrKeyNotFound)
		}
		leaves, err := a.store.Leaves(ctx, seq-1, seq)
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

// ProveConsistency proves the log at old_size is a prefix of the latest
// checkpoint's.
func (a *AuditReader) ProveConsistency(ctx context.Context, req *signerv1.ProveConsistencyRequest) (*signerv1.ProveConsistencyResponse, error) {
	cp, err := a.log.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetOldSize() == 0 || req.GetOldSize() > cp.Size {
		return nil, signerr.Invalid("old_size", fmt.Sprintf("must be 1..%d, the latest checkpoint's size", cp.Size))
	}
	hashes, err := audit.ConsistencyProof(ctx, a.store, req.GetOldSize(), cp.Size)
	if err != nil {
		return nil, err
	}
	return &signerv1.ProveConsistencyResponse{Hashes: hashes, Checkpoint: cp.Note}, nil
}

// ListCheckpoints returns stored checkpoints above after_size.
func (a *AuditReader) ListCheckpoints(ctx context.Context, req *signerv1.ListCheckpointsRequest) (*signerv1.ListCheckpointsResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	notes, err := a.store.Checkpoints(ctx, req.GetAfterSize(), limit)
	if err != nil {
		return nil, err
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
		SignatureSha256: hex.EncodeToString(e.SignatureSHA256), Leaf: leaf}
}
