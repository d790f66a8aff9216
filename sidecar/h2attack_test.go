package sidecar_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
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
	return dialRawCore(t, "unix", strings.TrimPrefix(target, "unix://"))
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

// A connection keeps nothing of a header block once the block's call has
// what it holds (within the request budget): an idle connection whose last
// request had 60 KiB of headers holds no more than one whose last request
// was small. Both groups send the same big block, so the buffers HPACK and
// the framer keep at their largest are alike; only group A then sends a
// small one.
func TestIdleConnectionKeepsNoHeaderBlock(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	forbidden := signerv1.RotationService_Open_FullMethodName
	const conns = 48
	open := func(small bool) {
		for range conns {
			r := newRawCore(t, sc.TCP)
			r.headers(t, 1, true, r.block(append(req(forbidden), "x-a", strings.Repeat("x", 60<<10))...))
			want := 1
			if small {
				r.headers(t, 3, true, r.block(req(forbidden)...))
				want = 2
			}
			if got := r.answers(t, want, 10*time.Second); len(got) != want {
				t.Fatalf("%d answers, want %d", len(got), want)
			}
		}
	}
	heap := func() uint64 { runtime.GC(); return heapInUse() } // pooled buffers too
	before := heap()
	open(true)
	mid := heap()
	open(false)
	after := heap()
	small, big := int64(mid)-int64(before), int64(after)-int64(mid)
	t.Logf("%d idle connections: %d KiB after a small last block, %d KiB after a big one", conns, small>>10, big>>10)
	if big-small > conns*16<<10 {
		t.Fatalf("idle connections whose last header block was 60 KiB hold %d KiB more than the others (%d connections)", (big-small)>>10, conns)
	}
}

// A SETTINGS frame holds up to 2,730 settings; applying each
// INITIAL_WINDOW_SIZE to every open stream's window was 2.8 million map
// steps a frame with 1,020 windows (about 55 ms), so a core could make
// whoever holds its writer's turn (the upstream reader too, writeInline)
// spend seconds on 180 frames, 4 MB of queue. The frame's change is
// applied once: the 180 frames are acknowledged at once (well within the
// deadline, which only tells "milliseconds" from "many seconds").
func TestInitialWindowSettingsFloodIsCheap(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newUnixRawCore(t, sc.Socket)
	r.pingAcked(t, 10*time.Second)
	for i := range 1020 { // open streams, each with a window the writer tracks
		id := uint32(2*i + 1)
		r.headers(t, id, false, r.block(req(signMethod)...))
		r.fr.WriteWindowUpdate(id, 1)
	}
	r.pingAcked(t, 30*time.Second)
	s := make([]http2.Setting, (16<<10)/6)
	for i := range s {
		s[i] = http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(60000 + i%2)}
	}
	for range 180 { // under maxQueued even if none is written before the last
		if err := r.fr.WriteSettings(s...); err != nil {
			t.Fatal(err)
		}
	}
	r.pingAcked(t, 5*time.Second)
}

