package signing

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/signvariant"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// relations maps each served method to its audit relation; any other
// method is audited as audit.RelationUnknown and answered Unimplemented
// (to an admitted peer) after admission.
var relations = map[string]string{
	signerv1.SignerService_Sign_FullMethodName:                 auditlog.RelationSign,
	signerv1.SignerService_PublicKey_FullMethodName:            auditlog.RelationPublicKey,
	signerv1.SignerService_Prove_FullMethodName:                auditlog.RelationAudit,
	signerv1.RotationService_Open_FullMethodName:               auditlog.RelationRotate,
	signerv1.RotationService_Commit_FullMethodName:             auditlog.RelationRotate,
	signerv1.RotationService_Abort_FullMethodName:              auditlog.RelationRotate,
	signerv1.RotationService_Retire_FullMethodName:             auditlog.RelationRotate,
	signerv1.RotationService_ListKeys_FullMethodName:           auditlog.RelationRotate,
	signerv1.AuditService_List_FullMethodName:                  auditlog.RelationAudit,
	signerv1.AuditService_Verify_FullMethodName:                auditlog.RelationAudit,
	signerv1.AuditService_Checkpoint_FullMethodName:            auditlog.RelationAudit,
	signerv1.AuditService_ProveInclusion_FullMethodName:        auditlog.RelationAudit,
	signerv1.AuditService_ProveConsistency_FullMethodName:      auditlog.RelationAudit,
	signerv1.AuditService_ListCheckpoints_FullMethodName:       auditlog.RelationAudit,
	signerv1.AuditService_CheckpointVerifierKey_FullMethodName: auditlog.RelationAudit,
}

// DenialPolicy keeps refused callers from starving admitted ones. Turn is
// called for every denied call before its entries are written; it returns
// when the denial may be audited (its turn at the denial rate has come,
// whatever the caller's deadline) and done, called once the entries are
// committed. It never lets a denial skip its entries or its turn: a flood
// is answered at the connection, before calls become RPCs.
type DenialPolicy interface {
	Turn(ctx context.Context) (done func())
}

// Auditor is the signer's one admission-and-audit interceptor. For every
// RPC, served methods and unknown ones alike, it decides admission
// (peeridentity) before any handler runs and writes exactly two entries in
// one commit, whatever the outcome:
//
//   - the admission entry: Subject "service:signer:peer=<spiffe-id>" ("" when
//     the peer has no certificate), Relation "connect", reason granted or
//     insufficient_relation;
//   - the middleware entry: Subject "service:signer", the method's relation,
//     Object "signing-key:<scope>:<key_id>" ("-" where nothing was resolved),
//     the reason from Classify (insufficient_relation for a denied call),
//
// both with an empty non-nil CaveatContext and the clock's time at admission
// in UTC (audit.New). The handler never sees a denied call. The answer
// leaves only after both entries are committed; if they cannot be, the
// caller gets Unavailable and nothing else (no signature).
type Auditor struct {
	Authorize peeridentity.Authorizer
	Writer    *audit.Writer
	Clock     func() time.Time
	Log       *slog.Logger
	Denials   DenialPolicy // nil: no flood control
	// Observe, if set, is told every RPC's outcome (for metrics).
	Observe func(method, outcome string, code codes.Code, took time.Duration)
}

// RequestIDHeader is the response header naming an AuditService call's
// request id: the id its two audit entries share.
const RequestIDHeader = "plexsphere-request-id"

// Unary is the interceptor for the served methods.
func (a *Auditor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return a.serve(ctx, info.FullMethod, req, func(ctx context.Context) (any, error) { return h(ctx, req) })
	}
}

// UnknownMethod answers every method the server does not serve (register it
// with grpc.UnknownServiceHandler): admitted and audited like the others, so
// an unadmitted peer learns nothing about which methods exist.
func (a *Auditor) UnknownMethod(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	_, err := a.serve(stream.Context(), method, nil, func(context.Context) (any, error) {
		return nil, fmt.Errorf("method %q: %w", method, errUnknownMethod)
	})
	return err
}

