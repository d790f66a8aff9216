package sidecar

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// The core's side: an HTTP/2 server of our own, small because it only has
// to carry unary gRPC calls. A request is held until its END_STREAM and
// then sent to the signer whole (upstream.go); the answer comes back whole
// and is written by the connection's writer. Nothing is dialled per core
// connection, so a core connection costs the signer nothing, whatever the
// core does with it. Anything that is not HTTP/2 as a gRPC client speaks it
// closes the connection (GOAWAY, then close): fail closed.

const (
	// prefaceTimeout bounds the wait for the core's preface and SETTINGS.
	prefaceTimeout = 5 * time.Second
	// maxFrame is the largest frame the core may send: the HTTP/2 default
	// that gRPC uses too. Larger frames close the connection.
	maxFrame = 16 << 10
	// maxHeaderList bounds one request's decoded header list.
	maxHeaderList = 64 << 10
	// coreConnWindow is the connection-level window the core gets.
	coreConnWindow = 1 << 20
	// initialWindow is HTTP/2's default stream and connection window.
	initialWindow = 65535
	// maxBuffered bounds the request bytes the whole sidecar holds; a
	// request that would pass it is answered ResourceExhausted.
	maxBuffered = 16 << 20
	// maxQueued bounds the bytes waiting for one core connection that does
	// not read; past it the connection is closed.
	maxQueued = 4 << 20
	// itemCost is about what a queued item costs besides its data. Frames
	// the sidecar only acknowledges (PING, SETTINGS) carry no data, but a
	// core that sends them and never reads would otherwise grow the queue
	// without bound (the "ping flood", CVE-2019-9512).
	itemCost = 128
)

const (
	healthCheck = "/grpc.health.v1.Health/Check"
	healthWatch = "/grpc.health.v1.Health/Watch"
)

// passedHeaders are the request headers the signer sees besides the ones
// the sidecar writes itself: the deadline and the message encoding. Caller
// metadata stays in the pod.
var passedHeaders = map[string]bool{"grpc-timeout": true, "grpc-encoding": true, "grpc-accept-encoding": true}

// call is one core request, on its way to the signer and back.
type call struct {
	cc     *coreConn
	id     uint32 // the core's stream
	method string
	ctype  string
	hdrs   []hpack.HeaderField // passedHeaders as sent
	body   []byte
	held   int // bytes of maxBuffered this call holds
	start  time.Time
	// deadline is start plus the core's grpc-timeout (zero without one).
	deadline time.Time

	recvWin  int32 // what the core may still send on this stream
	unacked  int32 // received and not yet given back to the core's window
	received bool  // END_STREAM seen
	refusal  *grpcStatus
	watch    bool
	started  bool // writer only: the answer's HEADERS are written

	mu       sync.Mutex
	done     bool // answered, failed or cancelled: whoever sets it owns the end
	up       *upConn
	upID     uint32
	upSent   int   // body bytes written upstream
	upWin    int32 // the signer's window for this stream
	respHdrs []hpack.HeaderField
	respData []byte
	respTrl  []hpack.HeaderField
	// respFields backs respHdrs and respTrl: a signer's answer has
	// :status and content-type, then grpc-status and grpc-message, so one
	// call's fields fit without allocating (a longer block still may).
	respFields [6]hpack.HeaderField
}

// grpcStatus is a gRPC status the sidecar answers itself.
type grpcStatus struct {
	code codes.Code
	msg  string
}

func (s *grpcStatus) trailers() []hpack.HeaderField {
	return []hpack.HeaderField{{Name: "grpc-status", Value: fmt.Sprint(uint32(s.code))}, {Name: "grpc-message", Value: encodeGrpcMessage(s.msg)}}
}

// finish marks c ended; false if something else ended it first.
func (c *call) finish() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return false
	}
	c.done = true
	return true
}

// connError closes a core connection with a GOAWAY carrying code.
type connError struct {
	code   http2.ErrCode
	reason string // bounded: a metrics label
	msg    string
}

func (e connError) Error() string { return "sidecar: core connection closed: " + e.msg }