// A connection WINDOW_UPDATE while the connection's window is open lets
// no answer go that waits for its stream's window: retrying the 1,020
// waiting answers for each (a lock and an allocation apiece) made 13 bytes
// from the core cost the turn's holder (the upstream reader too) about
// 100 µs, 32,000 of them seconds. As with the SETTINGS flood, the deadline
// only tells "milliseconds" from "seconds".
func TestWindowUpdateFloodIsCheap(t *testing.T) {
	r, rd, block, body := windowlessCore(t)
	const n = 1020
	for i := range n {
		id := uint32(2*i + 1)
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		r.fr.WriteData(id, true, body)
	}
	r.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for seen := 0; seen < n; {
		fm, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for the answers' headers: %v (%d of %d)", err, seen, n)
		}
		if _, ok := fm.(*http2.MetaHeadersFrame); ok {
			seen++
		}
	}
	floods := map[string]func() error{
		"connection WINDOW_UPDATE":           func() error { return r.fr.WriteWindowUpdate(0, 1) },
		"WINDOW_UPDATE on a stream not open": func() error { return r.fr.WriteWindowUpdate(2, 1) },
		"empty SETTINGS":                     func() error { return r.fr.WriteSettings() },
	}
	for name, send := range floods {
		for range 32000 { // under maxQueued even if none is written before the last
			if err := send(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		t.Logf("%s: 32,000 sent", name)
		r.pingAcked(t, 5*time.Second)
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
	env := signertest.Start(t, signertest.WithProvider(blocking(t, nil, ended)))
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
	// The replica connects at once but first allows no streams, so the
	// calls wait in the sidecar (no timeout runs meanwhile); then it allows
	// them, and the sidecar sends them all as one batch.
	held := make(chan error, 1)
	proceed := make(chan struct{})
	replica := make(chan error, 1)
	go func() {
		nc, err := tl.Accept()
		tl.Close() // one connection; later dials are refused
		if err != nil {
			held <- err
			return
		}
		defer nc.Close()
		nc.(*net.TCPConn).SetReadBuffer(64 << 10) // no autotuning: the sidecar's writes block soon
		c := tls.Server(nc, cfg)
		if err := c.Handshake(); err != nil {
			held <- err
			return
		}
		fr := http2.NewFramer(c, c)
		if err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0}); err != nil {
			held <- err
			return
		}
		held <- awaitSettingsAck(c, fr) // the sidecar now holds every call
		<-proceed
		if err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000}); err != nil {
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
	if err := <-held; err != nil {
		t.Fatalf("replica: %v", err)
	}
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

// awaitSettingsAck reads the client's preface and frames until it acks
// the server's SETTINGS.
func awaitSettingsAck(c io.Reader, fr *http2.Framer) error {
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if s, ok := f.(*http2.SettingsFrame); ok && s.IsAck() {
			return nil
		}
	}
}

// A core that resets its calls (after sending them whole, or halfway)
// gets its stream slots and the request budget back, and a call at the
// signer is cancelled there: with two streams a connection, twenty calls
// reset at the signer and sixty 300 KiB requests reset halfway (18 MB,
// more than the 16 MiB budget) leave the connection able to make a call.
func TestResetFreesEverything(t *testing.T) {
	entered, ended := make(chan struct{}, 100), make(chan error, 100)
	env := signertest.Start(t, signertest.WithProvider(blocking(t, entered, ended)))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) {
		c.MaxConcurrentStreams = 2
	})
	if _, err := dialClient(t, sc.Socket).PublicKeys(ctx10s(t), scope); err != nil {
		t.Fatal(err)
	}
	r := newRawCore(t, sc.TCP)
	sign := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	id := uint32(1)
	for range 20 {
		r.headers(t, id, false, r.block(req(signMethod)...))
		r.fr.WriteData(id, true, sign)
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d never reached the signer", id)
		}
		r.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		select {
		case err := <-ended:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("call %d at the signer ended with %v, want Canceled", id, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d: the core's reset never reached the signer", id)
		}
		id += 2
	}
	// The sidecar opens each stream's window as it reads (every 16 KiB),
	// so 300 KiB fit without waiting for its WINDOW_UPDATEs.
	chunk := make([]byte, 15<<10)
	for range 60 {
		r.headers(t, id, false, r.block(req(signMethod)...))
		for range 20 {
			if err := r.fr.WriteData(id, false, chunk); err != nil {
				t.Fatal(err)
			}
		}
		r.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		id += 2
	}
	r.headers(t, id, false, r.block(req(publicKeyMethod)...))
	r.fr.WriteData(id, true, grpcFrame(t, &signerv1.PublicKeyRequest{Scope: scope}))
	got := r.answers(t, 1, 10*time.Second)
	if a := got[id]; a == nil || a.status != "0" {
		t.Fatalf("a call after 80 reset ones: %+v, want grpc-status 0", got[id])
	}
}

// A thousand calls in flight on one connection (more than the signer's
// 256 streams) are all answered, each once.
func TestThousandStreamsOnOneConnection(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newRawCore(t, sc.TCP)
	r.fr.WriteWindowUpdate(0, 1<<30)
	const calls = 1000
	block := r.block(req(signMethod)...)
	for i := range calls {
		id := uint32(2*i + 1)
		r.headers(t, id, false, block)
		r.fr.WriteData(id, true, grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte(fmt.Sprint(i))}))
	}
	got := r.answers(t, calls, 60*time.Second)
	bad := 0
	for i := range calls {
		if a := got[uint32(2*i+1)]; a == nil || a.status != "0" || a.data == 0 {
			bad++
			if bad < 5 {
				t.Errorf("stream %d: %+v", 2*i+1, a)
			}
		}
	}
	if bad > 0 || len(got) != calls {
		t.Fatalf("%d of %d calls not answered OK; %d streams seen", bad, calls, len(got))
	}
}

