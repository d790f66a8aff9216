package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/lograte"
)

// handshakeLogEvery: one line per failure cause per interval.
const handshakeLogEvery = 10 * time.Second

// observedCreds counts every failed TLS handshake by cause, logs it
// (rate-limited per cause) with the peer's address, and logs successful
// handshakes at debug. gRPC itself only mentions a failed handshake in
// its own logger, which the signer does not print.
type observedCreds struct {
	credentials.TransportCredentials
	cfg    *config.Signer
	log    *slog.Logger
	failed func(cause string)
	// handshook is told of every completed handshake (the flood control
	// counts those without a client certificate against their source).
	handshook func(raw net.Conn, info credentials.AuthInfo)
	limiter   *lograte.Limiter
}

func newObservedCreds(inner credentials.TransportCredentials, cfg *config.Signer, log *slog.Logger, failed func(string),
	handshook func(net.Conn, credentials.AuthInfo)) *observedCreds {
	if handshook == nil {
		handshook = func(net.Conn, credentials.AuthInfo) {}
	}
	return &observedCreds{TransportCredentials: inner, cfg: cfg, log: log, failed: failed, handshook: handshook, limiter: lograte.New(handshakeLogEvery)}
}

func (c *observedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	start := time.Now()
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.failure(raw.RemoteAddr(), err)
		return conn, info, err
	}
	c.handshook(raw, info)
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		if ti, ok := info.(credentials.TLSInfo); ok {
			peerID := ""
			if ti.SPIFFEID != nil {
				peerID = ti.SPIFFEID.String()
			}
			c.log.Debug("tls handshake", "peer_addr", raw.RemoteAddr().String(), "peer", peerID,
				"tls_version", tls.VersionName(ti.State.Version), "alpn", ti.State.NegotiatedProtocol,
				"resumed", ti.State.DidResume, "client_cert", len(ti.State.PeerCertificates) > 0, "took", time.Since(start))
		}
	}
	return conn, info, nil
}

func (c *observedCreds) failure(addr net.Addr, err error) {
	cause, presented := identity.HandshakeCause(err)
	c.failed(cause)
	level := slog.LevelWarn
	if cause == identity.CauseClosed {
		// TCP checks and port scans open and close without a word: worth a
		// count, not a warning.
		level = slog.LevelDebug
	}
	if !c.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := c.limiter.Allow(cause)
	if !ok {
		return
	}
	c.log.Log(context.Background(), level, "tls handshake failed", "peer_addr", addr.String(), "reason", cause,
		"presented", presented, "err", err.Error(), "hint", c.hint(cause), "suppressed_since_last", suppressed)
}

// hint says what to check for each cause, naming the setting.
func (c *observedCreds) hint(cause string) string {
	bundle := c.cfg.Identity.Settings(c.cfg)
	switch cause {
	case identity.CauseUnknownCA, identity.CauseNoBundle, identity.CauseExpired, identity.CauseNotSVID, identity.CauseBadCertificate:
		return "the client's certificate does not verify against the signer's trust bundle (" + bundle + "): a client from another trust domain or CA, not an SVID, or expired"
	case identity.CauseRejectedByPeer:
		return "the client refused the signer's certificate: its trust bundle lacks the signer's CA, or it expects another SPIFFE ID (a sidecar's SIDECAR_SIGNER_SPIFFE_ID must be the signer's SVID ID)"
	case identity.CauseNotTLS:
		return "a client that does not speak TLS reached the mTLS port " + config.Name(c.cfg, "Listen") + "; probes and scrapes belong on " + config.Name(c.cfg, "OpsListen")
	case identity.CauseProtocol:
		return "the client offers no TLS 1.3 or no h2 ALPN"
	case identity.CauseTimeout:
		return "no TLS handshake within " + config.Name(c.cfg, "ConnectionTimeout")
	}
	return ""
}

func (c *observedCreds) Clone() credentials.TransportCredentials {
	return &observedCreds{TransportCredentials: c.TransportCredentials.Clone(), cfg: c.cfg, log: c.log, failed: c.failed, handshook: c.handshook, limiter: c.limiter}
}

// debugRPC logs one line per RPC at debug: method, peer, code, duration.
// Off at other levels at the price of one Enabled check.
func debugRPC(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !log.Enabled(ctx, slog.LevelDebug) {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		peerID, addr := "", ""
		if p, ok := peer.FromContext(ctx); ok {
			addr = p.Addr.String()
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
				peerID = ti.SPIFFEID.String()
			}
		}
		log.Debug("rpc", "method", info.FullMethod, "peer", peerID, "peer_addr", addr, "code", status.Code(err).String(), "took", time.Since(start))
		return resp, err
	}
}
