package sidecar_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/sidecar"
)

// A core that opens many connections and then says nothing holds none of
// the signer's connections: with the signer capped at 4, forty idle core
// connections later a call on a new one still signs. (The frame relay
// dialled the signer per core connection: four idle ones denied everyone.)
func TestIdleCoreConnectionsHoldNoSignerConnection(t *testing.T) {
	env := signertest.Start(t, signertest.WithConfig(func(c *config.Signer) { c.MaxConnections, c.MaxConnectionsPerSource = 4, 4 }))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	for range 40 {
		newRawCore(t, sc.TCP) // preface and SETTINGS, then silence
	}
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign with 40 idle core connections open: %v", err)
	}
}

// A connection that never completes its preface is closed (after about
// five seconds), whether it sends nothing or only the preface.
func TestSilentConnectionIsClosed(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	for name, hello := range map[string]string{"nothing": "", "preface only": http2.ClientPreface} {
		c, err := net.Dial("tcp", sc.TCP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(hello))
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("%s: the connection was held open: %v", name, err)
		}
	}
}

// Frames are bounded at 16 KiB, the size gRPC uses: a larger one closes
// the connection with FRAME_SIZE_ERROR as soon as its header is read, so a
// frame that announces 1 MiB never gets a 1 MiB buffer.
func TestFrameLargerThan16KiBClosesTheConnection(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	for name, send := range map[string]func(r *rawCore){
		"17 KiB of DATA": func(r *rawCore) {
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(req(signMethod)...), EndHeaders: true})
			r.fr.WriteData(1, true, make([]byte, 17<<10))
		},
		"a 1 MiB frame header, payload never sent": func(r *rawCore) {
			r.conn.Write([]byte{0x10, 0, 0, 0x0, 0x0, 0, 0, 0, 1})
		},
	} {
		r := newRawCore(t, sc.TCP)
		send(r)
		if code, ok := r.goAway(); !ok || code != http2.ErrCodeFrameSize {
			t.Errorf("%s: GOAWAY %v (seen %v), want FRAME_SIZE_ERROR", name, code, ok)
		}
		if !r.closed() {
			t.Errorf("%s: the connection stayed open", name)
		}
	}
}

// On shutdown the sidecar sends every core connection a GOAWAY and lets
// the calls in flight finish.
func TestShutdownSendsGoAwayAndFinishesCalls(t *testing.T) {
	entered, open := make(chan struct{}, 1), make(chan struct{})
	env := signertest.Start(t, signertest.WithProvider(gate(t, entered, open)))
	src := env.Source(env.Issue(t, signertest.CoreID))
	ls, stop, served := serveSidecar(t, env.Addr, src, 10*time.Second,
		localaddr.MustParse("unix://"+filepath.Join(t.TempDir(), "s.sock")), localaddr.MustParse("127.0.0.1:0"))

	c := dialClient(t, "unix://"+ls[0].Addr().String())
	if _, err := c.PublicKeys(ctx10s(t), scope); err != nil {
		t.Fatal(err)
	}
	signed := make(chan error, 1)
	go func() {
		_, err := c.Sign(ctx10s(t), scope, []byte("m"))
		signed <- err
	}()
	<-entered // the call is at the signer
	idle := newRawCore(t, ls[1].Addr().String())
	idle.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if f, err := idle.reader().ReadFrame(); err != nil { // the sidecar's SETTINGS: the connection is being served
		t.Fatalf("first frame: %v %v", f, err)
	}
	stop()
	if code, ok := idle.goAway(); !ok || code != http2.ErrCodeNo {
		t.Fatalf("an idle core connection at shutdown: GOAWAY %v (seen %v)", code, ok)
	}
	close(open)
	if err := <-signed; err != nil {
		t.Fatalf("the call in flight at shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// reader is the raw core's framer for the sidecar's frames.
func (r *rawCore) reader() *http2.Framer {
	if r.rd == nil {
		r.rd = http2.NewFramer(nil, r.conn)
	}
	return r.rd
}

// serveSidecar runs a sidecar on listen until stop is called (Serve's
// answer then arrives on served), for tests that stop it themselves.
func serveSidecar(t *testing.T, upstream string, src identity.Source, grace time.Duration, listen ...sidecar.Addr) (ls []net.Listener, stop func(), served chan error) {
	t.Helper()
	p, err := sidecar.New(sidecar.Config{Listen: listen, Upstream: upstream,
		SignerID: spiffeid.RequireFromString(signertest.SignerID), SVID: src, Bundle: src})
	if err != nil {
		t.Fatal(err)
	}
	if ls, err = p.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	served = make(chan error, 1)
	go func() { served <- p.Serve(ctx, ls, grace) }()
	return ls, stop, served
}

const signMethod = "/plexsphere.signer.v1.SignerService/Sign"

// goAway reads frames until a GOAWAY (its code, true) or the end (false).
func (r *rawCore) goAway() (http2.ErrCode, bool) {
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := r.reader().ReadFrame()
		if err != nil {
			return 0, false
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g.ErrCode, true
		}
	}
}