// Core connections that end (cleanly, abruptly, mid-request, mid-header
// block, with calls in flight, with health Watch streams open) leave no
// goroutine behind.
func TestNoGoroutineOutlivesItsConnection(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	if _, err := dialClient(t, sc.Socket).PublicKeys(ctx10s(t), scope); err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		n := runtime.NumGoroutine()
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			m := runtime.NumGoroutine()
			if m == n {
				return n
			}
			n = m
		}
		return n
	}
	base := settle()
	health := grpcFrame(t, &healthpb.HealthCheckRequest{Service: sidecar.HealthService})
	sign := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	for i := range 40 {
		r := newRawCore(t, sc.TCP)
		r.headers(t, 1, false, r.block(req("/grpc.health.v1.Health/Watch")...))
		r.fr.WriteData(1, true, health)
		r.headers(t, 3, false, r.block(req(signMethod)...))
		r.fr.WriteData(3, true, sign)
		r.headers(t, 5, false, r.block(req(signMethod)...)) // never ended
		r.fr.WriteData(5, false, sign[:3])
		r.pingAcked(t, 10*time.Second) // the sidecar serves the connection
		switch i % 4 {
		case 0:
			r.fr.WriteGoAway(5, http2.ErrCodeNo, nil)
		case 1:
			b := r.block(req(signMethod)...)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: b[:3]}) // a header block never finished
		case 2:
			r.conn.(*net.TCPConn).SetLinger(0)
		}
		r.conn.Close()
	}
	var n int
	for deadline := time.Now().Add(15 * time.Second); ; {
		if n = runtime.NumGoroutine(); n <= base+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before 40 core connections came and went:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeReplica is a signer replica spoken to frame by frame: it answers
// every request OK (trailers only), except that on its first connection,
// once it holds goAwayAfter requests, it sends GOAWAY naming only the
// first as processed, answers that one, and no other.
type fakeReplica struct {
	addr     string
	answered chan [2]uint32 // connection number, stream
	// noTrailers answers with headers and a message, END_STREAM on the
	// DATA, and no trailers: not gRPC.
	noTrailers bool
}

func startFakeReplica(t *testing.T, env *signertest.Env, goAwayAfter int, noTrailers bool) *fakeReplica {
	cfg := identity.ServerTLS(env.Source(env.Issue(t, signertest.SignerID)))
	cfg.NextProtos = []string{"h2"}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &fakeReplica{addr: l.Addr().String(), answered: make(chan [2]uint32, 10000), noTrailers: noTrailers}
	go func() {
		for n := uint32(1); ; n++ {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			go f.serve(nc, n, goAwayAfter)
		}
	}()
	return f
}

func (f *fakeReplica) serve(nc net.Conn, n uint32, goAwayAfter int) {
	defer nc.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil {
		return
	}
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var buf strings.Builder
	enc := hpack.NewEncoder(&buf)
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	answer := func(id uint32) {
		// Counted before it is written: a core that has its answer may
		// count the replica's answers at once.
		select {
		case f.answered <- [2]uint32{n, id}:
		default: // only counted where few are answered
		}
		buf.Reset()
		hs := []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}}
		if !f.noTrailers {
			hs = append(hs, hpack.HeaderField{Name: "grpc-status", Value: "0"})
		}
		for _, h := range hs {
			enc.WriteField(h)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte(buf.String()), EndStream: !f.noTrailers, EndHeaders: true})
		if f.noTrailers {
			fr.WriteData(id, true, []byte{0, 0, 0, 0, 0})
		}
	}
	var held []uint32
	away := false
	for {
		fm, err := fr.ReadFrame()
		if err != nil {
			return
		}
		var ended uint32
		switch fm := fm.(type) {
		case *http2.SettingsFrame:
			if !fm.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if fm.StreamEnded() {
				ended = fm.StreamID
			}
		case *http2.DataFrame:
			if fm.Length > 0 {
				fr.WriteWindowUpdate(0, fm.Length)
			}
			if fm.StreamEnded() {
				ended = fm.StreamID
			}
		}
		if ended == 0 {
			continue
		}
		if n > 1 || goAwayAfter == 0 {
			answer(ended)
			continue
		}
		if away {
			continue // after the GOAWAY: a stream it said it would not process
		}
		if held = append(held, ended); len(held) == goAwayAfter {
			away = true
			fr.WriteGoAway(held[0], http2.ErrCodeNo, nil)
			answer(held[0])
		}
	}
}