type coreConn struct {
	p  *Proxy
	nc net.Conn
	br *bufio.Reader
	fr *http2.Framer
	hb *headerBlock // read loop only

	lastID atomic.Uint32 // the newest stream the core opened

	// Read loop only.
	connAck int32 // received and not yet given back to the connection window
	batch   []*call

	mu        sync.Mutex
	streams   map[uint32]*call
	goingAway bool
	queue     []item
	queued    int
	closed    bool
	wake      chan struct{}
	// The writer's turn: whoever sets writing owns the writer-only state
	// below (the writer goroutine, or writeInline's caller).
	writing    bool
	stalled    bool // the core's socket was full at the last inline write
	writeEnded bool
	missed     bool // someone found the turn taken: the holder kicks the writer
	spare      []item

	// Writer only (the holder of the writer's turn).
	bw       *batchWriter
	wfr      *http2.Framer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	sendWin  int32
	initWin  int32
	peerMax  uint32
	win      map[uint32]int32
	blocked  []*pending
	sentAway bool
}

type itemKind uint8

const (
	itemStream   itemKind = iota // headers, data and/or trailers on c's stream
	itemControl                  // a frame of the connection's own
	itemSettings                 // the core's SETTINGS: apply, then acknowledge
	itemWindow                   // the core opened a window (id 0: the connection)
	itemGoAway                   // drain: GOAWAY, no new streams
	itemForget                   // the core reset stream id: drop its window and what waits for it
)

type item struct {
	kind     itemKind
	c        *call
	hdrs     []hpack.HeaderField
	data     []byte
	trailers []hpack.HeaderField
	end      bool
	write    func(*http2.Framer) error
	settings []http2.Setting
	id       uint32
	n        uint32
}

// pending is a stream item waiting for the core to open its window.
type pending struct {
	it  item
	off int
}

func newCoreConn(p *Proxy, nc net.Conn) *coreConn {
	cc := &coreConn{p: p, nc: nc, streams: map[uint32]*call{}, wake: make(chan struct{}, 1),
		sendWin: initialWindow, initWin: initialWindow, peerMax: maxFrame, win: map[uint32]int32{}}
	// Small buffers: an idle connection holds only these (a burst of 4 KiB
	// is about 25 Sign requests), and the writer's comes from a pool.
	cc.br = bufio.NewReaderSize(nc, 4<<10)
	cc.fr = http2.NewFramer(nil, cc.br)
	cc.fr.SetMaxReadFrameSize(maxFrame)
	cc.fr.SetReuseFrames()
	cc.fr.MaxHeaderListSize = maxHeaderList
	cc.hb = newHeaderBlock(maxHeaderList)
	cc.bw = &batchWriter{nc: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		cc.bw.raw, _ = sc.SyscallConn()
	}
	cc.wfr = http2.NewFramer(cc.bw, nil)
	cc.henc = hpack.NewEncoder(&cc.hbuf)
	// The server's preface is its first frame, queued before anything else
	// can be (a drain's GOAWAY included).
	settings := []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: uint32(p.cfg.MaxConcurrentStreams)},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList}}
	cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error {
		if err := fr.WriteSettings(settings...); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, coreConnWindow-initialWindow)
	}})
	return cc
}

// serve is the read loop; it returns when the connection is done.
func (cc *coreConn) serve() {
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); cc.writeLoop() }()
	err := cc.read()
	var ce connError
	if errors.As(err, &ce) {
		cc.p.cfg.Refused(ce.reason)
		cc.p.warn("core connection closed", "reason", ce.msg)
		cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error { return fr.WriteGoAway(cc.lastID.Load(), ce.code, nil) }})
	}
	cc.mu.Lock()
	cc.closed = true
	streams := cc.streams
	cc.streams = map[uint32]*call{}
	cc.mu.Unlock()
	cc.kick()
	for _, c := range streams {
		cc.cancel(c)
	}
	// The writer ends once it has written what is queued (the GOAWAY),
	// or at once if the core stopped reading.
	select {
	case <-writerDone:
	case <-time.After(time.Second):
	}
	cc.nc.Close()
	<-writerDone
}

