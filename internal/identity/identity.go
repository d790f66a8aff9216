// Package identity supplies the workload's SPIFFE X.509-SVID and trust bundle
// (from files a CSI driver or script writes, or from the SPIFFE Workload
// API) and builds the TLS configurations the signer, sidecar and signerctl
// use. Sources rotate: every handshake asks for the current SVID and bundle.
package identity

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source is a rotating SVID plus the bundles to verify peers with.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Close() error
}

// ServerTLS is the signer's listener configuration. It presents the current
// SVID and verifies any client certificate against the current trust bundle
// (a certificate from another trust domain, expired, or not chaining to the
// bundle fails the handshake). The check runs in VerifyConnection, which
// crypto/tls calls for every connection, resumed sessions included
// (VerifyPeerCertificate is skipped on resumption): a CA removed from the
// bundle loses access at once, not when its clients' session tickets run
// out. A client with no certificate is let through on purpose: the
// interceptor denies it and the denial is audited. Who may call what is
// decided there, not here.
func ServerTLS(src Source) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   tlsconfig.GetCertificate(src),
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: verifyConnection(src, tlsconfig.AuthorizeAny(), true),
	}
}

// verifyConnection checks the peer's chain against the current bundle and
// authorize on every connection, resumed ones included; certificateless
// lets a peer without a certificate through (the signer's interceptor
// denies and audits it).
func verifyConnection(bundle x509bundle.Source, authorize tlsconfig.Authorizer, certificateless bool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 && certificateless {
			return nil
		}
		raw := make([][]byte, len(cs.PeerCertificates))
		for i, c := range cs.PeerCertificates {
			raw[i] = c.Raw
		}
		// What tlsconfig.VerifyPeerCertificate does, in two steps, so that a
		// refusal says whether the chain or the ID was wrong.
		id, chains, err := x509svid.ParseAndVerify(raw, bundle)
		if err != nil {
			pe := &PeerError{Cause: peerCause(err), Err: err}
			if len(cs.PeerCertificates) > 0 {
				pe.Presented = presentedID(cs.PeerCertificates[0])
			}
			return pe
		}
		if err := authorize(id, chains); err != nil {
			return &PeerError{Cause: CauseWrongID, Presented: id.String(), Err: err}
		}
		return nil
	}
}

// ClientTLS dials with the current SVID and accepts only a server whose SVID
// verifies against the bundle and satisfies authorize (typically
// tlsconfig.AuthorizeID of the expected signer). Like ServerTLS it checks
// in VerifyConnection, so a caller that enables session resumption cannot
// bring back a server whose CA was removed from the bundle.
func ClientTLS(src Source, authorize tlsconfig.Authorizer) *tls.Config {
	return ClientTLSFrom(src, src, authorize)
}

// ClientTLSFrom is ClientTLS with the SVID and the bundle from separate
// sources (the sidecar's configuration takes go-spiffe sources).
func ClientTLSFrom(svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: tlsconfig.GetClientCertificate(svid),
		// The SPIFFE check in VerifyConnection replaces host name
		// verification, which an SVID (URI SAN only) cannot pass.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   verifyConnection(bundle, authorize, false),
	}
}
