package sidecar_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
)

func relay(c *sidecar.Config) { c.Relay = true }

// Through the frame relay the core signs and verifies, over the socket and
// loopback, concurrently.
func TestRelaySignsAndVerifies(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), relay)
	for _, target := range []string{sc.Socket, sc.TCP} {
		c := dialClient(t, target)
		var failed atomic.Int32
		done := make(chan struct{})
		for g := range 8 {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := range 10 {
					msg := []byte{byte(g), byte(i)}
					sig, err := c.Sign(ctx10s(t), scope, msg)
					if err != nil || c.Verify(ctx10s(t), scope, sig.KeyID, msg, sig.Bytes) != nil {
						failed.Add(1)
					}
				}
			}()
		}
		for range 8 {
			<-done
		}
		if n := failed.Load(); n != 0 {
			t.Fatalf("%s: %d of 80 sign+verify failed", target, n)
		}
	}
}

// Anything but Sign, PublicKey and Prove closes the connection; the signer never
// sees it, and a new connection signs again.
func TestRelayRefusesOtherMethods(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.OperatorID)), relay)
	seq := env.LastSeq(t)
	calls := map[string]func(cc *grpc.ClientConn) error{
		"RotationService/Open": func(cc *grpc.ClientConn) error {
			_, err := signerv1.NewRotationServiceClient(cc).Open(ctx10s(t), &signerv1.OpenRequest{Scope: scope})
			return err
		},
		"AuditService/List": func(cc *grpc.ClientConn) error {
			_, err := signerv1.NewAuditServiceClient(cc).List(ctx10s(t), &signerv1.ListAuditRequest{})
			return err
		},
		"unknown method": func(cc *grpc.ClientConn) error {
			return cc.Invoke(ctx10s(t), "/plexsphere.signer.v1.SignerService/Export", &signerv1.SignRequest{}, &signerv1.SignResponse{})
		},
		"health": func(cc *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(cc).Check(ctx10s(t), &healthpb.HealthCheckRequest{})
			return err
		},
	}
	for name, call := range calls {
		cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		if err := call(cc); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want the connection closed (Unavailable)", name, err)
		}
		cc.Close()
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("refused calls reached the signer: %+v", got)
	}
	// The operator's identity is not on the signer's Sign list: the call
	// reaches the signer and is denied there, audited.
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m")); !errors.Is(err, client.ErrClientIdentityDenied) {
		t.Fatalf("Sign after refusals: %v", err)
	}
}

// The relay bounds request sizes: an oversized request closes the
// connection before its message is complete, so no handler runs.
func TestRelayMessageSizeBounded(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), relay, func(c *sidecar.Config) {
		c.MaxMessageBytes = 4096
	})
	seq := env.LastSeq(t)
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, make([]byte, 8192)); status.Code(err) != codes.Unavailable {
		t.Fatalf("oversized message: %v", err)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("an oversized message was handled by the signer: %+v", got)
	}
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, make([]byte, 1024)); err != nil {
		t.Fatalf("a message under the bound: %v", err)
	}
}

// The uid allow-list holds in relay mode too.
func TestRelayUIDAllowList(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), relay, func(c *sidecar.Config) {
		c.Listen = c.Listen[:1]
		c.AllowUIDs = []int{os.Getuid() + 4242}
	})
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("uid not on the list: %v", err)
	}
}

// The core's deadline travels through the relay (grpc-timeout) and ends the
// signer's signing call.
func TestRelayDeadlinePropagates(t *testing.T) { deadlineReachesSigner(t, relay) }

// rawCore speaks HTTP/2 frames to the relay by hand, to send what a gRPC
// client never would.
type rawCore struct {
	conn net.Conn
	fr   *http2.Framer
	buf  bytes.Buffer
	enc  *hpack.Encoder
}

func newRawCore(t *testing.T, addr string) *rawCore {
	c, err := net.Dial("tcp", addr)
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

// closed reports whether the relay closes the connection (reading the
// signer's frames until then).
func (r *rawCore) closed() bool {
	r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r.conn)
	return err == nil
}

func req(method string) []string {
	return []string{":method", "POST", ":scheme", "http", ":path", method, ":authority", "x", "content-type", "application/grpc", "te", "trailers"}
}

// Header blocks a gRPC client would not send are refused as a whole: the
// recorder upstream sees only the forwarded methods.
func TestRelayHeaderTricks(t *testing.T) {
	ca := signertest.NewCA(t)
	env := &signertest.Env{CA: ca}
	rec := &recorder{}
	up := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLS(env.Source(env.Issue(t, signertest.SignerID))))),
		grpc.UnknownServiceHandler(rec.handle))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(lis)
	defer up.Stop()
	sc := signertest.StartSidecar(t, lis.Addr().String(), env.Source(env.Issue(t, signertest.CoreID)), relay)
	sign := signerv1.SignerService_Sign_FullMethodName
	rotate := signerv1.RotationService_Open_FullMethodName

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
		"push promise": func(r *rawCore) {
			r.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: r.block(req(sign)...), EndHeaders: true})
		},
	}
	for name, send := range cases {
		r := newRawCore(t, sc.TCP)
		send(r)
		if !r.closed() {
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

// In relay mode a core connection is pinned to one replica; when that
// replica stops, the core's next connection goes to the other one.
func TestRelayFailover(t *testing.T) {
	ca := signertest.NewCA(t)
	a := signertest.Start(t, signertest.WithCA(ca))
	b := signertest.Start(t, signertest.WithCA(ca))
	sc := signertest.StartSidecar(t, a.Addr+","+b.Addr, a.Source(a.Issue(t, signertest.CoreID)), relay)
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

// A replica that swallows connections costs the relay one connect timeout,
// not one per core connection: after a failed dial it is tried last for a
// while.
func TestRelaySkipsDeadReplica(t *testing.T) {
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
	sc := signertest.StartSidecar(t, dead.Addr().String()+","+env.Addr, env.Source(env.Issue(t, signertest.CoreID)), relay)
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
