package sidecar

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// UpstreamTLS is the sidecar's client configuration towards the signer: it
// presents the current SVID and accepts only a server whose certificate
// chains to the current trust bundle and carries the signer's SPIFFE ID.
//
// The check runs in VerifyConnection, which crypto/tls calls on every
// connection, resumed sessions included. go-spiffe's client configuration
// checks in VerifyPeerCertificate, which a resumed session skips: had a
// session cache ever been set on this configuration, a signer whose CA was
// removed from the bundle would still be accepted on resumption. No session
// cache is set (every reconnect is a full handshake with the current SVID
// and bundle); a caller that adds one still gets the check on every
// resumption.
func UpstreamTLS(svid x509svid.Source, bundle x509bundle.Source, signer spiffeid.ID) *tls.Config {
	verify := tlsconfig.VerifyPeerCertificate(bundle, tlsconfig.AuthorizeID(signer))
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: tlsconfig.GetClientCertificate(svid),
		// SPIFFE verification below replaces hostname verification, which
		// an SVID (URI SAN only) cannot pass.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			return verify(raw, nil)
		},
	}
}
