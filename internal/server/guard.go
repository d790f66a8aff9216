package server

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/plexsphere/signer/internal/ops"
)

// guard keeps callers the signer refuses from starving the ones it serves.
// Every RPC is audited (both entries, committed before the caller hears of
// it), so a flood is answered with fewer RPCs, never with fewer entries:
// what the signer will not audit it refuses at the connection, before an
// RPC exists. The rules, all here:
//
//   - at most maxConns connections at once, at most perSource of them from
//     one source (an IPv4 address, an IPv6 /64), and at most connRate new
//     connections a second per source: excess connections are closed
//     before the TLS handshake, so they cost no crypto and no audit;
//   - every denied call waits for its turn at denialRate (a reservation:
//     a backlog cannot switch the pacing off, and a caller that gives up
//     keeps neither its entries nor its place from the queue); a call
//     whose turn is more than maxWait away is still audited in its turn,
//     and its connection is closed;
//   - at most maxPending denied calls wait at once: a call the guard can
//     tell will be denied (its peer is not on the called service's
//     allow-list, or has no certificate) is refused in the transport
//     (grpc.InTapHandle) when the queue is full, and its connection
//     closed, before it becomes an RPC;
//   - a connection is closed after perConn denials, and after its first
//     when the peer has no client certificate; its further calls are
//     refused in the transport meanwhile;
//   - a source whose connections keep being denied is refused before the
//     TLS handshake (penalties): each of its connections that completes a
//     handshake without a client certificate, or is closed for repeated
//     denials without its peer ever being admitted, spends one of the
//     source's strikes (deniedConnRate a second, bursts of 10×); while it
//     has none left its new connections are closed at accept, so a
//     reconnecting attacker costs the signer an accept and a close, not a
//     handshake and an audited denial. Only the source's own connections
//     spend its strikes, and a source holding an admitted connection is
//     never refused for them.
//
// Closing a connection waits for its denied calls still in their turn, so
// that their answers (after their entries) can leave, unless the peer goes
// on opening calls on it (maxRefusedCalls): then it goes at once.
type guard struct {
	maxConns   int
	perSource  int
	perConn    int64
	maxPending int64
	maxWait    time.Duration
	denials    *rate.Limiter
	refused    func(reason string)
	// foresee tells whether a call of method from the peer in ctx will be
	// denied whatever its request says (the peer is not admitted to the
	// method's service at all).
	foresee func(ctx context.Context, method string) bool

	open    atomic.Int64
	pending atomic.Int64 // denied calls holding a turn (waiting, or being audited)
	mu      sync.Mutex
	conns   map[string]*guardedConn // remote address → connection
	sources map[netip.Addr]*source  // per source with connections open
	perIP   *ops.Budgets            // new-connection budget per source, bounded
	strikes *penalties              // denied-connection budget per source, bounded; under mu
}

// source is what the guard knows of one source's open connections.
type source struct {
	open     int // connections open
	admitted int // of them, those whose peer was admitted to a call
}

type guardLimits struct {
	MaxConns           int
	MaxConnsPerSource  int
	ConnRatePerSource  float64
	ConnBurstPerSource int
	DenialRate         float64
	DenialBurst        int
	DenialsPerConn     int
	MaxPendingDenials  int
	DenialMaxWait      time.Duration
	// DeniedConnRate is how many connections a second one source may have
	// denied (no client certificate, or closed for repeated denials
	// without an admitted call), after bursts of 10×.
	DeniedConnRate float64
}

// Reasons a connection is refused or closed (the reason label of
// plexsphere_signer_connections_refused_total; a fixed set).
const (
	refusedMaxConns      = "max_connections"
	refusedPerSource     = "connections_per_source"
	refusedConnRate      = "connection_rate"
	refusedRepeated      = "denied_repeatedly"
	refusedNoCert        = "no_client_certificate"
	refusedPending       = "denials_in_flight"
	refusedBacklog       = "denial_backlog"
	refusedPenalised     = "source_penalised"
	errClosingConnection = "signer: connection closed by flood control"
)

var refusedReasons = []string{refusedMaxConns, refusedPerSource, refusedConnRate, refusedRepeated, refusedNoCert, refusedPending, refusedBacklog, refusedPenalised}

func newGuard(l guardLimits, foresee func(context.Context, string) bool, refused func(reason string)) *guard {
	if refused == nil {
		refused = func(string) {}
	}
	if foresee == nil {
		foresee = func(context.Context, string) bool { return false }
	}
	return &guard{maxConns: l.MaxConns, perSource: l.MaxConnsPerSource, perConn: int64(l.DenialsPerConn),
		maxPending: int64(l.MaxPendingDenials), maxWait: l.DenialMaxWait,
		denials: rate.NewLimiter(rate.Limit(l.DenialRate), l.DenialBurst), refused: refused, foresee: foresee,
		conns: map[string]*guardedConn{}, sources: map[netip.Addr]*source{},
		perIP:   ops.NewBudgets(l.ConnRatePerSource, l.ConnBurstPerSource, maxTrackedSources),
		strikes: newPenalties(l.DeniedConnRate, 10*l.DeniedConnRate, maxTrackedSources, time.Now)}
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
		gc := &guardedConn{Conn: c, g: l.g, key: c.RemoteAddr().String()}
		if reason := l.g.admit(gc); reason != "" {
			l.g.refused(reason)
			// A reset, not a FIN: nothing was said on it, and the signer
			// keeps no TIME_WAIT for each connection of a flood.
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			continue
		}
		return gc, nil
	}
}

