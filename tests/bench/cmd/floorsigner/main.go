// Command floorsigner is the benchmark's framework floor for the signer: a
// bare grpc-go server with mTLS serving the same SignerService whose Sign is
// ed25519.Sign with a key made at start-up. No interceptors, no admission,
// no audit, no store: what any gRPC signer on this machine pays at least.
// It is a test program (tests/bench starts it beside the real signer and
// reports the signer as a ratio to it); it is never shipped.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "floorsigner:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:0", "TCP address to serve on")
	certFile := flag.String("cert", "", "PEM certificate chain the server presents")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	bundleFile := flag.String("bundle", "", "PEM CA bundle client certificates must chain to")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	pem, err := os.ReadFile(*bundleFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificate", *bundleFile)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	})))
	signerv1.RegisterSignerServiceServer(srv, &signer{priv: priv})
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	return srv.Serve(lis)
}

type signer struct {
	signerv1.UnimplementedSignerServiceServer
	priv ed25519.PrivateKey
}

func (s *signer) Sign(_ context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	return &signerv1.SignResponse{Signature: ed25519.Sign(s.priv, req.GetPayload()), KeyId: "floor", Scope: req.GetScope()}, nil
}
