package signing

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// MaxAuditPage caps one List response.
const MaxAuditPage = 1000

// AuditReader implements AuditService.
type AuditReader struct {
	signerv1.UnimplementedAuditServiceServer
	store store.Store
}

// NewAuditReader serves s's audit log.
func NewAuditReader(s store.Store) *AuditReader { return &AuditReader{store: s} }

// List returns entries after AfterSeq, filtered, at most MaxAuditPage.
func (a *AuditReader) List(ctx context.Context, req *signerv1.ListAuditRequest) (*signerv1.ListAuditResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	entries, err := a.store.ListAudit(ctx, store.AuditQuery{AfterSeq: req.GetAfterSeq(), Limit: limit,
		Subject: req.GetSubject(), Relation: req.GetRelation(), Reason: req.GetReason(), ObjectPrefix: req.GetObjectPrefix()})
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ListAuditResponse{}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, EntryProto(e))
	}
	return resp, nil
}

// Verify walks the whole chain, a page at a time.
func (a *AuditReader) Verify(ctx context.Context, _ *signerv1.VerifyAuditRequest) (*signerv1.VerifyAuditResponse, error) {
	var v audit.Verifier
	var after uint64
	for {
		page, err := a.store.ListAudit(ctx, store.AuditQuery{AfterSeq: after, Limit: 10000})
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			if err := v.Add(e); err != nil {
				return &signerv1.VerifyAuditResponse{Ok: false, Entries: v.Count(), BrokenAtSeq: e.Seq, Problem: err.Error()}, nil
			}
			after = e.Seq
		}
		if len(page) == 0 {
			return &signerv1.VerifyAuditResponse{Ok: true, Entries: v.Count()}, nil
		}
	}
}

// EntryProto is an entry's wire form.
func EntryProto(e audit.Entry) *signerv1.AuditEntry {
	return &signerv1.AuditEntry{Seq: e.Seq, Id: e.ID, RequestId: e.RequestID, Subject: e.Subject, Relation: e.Relation,
		Object: e.Object, Reason: e.Reason, CaveatContext: e.CaveatContext, Timestamp: timestamppb.New(e.Timestamp),
		Method: e.Method, Code: e.Code, PayloadSha256: e.PayloadSHA256, SignatureSha256: e.SignatureSHA256,
		PrevHash: e.PrevHash, Hash: e.Hash}
}
