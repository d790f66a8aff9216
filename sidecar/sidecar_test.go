package sidecar_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
)

const scope = signertest.Scope

func dialClient(t testing.TB, target string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx10s(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The core reaches the signer through the sidecar over both a Unix socket
// and loopback; the signer sees the sidecar's SPIFFE identity.
func TestSignThroughSidecar(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	for _, target := range []string{sc.Socket, sc.TCP} {
		t.Run(strings.SplitN(target, ":", 2)[0], func(t *testing.T) {
			c := dialClient(t, target)
			seq := env.LastSeq(t)
			msg := []byte("through the sidecar")
			sig, err := c.Sign(ctx10s(t), scope, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Verify(ctx10s(t), scope, sig.KeyID, msg, sig.Bytes); err != nil {
				t.Fatal(err)
			}
			if err := c.Verify(ctx10s(t), scope, sig.KeyID, []byte("tampered"), sig.Bytes); !errors.Is(err, client.ErrInvalidSignature) {
				t.Fatalf("tampered message: %v", err)
			}
			var admitted, signed int
			for _, e := range env.AuditAfter(t, seq) {
				if e.Relation == auditlog.RelationConnect && e.Subject == auditlog.SubjectPeer(signertest.CoreID) && e.Reason == auditlog.ReasonGranted {
					admitted++
				}
				if e.Relation == auditlog.RelationSign && e.Reason == auditlog.ReasonGranted && e.Object == "signing-key:payments:"+sig.KeyID {
					signed++
				}
			}
			if admitted < 1 || signed != 1 {
				t.Fatalf("signer audit: %d admissions of the core, %d sign entries", admitted, signed)
			}
		})
	}
}

func TestListenMustBeLocal(t *testing.T) {
	for _, bad := range []string{"0.0.0.0:7000", ":7000", "10.1.2.3:7000", "example.com:7000", "[::]:7000", "unix:relative.sock", "unix://"} {
		if _, err := sidecar.ParseListen(bad); !errors.Is(err, sidecar.ErrNotLocal) {
			t.Errorf("ParseListen(%q) = %v, want ErrNotLocal", bad, err)
		}
	}
	for _, good := range []string{"127.0.0.1:7000", "[::1]:7000", "127.0.0.2:1", "localhost:7000", "unix:///run/x.sock", "unix:/run/x.sock"} {
		if _, err := sidecar.ParseListen(good); err != nil {
			t.Errorf("ParseListen(%q) = %v", good, err)
		}
	}
	// An address not made by ParseListen (the zero Addr) is refused.
	_, err := sidecar.New(sidecar.Config{Listen: []sidecar.Addr{{}}, Upstream: "x:1",
		SignerID: spiffeid.RequireFromString(signertest.SignerID)})
	if !errors.Is(err, sidecar.ErrNotLocal) {
		t.Fatalf("New with an unparsed address: %v", err)
	}
}

// The sidecar listens on localhost:PORT (as 127.0.0.1), the address
// client.Dial accepts too.
func TestListenLocalhost(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) {
		c.Listen = []sidecar.Addr{localaddr.MustParse("localhost:0")}
	})
	host, port, err := net.SplitHostPort(sc.TCP)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("listening on %q (%v), want 127.0.0.1", sc.TCP, err)
	}
	if _, err := dialClient(t, "localhost:"+port).Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign through localhost:%s: %v", port, err)
	}
}

