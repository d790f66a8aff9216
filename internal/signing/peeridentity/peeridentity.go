// Package peeridentity admits callers by SPIFFE ID before any handler runs.
//
// The unary and stream interceptors take the first spiffe:// URI SAN of the
// verified client certificate, look it up in the allow-list of the called
// service (an empty or missing list admits nobody: fail closed), and write one
// audit entry per outcome (granted, denied-not-on-list, denied-no-client-cert)
// under Subject "service:signer:peer=<spiffe-id>" and Relation "connect".
// The decision and its entry are made before method dispatch; the handler
// never sees a denied call. A denial is committed before the caller sees
// codes.PermissionDenied with the message "signing: client identity denied"
// and audit reason insufficient_relation. A grant's entry, stamped at
// admission, is committed by the audit middleware in the same transaction as
// the call's outcome entry, admission first (see audit.Admission).
package peeridentity

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// AllowList is a set of SPIFFE IDs, held as a map for O(1) admission.
type AllowList map[string]struct{}

// NewAllowList builds a list from ids (duplicates collapse).
func NewAllowList(ids ...string) AllowList {
	l := make(AllowList, len(ids))
	for _, id := range ids {
		l[id] = struct{}{}
	}
	return l
}

// Allows reports whether id is on the list. The empty id never is.
func (l AllowList) Allows(id string) bool {
	if id == "" {
		return false
	}
	_, ok := l[id]
	return ok
}

// Config wires the interceptors.
type Config struct {
	// Lists maps a gRPC service's full name ("plexsphere.signer.v1.SignerService")
	// to the identities it admits. A service without a list admits nobody.
	Lists map[string]AllowList
	Sink  audit.Sink
	Clock func() time.Time
	Log   *slog.Logger
	// Grants, if not empty, restricts each identity to scopes on the service
	// GrantedService: an identity admitted by the list but not granted the
	// request's scope is denied like one not on the list. "*" grants all.
	Grants         map[string]map[string]bool
	GrantedService string
	// Observe, if set, is told every admission outcome (for metrics).
	Observe func(service, outcome string)
}

// granted reports whether id may use the request's scope.
func (c *Config) granted(id, svc string, req any) bool {
	if len(c.Grants) == 0 || svc != c.GrantedService {
		return true
	}
	r, ok := req.(interface{ GetScope() string })
	if !ok {
		return false
	}
	g := c.Grants[id]
	return g[r.GetScope()] || g["*"]
}

// Outcomes, as logged and counted.
const (
	OutcomeGranted         = "granted"
	OutcomeNotOnList       = "denied_not_on_list"
	OutcomeNoClientCert    = "denied_no_client_cert"
	OutcomeScopeNotGranted = "denied_scope_not_granted"
	// The certificate verified at the handshake has expired since: a
	// connection must not outlive the identity it was opened with.
	OutcomeExpired = "denied_certificate_expired"
)

// PeerID returns the first spiffe:// URI SAN of the peer's verified leaf
// certificate; ok is false when the peer presented no certificate (or the
// transport is not TLS at all).
func PeerID(ctx context.Context) (id string, ok bool) {
	leaf := peerLeaf(ctx)
	if leaf == nil {
		return "", false
	}
	return FirstSPIFFEID(leaf.URIs), true
}

