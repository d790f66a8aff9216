package signing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// note is what a handler tells the middleware about the RPC: the scope and
// key it resolved and, for Sign, digests of payload and signature.
type note struct {
	scope, keyID    string
	payloadSHA256   string
	signatureSHA256 string
}

type noteKey struct{}

// noteOf returns the RPC's note; a handler called without the middleware (a
// unit test) gets a throwaway one.
func noteOf(ctx context.Context) *note {
	if n, ok := ctx.Value(noteKey{}).(*note); ok {
		return n
	}
	return &note{}
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// relations maps each served method to its audit relation. A method missing
// here is refused by the middleware rather than served unaudited.
var relations = map[string]string{
	signerv1.SignerService_Sign_FullMethodName:       audit.RelationSign,
	signerv1.SignerService_PublicKey_FullMethodName:  audit.RelationPublicKey,
	signerv1.RotationService_Open_FullMethodName:     audit.RelationRotate,
	signerv1.RotationService_Commit_FullMethodName:   audit.RelationRotate,
	signerv1.RotationService_Abort_FullMethodName:    audit.RelationRotate,
	signerv1.RotationService_Retire_FullMethodName:   audit.RelationRotate,
	signerv1.RotationService_ListKeys_FullMethodName: audit.RelationRotate,
	signerv1.AuditService_List_FullMethodName:        audit.RelationAudit,
	signerv1.AuditService_Verify_FullMethodName:      audit.RelationAudit,
}

// AuditInterceptor writes exactly one entry per RPC, whatever the outcome,
// with Subject "service:signer", the method's relation, Object
// "signing-key:<scope>:<key_id>" ("-" where nothing was resolved), the reason
// from signerr.Classify, an empty non-nil CaveatContext and the clock's time
// at admission in UTC. The call's admission entry, if the peeridentity
// interceptor granted one, is committed in the same transaction, first. The
// response is released only after both are committed; if they cannot be, the
// caller gets Unavailable and no response.
func AuditInterceptor(sink audit.Sink, clock func() time.Time, log *slog.Logger) grpc.UnaryServerInterceptor {
	if clock == nil {
		clock = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		adm := audit.AdmissionOf(ctx)
		reqID := audit.NewID()
		if adm != nil {
			reqID = adm.Entry.RequestID
		}
		e := audit.Entry{
			ID:            audit.NewID(),
			RequestID:     reqID,
			Subject:       audit.SubjectSigner,
			Relation:      relations[info.FullMethod],
			CaveatContext: []string{},
			Timestamp:     clock().UTC(),
			Method:        info.FullMethod,
		}
		n := &note{}
		var resp any
		var err error
		if e.Relation == "" {
			err = signerr.ErrInternal
			log.Error("method has no audit relation; refusing it", "method", info.FullMethod)
		} else {
			resp, err = handler(context.WithValue(ctx, noteKey{}, n), req)
		}
		c := signerr.Classify(err)
		e.Object = audit.Object(n.scope, n.keyID)
		e.Reason = c.Reason
		e.Code = c.Code.String()
		e.PayloadSHA256 = n.payloadSHA256
		if err == nil {
			e.SignatureSHA256 = n.signatureSHA256
		}
		entries := []audit.Entry{e}
		if adm != nil && adm.Claim() {
			entries = []audit.Entry{adm.Entry, e}
		}
		if werr := sink.Submit(ctx, entries...).Wait(ctx); werr != nil {
			peerID, _ := peeridentity.PeerID(ctx)
			log.Error("rpc withheld: audit entry not committed", "method", info.FullMethod, "peer", peerID, "request_id", e.RequestID,
				"code", signerr.Classify(werr).Code.String(), "reason", e.Reason, "err", werr)
			return nil, signerr.Status(werr)
		}
		if err != nil {
			peerID, _ := peeridentity.PeerID(ctx)
			log.Warn("rpc failed", "method", info.FullMethod, "peer", peerID, "request_id", e.RequestID, "object", e.Object,
				"code", e.Code, "reason", e.Reason, "err", err)
			return nil, signerr.Status(err)
		}
		return resp, nil
	}
}