// maxTrackedSources bounds the per-source budgets (ops.Budgets): past it,
// refilled budgets are forgotten, and a new source is refused while every
// tracked one is still spending.
const maxTrackedSources = 10000

// admit decides a new connection before its TLS handshake: it registers c
// (with its source, when its address is IP) or returns why it is refused.
func (g *guard) admit(c *guardedConn) string {
	if g.open.Load() >= int64(g.maxConns) {
		return refusedMaxConns
	}
	ap, err := netip.ParseAddrPort(c.key)
	if err != nil {
		g.open.Add(1)
		g.mu.Lock()
		g.conns[c.key] = c
		g.mu.Unlock()
		return ""
	}
	src := ops.Source(ap.Addr())
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sources[src]
	if s != nil && s.open >= g.perSource {
		return refusedPerSource
	}
	// A source holding an admitted connection is not refused for its
	// strikes: they may be another peer's behind the same address, and the
	// admitted one must not lose its next connection to them.
	exempt := s != nil && s.admitted > 0
	if !exempt && g.strikes.spent(src) {
		return refusedPenalised
	}
	if g.perIP.Take(ap.Addr()) != 0 {
		return refusedConnRate
	}
	if s == nil {
		s = &source{}
		g.sources[src] = s
	}
	s.open++
	g.open.Add(1)
	c.src = src
	// A source with strikes spent lately pays for each new connection up
	// front (given back unless the connection is denied), so that no more
	// handshakes than it has strikes left are under way at once.
	c.charged = !exempt && g.strikes.charge(src)
	g.conns[c.key] = c
	return ""
}

type guardedConn struct {
	net.Conn
	g       *guard
	key     string
	src     netip.Addr
	denied  atomic.Int64 // denials counted against it (foreseen or not)
	waiting atomic.Int64 // its denied calls holding a turn
	closing atomic.Bool  // shut: its new calls are refused in the transport
	// calls refused in the transport while closing
	refusedCalls atomic.Int64
	once         sync.Once
	// admitted: its peer was admitted to a call (never set back).
	admitted atomic.Bool
	// charged: it spent one of its source's strikes at accept; struck:
	// it was denied (it keeps the strike); gone: closed. Under g.mu.
	charged, struck, gone bool
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		c.g.open.Add(-1)
		c.g.mu.Lock()
		c.gone = true
		if c.g.conns[c.key] == c {
			delete(c.g.conns, c.key)
		}
		if s := c.g.sources[c.src]; c.src.IsValid() && s != nil {
			if s.open--; s.open <= 0 {
				delete(c.g.sources, c.src)
			} else if c.admitted.Load() {
				s.admitted--
			}
		}
		if c.charged && !c.struck {
			c.g.strikes.refund(c.src)
		}
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

// closeGrace lets the last denial's answer reach the peer before its
// connection is closed under it.
const closeGrace = 100 * time.Millisecond

// maxRefusedCalls is how many calls a connection being closed may open and
// have refused before it is closed at once.
const maxRefusedCalls = 16

// shut refuses the connection's further calls and closes it once none of
// its denied calls holds a turn any more (counted once, under reason).
func (c *guardedConn) shut(reason string) {
	if c.closing.Swap(true) {
		return
	}
	c.g.refused(reason)
	if reason == refusedNoCert || reason == refusedRepeated {
		// The connection's own doing; the other reasons (a full queue,
		// a backlog) may be another source's.
		c.g.strike(c)
	}
	// With doneWaiting: whichever of the two sees the other's write closes.
	if c.waiting.Load() == 0 {
		time.AfterFunc(closeGrace, func() { c.Close() })
	}
}

func (c *guardedConn) doneWaiting() {
	if c.waiting.Add(-1) == 0 && c.closing.Load() {
		time.AfterFunc(closeGrace, func() { c.Close() })
	}
}

// strike spends one of c's source's strikes for c's denials, once per
// connection, unless its peer was admitted to a call (then the denials are
// an admitted caller's mistakes, paced and counted per connection).
func (g *guard) strike(c *guardedConn) {
	if c.admitted.Load() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.struck || c.admitted.Load() || !c.src.IsValid() {
		return
	}
	c.struck = true
	if !c.charged {
		g.strikes.take(c.src)
	}
}

// markAdmitted records that c's peer was admitted to a call: its source
// is exempt from refusals for strikes while c is open, and c gives back
// what it was charged at accept.
func (g *guard) markAdmitted(c *guardedConn) {
	if c.admitted.Load() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.admitted.Load() || c.gone {
		return
	}
	c.admitted.Store(true)
	if s := g.sources[c.src]; s != nil {
		s.admitted++
	}
	if c.charged && !c.struck {
		g.strikes.refund(c.src)
		c.charged = false
	}
}

// handshook is told of every completed TLS handshake: a peer without a
// client certificate is refused every call (the TLS layer lets it through
// only so that its denial is audited), so its connection is a strike at
// once, whether or not it ever makes a call.
func (g *guard) handshook(raw net.Conn, info credentials.AuthInfo) {
	c, ok := raw.(*guardedConn)
	if !ok {
		return
	}
	if ti, ok := info.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) == 0 {
		g.strike(c)
	}
}

