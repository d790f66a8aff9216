package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"

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

// ReconnectMaxDelay is the longest wait between two attempts to reach a
// replica (plus up to 20 % jitter): a replica that is back is used within
// about a second, a dead one costs at most one attempt a second.
const ReconnectMaxDelay = time.Second

// connectTimeout bounds one connection attempt (TCP and TLS), so an
// address that swallows packets does not hold a replica back.
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
	// Upstream is the signer: host:port, a comma-separated list of
	// host:port, or dns:///host:port (re-resolved every few seconds, one
	// connection per address it resolves to). Calls are spread over the
	// replicas one by one, to the least loaded.
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
	// Refused, if set, is told why a core connection was refused or
	// closed by the sidecar (a bounded set of reasons, for metrics).
	Refused func(reason string)

	// Used by Run only: OpsListen is a plain HTTP address for /metrics and
	// gRPC health ("" disables); ShutdownTimeout bounds the drain of
	// in-flight calls (default 10 s).
	OpsListen       string
	ShutdownTimeout time.Duration
	// Ops, if set, is an ops endpoint already serving start-up answers
	// (bound before the SVID arrived); Run serves on it instead of
	// OpsListen and closes it when done.
	Ops *ops.Endpoint

	// Settings name the binary's settings in log lines that tell the
	// operator what to fix (a failed handshake with the signer, say).
	Settings Settings
}

// Settings are a binary's names for the settings the sidecar's log lines
// point at; an empty one is named after its Config field.
type Settings struct {
	Upstream string // Config.Upstream
	SignerID string // Config.SignerID
	Identity string // where the SVID and bundle come from
}

// Proxy is a running sidecar: an HTTP/2 server for the core (core.go) and
// a pool of mTLS connections to the signer replicas (upstream.go). Calls
// pass through as whole gRPC requests and responses, never decoded.
type Proxy struct {
	cfg      Config
	allowUID map[int]bool
	pool     *pool
	buffers  *semaphore.Weighted // request bytes held (maxBuffered): taken without waiting, never parked
	health   *health.Server      // the ops listener's; the core's socket answers health itself

	serving  atomic.Bool
	watchMu  sync.Mutex
	watchers map[*call]struct{} // health Watch streams on core connections

	conns        chan struct{} // one token per admitted connection
	refusedSlots chan struct{} // one token per refused connection held open
	refused      *queueListener
	refuser      *grpc.Server

	coreMu    sync.Mutex
	cores     map[*coreConn]struct{}
	draining  bool
	coreConns sync.WaitGroup

	nextWarn, suppressed atomic.Int64
}

// New checks cfg; the upstream is dialled by Serve.
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
	if cfg.Refused == nil {
		cfg.Refused = func(string) {}
	}
	targets, err := parseUpstream(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, allowUID: map[int]bool{}, health: health.NewServer(), watchers: map[*call]struct{}{},
		conns: make(chan struct{}, cfg.MaxConnections), refusedSlots: make(chan struct{}, maxRefused),
		refused: newQueueListener(maxRefused), refuser: newRefuser(), cores: map[*coreConn]struct{}{},
		buffers: semaphore.NewWeighted(maxBuffered)}
	for _, uid := range cfg.AllowUIDs {
		p.allowUID[uid] = true
	}
	tlsCfg := UpstreamTLS(cfg.SVID, cfg.Bundle, cfg.SignerID)
	tlsCfg.NextProtos = []string{"h2"}
	p.pool = newPool(targets, tlsCfg, cfg.MaxMessageBytes, cfg.Log, p.setServing)
	dl := newDialLog(cfg)
	p.pool.dialFailed, p.pool.dialed = dl.failed, dl.connected
	ops.SetAll(p.health, false, HealthService)
	return p, nil
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

// Health is the ops listener's health server (SERVING while a replica is
// connected).
func (p *Proxy) Health() *health.Server { return p.health }

// Ready reports whether a signer replica is connected.
func (p *Proxy) Ready(context.Context) error {
	if !p.serving.Load() {
		return errors.New("sidecar: no signer replica connected")
	}
	return nil
}

// setServing follows the pool: SERVING while any replica is connected.
func (p *Proxy) setServing(up bool) {
	if p.serving.Swap(up) == up {
		return
	}
	ops.SetAll(p.health, up, HealthService)
	p.cfg.Log.Info("upstream state", "ready", up)
	p.watchMu.Lock()
	ws := make([]*call, 0, len(p.watchers))
	for w := range p.watchers {
		ws = append(ws, w)
	}
	p.watchMu.Unlock()
	for _, w := range ws {
		w.cc.send(item{kind: itemStream, c: w, data: healthMessage(up)})
	}
}

// Serve serves ls until ctx ends, then drains: listeners close, every core
// connection gets a GOAWAY, and calls in flight have up to grace to finish.
func (p *Proxy) Serve(ctx context.Context, ls []net.Listener, grace time.Duration) error {
	pctx, stopPool := context.WithCancel(context.Background())
	poolDone := make(chan struct{})
	go func() { defer close(poolDone); p.pool.run(pctx) }()

	go p.refuser.Serve(p.refused)
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- p.serve(guard{Listener: l, p: p}) }()
		p.cfg.Log.Info("sidecar listening", "addr", l.Addr().String(), "upstream", p.cfg.Upstream, "signer_id", p.cfg.SignerID.String())
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	p.health.Shutdown()
	for _, l := range ls {
		l.Close()
	}
	p.drain(grace)
	p.refuser.Stop()
	stopPool()
	<-poolDone
	for _, a := range p.cfg.Listen {
		if a.IsUnix() {
			os.Remove(a.Address())
		}
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (p *Proxy) serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		cc := newCoreConn(p, c)
		p.coreMu.Lock()
		if p.draining {
			p.coreMu.Unlock()
			c.Close()
			continue
		}
		p.cores[cc] = struct{}{}
		p.coreConns.Add(1)
		p.coreMu.Unlock()
		go func() {
			defer p.coreConns.Done()
			cc.serve()
			p.coreMu.Lock()
			delete(p.cores, cc)
			p.coreMu.Unlock()
		}()
	}
}

// drain sends every core connection a GOAWAY, waits up to grace for their
// calls, then closes what is left.
func (p *Proxy) drain(grace time.Duration) {
	p.coreMu.Lock()
	p.draining = true
	for cc := range p.cores {
		cc.goAway()
	}
	p.coreMu.Unlock()
	done := make(chan struct{})
	go func() { p.coreConns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.coreMu.Lock()
		for cc := range p.cores {
			cc.nc.Close()
		}
		p.coreMu.Unlock()
		<-done
	}
}

// release gives back the request bytes c held, body and headers.
func (p *Proxy) release(c *call) {
	if c.held > 0 {
		p.buffers.Release(int64(c.held))
		c.held = 0
	}
	c.body, c.hdrs, c.ctype = nil, nil, ""
}

func (p *Proxy) observe(c *call, code codes.Code) {
	if p.cfg.Observe != nil {
		p.cfg.Observe(c.method, code, time.Since(c.start))
	}
}