func (a *Auditor) serve(ctx context.Context, method string, req any, handler func(context.Context) (any, error)) (any, error) {
	start := time.Now()
	at := a.Clock()
	peer := peeridentity.PeerOf(ctx)
	outcome := peeridentity.Admit(peer, start, method, req, a.Authorize)
	relation, known := relations[method]
	if !known {
		relation = auditlog.RelationUnknown
	}
	reqID := auditlog.NewRequestID()
	adm := auditlog.New(reqID, auditlog.SubjectPeer(peer.ID), auditlog.RelationConnect, method, at)
	mw := auditlog.New(reqID, auditlog.SubjectSigner, relation, method, at)
	scope := scopeOf(req)
	adm.Object = auditlog.Object(scope, "")

	if outcome != peeridentity.OutcomeGranted {
		return nil, a.deny(ctx, method, outcome, peer, start, adm, mw, scope)
	}
	if err := a.Writer.Broken(); err != nil {
		// The log does not match its checkpoint: nothing is appended to it
		// and nothing is released (docs/audit.md).
		a.observe(method, outcome, err, start)
		return nil, Status(err)
	}

	if relation == auditlog.RelationAudit {
		// An auditor tailing the log recognises its own reads by this id
		// (signerctl audit tail --follow leaves them out). Not on Sign: the
		// answer carries request_id already.
		_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, reqID.String()))
	}
	resp, err := a.call(ctx, method, handler)
	d := describe(req, resp, err)
	c := Classify(err)
	adm.Reason, adm.Code = auditlog.ReasonGranted, codes.OK.String()
	mw.Object = auditlog.Object(scope, d.keyID)
	mw.Reason, mw.Code = c.Reason, c.Code.String()
	mw.PayloadSHA256, mw.SignatureSHA256 = d.payload, d.signature
	mw.SignVariant, mw.ContextSHA256 = d.variant, d.context
	actx, cancel := auditContext(ctx)
	defer cancel()
	p := a.Writer.Submit(actx, audit.LaneAdmitted, adm, mw)
	if werr := p.Wait(actx); werr != nil {
		a.Log.Error("rpc withheld: audit entries not committed", "method", method, "peer", peer.ID,
			"request_id", reqID.String(), "code", Classify(werr).Code.String(), "reason", mw.Reason, "err", werr)
		a.observe(method, outcome, werr, start)
		return nil, Status(werr)
	}
	a.observe(method, outcome, err, start)
	if err != nil {
		a.Log.Warn("rpc failed", "method", method, "peer", peer.ID, "request_id", reqID.String(), "object", mw.Object,
			"code", mw.Code, "reason", mw.Reason, "err", err)
		return nil, Status(err)
	}
	if r, ok := resp.(*signerv1.SignResponse); ok {
		committed := p.Committed()
		r.RequestId, r.AuditSeq = reqID.String(), committed[len(committed)-1].Seq
	}
	return resp, nil
}

// deny audits a refused call (both entries, in the denied lane) and answers
// PermissionDenied. The denial is committed before the caller sees it.
func (a *Auditor) deny(ctx context.Context, method, outcome string, peer peeridentity.Peer, start time.Time, adm, mw auditlog.Entry, scope string) error {
	if a.Denials != nil {
		// The pace of denial audits, whatever the caller's deadline: a
		// caller that gives up early neither skips its entries nor its
		// turn. The audit's own time starts once the turn has come.
		done := a.Denials.Turn(ctx)
		defer done()
	}
	actx, cancel := auditContext(ctx)
	defer cancel()
	c := Classify(signerr.ErrClientIdentityDenied)
	adm.Reason, adm.Code = c.Reason, c.Code.String()
	mw.Object = auditlog.Object(scope, "")
	mw.Reason, mw.Code = c.Reason, c.Code.String()
	if err := a.Writer.Submit(actx, audit.LaneDenied, adm, mw).Wait(actx); err != nil {
		a.Log.Error("denial could not be audited", "method", method, "peer", peer.ID, "err", err)
	}
	a.Log.Warn("rpc denied", "method", method, "peer", peer.ID, "outcome", outcome, "reason", c.Reason,
		"request_id", adm.RequestID.String())
	a.observe(method, outcome, signerr.ErrClientIdentityDenied, start)
	return Status(signerr.ErrClientIdentityDenied)
}

