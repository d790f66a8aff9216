package client_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
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
	"github.com/plexsphere/signer/internal/names"
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
		{withReason(codes.FailedPrecondition, signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED), client.ErrVariantNotAllowed},
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

func start(t *testing.T) env { return startWith(t, nil) }

func startWith(t *testing.T, edit func(*config.Signer)) env {
	clk := signertest.NewClock(time.Now())
	s := signertest.Start(t, signertest.WithClock(clk), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.VerifyOnly = time.Minute, time.Hour
		if edit != nil {
			edit(c)
		}
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
	s, err := e.core.NewSigner(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
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
	if fresh, err := e.core.NewSigner(context.Background(), scope); err != nil || fresh.KeyID() == s.KeyID() {
		t.Fatal("a new Signer did not bind to the new ACTIVE key")
	}
}

// NewSigner resolves the key before it returns: a scope that does not
// resolve is an error with its reason (errors.Is) and, for a malformed one,
// the rule it broke (errors.As), never a nil Public() to be puzzled over.
// Through a real sidecar to a real signer over mTLS.
func TestNewSignerReportsWhyAScopeDoesNotResolve(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	// A scope whose only key is PENDING: published, but nothing signs yet.
	if _, err := e.op.Open(ctx, &signerv1.OpenRequest{Scope: "fresh"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, scope string
		want        error
		reason      string // ErrorInfo reason, "" for none
		field, rule string
	}{
		{"alphabet", "bad:scope", client.ErrInvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", "scope", names.ScopeRule},
		{"length", strings.Repeat("s", names.MaxScopeLen+1), client.ErrInvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", "scope", names.ScopeRule},
		{"empty", "", client.ErrInvalidArgument, "ERROR_REASON_INVALID_ARGUMENT", "scope", names.ScopeRule},
		{"unknown", "nosuchscope", client.ErrKeyNotFound, "ERROR_REASON_KEY_NOT_FOUND", "", ""},
		{"only pending", "fresh", client.ErrKeyNotFound, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := e.core.NewSigner(ctx, tc.scope)
			if s != nil || !errors.Is(err, tc.want) {
				t.Fatalf("NewSigner(%q) = %v, %v; want %v", tc.scope, s, err, tc.want)
			}
			var ce *client.Error
			if tc.reason == "" {
				if errors.As(err, &ce) {
					t.Fatalf("a local refusal carries a wire status: %+v", ce)
				}
				if !strings.Contains(err.Error(), "none is ACTIVE") {
					t.Fatalf("error does not say why: %v", err)
				}
				return
			}
			if !errors.As(err, &ce) || ce.Reason != tc.reason || ce.Field != tc.field || ce.Rule != tc.rule {
				t.Fatalf("errors.As: %+v, want reason %s field %q rule %q", ce, tc.reason, tc.field, tc.rule)
			}
			if tc.scope != "" && strings.Contains(ce.Status.Message(), tc.scope) {
				t.Fatalf("the signer echoed the input: %q", ce.Status.Message())
			}
			if tc.rule != "" && !strings.Contains(ce.Status.Message(), tc.rule) {
				t.Fatalf("message %q does not name the rule", ce.Status.Message())
			}
		})
	}

	// Unreachable: retryable, and said at construction.
	gone, err := client.Dial(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close()
	if _, err := gone.NewSigner(ctx, scope); !errors.Is(err, client.ErrUnavailable) || !client.IsRetryable(err) {
		t.Fatalf("NewSigner without a sidecar: %v", err)
	}

	// A scope that resolves: bound at once, crypto.Signer as before.
	s, err := e.core.NewSigner(ctx, scope)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := s.Public().(ed25519.PublicKey)
	if !ok || s.KeyID() == "" || s.Scope() != scope {
		t.Fatalf("Public() = %T, KeyID %q", s.Public(), s.KeyID())
	}
	sig, err := s.Sign(rand.Reader, []byte("m"), crypto.Hash(0))
	if err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Fatalf("sign: %v", err)
	}

	// The deprecated Signer still works, and still hides the reason.
	if old := e.core.Signer("nosuchscope"); old.Public() != nil || old.KeyID() != "" {
		t.Fatal("the deprecated Signer changed behaviour")
	}
}

// Every caller-facing InvalidArgument names its field and rule, in the
// message and in the ErrorInfo, and never repeats the input: errors.Is
// matches ErrInvalidArgument and errors.As gives the rule.
func TestInvalidArgumentNamesTheRule(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	const secret = "hunter2"
	for _, tc := range []struct {
		name        string
		scope       string
		payload     []byte
		field, rule string
	}{
		{"payload size", scope, bytes.Repeat([]byte(secret), 64<<10/len(secret)+1), "payload", "must be at most 65536 bytes"},
		{"empty payload", scope, nil, "payload", "must not be empty"},
		{"scope alphabet", secret + "/x", []byte("p"), "scope", names.ScopeRule},
		{"scope length", strings.Repeat(secret, 20), []byte("p"), "scope", names.ScopeRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.core.Sign(ctx, tc.scope, tc.payload)
			var ce *client.Error
			if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &ce) {
				t.Fatalf("Sign: %v", err)
			}
			if ce.Field != tc.field || ce.Rule != tc.rule || ce.Reason != "ERROR_REASON_INVALID_ARGUMENT" || status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got field %q rule %q reason %q code %v", ce.Field, ce.Rule, ce.Reason, status.Code(err))
			}
			if msg := ce.Status.Message(); !strings.Contains(msg, tc.field+": "+tc.rule) || strings.Contains(msg, secret) {
				t.Fatalf("message %q: want the rule, never the input", msg)
			}
		})
	}
	// key_id format: the public client pins only ids the signer issued, so
	// ask the signer directly (the same mapping applies).
	core := signerv1.NewSignerServiceClient(e.signer.Dial(t, e.signer.Issue(t, signertest.CoreID)))
	bad := "../" + secret
	_, err := core.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: &bad})
	err = client.FromStatusForTest(err)
	var ce *client.Error
	if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &ce) || ce.Field != "key_id" || ce.Rule != names.KeyIDRule || strings.Contains(err.Error(), secret) {
		t.Fatalf("malformed key id: %v (%+v)", err, ce)
	}
}

