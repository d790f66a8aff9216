package sidecar_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/sidecar"
)

// A dns:/// upstream is looked up by the sidecar (one connection per
// address); a failed lookup later keeps the replicas it knew.
func TestDNSUpstream(t *testing.T) {
	env := signertest.Start(t)
	host, port, err := net.SplitHostPort(env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var lookups atomic.Int32
	var broken atomic.Bool
	defer sidecar.SetLookupHost(func(_ context.Context, name string) ([]string, error) {
		lookups.Add(1)
		if name != "signer.test" || broken.Load() {
			return nil, errors.New("no such host")
		}
		return []string{host}, nil
	})()
	sc := signertest.StartSidecar(t, "dns:///signer.test:"+port, env.Source(env.Issue(t, signertest.CoreID)))
	c := dialClient(t, sc.Socket)
	if _, err := c.Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign through dns:///signer.test: %v", err)
	}
	if lookups.Load() == 0 {
		t.Fatal("the upstream name was never looked up by the sidecar")
	}
	broken.Store(true)
	if _, err := c.Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatalf("Sign once lookups fail: %v", err)
	}
}

// Upstream values the sidecar cannot use are refused at start, naming why.
func TestBadUpstreamRefused(t *testing.T) {
	ca := signertest.NewCA(t)
	env := &signertest.Env{CA: ca}
	src := env.Source(env.Issue(t, signertest.CoreID))
	for _, up := range []string{"", "unix:///run/signer.sock", "passthrough:///signer:8443", "signer", "dns:///signer", ",", "dns:///:8443"} {
		_, err := sidecar.New(sidecar.Config{Listen: []sidecar.Addr{localaddr.MustParse("127.0.0.1:0")}, Upstream: up,
			SignerID: spiffeid.RequireFromString(signertest.SignerID), SVID: src, Bundle: src})
		if !errors.Is(err, sidecar.ErrUpstream) {
			t.Errorf("upstream %q: %v, want ErrUpstream", up, err)
		}
	}
}