// Anything but Sign, PublicKey and Prove is refused by the sidecar and
// never reaches the signer, whose audit log stays untouched.
func TestOnlySignerServiceForwarded(t *testing.T) {
	env := signertest.Start(t)
	// Even with the operator's identity, the sidecar must not forward.
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.OperatorID)))
	cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	seq := env.LastSeq(t)
	calls := map[string]func() error{
		"RotationService/Open": func() error {
			_, err := signerv1.NewRotationServiceClient(cc).Open(ctx10s(t), &signerv1.OpenRequest{Scope: scope})
			return err
		},
		"RotationService/Retire": func() error {
			_, err := signerv1.NewRotationServiceClient(cc).Retire(ctx10s(t), &signerv1.RetireRequest{Scope: scope, KeyId: "k"})
			return err
		},
		"AuditService/List": func() error {
			_, err := signerv1.NewAuditServiceClient(cc).List(ctx10s(t), &signerv1.ListAuditRequest{})
			return err
		},
		"unknown method": func() error {
			return cc.Invoke(ctx10s(t), "/plexsphere.signer.v1.SignerService/Export", &signerv1.SignRequest{}, &signerv1.SignResponse{})
		},
	}
	for name, call := range calls {
		err := call()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "not forwarded") {
			t.Errorf("%s: %v, want PermissionDenied from the sidecar", name, err)
		}
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("refused calls reached the signer: %+v", got)
	}
}

// A sidecar whose identity is not on the signer's list is denied by the
// signer, audited, and the core sees ErrClientIdentityDenied.
func TestSidecarIdentityNotOnList(t *testing.T) {
	env := signertest.Start(t)
	stranger := "spiffe://example.org/ns/other/sa/stranger"
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, stranger)))
	seq := env.LastSeq(t)
	_, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m"))
	if !errors.Is(err, client.ErrClientIdentityDenied) || status.Convert(err).Message() != "signing: client identity denied" {
		t.Fatalf("Sign = %v, want ErrClientIdentityDenied", err)
	}
	got := env.AuditAfter(t, seq)
	if len(got) != 2 || got[0].Subject != auditlog.SubjectPeer(stranger) || got[0].Reason != auditlog.ReasonInsufficientRelation ||
		got[1].Subject != auditlog.SubjectSigner || got[1].Reason != auditlog.ReasonInsufficientRelation {
		t.Fatalf("signer audit = %+v", got)
	}
}

// The sidecar refuses a signer presenting any other SPIFFE ID: no call
// reaches it and the sidecar never turns SERVING.
func TestUnexpectedSignerIDRefused(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) {
		c.SignerID = spiffeid.RequireFromString("spiffe://example.org/ns/plexsphere/sa/impostor")
	})
	seq := env.LastSeq(t)
	_, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, []byte("m"))
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Sign = %v, want ErrUnavailable", err)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("the signer saw calls: %+v", got)
	}
	if err := sc.Proxy.Ready(context.Background()); err == nil {
		t.Fatal("sidecar ready with an unverified upstream")
	}
}

// healthOf dials target and returns a health client on it.
func healthOf(t *testing.T, target string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// watch opens a health Watch stream and returns its first answer.
func watch(ctx context.Context, h healthpb.HealthClient) (*healthpb.HealthCheckResponse, error) {
	w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{Service: sidecar.HealthService})
	if err != nil {
		return nil, err
	}
	return w.Recv()
}