func peerLeaf(ctx context.Context) *x509.Certificate {
	p, found := peer.FromContext(ctx)
	if !found {
		return nil
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || !info.State.HandshakeComplete || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// FirstSPIFFEID returns the first URI SAN of the form spiffe://<trust
// domain>..., or "". An opaque "spiffe:x" is not a SPIFFE ID (found by
// FuzzFirstSPIFFEID).
func FirstSPIFFEID(uris []*url.URL) string {
	for _, u := range uris {
		if u == nil || u.Scheme != "spiffe" || u.Host == "" || u.Opaque != "" {
			continue
		}
		if s := u.String(); strings.HasPrefix(s, "spiffe://") {
			return s
		}
	}
	return ""
}

// Service is the service part of a full method name.
func Service(fullMethod string) string {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}

// objectOf names the key the request is about, as far as admission can tell
// without trusting it: a scope that fails validation is recorded as "-".
func objectOf(req any) string {
	scope := ""
	if r, ok := req.(interface{ GetScope() string }); ok && store.CheckScope(r.GetScope()) == nil {
		scope = r.GetScope()
	}
	return audit.Object(scope, "")
}

// admit decides and returns the context for the handler carrying the
// granted admission, or the denial status after committing its entry.
func (c *Config) admit(ctx context.Context, fullMethod string, req any) (context.Context, *audit.Admission, error) {
	leaf := peerLeaf(ctx)
	id := ""
	if leaf != nil {
		id = FirstSPIFFEID(leaf.URIs)
	}
	svc := Service(fullMethod)
	now := c.Clock()
	outcome := OutcomeGranted
	switch {
	case leaf == nil:
		outcome = OutcomeNoClientCert
	// Validity is wall-clock time, not the injected audit clock.
	case leaf.NotAfter.Before(time.Now()):
		outcome = OutcomeExpired
	case !c.Lists[svc].Allows(id):
		outcome = OutcomeNotOnList
	case !c.granted(id, svc, req):
		outcome = OutcomeScopeNotGranted
	}
	reqID := audit.NewID()
	e := audit.Entry{
		ID:            audit.NewID(),
		RequestID:     reqID,
		Subject:       audit.SubjectPeer(id),
		Relation:      audit.RelationConnect,
		Object:        objectOf(req),
		CaveatContext: []string{},
		Timestamp:     now.UTC(),
		Method:        fullMethod,
	}
	if c.Observe != nil {
		c.Observe(svc, outcome)
	}
	if outcome != OutcomeGranted {
		e.Reason, e.Code = audit.ReasonInsufficientRelation, codes.PermissionDenied.String()
		// A denial releases nothing, so it need not wait for durability to be
		// safe; it waits anyway so the entry is readable when the caller
		// sees the error.
		if err := c.Sink.Submit(ctx, e).Wait(ctx); err != nil {
			c.Log.Error("admission denial could not be audited", "method", fullMethod, "peer", id, "err", err)
		}
		c.Log.Warn("rpc denied", "method", fullMethod, "peer", id, "outcome", outcome, "reason", e.Reason, "request_id", reqID)
		return nil, nil, signerr.Status(signerr.ErrClientIdentityDenied)
	}
	e.Reason, e.Code = audit.ReasonGranted, codes.OK.String()
	a := &audit.Admission{Entry: e}
	return audit.WithAdmission(ctx, a), a, nil
}

// finish commits the admission entry if no audit middleware took it (a
// method served without one), and withholds the result if that fails.
func (c *Config) finish(ctx context.Context, a *audit.Admission, err error) error {
	if a.Claim() {
		if werr := c.Sink.Submit(ctx, a.Entry).Wait(ctx); werr != nil {
			return signerr.Status(werr)
		}
	}
	return err
}

// UnaryInterceptor admits unary calls.
func UnaryInterceptor(c Config) grpc.UnaryServerInterceptor {
	c.defaults()
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, adm, err := c.admit(ctx, info.FullMethod, req)
		if err != nil {
			return nil, err
		}
		resp, err := handler(ctx, req)
		if err = c.finish(ctx, adm, err); err != nil {
			return nil, err
		}
		return resp, nil
	}
}

// StreamInterceptor admits streaming calls (the API has none today; a
// future stream is admitted the same way, without a scope in its object).
func StreamInterceptor(c Config) grpc.StreamServerInterceptor {
	c.defaults()
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, adm, err := c.admit(ss.Context(), info.FullMethod, nil)
		if err != nil {
			return err
		}
		return c.finish(ctx, adm, handler(srv, &stream{ServerStream: ss, ctx: ctx}))
	}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

func (c *Config) defaults() {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}
