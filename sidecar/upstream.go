package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// The signer's side: one mTLS HTTP/2 connection per replica, shared by all
// of the core's connections, each call sent to the least loaded replica.
// A replica that sends GOAWAY gets no new calls, and the calls it says it
// never processed are sent again elsewhere (safe: no signer saw them); a
// connection that is lost fails its calls Unavailable and is not retried
// (a Sign may have been signed and audited).

// ErrUpstream wraps a SIDECAR_UPSTREAM value the sidecar cannot use.
var ErrUpstream = errors.New("sidecar: bad upstream")

// resolveEvery is how often dns:/// upstreams are looked up again.
const resolveEvery = 5 * time.Second

const (
	// upConnWindow is the connection window the signer gets; refilled at
	// half. Answers are small; this only has to keep many in flight.
	upConnWindow = 4 << 20
)

// lookupHost resolves a dns:/// upstream (a variable for tests).
var lookupHost = net.DefaultResolver.LookupHost

// target is one entry of the upstream setting.
type target struct {
	host, port string
	dns        bool // dns:///: one replica per address the name resolves to
}

// parseUpstream reads host:port[,host:port...] or dns:///host:port.
func parseUpstream(up string) ([]target, error) {
	var ts []target
	for _, s := range strings.Split(up, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		t := target{}
		if rest, ok := strings.CutPrefix(s, "dns:///"); ok {
			t.dns, s = true, rest
		} else if strings.Contains(s, "://") || strings.HasPrefix(s, "unix:") {
			return nil, fmt.Errorf("%w %q: only host:port and dns:///host:port are understood", ErrUpstream, s)
		}
		h, p, err := net.SplitHostPort(s)
		if err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("%w %q: want host:port (or dns:///host:port): %v", ErrUpstream, s, err)
		}
		t.host, t.port = h, p
		ts = append(ts, t)
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("%w: empty; want host:port, a comma-separated list, or dns:///host:port", ErrUpstream)
	}
	return ts, nil
}

type pool struct {
	targets []target
	tls     *tls.Config
	maxMsg  int
	log     *slog.Logger
	onReady func(bool)
	// dialFailed, if set, logs a failed attempt to reach a replica
	// (handshake.go); first is the first failure since it last connected.
	dialFailed func(addr string, err error, first bool)
	// dialed, if set, is told each replica connection's TLS state.
	dialed func(addr string, cs tls.ConnectionState, took time.Duration)

	mu       sync.Mutex
	replicas map[string]*replica
	live     []*upConn // connected and taking calls
	waiting  []*call   // calls that wait for a connection
	pruneAt  int       // waiting's length when it is next cleared of ended calls
	resolved bool      // the first resolution is done
	closed   bool
	next     int
}

type replica struct {
	addr   string
	cancel context.CancelFunc
	failed bool // its last attempt failed and it has not connected since
}

func newPool(ts []target, cfg *tls.Config, maxMsg int, log *slog.Logger, onReady func(bool)) *pool {
	return &pool{targets: ts, tls: cfg, maxMsg: maxMsg, log: log, onReady: onReady, replicas: map[string]*replica{}}
}

// run keeps a connection to every replica until ctx ends.
func (p *pool) run(ctx context.Context) {
	var wg sync.WaitGroup
	p.resolve(ctx, &wg)
	dns := false
	for _, t := range p.targets {
		dns = dns || t.dns
	}
	if dns {
		t := time.NewTicker(resolveEvery)
		defer t.Stop()
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-t.C:
				p.resolve(ctx, &wg)
			}
		}
	} else {
		<-ctx.Done()
	}
	p.mu.Lock()
	p.closed = true
	for _, r := range p.replicas {
		r.cancel()
	}
	waiting := p.waiting
	p.waiting = nil
	p.mu.Unlock()
	for _, c := range waiting {
		c.cc.answer(c, &grpcStatus{codes.Unavailable, "sidecar: shutting down"})
	}
	wg.Wait()
}

