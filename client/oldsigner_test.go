package client_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/plexsphere/signer/client"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// oldSigner is a SignerService from before sign variants: it skips fields 4
// and 5 of a SignRequest as unknown and signs pure Ed25519 over whatever
// payload it is given, answering no variant.
type oldSigner struct {
	signerv1.UnimplementedSignerServiceServer
	priv  ed25519.PrivateKey
	signs atomic.Int32
}

func (s *oldSigner) Sign(_ context.Context, r *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	s.signs.Add(1)
	return &signerv1.SignResponse{Signature: ed25519.Sign(s.priv, r.GetPayload()), KeyId: "k1", Scope: r.GetScope(), RequestId: "00"}, nil
}

func (s *oldSigner) PublicKey(_ context.Context, r *signerv1.PublicKeyRequest) (*signerv1.PublicKeyResponse, error) {
	return &signerv1.PublicKeyResponse{Scope: r.GetScope(), Keys: []*signerv1.Key{{KeyId: "k1", Scope: r.GetScope(),
		PublicKey: s.priv.Public().(ed25519.PublicKey), State: signerv1.KeyState_KEY_STATE_ACTIVE}}}, nil
}

// A signer (or sidecar path) that predates sign variants would answer an
// Ed25519ph or Ed25519ctx request with a pure signature over the digest or
// message. The client compares the variant echoed with the one asked for
// and never returns such a signature as the one asked for; pure signs go
// on working against it.
func TestSignVariantAgainstAnOldSigner(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	old := &oldSigner{priv: priv}
	dir, err := os.MkdirTemp("", "old")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	signerv1.RegisterSignerServiceServer(srv, old)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c, err := client.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	if sig, err := c.SignWith(ctx, "payments", []byte("m"), nil); err != nil || !ed25519.Verify(priv.Public().(ed25519.PublicKey), []byte("m"), sig.Bytes) {
		t.Fatalf("pure against an old signer: %v", err)
	}
	digest := sha512.Sum512([]byte("m"))
	s, err := c.NewSigner(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		message []byte
		opts    crypto.SignerOpts
	}{
		{"ed25519ph", digest[:], crypto.SHA512},
		{"ed25519ph with context", digest[:], &ed25519.Options{Hash: crypto.SHA512, Context: "c"}},
		{"ed25519ctx", []byte("m"), &ed25519.Options{Context: "c"}},
	} {
		before := old.signs.Load()
		sig, err := c.SignWith(ctx, "payments", tc.message, tc.opts)
		if !errors.Is(err, client.ErrVariantNotAllowed) || sig.Bytes != nil {
			t.Errorf("%s: SignWith against an old signer = %x, %v; want ErrVariantNotAllowed and no signature", tc.name, sig.Bytes, err)
		}
		b, err := s.Sign(rand.Reader, tc.message, tc.opts)
		if !errors.Is(err, client.ErrVariantNotAllowed) || b != nil {
			t.Errorf("%s: ScopeSigner.Sign against an old signer = %x, %v; want ErrVariantNotAllowed and no signature", tc.name, b, err)
		}
		if old.signs.Load() != before+2 {
			t.Fatalf("%s: the requests did not reach the old signer", tc.name)
		}
	}
}