// A replica that sends GOAWAY with calls in flight: the calls it names as
// processed are answered by it, the others are sent again (to its next
// connection here) and answered there, each call once.
func TestReplicaGoAwayRedispatches(t *testing.T) {
	env := &signertest.Env{CA: signertest.NewCA(t)}
	const calls = 50
	f := startFakeReplica(t, env, calls, false)
	sc := signertest.StartSidecar(t, f.addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newRawCore(t, sc.TCP)
	body := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	for i := range calls {
		id := uint32(2*i + 1)
		r.headers(t, id, false, r.block(req(signMethod)...))
		r.fr.WriteData(id, true, body)
	}
	got := r.answers(t, calls, 20*time.Second)
	for i := range calls {
		if a := got[uint32(2*i+1)]; a == nil || a.status != "0" {
			t.Errorf("stream %d: %+v, want grpc-status 0", 2*i+1, a)
		}
	}
	byConn := map[uint32]int{}
	for len(f.answered) > 0 {
		a := <-f.answered
		byConn[a[0]]++
	}
	if byConn[1] != 1 || byConn[1]+byConn[2] != calls || len(byConn) != 2 {
		t.Fatalf("answers by replica connection: %v, want 1 on the first and %d on the second", byConn, calls-1)
	}
}

// While every replica connection is full, calls wait in the sidecar; a
// core that opens calls and resets them at once must not make that wait
// list grow: 100,000 reset calls behind one stuck call leave no trace.
func TestResetWaitingCallsAreForgotten(t *testing.T) {
	entered, open := make(chan struct{}, 1), make(chan struct{})
	gated := gate(t, entered, open)
	env := signertest.Start(t, signertest.WithProvider(gated), signertest.WithConfig(func(c *config.Signer) { c.MaxConcurrentStreams = 1 }))
	t.Cleanup(func() { close(open) }) // before the signer stops
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	stuck := dialClient(t, sc.Socket)
	go stuck.Sign(ctx10s(t), scope, []byte("m"))
	select {
	case <-entered: // the replica connection's one stream is taken
	case <-time.After(10 * time.Second):
		t.Fatal("the first Sign never reached the signer")
	}
	r := newRawCore(t, sc.TCP)
	acked := make(chan struct{})
	barrier := [8]byte{'b', 'a', 'r', 'r', 'i', 'e', 'r'}
	go func() { // reads (and drops) what the sidecar writes, to the barrier's ACK
		rd := http2.NewFramer(nil, r.conn)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == barrier {
				close(acked)
				return
			}
		}
	}()
	block := r.block(req(signMethod)...)
	body := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	before := heapInUse()
	const calls = 100_000
	for i := range calls {
		id := uint32(2*i + 1)
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		r.fr.WriteData(id, true, body)
		if err := r.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	r.fr.WritePing(false, barrier)
	select {
	case <-acked:
	case <-time.After(60 * time.Second):
		t.Fatal("the sidecar never read the calls")
	}
	grew := int64(heapInUse()) - int64(before)
	t.Logf("heap grew by %d KiB after %d reset calls", grew>>10, calls)
	if grew > 8<<20 {
		t.Fatalf("%d calls reset while waiting grew the heap by %d MiB", calls, grew>>20)
	}
}

// During a drain, a core connection whose last call the core resets is
// done: the sidecar closes it then, not when the grace period ends.
func TestDrainEndsWhenTheLastCallIsReset(t *testing.T) {
	entered, open := make(chan struct{}, 1), make(chan struct{})
	gated := gate(t, entered, open)
	env := signertest.Start(t, signertest.WithProvider(gated))
	t.Cleanup(func() { close(open) })
	src := env.Source(env.Issue(t, signertest.CoreID))
	ls, stop, served := serveSidecar(t, env.Addr, src, 10*time.Minute, localaddr.MustParse("127.0.0.1:0"))

	r := newRawCore(t, ls[0].Addr().String())
	r.headers(t, 1, false, r.block(req(signMethod)...))
	r.fr.WriteData(1, true, grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}))
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the Sign never reached the signer")
	}
	stop()
	if code, ok := r.goAway(); !ok || code != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v (seen %v)", code, ok)
	}
	r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	if !r.closed() {
		t.Fatal("the connection stayed open with no call left, the grace period running")
	}
	r.conn.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve never returned")
	}
}