// resolve updates the replica set; a failed lookup keeps the last one.
func (p *pool) resolve(ctx context.Context, wg *sync.WaitGroup) {
	want := map[string]bool{}
	for _, t := range p.targets {
		if !t.dns {
			want[net.JoinHostPort(t.host, t.port)] = true
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, connectTimeout)
		addrs, err := lookupHost(lctx, t.host)
		cancel()
		if err != nil || len(addrs) == 0 {
			p.log.Warn("upstream lookup failed; keeping the replicas known so far", "host", t.host, "err", err)
			return
		}
		for _, a := range addrs {
			want[net.JoinHostPort(a, t.port)] = true
		}
	}
	p.mu.Lock()
	for addr, r := range p.replicas {
		if !want[addr] {
			r.cancel()
			delete(p.replicas, addr)
			p.log.Info("signer replica gone from the upstream", "addr", addr)
		}
	}
	for addr := range want {
		if p.replicas[addr] != nil || p.closed {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &replica{addr: addr, cancel: cancel}
		p.replicas[addr] = r
		wg.Add(1)
		go func() { defer wg.Done(); p.keep(rctx, r) }()
	}
	p.resolved = true
	p.mu.Unlock()
	p.kick()
}

// keep holds one connection to r open, reconnecting after 100 ms and then
// up to ReconnectMaxDelay apart.
func (p *pool) keep(ctx context.Context, r *replica) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		u, err := p.dial(ctx, r.addr)
		if err != nil {
			p.mu.Lock()
			first := !r.failed
			r.failed = true
			p.mu.Unlock()
			if ctx.Err() == nil {
				if p.dialFailed != nil {
					p.dialFailed(r.addr, err, first)
				} else if first {
					p.log.Warn("signer replica unreachable; retrying", "addr", r.addr, "err", err)
				}
			}
			p.kick() // calls that waited for this replica fail now
			t := time.NewTimer(time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64())))
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			delay = min(time.Duration(float64(delay)*1.6), ReconnectMaxDelay)
			continue
		}
		delay = 100 * time.Millisecond
		p.mu.Lock()
		wasFailed := r.failed
		r.failed = false
		p.live = append(p.live, u)
		p.mu.Unlock()
		if wasFailed {
			p.log.Info("signer replica reachable again", "addr", r.addr)
		}
		go u.readLoop()
		p.changed()
		select {
		case <-u.away:
		case <-u.done:
		case <-ctx.Done():
		}
		p.remove(u)
		u.retire()
		p.changed()
	}
}

// changed tells the proxy whether any replica is connected, and hands
// waiting calls to a connection that came up.
func (p *pool) changed() {
	p.mu.Lock()
	up := len(p.live) > 0
	p.mu.Unlock()
	p.onReady(up)
	p.kick()
}

func (p *pool) remove(u *upConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, l := range p.live {
		if l == u {
			p.live = append(p.live[:i], p.live[i+1:]...)
			return
		}
	}
}

// kick dispatches the waiting calls again.
func (p *pool) kick() {
	p.mu.Lock()
	w := p.waiting
	p.waiting = nil
	p.mu.Unlock()
	if len(w) > 0 {
		p.dispatch(w)
	}
}

// dispatch sends each call to the least loaded connection that has room
// (ties go round robin). With none, a call waits while a replica is still
// connecting or every connection is full, and fails Unavailable when every
// replica's last attempt failed.
func (p *pool) dispatch(cs []*call) {
	type group struct {
		u  *upConn
		cs []*call
	}
	var groups []group
	var failed []*call
	p.mu.Lock()
	for _, c := range cs {
		u := p.pick()
		if u == nil {
			if p.mayWait() {
				p.wait(c)
			} else {
				failed = append(failed, c)
			}
			continue
		}
		u.active.Add(1)
		i := 0
		for i < len(groups) && groups[i].u != u {
			i++
		}
		if i == len(groups) {
			groups = append(groups, group{u: u})
		}
		groups[i].cs = append(groups[i].cs, c)
	}
	p.mu.Unlock()
	for _, g := range groups {
		if left := g.u.send(g.cs); len(left) > 0 {
			p.remove(g.u) // going away or broken: not picked again
			p.dispatch(left)
		}
	}
	for _, c := range failed {
		c.cc.answer(c, &grpcStatus{codes.Unavailable, "sidecar: no signer replica reachable"})
	}
}