func (cc *coreConn) read() error {
	cc.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(cc.br, preface[:]); err != nil {
		return connError{http2.ErrCodeProtocol, "preface", "no HTTP/2 preface within " + prefaceTimeout.String()}
	}
	if string(preface[:]) != http2.ClientPreface {
		return connError{http2.ErrCodeProtocol, "preface", "not an HTTP/2 client preface"}
	}
	first := true
	for {
		f, err := cc.fr.ReadFrame()
		if err != nil {
			var h2err http2.ConnectionError
			switch {
			case first:
				return connError{http2.ErrCodeProtocol, "preface", "no SETTINGS after the preface"}
			case errors.As(err, &h2err):
				return connError{http2.ErrCode(h2err), "protocol", "HTTP/2 error from the core: " + err.Error()}
			case errors.Is(err, http2.ErrFrameTooLarge):
				return connError{http2.ErrCodeFrameSize, "protocol", fmt.Sprintf("a frame larger than %d bytes", maxFrame)}
			}
			return err // closed or reset: nothing to tell
		}
		if first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				return connError{http2.ErrCodeProtocol, "preface", "the first frame is not SETTINGS"}
			}
			cc.nc.SetReadDeadline(time.Time{})
			first = false
		}
		if err := cc.frame(f); err != nil {
			return err
		}
		if cc.br.Buffered() == 0 {
			cc.flushReads()
		}
	}
}

// flushReads hands the requests completed by one burst of input to the
// upstream together, and gives back the connection window they used.
func (cc *coreConn) flushReads() {
	if len(cc.batch) > 0 {
		cc.p.pool.dispatch(cc.batch)
		clear(cc.batch)
		cc.batch = cc.batch[:0]
	}
	// The connection window is given back once half of it is used, not
	// per burst: a WINDOW_UPDATE per burst would wake the writer for
	// every batch of requests (maxBuffered bounds what is held anyway).
	if n := cc.connAck; n >= coreConnWindow/2 {
		cc.connAck = 0
		cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(n)) }})
	}
}

func (cc *coreConn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame, *http2.ContinuationFrame:
		done, err := cc.hb.add(f)
		switch {
		case errors.Is(err, errHeaderListTooLarge):
			return connError{http2.ErrCodeProtocol, "protocol", fmt.Sprintf("a header list larger than %d bytes", maxHeaderList)}
		case err != nil:
			return connError{http2.ErrCodeProtocol, "protocol", "bad header block from the core: " + err.Error()}
		case done:
			err := cc.headers(cc.hb)
			cc.hb.drop()
			return err
		}
	case *http2.DataFrame:
		return cc.data(f)
	case *http2.RSTStreamFrame:
		cc.mu.Lock()
		c := cc.streams[f.StreamID]
		delete(cc.streams, f.StreamID)
		cc.mu.Unlock()
		if c != nil {
			cc.cancel(c)
			// The writer may hold its window and an answer waiting for
			// it, which no WINDOW_UPDATE will ever release now; it also
			// closes a drained connection, and this may have been its
			// last stream.
			cc.send(item{kind: itemForget, id: f.StreamID})
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		var s []http2.Setting
		if err := f.ForeachSetting(func(x http2.Setting) error { s = append(s, x); return x.Valid() }); err != nil {
			return connError{http2.ErrCodeProtocol, "protocol", "bad SETTINGS: " + err.Error()}
		}
		cc.send(item{kind: itemSettings, settings: s})
	case *http2.PingFrame:
		if !f.IsAck() {
			data := f.Data
			cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error { return fr.WritePing(true, data) }})
		}
	case *http2.WindowUpdateFrame:
		cc.send(item{kind: itemWindow, id: f.StreamID, n: f.Increment})
	case *http2.GoAwayFrame:
		cc.mu.Lock()
		cc.goingAway = true
		cc.mu.Unlock()
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "protocol", "PUSH_PROMISE from the core"}
	}
	return nil // PRIORITY and unknown frame types are ignored, as HTTP/2 says
}