// An answer that ends without trailers (not gRPC; a signer never sends
// one) still ends the core's stream, with a status: the core is not left
// waiting for trailers that will not come.
func TestAnswerWithoutTrailersEndsTheStream(t *testing.T) {
	env := &signertest.Env{CA: signertest.NewCA(t)}
	f := startFakeReplica(t, env, 0, true)
	sc := signertest.StartSidecar(t, f.addr, env.Source(env.Issue(t, signertest.CoreID)))
	r := newRawCore(t, sc.TCP)
	r.headers(t, 1, false, r.block(req(signMethod)...))
	r.fr.WriteData(1, true, grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}))
	got := r.answers(t, 1, 10*time.Second)
	if a := got[1]; a == nil || a.status == "" || a.status == "0" {
		t.Fatalf("an answer without trailers: %+v, want the stream ended with an error status", a)
	}
}

// Frames no HTTP/2 client may send close the connection with a GOAWAY
// naming the error (RFC 9113 §5.1.1, §6.1, §6.2, §6.5.2), and the
// connection's calls already at the signer are not answered twice or
// left behind: a good call on a new connection still signs.
func TestIllegalStreamUseClosesTheConnection(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	sign := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	cases := map[string]struct {
		send func(r *rawCore)
		code http2.ErrCode
	}{
		"HEADERS on an even stream": {func(r *rawCore) {
			r.headers(t, 2, true, r.block(req(signMethod)...))
		}, http2.ErrCodeProtocol},
		"a stream id reused": {func(r *rawCore) {
			r.headers(t, 5, false, r.block(req(signMethod)...))
			r.fr.WriteData(5, true, sign)
			r.headers(t, 5, true, r.block(req(signMethod)...))
		}, http2.ErrCodeProtocol},
		"a lower stream id after a higher one": {func(r *rawCore) {
			r.headers(t, 7, true, r.block(req(signMethod)...))
			r.headers(t, 3, true, r.block(req(signMethod)...))
		}, http2.ErrCodeProtocol},
		"DATA on an idle stream": {func(r *rawCore) {
			r.fr.WriteData(9, true, sign)
		}, http2.ErrCodeProtocol},
		"DATA after END_STREAM": {func(r *rawCore) {
			r.headers(t, 1, false, r.block(req(signMethod)...))
			r.fr.WriteData(1, true, sign)
			r.fr.WriteData(1, true, sign)
		}, http2.ErrCodeStreamClosed},
		"SETTINGS_ENABLE_PUSH 2": {func(r *rawCore) {
			r.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2})
		}, http2.ErrCodeProtocol},
		"a 32-bit initial window": {func(r *rawCore) {
			r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		}, http2.ErrCodeProtocol},
	}
	for name, tc := range cases {
		r := newRawCore(t, sc.TCP)
		tc.send(r)
		code, ok := r.goAway()
		if !ok {
			t.Errorf("%s: no GOAWAY", name)
		} else if code != tc.code && !(name == "a 32-bit initial window" && code == http2.ErrCodeFlowControl) {
			t.Errorf("%s: GOAWAY %v, want %v", name, code, tc.code)
		}
		if !r.closed() {
			t.Errorf("%s: the connection stayed open", name)
		}
	}
	if _, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign after the illegal connections: %v", err)
	}
}

