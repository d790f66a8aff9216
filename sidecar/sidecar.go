package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/ops"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// forwarded are the only methods the sidecar passes to the signer. Anything
// else (RotationService, AuditService, unknown methods) is refused here and
// never reaches the signer. This is the one list: metrics labels and tests
// read it through Forwards and ForwardedMethods.
var forwarded = map[string]bool{
	signerv1.SignerService_Sign_FullMethodName:      true,
	signerv1.SignerService_PublicKey_FullMethodName: true,
	signerv1.SignerService_Prove_FullMethodName:     true,
}

// Forwards reports whether method reaches the signer.
func Forwards(method string) bool { return forwarded[method] }

// ForwardedMethods lists the methods that reach the signer, sorted.
func ForwardedMethods() []string {
	ms := make([]string, 0, len(forwarded))
	for m := range forwarded {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	return ms
}

// reconnectBackoff paces reconnection to a replica that is down: from
// 100 ms up to ReconnectMaxDelay, so a returning replica is picked up within
// about a second while a dead one costs at most one attempt a second.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: ReconnectMaxDelay}

// ReconnectMaxDelay is the longest wait between two attempts to reach a
// replica (plus up to 20 % jitter).
const ReconnectMaxDelay = time.Second

// connectTimeout bounds one connection attempt (TCP and TLS), so an attempt
// at an address that swallows packets does not hold a replica back.
const connectTimeout = 3 * time.Second

// HealthService is the health service name that tracks the upstream.
const HealthService = "plexsphere.sidecar"

// Config is a sidecar's wiring.
type Config struct {
	Listen     []Addr
	SocketMode os.FileMode
	// AllowUIDs, if not empty, admits only these uids on the Unix socket,
	// checked once per connection as it is accepted.
	AllowUIDs []int
	// MaxConnections caps the core's open connections (default 128);
	// MaxConcurrentStreams caps the calls in flight on one (default 1024).
	MaxConnections       int
	MaxConcurrentStreams int
	// Upstream is a gRPC target ("dns:///signer-headless.ns.svc:8443", or
	// host:port), or a comma-separated list of host:port balanced round robin.
	Upstream string
	// SignerID is the only SPIFFE ID the upstream may present.
	SignerID spiffeid.ID
	// SVID is the pod's identity, presented to the signer; Bundle verifies
	// the signer. Both are read at every handshake, so a rotating source
	// (go-spiffe's workloadapi.X509Source, say) rotates the sidecar too.
	SVID            x509svid.Source
	Bundle          x509bundle.Source
	MaxMessageBytes int
	Log             *slog.Logger
	// Observe, if set, is told the outcome of every call (for metrics).
	Observe func(method string, code codes.Code, took time.Duration)

	// Relay selects the frame relay (see relay.go): one upstream
	// connection per core connection, HTTP/2 frames passed through as
	// bytes, a refused method closes the connection. Upstream must then be
	// host:port addresses (comma-separated, or dns:///host:port); health is
	// served on the ops listener only, and calls are not counted by code.
	Relay bool

	// Used by Run only: OpsListen is a plain HTTP address for /metrics and
	// gRPC health ("" disables); ShutdownTimeout bounds the drain of
	// in-flight calls (default 10 s).
	OpsListen       string
	ShutdownTimeout time.Duration
}

// Proxy is a running sidecar.
type Proxy struct {
	cfg      Config
	allowUID map[int]bool
	upstream *grpc.ClientConn
	server   *grpc.Server
	health   *health.Server

	conns        chan struct{} // one token per admitted connection
	refusedSlots chan struct{} // one token per refused connection held open
	refused      *queueListener
	refuser      *grpc.Server

	nextWarn, suppressed atomic.Int64

	// The frame relay's upstream (Config.Relay).
	relays      relayConns
	relayAddrs  []string
	relayDown   []atomic.Int64 // per address: unix nanos until which its last dial failure counts
	relayTLS    *tls.Config
	nextReplica atomic.Uint64
}

// New checks cfg and dials the upstream lazily.
func New(cfg Config) (*Proxy, error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("sidecar: no listen address")
	}
	for _, a := range cfg.Listen {
		if !a.Valid() {
			return nil, fmt.Errorf("sidecar: %w: an address not made by ParseListen", ErrNotLocal)
		}
	}
	if err := localaddr.CheckUIDs(cfg.Listen, len(cfg.AllowUIDs)); err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	if cfg.SignerID.IsZero() {
		return nil, errors.New("sidecar: the signer's SPIFFE ID is required")
	}
	if cfg.SVID == nil || cfg.Bundle == nil {
		return nil, errors.New("sidecar: an SVID source and a bundle source are required")
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 320 << 10
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o660
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 128
	}
	if cfg.MaxConcurrentStreams <= 0 {
		cfg.MaxConcurrentStreams = 1024
	}
	p := &Proxy{cfg: cfg, allowUID: map[int]bool{}, health: health.NewServer(),
		conns: make(chan struct{}, cfg.MaxConnections), refusedSlots: make(chan struct{}, maxRefused),
		refused: newQueueListener(maxRefused), refuser: newRefuser()}
	for _, uid := range cfg.AllowUIDs {
		p.allowUID[uid] = true
	}

	if cfg.Relay {
		addrs, err := relayAddresses(cfg.Upstream)
		if err != nil {
			return nil, err
		}
		p.relayAddrs = addrs
		p.relayDown = make([]atomic.Int64, len(addrs))
		p.relayTLS = UpstreamTLS(cfg.SVID, cfg.Bundle, cfg.SignerID)
		p.relayTLS.NextProtos = []string{"h2"}
	}

	target, res := upstreamTarget(cfg.Upstream)
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(UpstreamTLS(cfg.SVID, cfg.Bundle, cfg.SignerID))),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.MaxMessageBytes), grpc.MaxCallSendMsgSize(cfg.MaxMessageBytes),
			grpc.ForceCodecV2(codec{})),
		// Stay connected: readiness means "the upstream handshake works now".
		grpc.WithIdleTimeout(0),
		// A replica that is back is used within about a second: gRPC's
		// default backoff grows to 120 s, so a replica that had been down
		// for minutes stayed unused after it returned, and when the other
		// one died every call failed until the next attempt (about 35 s
		// measured). Failed calls stay safe: gRPC retries on its own only a
		// call that never reached a server (transparent retry); nothing
		// here retries a Sign that may have been signed and audited.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: connectTimeout}),
	}
	if res != nil {
		dial = append(dial, grpc.WithResolvers(res))
	}
	cc, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("sidecar: upstream %q: %w", cfg.Upstream, err)
	}
	p.upstream = cc

	p.server = grpc.NewServer(
		grpc.Creds(localCreds{}),
		grpc.ForceServerCodecV2(codec{}),
		grpc.UnknownServiceHandler(p.forward),
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxConcurrentStreams)),
	)
	healthpb.RegisterHealthServer(p.server, p.health)
	ops.SetAll(p.health, false, HealthService)
	return p, nil
}