func (cc *coreConn) headers(hb *headerBlock) error {
	id := hb.id
	if id%2 == 0 || id <= cc.lastID.Load() {
		// gRPC clients send no trailers and never reuse a stream.
		return connError{http2.ErrCodeProtocol, "protocol", "HEADERS on a stream the core may not open"}
	}
	cc.lastID.Store(id)
	method, path := hb.pseudo(":method"), hb.pseudo(":path")
	c := &call{cc: cc, id: id, method: path, start: time.Now(), recvWin: initialWindow}
	for _, h := range hb.fields {
		switch {
		case h.IsPseudo():
		case h.Name == "content-type":
			c.ctype = h.Value
		case passedHeaders[h.Name]:
			c.hdrs = append(c.hdrs, h)
			if d, ok := grpcTimeout(h.Value); ok && h.Name == "grpc-timeout" {
				c.deadline = c.start.Add(d)
			}
		}
	}
	if method != "POST" || path == "" || !strings.HasPrefix(c.ctype, "application/grpc") {
		return connError{http2.ErrCodeProtocol, "protocol", "not a gRPC request"}
	}
	cc.mu.Lock()
	full := len(cc.streams) >= cc.p.cfg.MaxConcurrentStreams
	if !cc.goingAway && !full {
		cc.streams[id] = c
	}
	refused := cc.goingAway || full
	cc.mu.Unlock()
	if refused {
		cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) }})
		return nil
	}
	// What the call keeps of its headers (up to maxHeaderList each) is
	// held like its body, within maxBuffered; a refused call keeps none.
	if path != healthCheck && path != healthWatch && !forwarded[path] {
		if len(path) > 128 {
			path = path[:128] + "..."
		}
		cc.p.warn("method refused: not forwarded to the signer", "method", path)
		c.method, c.ctype, c.hdrs = "", "", nil
		c.refusal = &grpcStatus{codes.PermissionDenied, fmt.Sprintf("sidecar: method %s is not forwarded to the signer", path)}
	} else if n := headerBytes(c); !cc.p.buffers.TryAcquire(int64(n)) {
		c.ctype, c.hdrs = "", nil
		c.refusal = &grpcStatus{codes.ResourceExhausted, fmt.Sprintf("sidecar: more than %d request bytes held; try again", maxBuffered)}
	} else {
		c.held = n
	}
	if hb.end {
		cc.complete(c)
	}
	return nil
}

func (cc *coreConn) data(f *http2.DataFrame) error {
	id, n := f.StreamID, int32(f.Length)
	if id > cc.lastID.Load() || id == 0 {
		return connError{http2.ErrCodeProtocol, "protocol", "DATA on a stream that was never opened"}
	}
	cc.connAck += n // the window is given back at once: maxBuffered bounds what is held
	cc.mu.Lock()
	c := cc.streams[id]
	cc.mu.Unlock()
	if c == nil {
		return nil // a stream reset or refused: its frames still in flight are ignored
	}
	if c.received {
		return connError{http2.ErrCodeStreamClosed, "protocol", "DATA after END_STREAM"}
	}
	if c.recvWin -= n; c.recvWin < 0 {
		return connError{http2.ErrCodeFlowControl, "protocol", "DATA beyond the stream's window"}
	}
	if d := f.Data(); c.refusal == nil && len(d) > 0 {
		limit := cc.p.cfg.MaxMessageBytes + 5 // one message and its prefix
		switch {
		case len(c.body)+len(d) > limit:
			c.refusal = &grpcStatus{codes.ResourceExhausted, fmt.Sprintf("sidecar: request larger than %d bytes", cc.p.cfg.MaxMessageBytes)}
		case !cc.p.buffers.TryAcquire(int64(len(d))):
			c.refusal = &grpcStatus{codes.ResourceExhausted, fmt.Sprintf("sidecar: more than %d request bytes held; try again", maxBuffered)}
		default:
			c.held += len(d)
			c.body = append(c.body, d...)
		}
		if c.refusal != nil {
			cc.p.release(c)
		}
	}
	if f.StreamEnded() {
		cc.complete(c)
		return nil
	}
	if c.unacked += n; c.unacked >= initialWindow/4 {
		inc := uint32(c.unacked)
		c.recvWin += c.unacked
		c.unacked = 0
		cc.send(item{kind: itemControl, write: func(fr *http2.Framer) error { return fr.WriteWindowUpdate(id, inc) }})
	}
	return nil
}

// complete acts on a request whose END_STREAM came.
func (cc *coreConn) complete(c *call) {
	c.received = true
	switch {
	case c.refusal != nil:
		cc.answer(c, c.refusal)
	case c.method == healthCheck:
		cc.health(c)
	case c.method == healthWatch:
		cc.watch(c)
	default:
		cc.batch = append(cc.batch, c)
	}
}

// answer ends c with a status of the sidecar's own.
func (cc *coreConn) answer(c *call, s *grpcStatus) {
	if !c.finish() {
		return
	}
	cc.p.release(c)
	cc.p.observe(c, s.code)
	cc.send(item{kind: itemStream, c: c, hdrs: append(responseHeaders(), s.trailers()...), end: true})
}