// windowlessCore is a raw core whose streams get no window (initial window
// 0) before a replica that answers with a message, so every answer waits
// for the core's WINDOW_UPDATE; rd reads the sidecar's frames, block and
// body make a Sign request.
func windowlessCore(t *testing.T) (r *rawCore, rd *http2.Framer, block, body []byte) {
	t.Helper()
	env := &signertest.Env{CA: signertest.NewCA(t)}
	f := startFakeReplica(t, env, 0, true) // answers with a message: flow controlled
	sc := signertest.StartSidecar(t, f.addr, env.Source(env.Issue(t, signertest.CoreID)))
	r = newRawCore(t, sc.TCP)
	r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	rd = http2.NewFramer(nil, r.conn)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	block = r.block(req(signMethod)...)
	body = grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	return r, rd, block, body
}

// A core that never opens its windows and resets each call once its answer
// has started leaves nothing behind: the answers waiting for its window
// are dropped with their streams, not kept until a WINDOW_UPDATE that
// never comes.
func TestResetStreamsBlockedOnTheCoresWindowAreForgotten(t *testing.T) {
	r, rd, block, body := windowlessCore(t)
	round := func(first uint32, n int) {
		for i := range n {
			id := first + uint32(2*i)
			r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
			r.fr.WriteData(id, true, body)
		}
		r.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		other := map[string]int{}
		for seen := 0; seen < n; {
			fm, err := rd.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for the answers' headers: %v (%d of %d; %v)", err, seen, n, other)
			}
			switch fm := fm.(type) {
			case *http2.MetaHeadersFrame:
				seen++
			case *http2.DataFrame:
				t.Fatalf("DATA on stream %d with a window of 0", fm.StreamID)
			default:
				other[fmt.Sprintf("%T", fm)]++
			}
		}
		for i := range n {
			r.fr.WriteRSTStream(first+uint32(2*i), http2.ErrCodeCancel)
		}
	}
	round(1, 1000) // warm
	r.pingAcked(t, 10*time.Second)
	before := heapInUse()
	const rounds = 40
	for k := 1; k <= rounds; k++ {
		round(uint32(2000*k+1), 1000)
	}
	r.pingAcked(t, 10*time.Second)
	grew := int64(heapInUse()) - int64(before)
	t.Logf("heap grew by %d KiB after %d reset streams", grew>>10, rounds*1000)
	if grew > 8<<20 {
		t.Fatalf("%d streams reset with their answers waiting for the window grew the heap by %d MiB", rounds*1000, grew>>20)
	}
}

// The upstream reader writes answers to the core connections itself
// (writeInline). A core that stops reading must cost the other core
// connections nothing: its answers wait for its own writer, and another
// core's calls on the same replica connection are answered meanwhile.
func TestCoreThatStopsReadingHoldsUpNoOtherCore(t *testing.T) {
	var seen atomic.Int32
	big := &signerv1.SignResponse{Signature: make([]byte, 16<<10)} // 13 fill a Unix socket's buffer
	sc := sidecarBefore(t, func(_ any, ss grpc.ServerStream) error {
		var req signerv1.SignRequest
		if err := ss.RecvMsg(&req); err != nil {
			return err
		}
		seen.Add(1)
		return ss.SendMsg(big)
	})

	// The stalled core: windows wide open, 100 calls (1.6 MB of answers,
	// under maxQueued, so it is not cut off), and it never reads.
	stalled := newUnixRawCore(t, sc.Socket)
	stalled.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	stalled.fr.WriteWindowUpdate(0, 1<<30)
	body := grpcFrame(t, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	block := stalled.block(req(signMethod)...)
	const calls = 100
	for i := range calls {
		id := uint32(2*i + 1)
		stalled.headers(t, id, false, block)
		stalled.fr.WriteData(id, true, body)
	}
	for deadline := time.Now().Add(10 * time.Second); seen.Load() < calls; {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream saw %d of the stalled core's %d calls", seen.Load(), calls)
		}
		time.Sleep(10 * time.Millisecond) // polling a count, not synchronising
	}
	// Another core, the same replica connection: every call answered.
	cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for i := range 50 {
		if err := cc.Invoke(ctx10s(t), signMethod, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}, &signerv1.SignResponse{}); err != nil {
			t.Fatalf("call %d of another core while one core does not read: %v", i, err)
		}
	}
}
