package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
)

// Handshake failure causes: the bounded set a log line and a metric label
// take (HandshakeCauses lists them all).
const (
	CauseWrongID        = "wrong_id"             // the peer's SVID verifies but carries another SPIFFE ID
	CauseUnknownCA      = "unknown_ca"           // its chain does not lead to the trust bundle (a foreign CA)
	CauseNoBundle       = "foreign_trust_domain" // no bundle for the peer's trust domain
	CauseExpired        = "expired"              // the peer's certificate is expired or not yet valid
	CauseNotSVID        = "not_svid"             // the peer's certificate is no X.509-SVID (no or several URI SANs)
	CauseBadCertificate = "bad_certificate"      // other problems with the peer's certificate
	CauseRejectedByPeer = "rejected_by_peer"     // the peer refused our certificate (a TLS alert)
	CauseNotTLS         = "not_tls"              // the peer does not speak TLS
	CauseProtocol       = "protocol"             // TLS version, ALPN or another protocol mismatch
	CauseTimeout        = "timeout"              // the handshake did not finish in time
	CauseClosed         = "closed"               // the peer closed or reset the connection during the handshake
	CauseOther          = "other"
)

// HandshakeCauses is every cause HandshakeCause returns.
var HandshakeCauses = []string{CauseWrongID, CauseUnknownCA, CauseNoBundle, CauseExpired, CauseNotSVID,
	CauseBadCertificate, CauseRejectedByPeer, CauseNotTLS, CauseProtocol, CauseTimeout, CauseClosed, CauseOther}

// PeerError is a peer certificate this side refused in a TLS handshake.
// Its text is the verification error's; Cause and Presented tell an
// operator what was presented and why it was refused.
type PeerError struct {
	Cause     string // one of the causes above
	Presented string // the SPIFFE ID the peer's certificate carries ("" if none)
	Err       error
}

func (e *PeerError) Error() string { return e.Err.Error() }
func (e *PeerError) Unwrap() error { return e.Err }

func peerCause(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return CauseUnknownCA
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return CauseExpired
	case strings.Contains(err.Error(), "could not get X509 bundle"):
		return CauseNoBundle
	case strings.Contains(err.Error(), "could not get leaf SPIFFE ID"):
		return CauseNotSVID
	}
	return CauseBadCertificate
}

func presentedID(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

// HandshakeCause classifies a failed TLS handshake (either side's error)
// into one of HandshakeCauses, and returns the SPIFFE ID the peer
// presented when this side refused its certificate.
func HandshakeCause(err error) (cause, presented string) {
	var pe *PeerError
	if errors.As(err, &pe) {
		return pe.Cause, pe.Presented
	}
	var alert tls.AlertError
	var rhe tls.RecordHeaderError
	var ne net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &alert), strings.Contains(msg, "remote error: tls:"):
		if strings.Contains(msg, "no application protocol") || strings.Contains(msg, "protocol version") {
			return CauseProtocol, ""
		}
		return CauseRejectedByPeer, ""
	case errors.As(err, &rhe):
		return CauseNotTLS, ""
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout, ""
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return CauseClosed, ""
	case strings.Contains(msg, "protocol version"), strings.Contains(msg, "application protocol"), strings.Contains(msg, "ALPN"):
		return CauseProtocol, ""
	}
	return CauseOther, ""
}
