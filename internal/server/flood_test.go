package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Floods as an attacker would send them, against the real signer over real
// sockets. The rule they hold the signer to: a flood gets fewer RPCs, never
// fewer audit entries, and never more denials audited than the denial rate.

// deniedAdmissions counts the denied admission entries and the denied
// middleware entries among entries.
func deniedAdmissions(entries []auditlog.Entry) (adm, mw int) {
	for _, e := range entries {
		if e.Reason != auditlog.ReasonInsufficientRelation {
			continue
		}
		if e.Relation == auditlog.RelationConnect {
			adm++
		} else {
			mw++
		}
	}
	return adm, mw
}

// refusedConns reads plexsphere_signer_connections_refused_total{reason}.
func refusedConns(t *testing.T, env *signertest.Env, reason string) float64 {
	t.Helper()
	return metric(t, env, `plexsphere_signer_connections_refused_total{reason="`+reason+`"}`)
}

// metric reads one sample of the signer's /metrics, named with its labels.
func metric(t *testing.T, env *signertest.Env, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	env.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	prefix := name + " "
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the metrics", name)
	return 0
}

// h2 offers HTTP/2 in ALPN, as a gRPC client does (grpc-go closes a TLS
// connection that negotiated none).
func h2(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"h2"}
	return c
}

