package sidecar_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/localaddr"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/sidecar"
)

// freePort reserves a loopback port and frees it for the code under test.
func freePort(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
}

// Run is the whole sidecar: the proxy, its metrics and health on the ops
// listener, a clean stop when its context ends.
func TestRun(t *testing.T) {
	env := signertest.Start(t)
	src := env.Source(env.Issue(t, signertest.CoreID))
	sock := filepath.Join(t.TempDir(), "s.sock")
	ops := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sidecar.Run(ctx, sidecar.Config{Listen: []sidecar.Addr{localaddr.MustParse("unix://" + sock)}, Upstream: env.Addr,
			SignerID: spiffeid.RequireFromString(signertest.SignerID), SVID: src, Bundle: src, OpsListen: ops, Log: slog.New(slog.DiscardHandler)})
	}()
	// Ready once the listeners are open and the upstream is connected.
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 10s: %v", err)
		}
	}
	c := dialClient(t, "unix://"+sock)
	if _, err := c.Sign(ctx10s(t), scope, []byte("m")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `plexsphere_sidecar_calls_total{code="OK",method="/plexsphere.signer.v1.SignerService/Sign"} 1`
	if !strings.Contains(string(b), want) {
		t.Fatalf("/metrics lacks %s:\n%s", want, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// A listener that cannot open names itself.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = sidecar.Run(context.Background(), sidecar.Config{Listen: []sidecar.Addr{localaddr.MustParse(taken.Addr().String())}, Upstream: env.Addr,
		SignerID: spiffeid.RequireFromString(signertest.SignerID), SVID: src, Bundle: src, Log: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, sidecar.ErrListen) {
		t.Fatalf("Run on a taken port: %v", err)
	}
}