// health answers a Check on the core's socket itself: SERVING while a
// replica is connected.
func (cc *coreConn) health(c *call) {
	svc, ok := healthService(c.body)
	switch {
	case !ok:
		cc.answer(c, &grpcStatus{codes.InvalidArgument, "sidecar: bad health request"})
	case svc != "" && svc != HealthService:
		cc.answer(c, &grpcStatus{codes.NotFound, "unknown service"})
	default:
		if !c.finish() {
			return
		}
		cc.p.release(c)
		cc.p.observe(c, codes.OK)
		cc.send(item{kind: itemStream, c: c, hdrs: responseHeaders(), data: healthMessage(cc.p.serving.Load()),
			trailers: (&grpcStatus{codes.OK, ""}).trailers(), end: true})
	}
}

// watch opens a health Watch: the status now, then each change, until the
// core ends the stream or the sidecar drains.
func (cc *coreConn) watch(c *call) {
	svc, ok := healthService(c.body)
	if !ok || (svc != "" && svc != HealthService) {
		cc.answer(c, &grpcStatus{codes.NotFound, "unknown service"})
		return
	}
	cc.p.release(c)
	cc.mu.Lock()
	c.watch = true // read by the writer during a drain
	cc.mu.Unlock()
	// The first answer is queued before the watcher is registered, so no
	// change can overtake its HEADERS; a change in between is sent after.
	st := cc.p.serving.Load()
	cc.send(item{kind: itemStream, c: c, hdrs: responseHeaders(), data: healthMessage(st)})
	cc.p.watchMu.Lock()
	cc.p.watchers[c] = struct{}{}
	cc.p.watchMu.Unlock()
	if now := cc.p.serving.Load(); now != st {
		cc.send(item{kind: itemStream, c: c, data: healthMessage(now)})
	}
}

// cancel ends a call the core reset or abandoned: a request in flight is
// reset at the signer too.
func (cc *coreConn) cancel(c *call) {
	if c.watch {
		cc.p.watchMu.Lock()
		delete(cc.p.watchers, c)
		cc.p.watchMu.Unlock()
	}
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	up, upID := c.up, c.upID
	c.mu.Unlock()
	if up != nil {
		up.reset(upID)
	}
	cc.p.release(c)
	if c.received && !c.watch {
		cc.p.observe(c, codes.Canceled)
	}
}

// send queues it for the writer. A core that does not read what the
// sidecar writes is cut off once maxQueued bytes wait for it.
func (cc *coreConn) send(it item) {
	cc.enqueue(it)
	cc.kick()
}

// enqueue queues it without waking the writer (handOn writes inline).
func (cc *coreConn) enqueue(it item) {
	cc.mu.Lock()
	if !cc.closed || it.kind != itemStream {
		cc.queue = append(cc.queue, it)
		cc.queued += itemCost + len(it.data) + 8*len(it.settings)
	}
	over := cc.queued > maxQueued
	cc.mu.Unlock()
	if over {
		cc.p.cfg.Refused("slow_reader")
		cc.p.warn("core connection closed: it does not read its answers", "queued_bytes", maxQueued)
		cc.nc.Close()
	}
}

func (cc *coreConn) kick() {
	select {
	case cc.wake <- struct{}{}:
	default:
	}
}

// goAway starts the drain of this connection.
func (cc *coreConn) goAway() { cc.send(item{kind: itemGoAway}) }

// writeLoop writes everything queued, flushing once per batch: answers
// that arrive together leave in one write. Most answers never wake it:
// the upstream reader writes them itself (writeInline) while the core
// reads; this goroutine takes over when that write would block.
func (cc *coreConn) writeLoop() {
	for range cc.wake {
		if over := cc.flushQueue(false); over {
			return
		}
	}
}

// writeInline writes what is queued from the calling goroutine (the
// upstream reader), saving the writer goroutine's wake-up, unless the
// writer is busy or the core stopped reading. It never waits for the
// core: what its socket does not take at once is left to the
// connection's writer, which alone writes to it until it has caught up.
func (cc *coreConn) writeInline() {
	cc.flushQueue(true)
}