// dialOnce is a client that makes one connection and no other: once the
// signer closes it, every call fails Unavailable (a plain client would
// reconnect, and its next call would be a new connection's).
func dialOnce(t *testing.T, env *signertest.Env, svid *devpki.SVID) *grpc.ClientConn {
	t.Helper()
	var dialed atomic.Bool
	cc, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS(svid))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			if dialed.Swap(true) {
				return nil, errors.New("one connection only")
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// A flood of certificate-less callers with patient deadlines, reconnecting
// whenever the signer closes their connection, while an admitted core signs.
// It used to be audited at full speed (rate.Limiter.Wait gave up at once on
// any turn past its 2 s bound, and the error was ignored: 1,069 denials/s
// against a rate of 200/s). Now: the denials committed in the window stay
// within what the denial rate allows, every denial answered has both its
// entries, goroutines stay bounded, the core keeps being served, and the
// refusals are counted.
func TestDenialFloodIsPacedNotSkipped(t *testing.T) {
	const rate = 20
	env := signertest.Start(t, signertest.WithConfig(func(c *config.Signer) {
		c.DenialRate, c.DenialsPerConnection = rate, 8
		c.MaxPendingDenials, c.DenialMaxWait = 4*rate, time.Second
	}))
	core := env.Dial(t, env.Issue(t, signertest.CoreID))
	if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	seq0 := env.LastSeq(t)
	t0 := time.Now()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var answered, refused, sent atomic.Int64
	var wg sync.WaitGroup
	creds := credentials.NewTLS(env.ClientTLS(nil))
	const attackers, perConn = 16, 16
	for i := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cc, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(creds))
				if err != nil {
					t.Error(err)
					return
				}
				rpc := signerv1.NewSignerServiceClient(cc)
				var calls sync.WaitGroup
				for j := range perConn {
					calls.Add(1)
					go func() {
						defer calls.Done()
						// Most callers wait as long as it takes; some give
						// up early and leave their calls to the signer.
						patience := 30 * time.Second
						if (i+j)%4 == 0 {
							patience = 50 * time.Millisecond
						}
						for ctx.Err() == nil {
							cctx, cancel := context.WithTimeout(ctx, patience)
							_, err := rpc.Sign(cctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("flood")})
							cancel()
							sent.Add(1)
							switch status.Code(err) {
							case codes.PermissionDenied:
								answered.Add(1)
							case codes.DeadlineExceeded, codes.Canceled:
							default:
								refused.Add(1)
								return // closed or refused: reconnect, as a flood would
							}
						}
					}()
				}
				calls.Wait()
				cc.Close()
			}
		}()
	}

	// The admitted core, serially, for the length of the flood; the peak
	// of goroutines is sampled meanwhile (a reading, not a synchronisation).
	var served, failed int
	var firstErr error
	peak, peakDenying := 0, 0
	var sampled time.Time
	for time.Since(t0) < 3*time.Second {
		if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("admitted")}); err != nil {
			failed++
			firstErr = err
		} else {
			served++
		}
		peak = max(peak, runtime.NumGoroutine())
		if time.Since(sampled) > 200*time.Millisecond {
			peakDenying, sampled = max(peakDenying, goroutinesIn("signing.(*Auditor).deny(")), time.Now()
		}
	}
	window := env.AuditAfter(t, seq0)
	elapsed := time.Since(t0)
	stop()
	wg.Wait()

	deniedInWindow, _ := deniedAdmissions(window)
	// A token bucket of burst `rate` grants at most rate + rate×elapsed
	// turns in the window; a turn granted just before it may commit in it.
	allowed := rate + int(rate*elapsed.Seconds()) + rate/2
	t.Logf("%.1fs: %d calls sent, %d denials answered, %d refused or closed, %d denials committed (allowed %d), core %d served, peak %d goroutines (%d before), %d of them denying",
		elapsed.Seconds(), sent.Load(), answered.Load(), refused.Load(), deniedInWindow, allowed, served, peak, base, peakDenying)
	if deniedInWindow > allowed {
		t.Errorf("%d denials committed in %.1fs at a denial rate of %d/s (at most %d allowed): the flood outran the pacing",
			deniedInWindow, elapsed.Seconds(), rate, allowed)
	}
	if failed > 0 || served < 3 {
		t.Errorf("the admitted core got %d signatures and %d failures (first: %v) under the flood", served, failed, firstErr)
	}
	// Attackers: 16 × (16 callers + a client connection's goroutines);
	// the signer: a few per connection and the bounded queue of denials.
	if limit := base + 1200; peak > limit {
		t.Errorf("%d goroutines at the peak of the flood (%d before): denied calls piled up", peak, base)
	}
	// Denied calls in the signer, waiting for their turn or their commit:
	// the queue's bound (4×rate), and a little for calls between the tap
	// and their turn.
	if peakDenying > 4*rate+16 {
		t.Errorf("%d denied calls in the signer at once (sampled), with a queue of %d: they piled up", peakDenying, 4*rate)
	}
	if n := refusedConns(t, env, "no_client_certificate"); n == 0 {
		t.Error("no connection closed for its certificate-less denial")
	}

	// Every denial answered has both entries; calls whose callers gave up
	// are audited in their turn, after the flood: poll for them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		adm, mw := deniedAdmissions(env.AuditAfter(t, seq0))
		if adm != mw {
			t.Fatalf("%d denied admission entries and %d denied middleware entries: committed apart", adm, mw)
		}
		if int64(adm) >= answered.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d denials answered PermissionDenied, %d audited", answered.Load(), adm)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, not synchronising
	}
	waitQueueDrained(t, env)
}

// goroutinesIn counts the goroutines of this process (the signer's
// included) whose stack holds fn.
func goroutinesIn(fn string) int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return strings.Count(buf.String(), fn)
}

// waitQueueDrained waits until no denied call holds a turn any more: every
// place in the queue taken (in the transport or by a denial) was given
// back, whatever became of its call.
func waitQueueDrained(t *testing.T, env *signertest.Env) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := metric(t, env, "plexsphere_signer_denials_pending")
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v denied calls still hold a turn long after the flood: places in the queue leak", n)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, not synchronising
	}
}

// A connection without a client certificate gets one RPC: its first call is
// denied and audited; its further calls, pipelined or not, are refused in
// the transport before they become RPCs (no entries), and the connection
// is closed.
func TestCertlessConnectionClosedAtFirstDenial(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)))
	cc := dialOnce(t, env, nil)
	seq := env.LastSeq(t)
	_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("probe")})
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
	var wg sync.WaitGroup
	codesSeen := make([]codes.Code, 8)
	for i := range codesSeen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("probe")})
			codesSeen[i] = status.Code(err)
		}()
	}
	wg.Wait()
	for i, c := range codesSeen {
		if c != codes.Unavailable {
			t.Errorf("call %d after the first denial answered %v, want Unavailable (refused at the connection)", i+2, c)
		}
	}
	waitNotReady(t, cc)
	adm, mw := rpcEntries(t, env, seq)
	if len(adm) != 1 || len(mw) != 1 {
		t.Fatalf("%d admission and %d middleware entries, want the first call's only", len(adm), len(mw))
	}
	if n := refusedConns(t, env, "no_client_certificate"); n != 1 {
		t.Fatalf("connections_refused_total{reason=no_client_certificate} = %v, want 1", n)
	}
}