// SignWith and ScopeSigner sign as crypto/ed25519's private key does:
// crypto.SHA512 is Ed25519ph over the digest, *ed25519.Options with a
// context Ed25519ctx; each verifies with the standard library in its
// variant only. Another hash or a bad digest length is refused before
// anything is sent; a variant the scope does not allow is
// ErrVariantNotAllowed, naming the variant. Through a real sidecar to a
// real signer over mTLS.
func TestSignVariants(t *testing.T) {
	const other = "docs"
	e := startWith(t, func(c *config.Signer) {
		c.ScopeSignVariants = []string{scope + "=ed25519ph", scope + "=ed25519ctx"}
		c.BootstrapScopes = append(c.BootstrapScopes, other)
	})
	ctx := context.Background()
	s, err := e.core.NewSigner(ctx, scope)
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public().(ed25519.PublicKey)
	msg := []byte("settle invoice 42")
	digest := sha512.Sum512(msg)
	for _, tc := range []struct {
		name    string
		message []byte
		opts    crypto.SignerOpts
		verify  *ed25519.Options
	}{
		{"pure (nil)", msg, nil, &ed25519.Options{}},
		{"pure (Hash 0)", msg, crypto.Hash(0), &ed25519.Options{}},
		{"pure (*ed25519.Options{})", msg, &ed25519.Options{}, &ed25519.Options{}},
		{"ed25519ph (crypto.SHA512)", digest[:], crypto.SHA512, &ed25519.Options{Hash: crypto.SHA512}},
		{"ed25519ph (*ed25519.Options)", digest[:], &ed25519.Options{Hash: crypto.SHA512}, &ed25519.Options{Hash: crypto.SHA512}},
		{"ed25519ph with context", digest[:], &ed25519.Options{Hash: crypto.SHA512, Context: "c"}, &ed25519.Options{Hash: crypto.SHA512, Context: "c"}},
		{"ed25519ctx", msg, &ed25519.Options{Context: "c"}, &ed25519.Options{Context: "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := e.core.SignWith(ctx, scope, tc.message, tc.opts)
			if err != nil || sig.RequestID == "" || sig.KeyID != s.KeyID() {
				t.Fatalf("SignWith: %+v, %v", sig, err)
			}
			viaSigner, err := s.Sign(rand.Reader, tc.message, tc.opts)
			if err != nil {
				t.Fatalf("ScopeSigner.Sign: %v", err)
			}
			for _, b := range [][]byte{sig.Bytes, viaSigner} {
				if err := ed25519.VerifyWithOptions(pub, tc.message, b, tc.verify); err != nil {
					t.Fatalf("does not verify in its variant: %v", err)
				}
				pure := tc.verify.Hash == 0 && tc.verify.Context == ""
				if !pure && (ed25519.Verify(pub, tc.message, b) || ed25519.Verify(pub, msg, b)) {
					t.Fatal("a variant signature verifies as pure Ed25519")
				}
				if pure && ed25519.VerifyWithOptions(pub, digest[:], b, &ed25519.Options{Hash: crypto.SHA512}) == nil {
					t.Fatal("a pure signature verifies as Ed25519ph")
				}
			}
		})
	}

	for _, tc := range []struct {
		name    string
		scope   string
		message []byte
		opts    crypto.SignerOpts
		want    error
		variant string
	}{
		{"SHA-256", scope, make([]byte, 32), crypto.SHA256, client.ErrInvalidArgument, ""},
		{"SHA-256 in *ed25519.Options", scope, make([]byte, 32), &ed25519.Options{Hash: crypto.SHA256}, client.ErrInvalidArgument, ""},
		{"ed25519ph over the message", scope, msg, crypto.SHA512, client.ErrInvalidArgument, ""},
		{"context of 256 bytes", scope, msg, &ed25519.Options{Context: strings.Repeat("c", 256)}, client.ErrInvalidArgument, ""},
		{"ed25519ph not allowed", other, digest[:], crypto.SHA512, client.ErrVariantNotAllowed, "ed25519ph"},
		{"ed25519ctx not allowed", other, msg, &ed25519.Options{Context: "c"}, client.ErrVariantNotAllowed, "ed25519ctx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.core.SignWith(ctx, tc.scope, tc.message, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("SignWith: %v, want %v", err, tc.want)
			}
			var ce *client.Error
			if tc.variant != "" && (!errors.As(err, &ce) || ce.Variant != tc.variant) {
				t.Fatalf("refusal %v does not name the variant %s", err, tc.variant)
			}
			signer, err := e.core.NewSigner(ctx, tc.scope)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := signer.Sign(rand.Reader, tc.message, tc.opts); !errors.Is(err, tc.want) {
				t.Fatalf("ScopeSigner.Sign: %v, want %v", err, tc.want)
			}
		})
	}
}
