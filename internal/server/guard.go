package server

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"

	"github.com/plexsphere/signer/internal/ops"
)

// guard keeps callers the signer refuses from starving the ones it serves.
// Every refused call is still audited (both entries, committed before the
// caller hears of it), so the defence is to bound how fast refusals can be
// produced and how much they may hold:
//
//   - at most maxConns connections at once, and at most connRate new
//     connections a second per source address (excess connections are
//     closed before the TLS handshake, so they cost no crypto and no audit:
//     no RPC was made);
//   - denied calls are admitted to auditing at denialRate a second
//     (globally; the rest wait, holding only a goroutine) and their entries
//     travel in the writer's denied lane;
//   - a connection whose calls keep being denied (perConn of them) is
//     closed, so a peer cannot keep a cheap channel open to probe with.
type guard struct {
	maxConns int
	perConn  int64
	denials  *rate.Limiter
	refused  func(reason string)

	open  atomic.Int64
	mu    sync.Mutex
	conns map[string]*guardedConn // remote address → connection
	perIP *ops.Budgets            // new-connection budget per source (an IPv6 /64), bounded
}

type guardLimits struct {
	MaxConns           int
	ConnRatePerSource  float64
	ConnBurstPerSource int
	DenialRate         float64
	DenialBurst        int
	DenialsPerConn     int
}

func newGuard(l guardLimits, refused func(reason string)) *guard {
	if refused == nil {
		refused = func(string) {}
	}
	return &guard{maxConns: l.MaxConns, perConn: int64(l.DenialsPerConn), denials: rate.NewLimiter(rate.Limit(l.DenialRate), l.DenialBurst), refused: refused,
		conns: map[string]*guardedConn{}, perIP: ops.NewBudgets(l.ConnRatePerSource, l.ConnBurstPerSource, maxTrackedSources)}
}

// listener wraps l with the connection limits.
func (g *guard) listener(l net.Listener) net.Listener { return &guardedListener{Listener: l, g: g} }

type guardedListener struct {
	net.Listener
	g *guard
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if reason := l.g.admit(c); reason != "" {
			l.g.refused(reason)
			c.Close()
			continue
		}
		gc := &guardedConn{Conn: c, g: l.g, key: c.RemoteAddr().String()}
		l.g.mu.Lock()
		l.g.conns[gc.key] = gc
		l.g.mu.Unlock()
		return gc, nil
	}
}

// maxTrackedSources bounds the per-source budgets (ops.Budgets): past it,
// refilled budgets are forgotten, and a new source is refused while every
// tracked one is still spending.
const maxTrackedSources = 10000

func (g *guard) admit(c net.Conn) string {
	if g.open.Load() >= int64(g.maxConns) {
		return "max_connections"
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		g.open.Add(1)
		return ""
	}
	if g.perIP.Take(ap.Addr()) != 0 {
		return "connection_rate"
	}
	g.open.Add(1)
	return ""
}

type guardedConn struct {
	net.Conn
	g      *guard
	key    string
	denied atomic.Int64
	once   sync.Once
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		c.g.open.Add(-1)
		c.g.mu.Lock()
		if c.g.conns[c.key] == c {
			delete(c.g.conns, c.key)
		}
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

// Wait admits a denied call to auditing at the denial rate.
func (g *guard) Wait(ctx context.Context) error { return g.denials.Wait(ctx) }

// closeGrace lets the denial's answer reach the peer before its connection
// is closed under it.
const closeGrace = 100 * time.Millisecond

// Denied counts a denial against the caller's connection and closes the
// connection once it has had perConn of them.
func (g *guard) Denied(ctx context.Context) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return
	}
	g.mu.Lock()
	c := g.conns[p.Addr.String()]
	g.mu.Unlock()
	if c == nil || c.denied.Add(1) != g.perConn {
		return
	}
	g.refused("denied_repeatedly")
	time.AfterFunc(closeGrace, func() { c.Close() })
}
