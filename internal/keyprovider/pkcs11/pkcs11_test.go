//go:build cgo && pkcs11

package pkcs11

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
	"github.com/plexsphere/signer/internal/testing/keyprovidertest"
)

func open(t *testing.T, tok hsmtest.Token) *Provider {
	t.Helper()
	p, err := Open(Config{Module: tok.Module, TokenLabel: tok.Label, PIN: func() (string, error) { return tok.PIN, nil }, Sessions: 4})
	if err != nil {
		t.Fatal(err)
	}
	return p.(*Provider)
}

// The conformance suite every provider passes, on a real SoftHSM2 token.
func TestConformance(t *testing.T) {
	tok := hsmtest.New(t)
	keyprovidertest.Run(t, func(t *testing.T) keyprovider.Provider { return open(t, tok) }, keyprovidertest.Options{VariantsRefused: true})
}

// The private half is generated non-extractable and sensitive: the token
// refuses to return its value.
func TestPrivateKeyCannotBeRead(t *testing.T) {
	tok := hsmtest.New(t)
	p := open(t, tok)
	defer p.Close()
	ctx := context.Background()
	if _, _, err := p.Generate(ctx, keyprovider.KeyRef{ID: "k1", Scope: "s"}); err != nil {
		t.Fatal(err)
	}
	err := p.with(ctx, "read", func(c *conn, s p11.SessionHandle) error {
		o, err := p.object(c, s, "k1")
		if err != nil {
			t.Fatal(err)
		}
		attrs, err := p.module.GetAttributeValue(s, o, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_SENSITIVE, nil), p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil), p11.NewAttribute(p11.CKA_ALWAYS_SENSITIVE, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []byte{1, 0, 1, 1} {
			if len(attrs[i].Value) != 1 || attrs[i].Value[0] != want {
				t.Errorf("attribute %#x = %v, want %d", attrs[i].Type, attrs[i].Value, want)
			}
		}
		_, err = p.module.GetAttributeValue(s, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
		return err
	})
	if err == nil || !errors.Is(err, signerr.ErrProviderUnavailable) {
		t.Fatalf("reading CKA_VALUE: %v", err)
	}
	var pe p11.Error
	if !errors.As(err, &pe) || pe != p11.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("reading CKA_VALUE failed for the wrong reason: %v", err)
	}
}

// A wrong PIN leaves the provider unavailable (not a crash); a corrected PIN
// is picked up on the next attempt without a restart.
func TestWrongPINThenRecovery(t *testing.T) {
	tok := hsmtest.New(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pinFile, []byte("0000"), 0o600)
	pv, err := Open(Config{Module: tok.Module, TokenLabel: tok.Label, Sessions: 2, PIN: func() (string, error) {
		b, err := os.ReadFile(pinFile)
		return string(b), err
	}})
	if err != nil {
		t.Fatal(err)
	}
	p := pv.(*Provider)
	defer p.Close()
	ctx := context.Background()
	if err := p.Health(ctx); !errors.Is(err, signerr.ErrProviderUnavailable) {
		t.Fatalf("health with a wrong PIN: %v", err)
	}
	if _, _, err := p.Generate(ctx, keyprovider.KeyRef{ID: "k", Scope: "s"}); !errors.Is(err, signerr.ErrProviderUnavailable) {
		t.Fatalf("generate with a wrong PIN: %v", err)
	}
	os.WriteFile(pinFile, []byte(tok.PIN), 0o600)
	if err := p.Health(ctx); err != nil {
		t.Fatalf("health after the PIN was fixed: %v", err)
	}
	_, pub, err := p.Generate(ctx, keyprovider.KeyRef{ID: "k", Scope: "s"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Load(ctx, keyprovider.KeyRef{ID: "k", Scope: "s", Public: pub}, []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := k.SignContext(ctx, []byte("m"))
	if err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Fatalf("sign after recovery: %v", err)
	}
}

// An unknown token label is unavailable, clearly.
func TestUnknownToken(t *testing.T) {
	hsmtest.Setup(t)
	p, err := Open(Config{Module: hsmtest.Module, TokenLabel: "no-such-token", PIN: func() (string, error) { return "1", nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Health(context.Background()); !errors.Is(err, signerr.ErrProviderUnavailable) || !strings.Contains(err.Error(), "no token labelled") {
		t.Fatalf("health: %v", err)
	}
}

// A reconnect (the token looked gone) waits for callers still inside a
// PKCS#11 call before it closes their sessions: the caller's session stays
// valid until it gives it back, and only then is the old connection closed.
// Before, the reconnect closed every session at once, under the caller.
func TestReconnectDrainsSessionsInUse(t *testing.T) {
	tok := hsmtest.New(t)
	p := open(t, tok)
	defer p.Close()
	ctx := context.Background()
	if err := p.Health(ctx); err != nil {
		t.Fatal(err)
	}
	draining := make(chan struct{})
	testHookDraining = func() { close(draining) }
	defer func() { testHookDraining = nil }()

	inUse, proceed := make(chan struct{}), make(chan struct{})
	callerErr := make(chan error, 1)
	go func() {
		callerErr <- p.with(ctx, "slow", func(c *conn, s p11.SessionHandle) error {
			close(inUse)
			<-proceed
			// The session this caller holds must still be open.
			_, err := p.module.GetSessionInfo(s)
			return err
		})
	}()
	<-inUse
	p.conn.Load().broken.Store(true)
	reconnected := make(chan error, 1)
	go func() { reconnected <- p.Health(ctx) }()
	select {
	case <-draining:
	case err := <-reconnected:
		t.Fatalf("reconnected (%v) while a session was still in use", err)
	}
	close(proceed)
	if err := <-callerErr; err != nil {
		t.Fatalf("the caller's session was closed under it: %v", err)
	}
	if err := <-reconnected; err != nil {
		t.Fatalf("reconnect after the drain: %v", err)
	}
	// The new connection signs.
	_, pub, err := p.Generate(ctx, keyprovider.KeyRef{ID: "after", Scope: "s"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Load(ctx, keyprovider.KeyRef{ID: "after", Scope: "s", Public: pub}, []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if sig, err := k.SignContext(ctx, []byte("m")); err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Fatalf("sign after reconnect: %v", err)
	}
}