func (g *guard) connOf(ctx context.Context) (*guardedConn, *peer.Peer) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil, nil
	}
	g.mu.Lock()
	c := g.conns[p.Addr.String()]
	g.mu.Unlock()
	return c, p
}

// certless reports whether the peer completed its handshake without a
// client certificate (the TLS layer lets it through so that its calls are
// denied and audited).
func certless(p *peer.Peer) bool {
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(info.State.PeerCertificates) == 0
}

// limit is how many denials a connection may have, and the reason it is
// closed for once it has had them.
func (g *guard) limit(p *peer.Peer) (int64, string) {
	if p != nil && certless(p) {
		return 1, refusedNoCert
	}
	return g.perConn, refusedRepeated
}

var errClosing = status.Error(codes.Unavailable, errClosingConnection)

// tap runs in the transport for every new stream, before it becomes an RPC
// (grpc.InTapHandle): a refused stream reaches no interceptor and no
// handler, so it has no audit entries to write. It refuses calls on a
// connection being closed, and a call that will be denied when its
// connection has had its denials or the queue of denials is full (and then
// closes the connection); a call it lets through that will be denied takes
// its place in the queue here.
func (g *guard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	c, p := g.connOf(ctx)
	if c == nil {
		return ctx, nil
	}
	if c.closing.Load() {
		// A peer that goes on opening calls on a connection being closed
		// (its denied calls still in their turn) would make the signer
		// refuse each: past a few, the connection goes at once; those
		// calls are audited all the same, only their answers are lost.
		if c.refusedCalls.Add(1) > maxRefusedCalls {
			c.Close()
		}
		return nil, errClosing
	}
	if !g.foresee(ctx, info.FullMethodName) {
		g.markAdmitted(c)
		return ctx, nil
	}
	limit, reason := g.limit(p)
	if c.denied.Add(1) > limit {
		c.shut(reason)
		return nil, errClosing
	}
	if g.pending.Add(1) > g.maxPending {
		g.pending.Add(-1)
		c.shut(refusedPending)
		return nil, errClosing
	}
	c.waiting.Add(1)
	t := &turn{g: g, c: c}
	// A stream that ends before its denial claims the place (a read
	// error, a caller gone before dispatch) gives it back.
	context.AfterFunc(ctx, t.abandon)
	return context.WithValue(ctx, turnKey{}, t), nil
}

type turnKey struct{}

// turn is a denied call's place in the queue of denials: taken by the tap
// (or by Turn, for a denial the tap could not foresee), claimed by the
// denial, given back once its entries are committed, or by the stream's
// end if no denial ever claimed it.
type turn struct {
	g     *guard
	c     *guardedConn // nil when the connection is not known
	state atomic.Int32 // turnTaken → turnClaimed → turnFreed, or turnTaken → turnFreed
}

const (
	turnTaken int32 = iota
	turnClaimed
	turnFreed
)

func (t *turn) abandon() {
	if t.state.CompareAndSwap(turnTaken, turnFreed) {
		t.free()
	}
}

func (t *turn) release() {
	if t.state.CompareAndSwap(turnClaimed, turnFreed) {
		t.free()
	}
}

func (t *turn) free() {
	t.g.pending.Add(-1)
	if t.c != nil {
		t.c.doneWaiting()
	}
}

// Turn is the signing.DenialPolicy: it returns when the denied call in ctx
// may be audited — its reserved turn at the denial rate has come, never
// sooner, whatever the caller's deadline — and done, to call once its
// entries are committed. The call is an RPC already: it is audited whatever
// the bounds say, and a bound it passes closes its connection instead.
func (g *guard) Turn(ctx context.Context) (done func()) {
	c, p := g.connOf(ctx)
	t, _ := ctx.Value(turnKey{}).(*turn)
	if t == nil || !t.state.CompareAndSwap(turnTaken, turnClaimed) {
		// Not foreseen by the tap (a scope the peer has no grant for, a
		// certificate that expired since), or its place was given back.
		t = &turn{g: g, c: c}
		t.state.Store(turnClaimed)
		over := g.pending.Add(1) > g.maxPending
		if c != nil {
			c.waiting.Add(1)
			limit, reason := g.limit(p)
			if c.denied.Add(1) >= limit {
				c.shut(reason)
			}
			if over {
				c.shut(refusedPending)
			}
		}
	} else if limit, reason := g.limit(p); c != nil && c.denied.Load() >= limit {
		c.shut(reason)
	}
	if d := g.denials.Reserve().Delay(); d > 0 {
		if d > g.maxWait && c != nil {
			c.shut(refusedBacklog)
		}
		tm := time.NewTimer(d)
		<-tm.C
	}
	return t.release
}