// wait adds c to the waiting calls (held lock). A call the core resets
// stays there until the next dispatch, which may be long while every
// connection is full; so the list is cleared of ended calls whenever it
// has doubled since the last time, and holds at most about twice the
// calls still waiting.
func (p *pool) wait(c *call) {
	if len(p.waiting) >= max(p.pruneAt, 64) {
		p.waiting = slices.DeleteFunc(p.waiting, func(w *call) bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.done
		})
		p.pruneAt = 2 * len(p.waiting)
	}
	p.waiting = append(p.waiting, c)
}

func (p *pool) pick() *upConn {
	n := len(p.live)
	if n == 0 {
		return nil
	}
	start := p.next % n
	p.next++
	var best *upConn
	var bestLoad int32
	for i := range n {
		u := p.live[(start+i)%n]
		load := u.active.Load()
		if load >= int32(u.maxStreams.Load()) {
			continue
		}
		if best == nil || load < bestLoad {
			best, bestLoad = u, load
		}
	}
	return best
}

func (p *pool) mayWait() bool {
	if p.closed {
		return false
	}
	if !p.resolved || len(p.live) > 0 {
		return true
	}
	for _, r := range p.replicas {
		if !r.failed {
			return true
		}
	}
	return false
}

// dial opens one replica connection and starts HTTP/2 on it.
func (p *pool) dial(ctx context.Context, addr string) (*upConn, error) {
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: p.tls}
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if nc.(*tls.Conn).ConnectionState().NegotiatedProtocol != "h2" {
		nc.Close()
		return nil, fmt.Errorf("%s: the signer did not agree to HTTP/2 (ALPN h2)", addr)
	}
	u := &upConn{p: p, addr: addr, nc: nc, streams: map[uint32]*call{}, nextID: 1,
		sendWin: initialWindow, initWin: initialWindow, peerMax: maxFrame,
		away: make(chan struct{}), done: make(chan struct{})}
	u.maxStreams.Store(100) // until the signer's SETTINGS say
	u.authority, _, _ = net.SplitHostPort(addr)
	u.br = bufio.NewReaderSize(nc, 32<<10)
	u.fr = http2.NewFramer(nil, u.br)
	u.fr.SetReuseFrames()
	u.hb = newHeaderBlock(maxHeaderList)
	u.fr.MaxHeaderListSize = maxHeaderList
	u.bw = bufio.NewWriterSize(nc, 32<<10)
	u.wfr = http2.NewFramer(u.bw, nil)
	u.henc = hpack.NewEncoder(&u.hbuf)
	u.streamWindow = uint32(p.maxMsg) + 5 + maxFrame // an answer never waits for a stream update
	u.bw.WriteString(http2.ClientPreface)
	u.wfr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: u.streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList})
	u.wfr.WriteWindowUpdate(0, upConnWindow-initialWindow)
	if err := u.bw.Flush(); err != nil {
		nc.Close()
		return nil, err
	}
	if err := awaitServer(nc, u.br); err != nil {
		nc.Close()
		return nil, err
	}
	if p.dialed != nil {
		p.dialed(addr, nc.(*tls.Conn).ConnectionState(), time.Since(start))
	}
	return u, nil
}

// upConn is one HTTP/2 connection to a replica.
type upConn struct {
	p         *pool
	addr      string
	authority string
	nc        net.Conn
	br        *bufio.Reader
	fr        *http2.Framer // read loop only
	hb        *headerBlock  // read loop only

	active       atomic.Int32  // streams picked for this connection
	maxStreams   atomic.Uint32 // the signer's SETTINGS_MAX_CONCURRENT_STREAMS
	streamWindow uint32
	recvAck      int32       // read loop only
	answered     []*call     // read loop only: answers of this burst, not yet handed on
	touched      []*coreConn // read loop only: the core connections handOn queued answers for

	waiters          atomic.Int32 // goroutines waiting for mu: the last one flushes
	mu               sync.Mutex
	bw               *bufio.Writer
	wfr              *http2.Framer
	henc             *hpack.Encoder
	hbuf             bytes.Buffer
	nextID           uint32
	streams          map[uint32]*call
	blocked          []*call // bodies waiting for the signer's window
	sendWin          int32
	initWin          int32
	peerMax          uint32
	goneAway, broken bool

	away chan struct{} // closed on the signer's GOAWAY
	done chan struct{} // closed when the read loop ends
}

