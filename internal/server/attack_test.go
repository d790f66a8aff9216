package server_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// panicProvider's keys panic when asked to sign, on the request whose
// payload is "boom": a bug deep in a handler.
type panicProvider struct{ keyprovider.Provider }

func (p panicProvider) Load(ctx context.Context, ref keyprovider.KeyRef, h []byte) (keyprovider.Key, error) {
	k, err := p.Provider.Load(ctx, ref, h)
	return panicKey{k}, err
}

type panicKey struct{ keyprovider.Key }

func (k panicKey) SignContext(ctx context.Context, m []byte) ([]byte, error) {
	if string(m) == "boom" {
		panic("provider bug")
	}
	return k.Key.SignContext(ctx, m)
}

// A handler panic answers Internal with no internal text, is audited like
// any other outcome (both entries, reason insufficient_relation for an
// unclassified error), and the signer goes on serving.
func TestHandlerPanicIsInternalAuditedAndSurvived(t *testing.T) {
	p, err := localProvider(t)
	if err != nil {
		t.Fatal(err)
	}
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)), signertest.WithProvider(panicProvider{p}))
	core := env.Dial(t, env.Issue(t, signertest.CoreID))
	seq := env.LastSeq(t)
	_, err = sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("boom")})
	st := status.Convert(err)
	if st.Code() != codes.Internal || strings.Contains(st.Message(), "provider bug") || strings.Contains(st.Message(), "panic") {
		t.Fatalf("panicking handler answered %v %q, want Internal without internals", st.Code(), st.Message())
	}
	adm, mw := rpcEntries(t, env, seq)
	if len(adm) != 1 || len(mw) != 1 || mw[0].Code != codes.Internal.String() || mw[0].Reason != auditlog.ReasonInsufficientRelation ||
		mw[0].SignatureSHA256 != nil {
		t.Fatalf("entries after a panic: %+v %+v", adm, mw)
	}
	if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("fine")}); err != nil {
		t.Fatalf("the signer did not survive the panic: %v", err)
	}
}

// The auditor allow-list is read-only: an auditor reads and verifies the
// log (AuditService) and nothing else; it cannot sign, read keys through
// SignerService or rotate. Every refusal is audited with both entries.
func TestAuditorAllowListIsReadOnly(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)))
	cc := env.Dial(t, env.Issue(t, signertest.AuditorID))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq := env.LastSeq(t)
	if _, err := signerv1.NewAuditServiceClient(cc).Checkpoint(ctx, &signerv1.CheckpointRequest{}); err != nil {
		t.Fatalf("auditor cannot read a checkpoint: %v", err)
	}
	adm, mw := rpcEntries(t, env, seq)
	if len(adm) != 1 || adm[0].Reason != auditlog.ReasonGranted || len(mw) != 1 || mw[0].Reason != auditlog.ReasonGranted {
		t.Fatalf("auditor's read: %+v %+v", adm, mw)
	}
	for name, call := range map[string]func() error{
		"Sign": func() error {
			_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
			return err
		},
		"PublicKey": func() error {
			_, err := signerv1.NewSignerServiceClient(cc).PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
			return err
		},
		"ListKeys": func() error {
			_, err := signerv1.NewRotationServiceClient(cc).ListKeys(ctx, &signerv1.ListKeysRequest{})
			return err
		},
		"Open": func() error {
			_, err := signerv1.NewRotationServiceClient(cc).Open(ctx, &signerv1.OpenRequest{Scope: scope})
			return err
		},
	} {
		seq := env.LastSeq(t)
		wantStatus(t, call(), codes.PermissionDenied, "signing: client identity denied")
		adm, mw := rpcEntries(t, env, seq)
		if len(adm) != 1 || adm[0].Reason != auditlog.ReasonInsufficientRelation || len(mw) != 1 || mw[0].Reason != auditlog.ReasonInsufficientRelation {
			t.Fatalf("auditor calling %s: entries %+v %+v, want both denied", name, adm, mw)
		}
	}
}

// An empty payload is refused before any key is touched, with a message
// that names the rule and no echo of the request.
func TestEmptyPayloadRefusedNamingTheRule(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)))
	core := env.Dial(t, env.Issue(t, signertest.CoreID))
	seq := env.LastSeq(t)
	_, err := sign(core, &signerv1.SignRequest{Scope: scope})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "payload") || !strings.Contains(st.Message(), "empty") {
		t.Fatalf("empty payload answered %v %q, want InvalidArgument naming the empty payload", st.Code(), st.Message())
	}
	_, mw := rpcEntries(t, env, seq)
	if len(mw) != 1 || mw[0].Code != codes.InvalidArgument.String() || mw[0].Object != "signing-key:payments:-" || mw[0].SignatureSHA256 != nil {
		t.Fatalf("middleware entries = %+v", mw)
	}
}

