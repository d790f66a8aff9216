package sidecar_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/sidecar"
)

// rotatingSource serves one SVID and a trust bundle the test swaps, as a
// Workload API source does when the trust domain's CAs change.
type rotatingSource struct {
	svid   *x509svid.SVID
	bundle atomic.Pointer[x509bundle.Bundle]
}

func newRotatingSource(t *testing.T, ca *devpki.CA, id string) *rotatingSource {
	s, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	src := &rotatingSource{svid: &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{s.Cert}, PrivateKey: s.Key}}
	src.trust(ca)
	return src
}

// trust replaces the bundle: from now on only ca's certificates verify.
func (s *rotatingSource) trust(ca *devpki.CA) {
	s.bundle.Store(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(signertest.TrustDomain), []*x509.Certificate{ca.Cert}))
}

func (s *rotatingSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s *rotatingSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.Load().GetX509BundleForTrustDomain(td)
}
func (s *rotatingSource) Close() error { return nil }

// ticketServer is a TLS 1.3 server presenting svid that issues session
// tickets (crypto/tls's default) and sends one byte after each handshake,
// so the client reads the ticket.
func ticketServer(t *testing.T, svid *devpki.SVID) string {
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{svid.Cert.Raw}, PrivateKey: svid.Key, Leaf: svid.Cert}},
		ClientAuth:   tls.RequestClientCert,
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte{1}); err != nil {
					return
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return lis.Addr().String()
}

// handshake connects with cfg and reports whether the session was resumed.
func handshake(addr string, cfg *tls.Config) (resumed bool, err error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

// A CA removed from the sidecar's bundle loses the signer's access at once,
// resumed sessions included: the sidecar's upstream configuration verifies
// the signer in VerifyConnection, which crypto/tls runs on resumption too.
// The sidecar sets no session cache; this test adds one (a resumption
// attempt) and shows that a resumed session is still verified. With
// go-spiffe's own client configuration (VerifyPeerCertificate) the third
// handshake below resumes and is accepted.
func TestUpstreamTLSVerifiesResumedSessions(t *testing.T) {
	oldCA, newCA := signertest.NewCA(t), signertest.NewCA(t)
	signer, err := oldCA.Issue(signertest.SignerID)
	if err != nil {
		t.Fatal(err)
	}
	addr := ticketServer(t, signer)
	src := newRotatingSource(t, oldCA, signertest.CoreID)
	id := spiffeid.RequireFromString(signertest.SignerID)

	if c := sidecar.UpstreamTLS(src, src, id); c.ClientSessionCache != nil {
		t.Fatal("the sidecar's upstream configuration resumes sessions")
	}
	cfg := sidecar.UpstreamTLS(src, src, id)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if resumed, err := handshake(addr, cfg); err != nil || resumed {
		t.Fatalf("first handshake: resumed=%v err=%v", resumed, err)
	}
	if resumed, err := handshake(addr, cfg); err != nil || !resumed {
		t.Fatalf("second handshake: resumed=%v err=%v (the test needs a resumable session)", resumed, err)
	}

	src.trust(newCA) // the signer's CA is distrusted
	if resumed, err := handshake(addr, cfg); err == nil {
		t.Fatalf("resumption with a distrusted CA accepted (resumed=%v)", resumed)
	}
	if _, err := handshake(addr, sidecar.UpstreamTLS(src, src, id)); err == nil {
		t.Fatal("full handshake with a distrusted CA accepted")
	}
	// The wrong SPIFFE ID is refused on resumption too.
	src.trust(oldCA)
	other := sidecar.UpstreamTLS(src, src, spiffeid.RequireFromString("spiffe://"+signertest.TrustDomain+"/ns/x/sa/other"))
	other.ClientSessionCache = cfg.ClientSessionCache
	if _, err := handshake(addr, other); err == nil {
		t.Fatal("resumption with another signer ID accepted")
	}
}

// Through a real sidecar and signer: once the sidecar's bundle no longer
// holds the signer's CA, the next upstream connection is refused, the
// sidecar turns NOT_SERVING and no call reaches the signer.
func TestUpstreamDistrustedCARefused(t *testing.T) {
	oldCA, newCA := signertest.NewCA(t), signertest.NewCA(t)
	// The signer closes connections after a second, so the sidecar must
	// reconnect (and handshake) again.
	env := signertest.Start(t, signertest.WithCA(oldCA), signertest.WithConfig(func(c *config.Signer) { c.MaxConnectionAge = time.Second }))
	src := newRotatingSource(t, oldCA, signertest.CoreID)
	sc := signertest.StartSidecar(t, env.Addr, src)
	c := dialClient(t, sc.Socket)
	if _, err := c.Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(sc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	watch, err := healthpb.NewHealthClient(cc).Watch(ctx10s(t), &healthpb.HealthCheckRequest{Service: sidecar.HealthService})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("before the rotation: %v", err)
		}
		if r.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
	}

	src.trust(newCA)
	seq := env.LastSeq(t)
	for {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("the sidecar kept serving a signer from a distrusted CA: %v", err)
		}
		if r.Status == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
	}
	if err := sc.Proxy.Ready(context.Background()); err == nil {
		t.Fatal("sidecar ready with a distrusted upstream")
	}
	if _, err := c.Sign(ctx10s(t), scope, []byte("m")); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Sign after the rotation = %v, want ErrUnavailable", err)
	}
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("the signer saw calls after the rotation: %+v", got)
	}
}