// upstreamTarget turns a comma-separated address list into a manual
// resolver; anything else is a gRPC target as given.
func upstreamTarget(up string) (string, resolver.Builder) {
	if !strings.Contains(up, ",") {
		return up, nil
	}
	r := manual.NewBuilderWithScheme("sidecar-upstream")
	var addrs []resolver.Address
	for _, a := range strings.Split(up, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
	}
	r.InitialState(resolver.State{Addresses: addrs})
	return r.Scheme() + ":///signer", r
}

// forward relays one unary call as raw bytes. The caller's deadline and
// cancellation travel with ctx; no caller metadata is passed on.
func (p *Proxy) forward(_ any, ss grpc.ServerStream) (err error) {
	start := time.Now()
	method, _ := grpc.MethodFromServerStream(ss)
	if p.cfg.Observe != nil {
		defer func() { p.cfg.Observe(method, status.Code(err), time.Since(start)) }()
	}
	ctx := ss.Context()
	if !forwarded[method] {
		p.warn("method refused: not forwarded to the signer", "method", method)
		return status.Errorf(codes.PermissionDenied, "sidecar: method %s is not forwarded to the signer", method)
	}
	req := new(frame)
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	resp := new(frame)
	if err := p.upstream.Invoke(ctx, method, req, resp); err != nil {
		return err
	}
	return ss.SendMsg(resp)
}

// Listen opens the configured listeners.
func (p *Proxy) Listen() ([]net.Listener, error) {
	var ls []net.Listener
	for _, a := range p.cfg.Listen {
		l, err := listen(a, p.cfg.SocketMode)
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return nil, fmt.Errorf("%w on %s: %w", ErrListen, a, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// Health is the health server (SERVING once the upstream is connected).
func (p *Proxy) Health() *health.Server { return p.health }

// Ready reports whether the upstream connection is up.
func (p *Proxy) Ready(context.Context) error {
	if st := p.upstream.GetState(); st != connectivity.Ready {
		return fmt.Errorf("sidecar: upstream %s", st)
	}
	return nil
}

func (p *Proxy) watchUpstream(ctx context.Context) {
	p.upstream.Connect()
	last := connectivity.State(-1)
	for {
		st := p.upstream.GetState()
		if st != last {
			ops.SetAll(p.health, st == connectivity.Ready, HealthService)
			p.cfg.Log.Info("upstream state", "state", st.String())
			last = st
		}
		if st == connectivity.Idle {
			p.upstream.Connect()
		}
		if !p.upstream.WaitForStateChange(ctx, st) {
			return
		}
	}
}

// Serve serves ls until ctx ends, then drains in-flight calls (up to
// grace) and closes the upstream.
func (p *Proxy) Serve(ctx context.Context, ls []net.Listener, grace time.Duration) error {
	wctx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.watchUpstream(wctx) }()

	go p.refuser.Serve(p.refused)
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() {
			if p.cfg.Relay {
				errc <- p.relayServe(guard{Listener: l, p: p})
				return
			}
			errc <- p.server.Serve(guard{Listener: l, p: p})
		}()
		p.cfg.Log.Info("sidecar listening", "addr", l.Addr().String(), "upstream", p.cfg.Upstream, "signer_id", p.cfg.SignerID.String())
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	p.health.Shutdown()
	if p.cfg.Relay {
		for _, l := range ls {
			l.Close()
		}
		p.drainRelays(grace)
	}
	done := make(chan struct{})
	go func() { p.server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.server.Stop()
		<-done
	}
	p.refuser.Stop()
	stopWatch()
	wg.Wait()
	p.upstream.Close()
	for _, a := range p.cfg.Listen {
		if a.IsUnix() {
			os.Remove(a.Address())
		}
	}
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