// flushQueue writes the queue once if it gets the writer's turn; over
// reports that the connection's writing has ended.
func (cc *coreConn) flushQueue(inline bool) (over bool) {
	cc.mu.Lock()
	if cc.writing || cc.writeEnded || (inline && (cc.stalled || cc.closed || cc.bw.raw == nil)) {
		cc.missed = cc.writing
		ended := cc.writeEnded
		cc.mu.Unlock()
		if inline {
			cc.kick()
		}
		return ended
	}
	cc.writing = true
	q := cc.queue
	cc.queue, cc.spare = cc.spare[:0], nil
	cc.queued = 0
	closed := cc.closed
	cc.mu.Unlock()

	err := cc.writeQueue(q, inline)
	clear(q)
	stalled := errors.Is(err, errStalled)
	if err != nil && !stalled {
		cc.nc.Close()
	}
	cc.mu.Lock()
	cc.writing = false
	cc.spare = q[:0]
	cc.stalled = stalled
	more := len(cc.queue) > 0
	idle := len(cc.streams) == 0 && !more
	switch {
	case err != nil && !stalled:
		cc.writeEnded = true
	case !inline && closed && !more:
		cc.writeEnded = true
	case !inline && cc.sentAway && idle:
		cc.nc.Close() // drained: the read loop ends and closes the rest
		cc.writeEnded = true
	}
	over = cc.writeEnded
	kick := more || stalled || cc.sentAway || cc.closed || over || cc.missed
	cc.missed = false
	cc.mu.Unlock()
	if inline && kick {
		cc.kick() // the writer goroutine decides what follows
	}
	return over
}

// writeQueue writes q and flushes it; inline, what the socket does not
// take at once stays in cc.bw for the writer goroutine (errStalled).
func (cc *coreConn) writeQueue(q []item, inline bool) error {
	cc.bw.start(inline)
	// Left over from an inline write the socket did not take: first.
	if err := cc.bw.flush(); err != nil {
		return err
	}
	for i := range q {
		if err := cc.write(q[i]); err != nil {
			return err
		}
	}
	return cc.bw.Flush()
}

func (cc *coreConn) write(it item) error {
	switch it.kind {
	case itemControl:
		return it.write(cc.wfr)
	case itemSettings:
		initWin := cc.initWin
		for _, s := range it.settings {
			switch s.ID {
			case http2.SettingInitialWindowSize:
				initWin = int32(s.Val)
			case http2.SettingMaxFrameSize:
				cc.peerMax = min(s.Val, maxFrame)
			case http2.SettingHeaderTableSize:
				cc.henc.SetMaxDynamicTableSize(s.Val)
			}
		}
		// The frame's change of the initial window is applied to the
		// open windows once, not per entry: a frame holds up to 2,730,
		// and whoever holds the writer's turn (the upstream reader too)
		// would walk every window for each.
		d := initWin - cc.initWin
		if d != 0 {
			cc.initWin = initWin
			for id := range cc.win {
				cc.win[id] += d
			}
		}
		if err := cc.wfr.WriteSettingsAck(); err != nil {
			return err
		}
		if d <= 0 {
			return nil // no window grew: nothing waiting can go
		}
		return cc.unblock()
	case itemWindow:
		// What waits is retried only when this update can let some of it
		// go: every answer waiting, a lock and an allocation apiece, for
		// each 13-byte WINDOW_UPDATE was the core's to spend on whoever
		// holds the writer's turn (the upstream reader too).
		if it.id == 0 {
			was := cc.sendWin
			cc.sendWin += int32(it.n)
			if was > 0 {
				return nil // what waits, waits for its stream's window
			}
			return cc.unblock()
		}
		if w, ok := cc.win[it.id]; ok {
			cc.win[it.id] = w + int32(it.n)
		} else {
			// The core may open a stream's window before its answer
			// starts (a core that sets its initial window to 0 must):
			// the increment is kept for the answer, not lost.
			cc.mu.Lock()
			open := cc.streams[it.id] != nil
			cc.mu.Unlock()
			if open {
				cc.win[it.id] = cc.initWin + int32(it.n)
			}
		}
		return cc.unblockStream(it.id)
	case itemForget:
		delete(cc.win, it.id)
		cc.blocked = slices.DeleteFunc(cc.blocked, func(p *pending) bool { return p.it.c.id == it.id })
		return nil
	case itemGoAway:
		cc.mu.Lock()
		cc.goingAway = true
		last := cc.lastID.Load()
		var watches []*call
		for _, c := range cc.streams {
			if c.watch {
				watches = append(watches, c)
			}
		}
		cc.mu.Unlock()
		cc.sentAway = true
		if err := cc.wfr.WriteGoAway(last, http2.ErrCodeNo, nil); err != nil {
			return err
		}
		// Queued, not written here: a Watch's first answer may still be
		// in the queue, and its end must follow it.
		for _, c := range watches {
			cc.send(item{kind: itemStream, c: c, trailers: (&grpcStatus{codes.Unavailable, "sidecar: shutting down"}).trailers(), end: true})
		}
		return nil
	}
	// A stream item: dropped if the core reset the stream meanwhile.
	cc.mu.Lock()
	open := cc.streams[it.c.id] == it.c
	cc.mu.Unlock()
	if !open {
		return nil
	}
	if _, ok := cc.win[it.c.id]; !ok {
		cc.win[it.c.id] = cc.initWin
	}
	if !it.c.started && it.hdrs == nil {
		// An end before any answer (a Watch at a drain): trailers-only.
		it.hdrs = responseHeaders()
		if it.data == nil {
			it.hdrs, it.trailers = append(it.hdrs, it.trailers...), nil
		}
	}
	it.c.started = true
	if it.hdrs != nil {
		if err := cc.writeHeaders(it.c.id, it.hdrs, it.end && it.data == nil && it.trailers == nil); err != nil {
			return err
		}
		if it.end && it.data == nil && it.trailers == nil {
			cc.closeStream(it.c)
			return nil
		}
	}
	return cc.writeBody(pending{it: item{kind: itemStream, c: it.c, data: it.data, trailers: it.trailers, end: it.end}})
}