// On the Unix socket, only uids on the allow-list get through
// (SO_PEERCRED), checked once per connection as it is accepted: a refused
// caller gets PermissionDenied for every call, health Watch streams
// included, and none of its calls reaches the proxy or the signer.
func TestUIDAllowList(t *testing.T) {
	env := signertest.Start(t)
	src := env.Source(env.Issue(t, signertest.CoreID))
	unixOnly := func(uids ...int) signertest.SidecarOption {
		return func(c *sidecar.Config) {
			c.Listen = c.Listen[:1]
			c.AllowUIDs = uids
		}
	}
	denied := signertest.StartSidecar(t, env.Addr, src, unixOnly(os.Getuid()+4242))
	seq := env.LastSeq(t)
	_, err := dialClient(t, denied.Socket).Sign(ctx10s(t), scope, []byte("m"))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "uid") {
		t.Fatalf("Sign, uid not on the list: %v", err)
	}
	h := healthOf(t, denied.Socket)
	for i := range 20 {
		if r, err := watch(ctx10s(t), h); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("health Watch %d, uid not on the list: %v %v", i, r, err)
		}
	}
	if r, err := h.Check(ctx10s(t), &healthpb.HealthCheckRequest{Service: sidecar.HealthService}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("health Check, uid not on the list: %v %v", r, err)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("a refused caller reached the signer: %+v", got)
	}
	// A refused connection is not held: the sidecar closes it even if the
	// caller keeps it open and silent.
	raw, err := net.Dial("unix", strings.TrimPrefix(denied.Socket, "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, raw); err != nil {
		t.Fatalf("a refused, silent connection was kept open: %v", err)
	}

	allowed := signertest.StartSidecar(t, env.Addr, src, unixOnly(os.Getuid()))
	if _, err := dialClient(t, allowed.Socket).Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign, uid on the list: %v", err)
	}
	if _, err := watch(ctx10s(t), healthOf(t, allowed.Socket)); err != nil {
		t.Fatalf("health Watch, uid on the list: %v", err)
	}
	_, err = sidecar.New(sidecar.Config{Listen: []sidecar.Addr{localaddr.MustParse("unix:///tmp/x.sock"), localaddr.MustParse("127.0.0.1:0")},
		AllowUIDs: []int{0}, Upstream: env.Addr, SignerID: spiffeid.RequireFromString(signertest.SignerID), SVID: src, Bundle: src})
	if !errors.Is(err, localaddr.ErrUIDsNeedUnix) {
		t.Fatal("a uid allow-list with a TCP listener was accepted")
	}
}

// Calls in flight per connection and connections are capped: a stream over
// the cap waits for a slot, a connection over the cap is closed, and a
// closed connection gives its slot back.
func TestStreamAndConnectionCaps(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) {
		c.MaxConcurrentStreams, c.MaxConnections = 2, 1
	})
	cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h := healthpb.NewHealthClient(cc)
	ctx1, cancel1 := context.WithCancel(ctx10s(t))
	if _, err := watch(ctx1, h); err != nil {
		t.Fatal(err)
	}
	if _, err := watch(ctx10s(t), h); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if r, err := watch(short, h); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a third stream on a connection capped at two: %v %v", r, err)
	}
	cancel1() // a slot frees
	if _, err := watch(ctx10s(t), h); err != nil {
		t.Fatalf("a stream after one ended: %v", err)
	}

	if _, err := healthOf(t, sc.Socket).Check(ctx10s(t), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a second connection with the cap at one: %v", err)
	}
	cc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := healthOf(t, sc.Socket).Check(ctx10s(t), &healthpb.HealthCheckRequest{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection's slot never came back: %v", err)
		}
	}
}

// Health is NOT_SERVING until the upstream handshake succeeds.
func TestHealthFollowsUpstream(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := signertest.NewCA(t)
	core, err := ca.Issue(signertest.CoreID)
	if err != nil {
		t.Fatal(err)
	}
	// The sidecar starts first, against an address where no signer answers yet.
	probe := &signertest.Env{CA: ca}
	sc := signertest.StartSidecar(t, lis.Addr().String(), probe.Source(core))
	cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	watch, err := healthpb.NewHealthClient(cc).Watch(ctx10s(t), &healthpb.HealthCheckRequest{Service: sidecar.HealthService})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("before the signer is up: %v", first.Status)
	}
	signertest.Start(t, signertest.WithCA(ca), signertest.WithListener(lis))
	for {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("health watch ended before SERVING: %v", err)
		}
		if r.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
	}
}

// hookProvider's keys sign with sign instead (the signer's checkpoint key
// is left alone): a test sees and steers the signer's signing calls.
type hookProvider struct {
	keyprovider.Provider
	sign func(ctx context.Context, k keyprovider.Key, msg []byte) ([]byte, error)
}

func (p hookProvider) Load(ctx context.Context, ref keyprovider.KeyRef, h []byte) (keyprovider.Key, error) {
	k, err := p.Provider.Load(ctx, ref, h)
	if ref.Scope == store.LogKeyScope || err != nil {
		return k, err
	}
	return hookKey{k, p.sign}, nil
}

type hookKey struct {
	keyprovider.Key
	sign func(ctx context.Context, k keyprovider.Key, msg []byte) ([]byte, error)
}

