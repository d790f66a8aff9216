package sidecar

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/lograte"
)

// dialLogEvery: one line per failure cause per interval, the first at once.
const dialLogEvery = 10 * time.Second

// dialLog explains a failed attempt to reach a signer replica: the cause,
// the SPIFFE ID expected and the one presented, and the setting to fix.
// The reconnect loop tries again up to once a second; the lines are held
// to one per cause every dialLogEvery.
type dialLog struct {
	log      *slog.Logger
	expected string
	names    Settings
	limiter  *lograte.Limiter
}

func newDialLog(cfg Config) *dialLog {
	n := cfg.Settings
	if n.Upstream == "" {
		n.Upstream = "Upstream"
	}
	if n.SignerID == "" {
		n.SignerID = "SignerID"
	}
	if n.Identity == "" {
		n.Identity = "the SVID and bundle sources"
	}
	return &dialLog{log: cfg.Log, expected: cfg.SignerID.String(), names: n, limiter: lograte.New(dialLogEvery)}
}

// failed logs err from dialling addr (first: the first failure since the
// replica was last connected).
func (d *dialLog) failed(addr string, err error, first bool) {
	cause, presented, setting, hint := d.explain(err)
	ok, suppressed := d.limiter.Allow(cause)
	if !ok {
		d.log.Debug("signer replica still unreachable", "addr", addr, "reason", cause)
		return
	}
	d.log.Warn("signer replica unreachable; retrying", "addr", addr, "reason", cause, "expected", d.expected,
		"presented", presented, "setting", setting, "hint", hint, "err", err.Error(), "first", first, "suppressed_since_last", suppressed)
}

// explain classifies a dial error: TCP and name lookup failures before
// TLS, then the TLS handshake's causes (identity.HandshakeCause).
func (d *dialLog) explain(err error) (cause, presented, setting, hint string) {
	var op *net.OpError
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns):
		return "lookup", "", d.names.Upstream, "the signer's host name does not resolve: check " + d.names.Upstream + " (the signer's Service, e.g. dns:///signer.ns.svc:8443)"
	case errors.As(err, &op) && op.Op == "dial":
		return "unreachable", "", d.names.Upstream, "nothing accepts connections there: check " + d.names.Upstream + " (host and port of the signer's gRPC port, 8443), that signer pods are ready, and that its NetworkPolicy admits this namespace"
	case strings.Contains(err.Error(), "ALPN h2"):
		return identity.CauseProtocol, "", d.names.Upstream, "the server there is not the signer's gRPC port: check " + d.names.Upstream
	}
	cause, presented = identity.HandshakeCause(err)
	switch cause {
	case identity.CauseWrongID:
		return cause, presented, d.names.SignerID, "the server presents " + presented + ", not " + d.expected + ": if it is your signer, set " + d.names.SignerID + " to its ID; otherwise " + d.names.Upstream + " points at another service"
	case identity.CauseUnknownCA, identity.CauseNoBundle, identity.CauseExpired, identity.CauseNotSVID, identity.CauseBadCertificate:
		if presented == "" {
			presented = "(no SPIFFE ID)"
		}
		return cause, presented, d.names.Identity, "the server's certificate does not verify against this sidecar's trust bundle (a foreign CA or trust domain, or expired): check " + d.names.Identity + ", and that " + d.names.Upstream + " is the signer"
	case identity.CauseRejectedByPeer:
		return cause, presented, d.names.Identity, "the signer refused this sidecar's SVID: its trust bundle lacks this SVID's CA or trust domain (see the signer's \"tls handshake failed\" line)"
	case identity.CauseNotTLS, identity.CauseProtocol, identity.CauseClosed:
		return cause, presented, d.names.Upstream, "the server there does not complete an mTLS handshake like the signer: check " + d.names.Upstream + " (the signer's gRPC port, not its ops or JWKS port)"
	case identity.CauseTimeout:
		return cause, presented, d.names.Upstream, "no answer in time: check " + d.names.Upstream + " and the NetworkPolicy between this pod and the signer"
	}
	return cause, presented, d.names.Upstream, "check " + d.names.Upstream + " and " + d.names.SignerID
}

// awaitServer waits up to connectTimeout for the signer's first bytes (its
// SETTINGS) without consuming them. With TLS 1.3 the client's handshake is
// done before the server has checked the client's certificate: a signer
// that refuses this sidecar's SVID says so only in an alert that arrives
// now. Reading it here makes the refusal a failed dial (logged with its
// cause) instead of a replica that connects and breaks again every second.
func awaitServer(nc net.Conn, br *bufio.Reader) error {
	nc.SetReadDeadline(time.Now().Add(connectTimeout))
	defer nc.SetReadDeadline(time.Time{})
	_, err := br.Peek(1)
	return err
}

// connected logs a replica's TLS handshake at debug: what the signer
// presented and what was negotiated.
func (d *dialLog) connected(addr string, cs tls.ConnectionState, took time.Duration) {
	if !d.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	presented := ""
	if len(cs.PeerCertificates) > 0 {
		for _, u := range cs.PeerCertificates[0].URIs {
			if u.Scheme == "spiffe" {
				presented = u.String()
				break
			}
		}
	}
	d.log.Debug("tls handshake with signer replica", "addr", addr, "presented", presented, "tls_version", tls.VersionName(cs.Version),
		"alpn", cs.NegotiatedProtocol, "resumed", cs.DidResume, "took", took)
}
