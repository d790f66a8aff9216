package client_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

const scope = signertest.Scope

func TestDialRefusesNonLocalTargets(t *testing.T) {
	for _, bad := range []string{"signer.example.com:8443", "10.0.0.5:8443", "dns:///signer:8443", "0.0.0.0:1", ""} {
		if _, err := client.Dial(context.Background(), bad); !errors.Is(err, client.ErrInvalidArgument) {
			t.Errorf("Dial(%q) = %v, want refusal", bad, err)
		}
	}
	for _, good := range []string{"unix:///run/plexsphere/signer.sock", "127.0.0.1:7000", "[::1]:7000", "localhost:7000"} {
		c, err := client.Dial(context.Background(), good)
		if err != nil {
			t.Errorf("Dial(%q) = %v", good, err)
			continue
		}
		c.Close()
	}
}

func TestErrorMapping(t *testing.T) {
	withReason := func(code codes.Code, reason signerv1.ErrorReason) error {
		st, _ := status.New(code, "x").WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: "signer.plexsphere.dev"})
		return st.Err()
	}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{withReason(codes.FailedPrecondition, signerv1.ErrorReason_ERROR_REASON_KEY_RETIRED), client.ErrKeyRetired},
		{withReason(codes.FailedPrecondition, signerv1.ErrorReason_ERROR_REASON_ROTATION_IN_PROGRESS), client.ErrRotationInProgress},
		{withReason(codes.PermissionDenied, signerv1.ErrorReason_ERROR_REASON_SCOPE_MISMATCH), client.ErrScopeMismatch},
		{withReason(codes.PermissionDenied, signerv1.ErrorReason_ERROR_REASON_CLIENT_IDENTITY_DENIED), client.ErrClientIdentityDenied},
		{withReason(codes.Unavailable, signerv1.ErrorReason_ERROR_REASON_PROVIDER_UNAVAILABLE), client.ErrProviderUnavailable},
		{withReason(codes.Unavailable, signerv1.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE), client.ErrUnavailable},
		{withReason(codes.Internal, signerv1.ErrorReason_ERROR_REASON_INVARIANT), client.ErrInvariant},
		{status.Error(codes.Unavailable, "connection refused"), client.ErrUnavailable},
		{status.Error(codes.DeadlineExceeded, "late"), context.DeadlineExceeded},
		{status.Error(codes.Unknown, "?"), client.ErrInternal},
	} {
		got := client.FromStatusForTest(tc.err)
		if !errors.Is(got, tc.want) {
			t.Errorf("%v → %v, want %v", tc.err, got, tc.want)
		}
		if status.Code(got) != status.Code(tc.err) {
			t.Errorf("%v: status code lost: %v", tc.err, status.Code(got))
		}
	}
}

// env is a signer, an operator connection and a core client through a
// sidecar, on a clock the test controls.
type env struct {
	signer *signertest.Env
	op     signerv1.RotationServiceClient
	core   *client.Client
}

func start(t *testing.T) env {
	clk := signertest.NewClock(time.Now())
	s := signertest.Start(t, signertest.WithClock(clk), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.VerifyOnly = time.Minute, time.Hour
	}))
	sc := signertest.StartSidecar(t, s.Addr, s.Source(s.Issue(t, signertest.CoreID)))
	c, err := client.Dial(context.Background(), sc.Socket, client.WithCacheTTL(time.Hour), client.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return env{signer: s, op: signerv1.NewRotationServiceClient(s.Dial(t, s.Issue(t, signertest.OperatorID))), core: c}
}

func (e env) rotate(t *testing.T) {
	ctx := context.Background()
	opened, err := e.op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	e.signer.Clock.Advance(time.Minute)
	if _, err := e.op.Commit(ctx, &signerv1.CommitRequest{Scope: scope, KeyId: opened.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
}

// Signing and verifying without pause while keys rotate twice: not one
// verification fails, though the client's cache TTL is an hour, because an
// unknown key id refreshes the cache.
func TestVerifyAcrossKeyChange(t *testing.T) {
	e := start(t)
	var signs, failures atomic.Int64
	keysSeen := sync.Map{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msg := []byte{byte(g), byte(i), byte(i >> 8)}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				sig, err := e.core.Sign(ctx, scope, msg)
				if err == nil {
					err = e.core.Verify(ctx, scope, sig.KeyID, msg, sig.Bytes)
				}
				cancel()
				signs.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("sign+verify: %v", err)
					return
				}
				keysSeen.Store(sig.KeyID, true)
			}
		}()
	}
	waitSigns := func(n int64) {
		for target := signs.Load() + n; signs.Load() < target && failures.Load() == 0; {
			time.Sleep(time.Millisecond)
		}
	}
	waitSigns(50)
	e.rotate(t)
	waitSigns(50)
	e.rotate(t)
	waitSigns(50)
	close(stop)
	wg.Wait()
	n := 0
	keysSeen.Range(func(any, any) bool { n++; return true })
	if failures.Load() != 0 || n != 3 {
		t.Fatalf("%d failures in %d sign+verify; %d keys signed (want 3)", failures.Load(), signs.Load(), n)
	}
}

// ScopeSigner works unchanged with crypto/x509 and x/crypto/ssh.
func TestCryptoSignerAdapter(t *testing.T) {
	e := start(t)
	s := e.core.Signer(scope)
	pub, ok := s.Public().(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize || s.KeyID() == "" {
		t.Fatalf("Public() = %T, KeyID %q", s.Public(), s.KeyID())
	}

	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "signed by the signer"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, s)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatalf("x509 self-signature: %v", err)
	}

	sshSigner, err := ssh.NewSignerFromSigner(s)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("ssh challenge")
	sig, err := sshSigner.Sign(rand.Reader, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := sshSigner.PublicKey().Verify(data, sig); err != nil {
		t.Fatalf("ssh signature: %v", err)
	}

	if _, err := s.Sign(rand.Reader, data, crypto.SHA256); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("pre-hashed signing: %v", err)
	}

	// After a rotation the pinned key is PREVIOUS: Sign says so, and a new
	// Signer binds to the new key.
	e.rotate(t)
	if _, err := s.Sign(rand.Reader, data, crypto.Hash(0)); !errors.Is(err, client.ErrKeyRetired) {
		t.Fatalf("sign with a demoted pinned key: %v", err)
	}
	if fresh := e.core.Signer(scope); fresh.KeyID() == s.KeyID() {
		t.Fatal("a new Signer did not bind to the new ACTIVE key")
	}
}