// When the queue of denied calls is full, a call that will be denied is
// refused in the transport with its connection: no RPC, no entries. Every
// call answered PermissionDenied has its entries; the calls refused have
// none; the refusals are counted.
func TestFullDenialQueueRefusesAtTheConnection(t *testing.T) {
	const pending = 4
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) {
			c.DenialRate, c.MaxPendingDenials, c.DenialMaxWait = 1, pending, 10*time.Second
		}))
	// An identity on no allow-list: every call it makes will be denied.
	stranger := env.Issue(t, "spiffe://example.org/ns/elsewhere/sa/stranger")
	seq := env.LastSeq(t)
	var wg sync.WaitGroup
	var denied, unavailable, other atomic.Int64
	for range 4 {
		cc := dialOnce(t, env, stranger)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				_, err := signerv1.NewSignerServiceClient(cc).Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
				switch status.Code(err) {
				case codes.PermissionDenied:
					denied.Add(1)
				case codes.Unavailable:
					unavailable.Add(1)
				default:
					other.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	adm, mw := rpcEntries(t, env, seq)
	t.Logf("32 calls: %d denied, %d refused at the connection, %d other", denied.Load(), unavailable.Load(), other.Load())
	if other.Load() != 0 || denied.Load() == 0 || unavailable.Load() == 0 {
		t.Fatalf("%d denied, %d unavailable, %d other: want denials and refusals only", denied.Load(), unavailable.Load(), other.Load())
	}
	// Four connections may each have slipped a call in before the queue
	// was known to be full (the burst's first turn included), no more.
	if d := denied.Load(); d > pending+4+1 {
		t.Fatalf("%d calls denied with a queue of %d", d, pending)
	}
	if int64(len(adm)) != denied.Load() || int64(len(mw)) != denied.Load() {
		t.Fatalf("%d denials answered, %d admission and %d middleware entries", denied.Load(), len(adm), len(mw))
	}
	if n := refusedConns(t, env, "denials_in_flight"); n == 0 {
		t.Fatal("no connection refused for a full queue of denials")
	}
	waitQueueDrained(t, env)
}

// One source cannot take the signer's connections: past
// SIGNER_MAX_CONNECTIONS_PER_SOURCE its connections are closed before the
// TLS handshake (no crypto, no audit).
func TestConnectionsPerSourceCapped(t *testing.T) {
	const perSource = 3
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.MaxConnectionsPerSource = perSource }))
	svid := env.Issue(t, signertest.CoreID)
	seq := env.LastSeq(t)
	var open []*tls.Conn
	refused := 0
	for range perSource + 3 {
		raw, err := net.DialTimeout("tcp", env.Addr, 5*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			refused++ // the reset of a refusal at accept came before connect returned
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, h2(env.ClientTLS(svid)))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.Handshake(); err != nil {
			refused++
			c.Close()
			continue
		}
		open = append(open, c)
	}
	if len(open) != perSource || refused != 3 {
		t.Fatalf("%d connections completed and %d refused from one source, want %d and 3", len(open), refused, perSource)
	}
	if n := refusedConns(t, env, "connections_per_source"); n != 3 {
		t.Fatalf("connections_refused_total{reason=connections_per_source} = %v, want 3", n)
	}
	// A closed connection gives its place back.
	open[0].Close()
	core := env.Dial(t, svid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no connection after one of the source's closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition (the close reaches the signer), not synchronising
	}
	for _, c := range open[1:] {
		c.Close()
	}
	if _, mw := rpcEntries(t, env, seq); len(mw) != 1 {
		t.Fatalf("%d middleware entries, want the one Sign's", len(mw))
	}
}

