package ops_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/plexsphere/signer/internal/ops"
)

func serve(t *testing.T, hs *health.Server, tm ops.Timeouts) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ops.ServerWith(hs, func(context.Context) error { return nil }, nil, tm)
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return lis.Addr().String()
}

// closedWithin reports whether the server closes conn (after answering
// what was asked) before the guard runs out.
func closedWithin(t *testing.T, conn net.Conn, guard time.Duration) bool {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(guard))
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, err = r.ReadByte()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return errors.Is(err, io.EOF) || err != nil
}

// A client that parks a keep-alive connection, or trickles a request body,
// loses the connection; before, the ops listener had only a header timeout
// and held such connections for ever.
func TestOpsTimeouts(t *testing.T) {
	tm := ops.Timeouts{ReadHeader: time.Second, Read: 300 * time.Millisecond, Write: time.Second, Idle: 300 * time.Millisecond}
	addr := serve(t, health.NewServer(), tm)
	const guard = 5 * time.Second

	t.Run("idle keep-alive", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: ops\r\n\r\n"))
		if !closedWithin(t, conn, guard) {
			t.Fatal("an idle keep-alive connection was held past the idle timeout")
		}
	})
	t.Run("trickled body", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("POST /healthz HTTP/1.1\r\nHost: ops\r\nContent-Length: 1000\r\n\r\nabc"))
		if !closedWithin(t, conn, guard) {
			t.Fatal("a connection trickling its body was held past the read timeout")
		}
	})
	if d := ops.DefaultTimeouts; d.ReadHeader <= 0 || d.Read <= 0 || d.Write <= 0 || d.Idle <= 0 {
		t.Fatalf("default timeouts missing: %+v", d)
	}
}

// A gRPC health Watch is long-lived: it keeps streaming past the read and
// write timeouts that bound ordinary requests.
func TestOpsHealthWatchOutlivesTimeouts(t *testing.T) {
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	tm := ops.Timeouts{ReadHeader: time.Second, Read: 200 * time.Millisecond, Write: 200 * time.Millisecond, Idle: time.Minute}
	addr := serve(t, hs, tm)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first status: %v %v", m, err)
	}
	// Let both timeouts pass with the stream open, then change the status.
	<-time.After(3 * tm.Write)
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("the Watch stream did not outlive the timeouts: %v %v", m, err)
	}
}

// An endpoint started before the binary is ready answers liveness and
// nothing else, over HTTP and gRPC health, on the listener it later
// serves the binary's answers on.
func TestEndpointServesLivenessWhileStarting(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := ops.StartEndpoint(lis)
	defer ep.Close()
	base := "http://" + lis.Addr().String()
	status := func(path string) int {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if a, b, c, d := status("/healthz"), status("/readyz"), status("/metrics"), check(); a != 200 || b != 503 || c != 503 || d != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("starting: healthz %d, readyz %d, metrics %d, health %v", a, b, c, d)
	}
	hs := health.NewServer()
	ops.SetAll(hs, true)
	ep.Serve(hs, func(context.Context) error { return nil }, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "m") }))
	if a, b, c, d := status("/healthz"), status("/readyz"), status("/metrics"), check(); a != 200 || b != 200 || c != 200 || d != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("serving: healthz %d, readyz %d, metrics %d, health %v", a, b, c, d)
	}
}
