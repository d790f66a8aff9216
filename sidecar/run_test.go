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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/testing/testenv"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"

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
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := signerv1.NewRotationServiceClient(cc).Open(ctx10s(t), &signerv1.OpenRequest{Scope: scope}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("RotationService/Open through the sidecar: %v", err)
	}
	// A connection that does not speak HTTP/2 is closed and counted.
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, raw); err != nil {
		t.Fatalf("an HTTP/1 connection was kept: %v", err)
	}
	raw.Close()
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`plexsphere_sidecar_calls_total{code="OK",method="/plexsphere.signer.v1.SignerService/Sign"} 1`,
		`plexsphere_sidecar_calls_total{code="PermissionDenied",method="other"} 1`,
		`plexsphere_sidecar_connections_refused_total{reason="preface"} 1`,
		`plexsphere_sidecar_connections_refused_total{reason="uid"} 0`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, b)
		}
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
