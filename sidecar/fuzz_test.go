package sidecar_test

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
)

// recorder is an upstream that notes every method that reaches it.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) handle(_ any, ss grpc.ServerStream) error {
	m, _ := grpc.MethodFromServerStream(ss)
	r.mu.Lock()
	r.seen = append(r.seen, m)
	r.mu.Unlock()
	return status.Error(codes.Unimplemented, "recorder")
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.seen
	r.seen = nil
	return s
}

// sidecarBefore starts an upstream that presents the signer's SPIFFE ID
// and answers every method with h, and a sidecar in front of it.
func sidecarBefore(t testing.TB, h grpc.StreamHandler, opts ...signertest.SidecarOption) *signertest.Sidecar {
	t.Helper()
	env := &signertest.Env{CA: signertest.NewCA(t)}
	up := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLS(env.Source(env.Issue(t, signertest.SignerID))))),
		grpc.UnknownServiceHandler(h))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(lis)
	t.Cleanup(up.Stop)
	return signertest.StartSidecar(t, lis.Addr().String(), env.Source(env.Issue(t, signertest.CoreID)), opts...)
}

// Whatever method name a core sends, only SignerService/Sign, PublicKey
// and Prove ever reach the upstream.
func FuzzMethodFilter(f *testing.F) {
	rec := &recorder{}
	// The fuzz engine forbids f.Log inside the target: no test log here.
	sc := sidecarBefore(f, rec.handle, func(c *sidecar.Config) { c.Log = slog.New(slog.DiscardHandler) })
	cc, err := grpc.NewClient(sc.TCP, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	defer cc.Close()
	for _, m := range []string{signerv1.SignerService_Sign_FullMethodName, signerv1.RotationService_Open_FullMethodName,
		"/plexsphere.signer.v1.SignerService/Sign/", "/plexsphere.signer.v1.signerservice/sign", "//plexsphere.signer.v1.SignerService/Sign",
		"/plexsphere.signer.v1.SignerService/Sign%00", "/grpc.health.v1.Health/Check", "Sign", ""} {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, method string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := cc.Invoke(ctx, method, &signerv1.SignRequest{Scope: "s"}, &signerv1.SignResponse{})
		for _, m := range rec.take() {
			if !sidecar.Forwards(m) {
				t.Fatalf("method %q (sent as %q) reached the signer", m, method)
			}
		}
		if !sidecar.Forwards(method) && status.Code(err) == codes.Unimplemented && status.Convert(err).Message() == "recorder" {
			t.Fatalf("%q was forwarded", method)
		}
	})
}
