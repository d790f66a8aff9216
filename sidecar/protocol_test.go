package sidecar_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// rawCore speaks HTTP/2 frames to the sidecar by hand, to send what a gRPC
// client never would.
type rawCore struct {
	conn net.Conn
	fr   *http2.Framer
	buf  bytes.Buffer
	enc  *hpack.Encoder
	rd   *http2.Framer // reads the sidecar's frames
}

func newRawCore(t *testing.T, addr string) *rawCore { return dialRawCore(t, "tcp", addr) }

func dialRawCore(t *testing.T, network, addr string) *rawCore {
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawCore{conn: c, fr: http2.NewFramer(c, c)}
	r.enc = hpack.NewEncoder(&r.buf)
	c.Write([]byte(http2.ClientPreface))
	r.fr.WriteSettings()
	return r
}

func (r *rawCore) block(fields ...string) []byte {
	r.buf.Reset()
	for i := 0; i < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return append([]byte(nil), r.buf.Bytes()...)
}

// closed reports whether the sidecar closes the connection (reading its
// frames until then). A reset counts: the sidecar closed with the core's
// bytes unread.
func (r *rawCore) closed() bool {
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r.conn)
	return err == nil || errors.Is(err, syscall.ECONNRESET)
}

func req(method string) []string {
	return []string{":method", "POST", ":scheme", "http", ":path", method, ":authority", "x", "content-type", "application/grpc", "te", "trailers"}
}

// Header blocks a gRPC client would not send close the connection (or, for
// a well-formed request to another method, are answered PermissionDenied):
// the recorder upstream sees only the forwarded methods.
func TestHeaderTricks(t *testing.T) {
	rec := &recorder{}
	sc := sidecarBefore(t, rec.handle)
	sign := signerv1.SignerService_Sign_FullMethodName
	rotate := signerv1.RotationService_Open_FullMethodName

	// keep: well-formed requests the sidecar answers without closing.
	keep := map[string]bool{"forbidden path in a continuation": true, "padded forbidden path": true}
	cases := map[string]func(r *rawCore){
		"forbidden path in a continuation": func(r *rawCore) {
			b := r.block(req(rotate)...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3], EndStream: true})
			r.fr.WriteContinuation(1, true, b[3:])
		},
		"a frame between headers and continuation": func(r *rawCore) {
			b := r.block(req(sign)...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3], EndStream: true})
			r.fr.WritePing(false, [8]byte{})
			r.fr.WriteContinuation(1, true, b[3:])
		},
		"two paths": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append(req(sign), ":path", rotate)...), EndStream: true, EndHeaders: true})
		},
		// Malformed pseudo-headers (RFC 9113 8.3), as x/net's
		// MetaHeadersFrame refused them: a second :path, a name HTTP/2
		// does not define, a response's among a request's.
		"two paths among the pseudo-headers": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append(append(req(sign)[:6:6], ":path", rotate), req(sign)[6:]...)...), EndStream: true, EndHeaders: true})
		},
		"unknown pseudo-header": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append([]string{":foo", "bar"}, req(sign)...)...), EndStream: true, EndHeaders: true})
		},
		"response pseudo-header in a request": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append([]string{":status", "200"}, req(sign)...)...), EndStream: true, EndHeaders: true})
		},
		"pseudo-header after a regular one": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append(req(sign)[:6], "x-a", "b", ":authority", "x")...), EndStream: true, EndHeaders: true})
		},
		"trailers after an allowed request": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(req(sign)...), EndHeaders: true})
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(":path", rotate), EndStream: true, EndHeaders: true})
		},
		"GET": func(r *rawCore) {
			b := r.block(append([]string{":method", "GET"}, req(sign)[2:]...)...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndStream: true, EndHeaders: true})
		},
		"padded forbidden path": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(req(rotate)...), EndStream: true, EndHeaders: true, PadLength: 7})
		},
		"endless empty continuations": func(r *rawCore) {
			b := r.block(req(sign)...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			for i := 0; i < 20000 && r.fr.WriteContinuation(1, false, nil) == nil; i++ {
			}
		},
		"upper-case header name": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append(req(sign), "X-A", "b")...), EndStream: true, EndHeaders: true})
		},
		"NUL in a header value": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(append(req(sign), "x-a", "b\x00c")...), EndStream: true, EndHeaders: true})
		},
		"not HPACK": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0xff}, EndStream: true, EndHeaders: true})
		},
		"header block cut short": func(r *rawCore) {
			b := r.block(append(req(sign), "x-a", strings.Repeat("b", 100))...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)-10], EndStream: true, EndHeaders: true})
		},
		"push promise": func(r *rawCore) {
			r.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: r.block(req(sign)...), EndHeaders: true})
		},
	}
	for name, send := range cases {
		r := newRawCore(t, sc.TCP)
		send(r)
		if !keep[name] && !r.closed() {
			t.Errorf("%s: the connection stayed open", name)
		}
		for _, m := range rec.take() {
			if m != sign {
				t.Errorf("%s: %s reached the signer", name, m)
			}
		}
	}
	// A split header block of an allowed method passes.
	r := newRawCore(t, sc.TCP)
	b := r.block(req(sign)...)
	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
	r.fr.WriteContinuation(1, true, b[3:])
	r.fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
	for deadline := time.Now().Add(5 * time.Second); ; {
		got := rec.take()
		if len(got) == 1 && got[0] == sign {
			break
		}
		if len(got) > 0 || time.Now().After(deadline) {
			t.Fatalf("split allowed request: upstream saw %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Calls on one core connection spread over the replicas; when one stops
// (GOAWAY), the calls go to the other without failing.
func TestFailoverWithinAConnection(t *testing.T) {
	ca := signertest.NewCA(t)
	a := signertest.Start(t, signertest.WithCA(ca))
	b := signertest.Start(t, signertest.WithCA(ca))
	sc := signertest.StartSidecar(t, a.Addr+","+b.Addr, a.Source(a.Issue(t, signertest.CoreID)))
	c := dialClient(t, sc.Socket)
	first, err := c.Sign(ctx10s(t), scope, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := a
	if _, err := a.Store.Key(context.Background(), first.KeyID); err != nil {
		pinned = b
	}
	pinned.Stop()
	failures := 0
	for range 50 {
		sig, err := c.Sign(ctx10s(t), scope, []byte("m"))
		if err != nil {
			failures++
			continue
		}
		if sig.KeyID == first.KeyID {
			t.Fatal("signed by the stopped replica")
		}
	}
	if failures > 1 {
		t.Fatalf("%d of 50 calls failed after one replica stopped gracefully", failures)
	}
}

// A replica that swallows connections costs no core call anything while
// another replica answers: calls never wait on a connection being dialled.
func TestDeadReplicaCostsNothing(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	go func() {
		for {
			c, err := dead.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, dead.Addr().String()+","+env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	slow := 0
	for i := range 6 {
		start := time.Now()
		cc := dialClient(t, sc.Socket) // a new core connection each time
		if _, err := cc.Sign(ctx10s(t), scope, []byte("m")); err != nil {
			t.Fatalf("Sign %d: %v", i, err)
		}
		if time.Since(start) > time.Second {
			slow++
		}
		cc.Close()
	}
	if slow > 1 {
		t.Fatalf("%d of 6 new connections waited on the dead replica", slow)
	}
}
