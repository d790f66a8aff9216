package signertest

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/sidecar"
)

// Sidecar is a running sidecar.
type Sidecar struct {
	Socket string // unix:///... target
	TCP    string // loopback host:port
	Proxy  *sidecar.Proxy
}

// SidecarOption adjusts a sidecar before it starts.
type SidecarOption func(*sidecar.Config)

// StartSidecar runs a sidecar in front of upstream with identity src (for
// example env.Source(env.Issue(t, CoreID))), on a Unix socket and a loopback
// port, until the test ends.
func StartSidecar(t testing.TB, upstream string, src identity.Source, opts ...SidecarOption) *Sidecar {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "signer.sock")
	cfg := sidecar.Config{
		Listen:   []sidecar.Addr{localaddr.MustParse("unix://" + sock), localaddr.MustParse("127.0.0.1:0")},
		Upstream: upstream,
		SignerID: spiffeid.RequireFromString(SignerID),
		SVID:     src,
		Bundle:   src,
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := p.Listen()
	if err != nil {
		t.Fatal(err)
	}
	sc := &Sidecar{Proxy: p}
	for _, l := range ls {
		if l.Addr().Network() == "unix" {
			sc.Socket = "unix://" + l.Addr().String()
		} else {
			sc.TCP = l.Addr().(*net.TCPAddr).String()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ls, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sidecar: %v", err)
		}
	})
	return sc
}
