package sidecar

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/plexsphere/signer/internal/identity"
)

// UpstreamTLS is the sidecar's client configuration towards the signer: it
// presents the current SVID and accepts only a server whose certificate
// chains to the current trust bundle and carries the signer's SPIFFE ID.
//
// It is identity.ClientTLSFrom, the one client configuration of the
// project. The check runs in VerifyConnection, which crypto/tls calls on
// every connection, resumed sessions included. go-spiffe's client configuration
// checks in VerifyPeerCertificate, which a resumed session skips: had a
// session cache ever been set on this configuration, a signer whose CA was
// removed from the bundle would still be accepted on resumption. No session
// cache is set (every reconnect is a full handshake with the current SVID
// and bundle); a caller that adds one still gets the check on every
// resumption.
func UpstreamTLS(svid x509svid.Source, bundle x509bundle.Source, signer spiffeid.ID) *tls.Config {
	return identity.ClientTLSFrom(svid, bundle, tlsconfig.AuthorizeID(signer))
}
