package sidecar_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Attacks a core can make on its own connections, written frame by frame:
// the sidecar must stay within its bounds, answer every call it accepted
// exactly once, and keep serving others.

const publicKeyMethod = "/plexsphere.signer.v1.SignerService/PublicKey"

// grpcFrame is msg with gRPC's five-byte message prefix.
func grpcFrame(t *testing.T, msg proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{0, byte(len(b) >> 24), byte(len(b) >> 16), byte(len(b) >> 8), byte(len(b))}, b...)
}

// newUnixRawCore is newRawCore on the sidecar's Unix socket, whose small
// buffers make a core that does not read felt at once.
func newUnixRawCore(t *testing.T, target string) *rawCore {
	c, err := net.Dial("unix", strings.TrimPrefix(target, "unix://"))
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

// headers sends a header block on stream id, split into 16 KiB frames.
func (r *rawCore) headers(t *testing.T, id uint32, end bool, block []byte) {
	t.Helper()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), 16<<10)
		var err error
		if first {
			err = r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndStream: end, EndHeaders: n == len(block)})
		} else {
			err = r.fr.WriteContinuation(id, n == len(block), block[:n])
		}
		if err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		block, first = block[n:], false
	}
}

// answer is how the sidecar ended one stream.
type answer struct {
	status string // grpc-status, or "" if none
	rst    http2.ErrCode
	reset  bool
	data   int // DATA bytes
}

// answers reads the sidecar's frames until want streams have ended (or
// the connection ends, or timeout), opening the core's windows as the
// answers use them.
func (r *rawCore) answers(t *testing.T, want int, timeout time.Duration) map[uint32]*answer {
	t.Helper()
	rd := http2.NewFramer(nil, r.conn)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rd.MaxHeaderListSize = 1 << 20
	r.conn.SetReadDeadline(time.Now().Add(timeout))
	defer r.conn.SetReadDeadline(time.Time{})
	got := map[uint32]*answer{}
	ended := 0
	of := func(id uint32) *answer {
		if got[id] == nil {
			got[id] = &answer{}
		}
		return got[id]
	}
	for ended < want {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Logf("reading answers: %v (%d of %d ended)", err, ended, want)
			return got
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			a := of(f.StreamID)
			for _, h := range f.Fields {
				if h.Name == "grpc-status" {
					a.status = h.Value
				}
			}
			if f.StreamEnded() {
				ended++
			}
		case *http2.DataFrame:
			a := of(f.StreamID)
			a.data += len(f.Data())
			if f.Length > 0 {
				r.fr.WriteWindowUpdate(0, f.Length)
				r.fr.WriteWindowUpdate(f.StreamID, f.Length)
			}
			if f.StreamEnded() {
				ended++
			}
		case *http2.RSTStreamFrame:
			a := of(f.StreamID)
			a.reset, a.rst = true, f.ErrCode
			ended++
		case *http2.PingFrame:
			if !f.IsAck() {
				r.fr.WritePing(true, f.Data)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				r.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			t.Logf("GOAWAY %v from the sidecar", f.ErrCode)
		}
	}
	return got
}

// pingAcked sends a PING and reads until its ACK: every frame the core
// sent before it has been read by the sidecar.
func (r *rawCore) pingAcked(t *testing.T, timeout time.Duration) {
	t.Helper()
	data := [8]byte{'b', 'a', 'r', 'r', 'i', 'e', 'r'}
	if err := r.fr.WritePing(false, data); err != nil {
		t.Fatal(err)
	}
	rd := http2.NewFramer(nil, r.conn)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rd.MaxHeaderListSize = 1 << 20
	r.conn.SetReadDeadline(time.Now().Add(timeout))
	defer r.conn.SetReadDeadline(time.Time{})
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for the PING's ACK: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == data {
			return
		}
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// A core that floods PINGs (or any frame the sidecar acknowledges) and
// never reads is cut off like one that never reads its answers: what waits
// for it is bounded. (Answering every PING into an unbounded queue is the
// HTTP/2 "ping flood", CVE-2019-9512; SETTINGS is CVE-2019-9515.)
func TestPingFloodFromANonReadingCoreIsCut(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newUnixRawCore(t, sc.Socket)
	const pings = 500_000 // 8.5 MB of PINGs, never an ACK read
	r.conn.SetWriteDeadline(time.Now().Add(60 * time.Second))
	var err error
	sent := 0
	for ; sent < pings && err == nil; sent++ {
		err = r.fr.WritePing(false, [8]byte{byte(sent), byte(sent >> 8), byte(sent >> 16)})
	}
	if err == nil {
		t.Fatalf("the sidecar took %d PINGs from a core that reads nothing, and kept the connection", pings)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("after %d PINGs the sidecar stopped reading but kept the connection", sent)
	}
	t.Logf("cut off after %d PINGs: %v", sent, err)
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign after the flood: %v", err)
	}
}

