// Package peeridentity decides admission: may this peer, identified by the
// first spiffe:// URI SAN of its verified client certificate, call this
// method? It only decides (go-spiffe's Authorizer style); the signer's one
// admission-and-audit interceptor (internal/signing/audit_middleware.go)
// asks it before any handler runs, writes the entries and answers.
//
// It fails closed: no certificate, an expired one, an identity on no list,
// a service without a list (unknown services included) are all denials.
package peeridentity

import (
	"context"
	"crypto/x509"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Outcomes, as audited, logged and counted.
const (
	OutcomeGranted         = "granted"
	OutcomeNotOnList       = "denied_not_on_list"
	OutcomeNoClientCert    = "denied_no_client_cert"
	OutcomeScopeNotGranted = "denied_scope_not_granted"
	// The certificate verified at the handshake has expired since: a
	// connection must not outlive the identity it was opened with.
	OutcomeExpired = "denied_certificate_expired"
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

// Peer is what admission knows of a caller.
type Peer struct {
	// ID is the first spiffe:// URI SAN of the verified client certificate,
	// "" if there is none.
	ID string
	// HasCert is false when the peer presented no client certificate.
	HasCert bool
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
}

// PeerOf reads the caller from the gRPC peer of ctx.
func PeerOf(ctx context.Context) Peer {
	leaf := peerLeaf(ctx)
	if leaf == nil {
		return Peer{}
	}
	return Peer{ID: FirstSPIFFEID(leaf.URIs), HasCert: true, NotAfter: leaf.NotAfter}
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

// Authorizer decides whether an identified peer may call fullMethod with
// req (nil when the request was not read: an unknown method). It returns
// OutcomeGranted or the denial's outcome.
type Authorizer func(id, fullMethod string, req any) string

// AuthorizeByService admits an identity on the allow-list of the called
// service; a service with no list (any service the signer does not serve)
// admits nobody, and an empty list admits nobody.
func AuthorizeByService(lists map[string]AllowList) Authorizer {
	return func(id, fullMethod string, _ any) string {
		if !lists[Service(fullMethod)].Allows(id) {
			return OutcomeNotOnList
		}
		return OutcomeGranted
	}
}

// WithScopeGrants restricts callers of service to their granted scopes
// ("*" grants all) once any grant is set: an identity the next authorizer
// admits but that lacks a grant for the request's scope is denied.
func WithScopeGrants(next Authorizer, service string, grants map[string]map[string]bool) Authorizer {
	if len(grants) == 0 {
		return next
	}
	return func(id, fullMethod string, req any) string {
		if out := next(id, fullMethod, req); out != OutcomeGranted || Service(fullMethod) != service {
			return out
		}
		r, ok := req.(interface{ GetScope() string })
		if !ok {
			// No scope (Prove): nothing a grant limits; the method itself
			// serves only the caller's own requests.
			return OutcomeGranted
		}
		g := grants[id]
		if !g[r.GetScope()] && !g["*"] {
			return OutcomeScopeNotGranted
		}
		return OutcomeGranted
	}
}

// Admit applies the rules every call shares (a certificate, still valid at
// now) and then authorize.
func Admit(p Peer, now time.Time, fullMethod string, req any, authorize Authorizer) string {
	switch {
	case !p.HasCert:
		return OutcomeNoClientCert
	// Validity is wall-clock time, not the injected audit clock.
	case p.NotAfter.Before(now):
		return OutcomeExpired
	}
	return authorize(p.ID, fullMethod, req)
}