const (
	// auditTimeout bounds how long a call's entries may wait for the
	// writer after the caller has gone: a stuck store fails calls rather
	// than holding them forever.
	auditTimeout = 10 * time.Second
)

// auditContext outlives the caller: a short deadline or a reset stream
// cannot make the signer skip a call's entries (every RPC is audited
// exactly once), and a refused caller cannot turn its denial into an
// unaudited Internal error.
func auditContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
}

// call runs the handler; a panic becomes an internal error, audited like
// any other, and the process lives on.
func (a *Auditor) call(ctx context.Context, method string, handler func(context.Context) (any, error)) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			a.Log.Error("handler panicked", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, fmt.Errorf("panic in %s: %w", method, signerr.ErrInternal)
		}
	}()
	return handler(ctx)
}

func (a *Auditor) observe(method, outcome string, err error, start time.Time) {
	if a.Observe != nil {
		a.Observe(method, outcome, Classify(err).Code, time.Since(start))
	}
}

// scopeOf is the request's scope if it is a valid one, else "".
func scopeOf(req any) string {
	r, ok := req.(interface{ GetScope() string })
	if !ok || names.CheckScope(r.GetScope()) != nil {
		return ""
	}
	return r.GetScope()
}

// what an RPC was about, for its middleware entry.
type about struct {
	keyID                       string
	payload, signature, context []byte // SHA-256 digests
	variant                     string // a Sign's, when not plain pure Ed25519
}

// describe reads what an RPC was about from its request, response and
// error: the one place that knows each message's shape.
func describe(req, resp any, err error) about {
	var d about
	if r, ok := req.(*signerv1.SignRequest); ok {
		sum := sha256.Sum256(r.GetPayload())
		d.payload = sum[:]
		// What was asked, refused or not: a refused variant is recorded
		// with the refusal. A plain pure Sign records nothing more (and
		// keeps its version 2 leaf).
		if n := r.GetVariant(); n != 0 || len(r.GetContext()) > 0 {
			if n >= 0 && n <= 255 {
				d.variant = signvariant.Variant(n).String()
			} else {
				d.variant = "variant(invalid)"
			}
		}
		if len(r.GetContext()) > 0 {
			sum := sha256.Sum256(r.GetContext())
			d.context = sum[:]
		}
	}
	if err != nil {
		var ke *keyring.KeyError
		if errors.As(err, &ke) {
			d.keyID = ke.KeyID
		}
		return d
	}
	switch r := resp.(type) {
	case *signerv1.SignResponse:
		d.keyID = r.GetKeyId()
		sum := sha256.Sum256(r.GetSignature())
		d.signature = sum[:]
	case *signerv1.PublicKeyResponse:
		for _, k := range r.GetKeys() {
			if len(r.GetKeys()) == 1 || k.GetState() == signerv1.KeyState_KEY_STATE_ACTIVE {
				d.keyID = k.GetKeyId()
			}
		}
	case *signerv1.OpenResponse:
		d.keyID = r.GetKey().GetKeyId()
	case *signerv1.CommitResponse:
		d.keyID = r.GetActivated().GetKeyId()
	case *signerv1.AbortResponse:
		d.keyID = r.GetKey().GetKeyId()
	case *signerv1.RetireResponse:
		d.keyID = r.GetKey().GetKeyId()
	}
	return d
}