// A connection that never finishes its handshake (or never sends the HTTP/2
// preface) is closed after SIGNER_CONNECTION_TIMEOUT, not grpc's 120 s: an
// idle client cannot hold one of the signer's connections.
func TestIdleConnectionClosedAfterTheConnectionTimeout(t *testing.T) {
	env := signertest.Start(t, signertest.WithConfig(func(c *config.Signer) { c.ConnectionTimeout = 300 * time.Millisecond }))
	for _, tc := range []struct {
		name string
		open func(net.Conn) net.Conn
	}{
		{"silent before TLS", func(c net.Conn) net.Conn { return c }},
		{"TLS done, no preface", func(c net.Conn) net.Conn {
			tc := tls.Client(c, h2(env.ClientTLS(env.Issue(t, signertest.CoreID))))
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			return tc
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.DialTimeout("tcp", env.Addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := tc.open(raw)
			// Far longer than the timeout, far shorter than grpc's default.
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the signer kept an idle connection open for 20 s")
			}
		})
	}
}

// A call that takes a place in the queue of denials in the transport but
// never reaches the interceptor (here: a message over the size limit, which
// gRPC refuses before anything reads it) gives its place back. Otherwise
// each such call would shrink SIGNER_MAX_PENDING_DENIALS for good, and a
// few would lock every peer out of the queue.
func TestCallRefusedBeforeDispatchGivesItsPlaceBack(t *testing.T) {
	const pending = 4
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.MaxPendingDenials, c.MaxPayloadBytes = pending, 1024 }))
	cc := dialOnce(t, env, env.Issue(t, "spiffe://example.org/ns/elsewhere/sa/stranger"))
	seq := env.LastSeq(t)
	big := make([]byte, 300<<10) // over 1 KiB + the 256 KiB envelope
	for i := range 3 * pending {
		_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: big})
		if c := status.Code(err); c != codes.ResourceExhausted {
			t.Fatalf("oversized call %d answered %v, want ResourceExhausted (its place in the queue leaked?)", i, err)
		}
	}
	waitQueueDrained(t, env)
	_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
	if adm, mw := rpcEntries(t, env, seq); len(adm) != 1 || len(mw) != 1 {
		t.Fatalf("%d admission and %d middleware entries, want the one denied RPC's", len(adm), len(mw))
	}
}

// A peer that goes on opening calls on a connection the signer is closing
// (while one of its denied calls waits for its turn) does not make the
// signer refuse them one by one for as long as the turn takes: past a few,
// the connection goes at once. The waiting call is audited all the same;
// only its answer is lost.
func TestCallsOnAClosingConnectionCloseItAtOnce(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) {
			c.DenialRate, c.MaxPendingDenials, c.DenialMaxWait = 1, 5, 10*time.Second
		}))
	seq := env.LastSeq(t)
	// Another peer spends the burst: the next turn is a second away.
	_, err := sign(dialOnce(t, env, nil), &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
	waitQueueDrained(t, env)

	cc := dialOnce(t, env, nil)
	first := make(chan error, 1)
	go func() {
		_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
		first <- err
	}()
	// Its first call holds a turn (the connection is being closed).
	deadline := time.Now().Add(10 * time.Second)
	for metric(t, env, "plexsphere_signer_denials_pending") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first call never took its turn")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
	for i := range 20 {
		_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d on the closing connection answered %v, want Unavailable", i+2, err)
		}
	}
	if err := <-first; status.Code(err) != codes.Unavailable {
		t.Fatalf("the waiting call answered %v: the connection stayed open through its turn", err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		adm, mw := rpcEntries(t, env, seq)
		if len(adm) == 2 && len(mw) == 2 {
			break
		}
		if len(adm) > 2 || time.Now().After(deadline) {
			t.Fatalf("%d admission and %d middleware entries, want the two denied RPCs'", len(adm), len(mw))
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, not synchronising
	}
}