// writeBody writes p's data as far as the windows allow, then its
// trailers; what does not fit waits for a WINDOW_UPDATE.
func (cc *coreConn) writeBody(p pending) error {
	id := p.it.c.id
	for p.off < len(p.it.data) {
		n := min(int32(len(p.it.data)-p.off), int32(cc.peerMax), cc.sendWin, cc.win[id])
		if n <= 0 {
			waiting := p // on the heap only when it has to wait
			cc.blocked = append(cc.blocked, &waiting)
			return nil
		}
		if err := cc.wfr.WriteData(id, false, p.it.data[p.off:p.off+int(n)]); err != nil {
			return err
		}
		p.off += int(n)
		cc.sendWin -= n
		cc.win[id] -= n
	}
	if p.it.trailers != nil {
		if err := cc.writeHeaders(id, p.it.trailers, true); err != nil {
			return err
		}
	}
	if p.it.end {
		cc.closeStream(p.it.c)
	}
	return nil
}

// unblock retries what waits for window, in order.
func (cc *coreConn) unblock() error {
	waiting := cc.blocked
	cc.blocked = nil
	return cc.retry(waiting)
}

// unblockStream retries what waits on stream id only: its WINDOW_UPDATE
// lets nothing else go.
func (cc *coreConn) unblockStream(id uint32) error {
	if !slices.ContainsFunc(cc.blocked, func(p *pending) bool { return p.it.c.id == id }) {
		return nil
	}
	var mine []*pending
	cc.blocked = slices.DeleteFunc(cc.blocked, func(p *pending) bool {
		if p.it.c.id == id {
			mine = append(mine, p)
			return true
		}
		return false
	})
	return cc.retry(mine)
}

// retry writes waiting in order as far as the windows allow; once the
// connection's window is spent the rest waits as it was.
func (cc *coreConn) retry(waiting []*pending) error {
	for i, p := range waiting {
		if cc.sendWin <= 0 {
			cc.blocked = append(cc.blocked, waiting[i:]...)
			return nil
		}
		cc.mu.Lock()
		open := cc.streams[p.it.c.id] == p.it.c
		cc.mu.Unlock()
		if !open {
			continue
		}
		if err := cc.writeBody(*p); err != nil {
			return err
		}
	}
	return nil
}

func (cc *coreConn) closeStream(c *call) {
	delete(cc.win, c.id)
	cc.mu.Lock()
	if cc.streams[c.id] == c {
		delete(cc.streams, c.id)
	}
	cc.mu.Unlock()
	if c.watch {
		cc.p.watchMu.Lock()
		delete(cc.p.watchers, c)
		cc.p.watchMu.Unlock()
	}
}

func (cc *coreConn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	cc.hbuf.Reset()
	for _, f := range fields {
		if err := cc.henc.WriteField(f); err != nil {
			return err
		}
	}
	return writeHeaderBlock(cc.wfr, id, cc.hbuf.Bytes(), end, cc.peerMax)
}

