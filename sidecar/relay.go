package sidecar

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The frame relay (Config.Relay) is the sidecar's light mode: one upstream
// mTLS connection per core connection, HTTP/2 frames passed through as
// bytes. Only the core's request headers are decoded (HPACK is stateful, so
// every header block is, in order), to read :path; a method that is not
// forwarded, or anything the relay does not expect, closes both
// connections (fail closed): the core sees its calls on that connection
// fail Unavailable, and the signer never sees the refused request. The
// signer's responses are copied without parsing.

// errRelay is a reason to close a relayed connection.
type errRelay string

func (e errRelay) Error() string { return "sidecar relay: " + string(e) }

const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	framePushPromise  = 0x5
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	// maxFrame bounds one frame the core may send (gRPC uses 16 KiB).
	maxFrame = 1 << 20
	// maxHeaderBlock bounds one request's header block.
	maxHeaderBlock = 64 << 10
	// maxOpenStreams bounds the streams one core connection keeps open.
	maxOpenStreams = 4096
)

var clientPreface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// relayConns tracks open relays for shutdown.
type relayConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool // closeAll ran: a relay still dialling must not start
	wg     sync.WaitGroup
}

// add registers a relay's connections; false once closeAll has run (a
// relay whose dial outlasted the grace would otherwise hold the drain).
func (r *relayConns) add(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	if r.conns == nil {
		r.conns = map[net.Conn]struct{}{}
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *relayConns) remove(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
	}
}

func (r *relayConns) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
}

// relayServe accepts core connections on l and relays each.
func (p *Proxy) relayServe(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		p.relays.wg.Add(1)
		go func() {
			defer p.relays.wg.Done()
			p.relay(c)
		}()
	}
}

// relay carries one core connection to one signer replica.
func (p *Proxy) relay(down net.Conn) {
	defer down.Close()
	up, err := p.dialUpstream()
	if err != nil {
		p.warn("relay: no signer replica reachable", "err", err)
		return
	}
	defer up.Close()
	if !p.relays.add(down, up) {
		return
	}
	defer p.relays.remove(down, up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(down, up) // the signer's frames, unparsed
		down.Close()
	}()
	if err := p.relayRequests(down, up); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		var refused errRelay
		if errors.As(err, &refused) {
			p.warn("relay: connection closed", "reason", err.Error())
		}
	}
	up.Close()
	down.Close()
	<-done
}

// relayRequests copies the core's frames to up, checking each request's
// method before its headers leave.
func (p *Proxy) relayRequests(down io.Reader, up io.Writer) error {
	br := bufio.NewReaderSize(down, 32<<10)
	bw := bufio.NewWriterSize(up, 32<<10)
	preface := make([]byte, len(clientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return err
	}
	if !bytes.Equal(preface, clientPreface) {
		return errRelay("not an HTTP/2 client preface")
	}
	if _, err := bw.Write(preface); err != nil {
		return err
	}
	dec := hpack.NewDecoder(4096, nil)
	dec.SetMaxStringLength(maxHeaderBlock)
	var (
		hdr       [9]byte
		payload   []byte
		pending   []byte // raw frames of a header block not yet complete
		block     []byte // its HPACK fragments
		blockID   uint32
		lastID    uint32
		endStream bool
		open      = map[uint32]int{} // stream -> request bytes so far
	)
	limit := p.cfg.MaxMessageBytes + 5 // one gRPC message and its prefix
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags := hdr[3], hdr[4]
		id := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
		if n > maxFrame {
			return errRelay("frame too large")
		}
		if cap(payload) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return err
		}
		if pending != nil && typ != frameContinuation {
			return errRelay("header block interrupted")
		}
		switch typ {
		case frameHeaders:
			if id == 0 || id%2 == 0 || id <= lastID {
				return errRelay("headers on a stream the core may not open")
			}
			frag, err := headerFragment(payload, flags)
			if err != nil {
				return err
			}
			lastID, blockID, endStream = id, id, flags&flagEndStream != 0
			pending = append(append(pending[:0:0], hdr[:]...), payload...)
			block = append(block[:0], frag...)
		case frameContinuation:
			if pending == nil || id != blockID {
				return errRelay("continuation out of place")
			}
			pending = append(append(pending, hdr[:]...), payload...)
			block = append(block, payload...)
		case framePushPromise:
			return errRelay("push promise from the core")
		case frameData:
			got, ok := open[id]
			if !ok {
				return errRelay("data on a stream that is not open")
			}
			if got += n; got > limit {
				return errRelay(fmt.Sprintf("request larger than %d bytes", p.cfg.MaxMessageBytes))
			}
			open[id] = got
			if flags&flagEndStream != 0 {
				delete(open, id)
			}
		case frameRSTStream:
			delete(open, id)
		}
		if len(block) > maxHeaderBlock || len(pending) > 2*maxHeaderBlock { // empty continuations grow only pending
			return errRelay("header block too large")
		}
		if pending != nil {
			if flags&flagEndHeaders == 0 {
				continue
			}
			if err := checkRequest(dec, block); err != nil {
				return err
			}
			if !endStream {
				if len(open) >= maxOpenStreams {
					return errRelay("too many open streams")
				}
				open[blockID] = 0
			}
			if _, err := bw.Write(pending); err != nil {
				return err
			}
			pending = nil
		} else {
			if _, err := bw.Write(hdr[:]); err != nil {
				return err
			}
			if _, err := bw.Write(payload); err != nil {
				return err
			}
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// headerFragment strips a HEADERS frame's padding and priority fields.
func headerFragment(payload []byte, flags byte) ([]byte, error) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(payload) < 1 {
			return nil, errRelay("bad padding")
		}
		pad = int(payload[0])
		payload = payload[1:]
	}
	if flags&flagPriority != 0 {
		if len(payload) < 5 {
			return nil, errRelay("bad priority")
		}
		payload = payload[5:]
	}
	if pad > len(payload) {
		return nil, errRelay("bad padding")
	}
	return payload[:len(payload)-pad], nil
}