// Header fields the sidecar keeps for a call (the ones it passes on, the
// path, the content type) count against the request budget like bodies do:
// a thousand streams with 60 KiB of grpc-encoding each, never ended, must
// not make the sidecar hold 60 MB.
func TestHeldHeadersCountAgainstTheBudget(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newRawCore(t, sc.TCP)
	r.pingAcked(t, 10*time.Second)
	before := heapInUse()
	big := strings.Repeat("x", 60<<10)
	const streams = 1000
	block := r.block(append(req(signMethod), "grpc-encoding", big)...)
	for i := range streams {
		r.headers(t, uint32(2*i+1), false, block)
	}
	r.pingAcked(t, 30*time.Second)
	after := heapInUse()
	grew := int64(after) - int64(before)
	t.Logf("heap grew by %d MiB for %d streams of %d KiB headers", grew>>20, streams, len(big)>>10)
	if grew > 32<<20 {
		t.Fatalf("%d open streams with big headers grew the heap by %d MiB (the request budget is 16 MiB)", streams, grew>>20)
	}
	r.conn.Close()
	// The budget comes back: a call with a large body goes through.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, make([]byte, 60<<10))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sign after the streams closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A core may set its streams' initial window to 0 and open each stream's
// window with a WINDOW_UPDATE right after its request, before any answer
// exists (RFC 9113 §6.9: a WINDOW_UPDATE on an open or half-closed stream).
// The answer must arrive.
func TestStreamWindowOpenedBeforeTheAnswer(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	if _, err := dialClient(t, sc.Socket).PublicKeys(ctx10s(t), scope); err != nil { // a key exists, the path is warm
		t.Fatal(err)
	}
	r := newRawCore(t, sc.TCP)
	r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	r.fr.WriteWindowUpdate(0, 1<<20)
	body := grpcFrame(t, &signerv1.PublicKeyRequest{Scope: scope})
	const streams = 10
	for i := range streams {
		id := uint32(2*i + 1)
		r.headers(t, id, false, r.block(req(publicKeyMethod)...))
		r.fr.WriteData(id, true, body)
		r.fr.WriteWindowUpdate(id, 1<<20)
	}
	got := r.answers(t, streams, 10*time.Second)
	for i := range streams {
		id := uint32(2*i + 1)
		a := got[id]
		if a == nil || a.status != "0" || a.data == 0 {
			t.Errorf("stream %d: %+v, want an answer with data and grpc-status 0", id, a)
		}
	}
}

// A Sign whose grpc-timeout passes at the signer is DeadlineExceeded for
// the core, as a gRPC client reports a reset after its deadline; not
// Canceled (the signer resets the stream with CANCEL when its deadline
// passes). The raw core keeps no deadline of its own: the sidecar's answer
// is the only one.
func TestSignerDeadlineIsDeadlineExceeded(t *testing.T) {
	ended := make(chan error, 1)
	env := signertest.Start(t, signertest.WithProvider(blockingProvider{signertest.NewLocalProvider(t), ended}))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	if _, err := dialClient(t, sc.Socket).PublicKeys(ctx10s(t), scope); err != nil {
		t.Fatal(err)
	}
	r := newRawCore(t, sc.TCP)
	r.headers(t, 1, false, r.block(append(req(signMethod), "grpc-timeout", "300m")...))
	r.fr.WriteData(1, true, grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}))
	got := r.answers(t, 1, 10*time.Second)
	if a := got[1]; a == nil || a.status != "4" {
		t.Fatalf("Sign past its grpc-timeout: %+v, want grpc-status 4 (DeadlineExceeded)", a)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the signer's signing call never ended")
	}
}

// The replica connection breaks while the sidecar is writing a batch of
// calls to it (the replica stopped reading, then reset the connection):
// every call of the batch is answered, the ones written and the ones not.
func TestReplicaLostInTheMiddleOfABatch(t *testing.T) {
	ca := signertest.NewCA(t)
	env := &signertest.Env{CA: ca}
	cfg := identity.ServerTLS(env.Source(env.Issue(t, signertest.SignerID)))
	cfg.NextProtos = []string{"h2"}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	proceed := make(chan struct{})
	replica := make(chan error, 1)
	go func() {
		nc, err := tl.Accept()
		tl.Close() // one connection; later dials are refused
		if err != nil {
			replica <- err
			return
		}
		defer nc.Close()
		nc.(*net.TCPConn).SetReadBuffer(64 << 10) // no autotuning: the sidecar's writes block soon
		<-proceed                                 // the sidecar waits in its handshake
		c := tls.Server(nc, cfg)
		if err := c.Handshake(); err != nil {
			replica <- err
			return
		}
		// Take 256 KiB of the sidecar's batch, then reset the connection
		// while it is still writing.
		_, err = io.CopyN(io.Discard, c, 256<<10)
		nc.(*net.TCPConn).SetLinger(0)
		replica <- err
	}()
	sc := signertest.StartSidecar(t, tl.Addr().String(), env.Source(env.Issue(t, signertest.CoreID)))
	r := newRawCore(t, sc.TCP)
	// 200 Sign calls with 60 KiB of grpc-encoding each (passed on to the
	// signer): 12 MB of headers, no flow control, one batch.
	const calls = 200
	block := r.block(append(req(signMethod), "grpc-encoding", strings.Repeat("g", 60<<10))...)
	body := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	for i := range calls {
		id := uint32(2*i + 1)
		r.headers(t, id, false, block)
		r.fr.WriteData(id, true, body)
	}
	r.pingAcked(t, 10*time.Second) // the calls wait for the replica
	close(proceed)
	if err := <-replica; err != nil {
		t.Fatalf("replica: %v", err)
	}
	got := r.answers(t, calls, 20*time.Second)
	var missing []string
	for i := range calls {
		if id := uint32(2*i + 1); got[id] == nil || (got[id].status == "" && !got[id].reset) {
			missing = append(missing, fmt.Sprint(id))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d calls never answered after the replica connection broke (streams %s...)", len(missing), calls, strings.Join(missing[:min(len(missing), 5)], ","))
	}
}