// writeHeaderBlock writes an encoded header block as HEADERS and as many
// CONTINUATION frames as the peer's frame size needs (both sides use it).
func writeHeaderBlock(fr *http2.Framer, id uint32, block []byte, end bool, maxFrame uint32) error {
	n := min(len(block), int(maxFrame))
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndStream: end, EndHeaders: n == len(block)}); err != nil {
		return err
	}
	for block = block[n:]; len(block) > 0; block = block[n:] {
		n = min(len(block), int(maxFrame))
		if err := fr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			return err
		}
	}
	return nil
}

func responseHeaders() []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}}
}

// headerBytes is what c keeps of its request headers.
func headerBytes(c *call) int {
	n := len(c.ctype)
	for _, h := range c.hdrs {
		n += len(h.Name) + len(h.Value)
	}
	return n
}

// grpcTimeout reads a grpc-timeout value: up to eight digits and a unit.
func grpcTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64(1<<63-1)/int64(unit) {
		return 0, false // 99999999H is longer than a Duration: no deadline worth the name
	}
	return time.Duration(n) * unit, true
}

// healthService reads the service name from a framed HealthCheckRequest.
func healthService(body []byte) (string, bool) {
	if len(body) < 5 || body[0] != 0 || int(uint32(body[1])<<24|uint32(body[2])<<16|uint32(body[3])<<8|uint32(body[4])) != len(body)-5 {
		return "", len(body) == 0
	}
	var req healthpb.HealthCheckRequest
	if err := proto.Unmarshal(body[5:], &req); err != nil {
		return "", false
	}
	return req.Service, true
}

// healthMessage is a framed HealthCheckResponse.
func healthMessage(serving bool) []byte {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	b, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: st})
	return append([]byte{0, byte(len(b) >> 24), byte(len(b) >> 16), byte(len(b) >> 8), byte(len(b))}, b...)
}

// encodeGrpcMessage percent-encodes a status message as gRPC requires.
func encodeGrpcMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// batchWriter collects one batch of frames in a pooled buffer and writes
// it with one call (or in 32 KiB pieces): an idle connection holds no
// write buffer. An inline batch (writeInline) is written only as far as
// the socket takes it at once; the rest stays here and every write answers
// errStalled until the connection's writer has sent it.
type batchWriter struct {
	nc      net.Conn
	raw     syscall.RawConn // nil: the connection gets no inline writes
	buf     *[]byte
	inline  bool
	stalled bool
}

// errStalled: the core's socket is full; the rest waits in the batchWriter
// for the connection's writer goroutine.
var errStalled = errors.New("sidecar: core not reading")

var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

func (w *batchWriter) start(inline bool) {
	if w.buf == nil {
		w.buf = writeBufs.Get().(*[]byte)
	}
	w.inline, w.stalled = inline, false
}

func (w *batchWriter) Write(p []byte) (int, error) {
	*w.buf = append(*w.buf, p...)
	if len(*w.buf) >= 32<<10 && !w.stalled {
		if err := w.flush(); err != nil && !errors.Is(err, errStalled) {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *batchWriter) flush() error {
	b := *w.buf
	if len(b) == 0 || w.stalled {
		return nil
	}
	var n int
	var err error
	if w.inline {
		n, err = w.writeNow(b)
	} else {
		n, err = w.nc.Write(b)
	}
	if err == nil && n < len(b) {
		*w.buf = b[:copy(b, b[n:])]
		w.stalled = true
		return errStalled
	}
	*w.buf = b[:0]
	return err
}

// writeNow writes what the socket takes without waiting for it: one
// non-blocking write(2) (again after EINTR), no timer, no wake-up.
func (w *batchWriter) writeNow(b []byte) (n int, err error) {
	rerr := w.raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := syscall.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
			case e != nil:
				err = e
			case m > 0:
				continue
			}
			break
		}
		return true // done: never wait for the socket here
	})
	if err == nil {
		err = rerr
	}
	return n, err
}

// Flush writes what is left and returns the buffer to the pool (unless
// the socket was full: errStalled).
func (w *batchWriter) Flush() error {
	err := w.flush()
	if w.stalled {
		return errStalled
	}
	if cap(*w.buf) <= 64<<10 {
		writeBufs.Put(w.buf)
	}
	w.buf = nil
	return err
}