func (k hookKey) SignContext(ctx context.Context, msg []byte) ([]byte, error) {
	return k.sign(ctx, k.Key, msg)
}

// blocking signs only when the call's context ends, tells entered (if
// not nil) when a call arrives and ended how it ended.
func blocking(t testing.TB, entered chan struct{}, ended chan error) hookProvider {
	return hookProvider{signertest.NewLocalProvider(t), func(ctx context.Context, _ keyprovider.Key, _ []byte) ([]byte, error) {
		if entered != nil {
			entered <- struct{}{}
		}
		<-ctx.Done()
		ended <- ctx.Err()
		return nil, ctx.Err()
	}}
}

// gate tells entered when a call arrives (if nobody has been told yet) and
// signs once open is closed.
func gate(t testing.TB, entered, open chan struct{}) hookProvider {
	return hookProvider{signertest.NewLocalProvider(t), func(ctx context.Context, k keyprovider.Key, msg []byte) ([]byte, error) {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return k.SignContext(ctx, msg)
	}}
}

// The core's deadline travels through the sidecar and ends the signer's
// signing call.
func TestDeadlinePropagates(t *testing.T) { deadlineReachesSigner(t) }

// deadlineReachesSigner signs through a sidecar (built with opts) against a
// signer whose key blocks until its context ends, and checks the caller's
// deadline is what ends it. The path is warmed first (connections and
// handshakes), so that the deadline is spent at the signer and not on a
// loaded machine's first handshake.
func deadlineReachesSigner(t *testing.T, opts ...signertest.SidecarOption) {
	t.Helper()
	ended := make(chan error, 1)
	env := signertest.Start(t, signertest.WithProvider(blocking(t, nil, ended)))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), opts...)
	c := dialClient(t, sc.Socket)
	if _, err := c.PublicKeys(ctx10s(t), scope); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Sign(ctx, scope, []byte("m")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign = %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			t.Fatalf("signer's signing call ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the caller's deadline never reached the signer's signing call")
	}
}

// A comma-separated upstream list is balanced round robin.
func TestBalancesOverSigners(t *testing.T) {
	ca := signertest.NewCA(t)
	a := signertest.Start(t, signertest.WithCA(ca))
	b := signertest.Start(t, signertest.WithCA(ca))
	sc := signertest.StartSidecar(t, a.Addr+","+b.Addr, a.Source(a.Issue(t, signertest.CoreID)))
	c := dialClient(t, sc.Socket)
	keys := map[string]int{}
	for range 20 {
		sig, err := c.Sign(ctx10s(t), scope, []byte("m"))
		if err != nil {
			t.Fatal(err)
		}
		keys[sig.KeyID]++
	}
	// Each signer bootstrapped its own key, so two key ids mean two signers.
	if len(keys) != 2 {
		t.Fatalf("signatures came from %d signers: %v", len(keys), keys)
	}
}

// Message sizes are bounded at the sidecar before anything is forwarded.
func TestMessageSizeBounded(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) {
		c.MaxMessageBytes = 4096
	})
	seq := env.LastSeq(t)
	_, err := dialClient(t, sc.Socket).Sign(ctx10s(t), scope, make([]byte, 8192))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized message: %v", err)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("an oversized message reached the signer: %+v", got)
	}
}

// Many concurrent calls through one sidecar all verify.
func TestConcurrentCalls(t *testing.T) {
	env := signertest.Start(t)
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	c := dialClient(t, sc.Socket)
	var failed atomic.Int32
	done := make(chan struct{})
	for g := range 16 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 20 {
				msg := []byte{byte(g), byte(i)}
				sig, err := c.Sign(ctx10s(t), scope, msg)
				if err != nil || c.Verify(ctx10s(t), scope, sig.KeyID, msg, sig.Bytes) != nil {
					failed.Add(1)
				}
				if len(sig.Bytes) != ed25519.SignatureSize {
					failed.Add(1)
				}
			}
		}()
	}
	for range 16 {
		<-done
	}
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of 320 concurrent sign+verify failed", n)
	}
}