func (u *upConn) lock() {
	u.waiters.Add(1)
	u.mu.Lock()
	u.waiters.Add(-1)
}

// unlock flushes what was written unless another writer is about to take
// the lock: calls that arrive together leave in one write.
func (u *upConn) unlock() {
	if u.bw.Buffered() > 0 && u.waiters.Load() == 0 && !u.broken {
		if err := u.bw.Flush(); err != nil {
			u.broken = true
			u.nc.Close()
		}
	}
	u.mu.Unlock()
}

// send writes each call's request; it returns the calls it did not send
// because the connection is going away or broken (no signer saw those).
func (u *upConn) send(cs []*call) []*call {
	u.lock()
	defer u.unlock()
	for i, c := range cs {
		if u.goneAway || u.broken {
			for range cs[i:] {
				u.active.Add(-1)
			}
			return cs[i:]
		}
		c.mu.Lock()
		if c.done {
			c.mu.Unlock()
			u.active.Add(-1)
			continue
		}
		id := u.nextID
		u.nextID += 2
		c.up, c.upID, c.upSent, c.upWin = u, id, 0, u.initWin
		c.respHdrs, c.respData = nil, nil
		c.mu.Unlock()
		u.streams[id] = c
		u.hbuf.Reset()
		for _, f := range [...]hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
			{Name: ":path", Value: c.method}, {Name: ":authority", Value: u.authority},
			{Name: "content-type", Value: c.ctype}, {Name: "te", Value: "trailers"}} {
			u.henc.WriteField(f)
		}
		for _, f := range c.hdrs {
			u.henc.WriteField(f)
		}
		err := writeHeaderBlock(u.wfr, id, u.hbuf.Bytes(), len(c.body) == 0, u.peerMax)
		if err == nil && len(c.body) > 0 {
			err = u.writeBody(c)
		}
		if err != nil {
			// The read loop fails c and what was sent before it; the
			// calls after it were never written, so no signer saw them.
			u.fail(err)
			for range cs[i+1:] {
				u.active.Add(-1)
			}
			return cs[i+1:]
		}
	}
	return nil
}

// writeBody writes what the signer's windows allow of c's request.
func (u *upConn) writeBody(c *call) error {
	for c.upSent < len(c.body) {
		n := min(int32(len(c.body)-c.upSent), int32(u.peerMax), u.sendWin, c.upWin)
		if n <= 0 {
			u.blocked = append(u.blocked, c)
			return nil
		}
		end := c.upSent+int(n) == len(c.body)
		if err := u.wfr.WriteData(c.upID, end, c.body[c.upSent:c.upSent+int(n)]); err != nil {
			return err
		}
		c.upSent += int(n)
		u.sendWin -= n
		c.upWin -= n
	}
	return nil
}

func (u *upConn) unblock() error {
	waiting := u.blocked
	u.blocked = nil
	for _, c := range waiting {
		if u.streams[c.upID] != c {
			continue
		}
		if err := u.writeBody(c); err != nil {
			return err
		}
	}
	return nil
}

// fail marks the connection broken (held lock).
func (u *upConn) fail(err error) {
	if !u.broken {
		u.broken = true
		u.p.log.Warn("connection to signer replica broken", "addr", u.addr, "err", err)
	}
	u.nc.Close()
}

// drop takes stream id off the connection (held lock).
func (u *upConn) drop(id uint32) *call {
	c := u.streams[id]
	if c == nil {
		return nil
	}
	delete(u.streams, id)
	u.active.Add(-1)
	if u.goneAway && len(u.streams) == 0 {
		u.nc.Close() // drained
	}
	return c
}

// reset cancels stream id at the signer (the core gave up on it).
func (u *upConn) reset(id uint32) {
	u.lock()
	if u.drop(id) != nil && !u.broken {
		if err := u.wfr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			u.fail(err)
		}
	}
	u.unlock()
	u.p.kick()
}