// A peer whose calls keep being denied loses its connection after
// DenialsPerConnection of them; each of those denials is still audited. (A
// peer without a certificate loses it after its first:
// TestCertlessConnectionClosedAtFirstDenial.)
func TestRepeatedDenialsCloseTheConnection(t *testing.T) {
	const perConn = 3
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.DenialsPerConnection = perConn }))
	// An identity on no allow-list, and one connection only: no reconnects.
	cc := dialOnce(t, env, env.Issue(t, "spiffe://example.org/ns/elsewhere/sa/stranger"))
	seq := env.LastSeq(t)
	for i := 1; i <= perConn; i++ {
		_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("probe")})
		wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
		if i < perConn && cc.GetState() != connectivity.Ready {
			t.Fatalf("connection closed after %d denials, want %d", i, perConn)
		}
	}
	// The last allowed denial closes the connection under the peer (the
	// client library would reconnect: a fresh TLS handshake each time).
	waitNotReady(t, cc)
	adm, mw := rpcEntries(t, env, seq)
	if len(adm) != perConn || len(mw) != perConn {
		t.Fatalf("%d admission and %d middleware entries for %d denials", len(adm), len(mw), perConn)
	}
}

// waitNotReady blocks until cc's connection has gone (or fails the test
// after 10 s).
func waitNotReady(t *testing.T, cc *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for s := cc.GetState(); s == connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatal("the signer kept the connection open after the last allowed denial")
		}
	}
}

// A source that opens connections faster than the per-source rate gets
// the excess closed before the TLS handshake: no crypto spent, no audit
// entry, while the connections within the budget work.
func TestConnectionBurstFromOneSourceIsCut(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.ConnectionRate = 1 })) // bursts of 10
	svid := env.Issue(t, signertest.CoreID)
	seq := env.LastSeq(t)
	ok, refused := 0, 0
	var conns []*tls.Conn
	for range 30 {
		raw, err := net.DialTimeout("tcp", env.Addr, 5*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			refused++ // the reset of a refusal at accept came before connect returned
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, env.ClientTLS(svid))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.Handshake(); err != nil {
			refused++
			c.Close()
			continue
		}
		ok++
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	// 10 of burst plus at most a token or two refilled while the loop ran.
	if ok < 10 || ok > 15 || refused < 15 {
		t.Fatalf("%d handshakes completed and %d refused from one source, want the burst of 10 (+ refill) only", ok, refused)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("connections without an RPC left %d audit entries", len(got))
	}
}

// countingStore counts Ping calls: readiness must not cost one each.
type countingStore struct {
	store.Store
	pings atomic.Int64
}

func (s *countingStore) Ping(ctx context.Context) error {
	s.pings.Add(1)
	return s.Store.Ping(ctx)
}

// /readyz answers from the state a background check refreshes: a burst of
// probes (a misconfigured kubelet, or a flood from inside the pod network)
// makes no database round trips.
func TestReadyzAnswersFromBackgroundState(t *testing.T) {
	b, err := bbolt.Open(filepath.Join(t.TempDir(), "signer.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	st := &countingStore{Store: b}
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithOps())
	get := func() int {
		resp, err := http.Get("http://" + env.OpsAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(20 * time.Second)
	for get() != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
	before := st.pings.Load()
	for range 500 {
		if code := get(); code != http.StatusOK {
			t.Fatalf("/readyz = %d", code)
		}
	}
	// The background check runs every 5 s: at most a couple of its rounds
	// can fall into the burst, never one per probe.
	if n := st.pings.Load() - before; n > 3 {
		t.Fatalf("500 readiness probes made %d store pings", n)
	}
}

func localProvider(t *testing.T) (keyprovider.Provider, error) {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	return local.New(kek)
}

// A refused caller cannot skip its audit entries, nor its turn, by giving
// up early. With the denial budget spent, calls with a 500 ms deadline
// used to get Internal and leave no entry at all (rate.Limiter.Wait gave
// up on the caller's deadline before anything was written). Now a call
// that becomes an RPC is answered PermissionDenied or runs out its own
// deadline, and is audited with both entries in its turn; once the queue
// of denials is full, the connection's further calls are refused before
// they become RPCs (Unavailable, no entries).
func TestShortDeadlineDenialsStillAudited(t *testing.T) {
	const pending = 5
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) {
			c.DenialRate, c.DenialsPerConnection, c.MaxPendingDenials, c.DenialMaxWait = 1, 1000, pending, 10*time.Second
		}))
	cc := dialOnce(t, env, env.Issue(t, "spiffe://example.org/ns/elsewhere/sa/stranger"))
	seq := env.LastSeq(t)
	// The first denial spends the budget (burst 1).
	_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("probe")})
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
	const calls = 20
	rpcs := 1
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := signerv1.NewSignerServiceClient(cc).Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("probe")})
		cancel()
		switch c := status.Code(err); c {
		case codes.PermissionDenied, codes.DeadlineExceeded:
			rpcs++
		case codes.Unavailable:
		default:
			t.Fatalf("short-deadline denial %d answered %v, want PermissionDenied, the caller's own DeadlineExceeded, or Unavailable (refused at the connection)", i, err)
		}
	}
	// The queue fills (turns come once a second, callers give up after
	// half of one), and then the connection is refused.
	if rpcs <= pending || rpcs > calls {
		t.Fatalf("%d of %d calls became RPCs with a queue of %d denials", rpcs, calls+1, pending)
	}
	// Entries of calls whose callers gave up are written once their turn
	// comes: poll for them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		adm, mw := rpcEntries(t, env, seq)
		if len(adm) == rpcs && len(mw) == rpcs {
			break
		}
		if len(adm) > rpcs || time.Now().After(deadline) {
			t.Fatalf("%d admission and %d middleware entries for %d denied calls", len(adm), len(mw), rpcs)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, not synchronising
	}
}