// checkRequest decodes one request header block (keeping the decoder's
// table in step with the signer's) and admits it only if it is a POST to a
// forwarded method, with each pseudo-header once and before the others.
func checkRequest(dec *hpack.Decoder, block []byte) error {
	fields, err := dec.DecodeFull(block)
	if err != nil {
		return errRelay("undecodable headers")
	}
	var path, method string
	seen := map[string]bool{}
	regular := false
	for _, f := range fields {
		if !strings.HasPrefix(f.Name, ":") {
			regular = true
			continue
		}
		if regular || seen[f.Name] {
			return errRelay("malformed pseudo-headers")
		}
		seen[f.Name] = true
		switch f.Name {
		case ":path":
			path = f.Value
		case ":method":
			method = f.Value
		case ":scheme", ":authority":
		default:
			return errRelay("unexpected pseudo-header " + f.Name)
		}
	}
	if method != "POST" {
		return errRelay("not a gRPC request")
	}
	if !forwarded[path] {
		return errRelay("method not forwarded to the signer")
	}
	return nil
}

// dialUpstream opens an mTLS connection to the next replica that answers,
// round robin over the configured addresses. A replica whose last dial
// failed is tried only after the others for a second, so a dead replica
// costs a new core connection nothing while another answers.
func (p *Proxy) dialUpstream() (net.Conn, error) {
	addrs := p.relayAddrs
	start := int(p.nextReplica.Add(1))
	now := time.Now()
	order := make([]int, 0, len(addrs))
	var later []int
	for i := range addrs {
		j := (start + i) % len(addrs)
		if now.UnixNano() < p.relayDown[j].Load() {
			later = append(later, j)
			continue
		}
		order = append(order, j)
	}
	var errs []error
	for _, j := range append(order, later...) {
		a := addrs[j]
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: p.relayTLS}
		c, err := d.Dial("tcp", a)
		if err == nil && c.(*tls.Conn).ConnectionState().NegotiatedProtocol != "h2" {
			c.Close()
			err = fmt.Errorf("%s: no h2 ALPN", a)
		}
		if err != nil {
			p.relayDown[j].Store(time.Now().Add(ReconnectMaxDelay).UnixNano())
			errs = append(errs, err)
			continue
		}
		p.relayDown[j].Store(0)
		return c, nil
	}
	return nil, errors.Join(errs...)
}

// relayAddresses turns the upstream setting into dialable host:port
// addresses: a comma-separated list, one host:port, or dns:///host:port
// (the host is resolved at each dial).
func relayAddresses(up string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(up, ",") {
		a = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(a), "dns:///"))
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("sidecar: relay upstream %q: %w", a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("sidecar: relay needs at least one upstream host:port")
	}
	return out, nil
}

// drainRelays waits for open relays up to grace, then closes them.
func (p *Proxy) drainRelays(grace time.Duration) {
	done := make(chan struct{})
	go func() { p.relays.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.relays.closeAll()
		<-done
	}
}