// retire takes no new calls and closes once its calls are answered.
func (u *upConn) retire() {
	u.lock()
	u.goneAway = true
	if len(u.streams) == 0 {
		u.nc.Close()
	}
	u.unlock()
}

func (u *upConn) readLoop() {
	err := u.read()
	u.lock()
	u.broken = true
	lost := u.streams
	u.streams = map[uint32]*call{}
	u.active.Add(-int32(len(lost)))
	u.unlock()
	u.nc.Close()
	close(u.done)
	if len(lost) > 0 {
		u.p.log.Warn("connection to signer replica lost with calls in flight", "addr", u.addr, "calls", len(lost), "err", err)
	}
	for _, c := range lost {
		c.cc.answer(c, &grpcStatus{codes.Unavailable, "sidecar: the connection to the signer was lost"})
	}
	u.p.kick()
}

func (u *upConn) read() error {
	for {
		if u.br.Buffered() == 0 {
			u.handOn() // before the read blocks: this burst's answers leave together
		}
		f, err := u.fr.ReadFrame()
		if err != nil {
			u.handOn()
			return err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame, *http2.ContinuationFrame:
			done, err := u.hb.add(f)
			if err != nil {
				return fmt.Errorf("bad header block from the signer: %w", err)
			}
			if !done {
				continue
			}
			u.lock()
			c := u.streams[u.hb.id]
			u.unlock()
			if c == nil {
				u.hb.drop()
				continue
			}
			// Never nil once set, even for an empty block: nil respHdrs
			// means no HEADERS yet.
			if c.respHdrs == nil {
				c.respHdrs = append(c.respFields[:0:3], u.hb.fields...)
			} else {
				c.respTrl = append(c.respFields[3:3:6], u.hb.fields...)
			}
			u.hb.drop()
			if u.hb.end {
				u.end(u.hb.id, c)
			}
		case *http2.DataFrame:
			if u.recvAck += int32(f.Length); u.recvAck >= upConnWindow/2 {
				n := u.recvAck
				u.recvAck = 0
				u.lock()
				u.wfr.WriteWindowUpdate(0, uint32(n))
				u.unlock()
			}
			u.lock()
			c := u.streams[f.StreamID]
			u.unlock()
			if c == nil {
				continue
			}
			if len(c.respData)+len(f.Data()) > u.p.maxMsg+5 {
				u.reset(f.StreamID)
				c.cc.answer(c, &grpcStatus{codes.ResourceExhausted, fmt.Sprintf("sidecar: answer larger than %d bytes", u.p.maxMsg)})
				continue
			}
			c.respData = append(c.respData, f.Data()...)
			if f.StreamEnded() {
				u.end(f.StreamID, c)
			}
		case *http2.RSTStreamFrame:
			u.lock()
			c := u.drop(f.StreamID)
			u.unlock()
			if c == nil {
				continue
			}
			if f.ErrCode == http2.ErrCodeRefusedStream { // never processed: safe to send elsewhere
				u.p.dispatch([]*call{c})
				continue
			}
			code := rstCode(f.ErrCode)
			if code == codes.Canceled && !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
				// The signer resets a call whose deadline passed with
				// CANCEL; a gRPC client reports that reset as
				// DeadlineExceeded, and so does the sidecar (the core's
				// own deadline may not have fired yet).
				code = codes.DeadlineExceeded
			}
			c.cc.answer(c, &grpcStatus{code, "sidecar: the signer reset the call: " + f.ErrCode.String()})
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			u.lock()
			f.ForeachSetting(func(s http2.Setting) error {
				switch s.ID {
				case http2.SettingMaxConcurrentStreams:
					u.maxStreams.Store(s.Val)
				case http2.SettingInitialWindowSize:
					d := int32(s.Val) - u.initWin
					u.initWin = int32(s.Val)
					for _, c := range u.streams {
						c.upWin += d
					}
				case http2.SettingMaxFrameSize:
					u.peerMax = min(s.Val, maxFrame)
				case http2.SettingHeaderTableSize:
					u.henc.SetMaxDynamicTableSize(s.Val)
				}
				return nil
			})
			err := u.wfr.WriteSettingsAck()
			if err == nil {
				err = u.unblock()
			}
			if err != nil {
				u.fail(err)
			}
			u.unlock()
			u.p.kick() // a higher stream limit makes room
		case *http2.WindowUpdateFrame:
			u.lock()
			if f.StreamID == 0 {
				u.sendWin += int32(f.Increment)
			} else if c := u.streams[f.StreamID]; c != nil {
				c.upWin += int32(f.Increment)
			}
			if err := u.unblock(); err != nil {
				u.fail(err)
			}
			u.unlock()
		case *http2.PingFrame:
			if !f.IsAck() {
				u.lock()
				u.wfr.WritePing(true, f.Data)
				u.unlock()
			}
		case *http2.GoAwayFrame:
			u.lock()
			u.goneAway = true
			var again []*call
			for id := range u.streams {
				if id > f.LastStreamID {
					again = append(again, u.drop(id))
				}
			}
			if len(u.streams) == 0 {
				u.nc.Close()
			}
			u.unlock()
			select {
			case <-u.away:
			default:
				close(u.away)
			}
			if f.ErrCode != http2.ErrCodeNo {
				u.p.log.Warn("signer replica sent GOAWAY", "addr", u.addr, "code", f.ErrCode.String())
			}
			u.p.remove(u)
			if len(again) > 0 {
				for _, c := range again {
					c.mu.Lock()
					c.up = nil
					c.mu.Unlock()
				}
				u.p.dispatch(again)
			}
		}
	}
}

// end takes c off the connection; its answer leaves with the burst's.
func (u *upConn) end(id uint32, c *call) {
	u.lock()
	u.drop(id)
	u.unlock()
	u.answered = append(u.answered, c)
}

// handOn gives the answers of one burst to their core connections, each
// connection's in one batch.
func (u *upConn) handOn() {
	if len(u.answered) == 0 {
		return
	}
	u.p.kick()
	for i, c := range u.answered {
		u.answered[i] = nil
		if !c.finish() {
			continue
		}
		p := c.cc.p
		p.release(c)
		p.observe(c, grpcCode(c.respTrl, c.respHdrs))
		it := item{kind: itemStream, c: c, hdrs: c.respHdrs, data: c.respData, trailers: c.respTrl, end: true}
		if it.trailers == nil && (it.data != nil || !hasStatus(it.hdrs)) {
			// Not gRPC, but the core's stream must still end, and with a
			// status: only trailers (or a trailers-only answer) end it.
			it.trailers = (&grpcStatus{codes.Internal, "sidecar: the signer's answer had no grpc-status"}).trailers()
		}
		if it.hdrs == nil {
			it.hdrs = responseHeaders() // DATA before any HEADERS: not gRPC either
		}
		// Queued in order; each core connection is written once below.
		c.cc.enqueue(it)
		if !slices.Contains(u.touched, c.cc) {
			u.touched = append(u.touched, c.cc)
		}
	}
	u.answered = u.answered[:0]
	for i, cc := range u.touched {
		cc.writeInline()
		u.touched[i] = nil
	}
	u.touched = u.touched[:0]
}

func hasStatus(fs []hpack.HeaderField) bool {
	for _, f := range fs {
		if f.Name == "grpc-status" {
			return true
		}
	}
	return false
}

// grpcCode reads grpc-status from the trailers (or a trailers-only answer).
func grpcCode(lists ...[]hpack.HeaderField) codes.Code {
	for _, fs := range lists {
		for _, f := range fs {
			if f.Name == "grpc-status" {
				if n, err := strconv.ParseUint(f.Value, 10, 32); err == nil {
					return codes.Code(n)
				}
				return codes.Unknown
			}
		}
	}
	return codes.Internal
}

// rstCode maps a stream reset to a gRPC code, as gRPC clients do.
func rstCode(e http2.ErrCode) codes.Code {
	switch e {
	case http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeEnhanceYourCalm:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	case http2.ErrCodeNo, http2.ErrCodeRefusedStream:
		return codes.Unavailable
	}
	return codes.Internal
}
