package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// startupConfig is a signer configuration whose store and provider are
// opened from the settings, as in production, in a fresh directory.
func startupConfig(t *testing.T) config.Signer {
	t.Helper()
	dir := t.TempDir()
	ca, err := devpki.NewCA(signertest.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := ca.Issue(signertest.SignerID)
	f, err := ca.WriteFiles(dir, "signer", svid)
	if err != nil {
		t.Fatal(err)
	}
	return signertest.Config(dir, f)
}

func writeKEK(t *testing.T) (string, []byte) {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, []byte(hex.EncodeToString(kek)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, kek
}

var quiet = slog.New(slog.DiscardHandler)

// startAndStop runs New and, if it succeeded, Serve until stopped at once,
// which closes what New opened.
func startAndStop(t *testing.T, cfg config.Signer) error {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := server.New(context.Background(), cfg, server.Options{Log: quiet})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(ctx, lis, nil); err != nil {
		t.Fatal(err)
	}
	return nil
}

// A KEK that does not hold the store's keys stops start-up with a message
// naming the setting; before, the signer started, reported ready and failed
// every Sign with Unavailable, which clients retry forever. The checkpoint
// key catches a wrong KEK on a store the signer made; the signing-key canary
// catches signing keys sealed under another KEK even when the checkpoint
// key is new (a restored or migrated store).
func TestStartupRefusesWrongKEK(t *testing.T) {
	const setting = "--local-kek-file / SIGNER_LOCAL_KEK_FILE"
	t.Run("checkpoint key", func(t *testing.T) {
		cfg := startupConfig(t)
		cfg.BootstrapScopes = []string{"payments"}
		right, _ := writeKEK(t)
		cfg.LocalKEKFile = right
		if err := startAndStop(t, cfg); err != nil {
			t.Fatal(err)
		}
		cfg.LocalKEKFile, _ = writeKEK(t)
		err := startAndStop(t, cfg)
		if err == nil || !strings.Contains(err.Error(), setting) || !strings.Contains(err.Error(), "checkpoint key") {
			t.Fatalf("start-up with another KEK: %v", err)
		}
		cfg.LocalKEKFile = right
		if err := startAndStop(t, cfg); err != nil {
			t.Fatalf("the right KEK no longer starts: %v", err)
		}
	})
	t.Run("signing keys", func(t *testing.T) {
		cfg := startupConfig(t)
		// The store holds a signing key sealed under KEK A, and no
		// checkpoint key yet.
		_, kekA := writeKEK(t)
		st, err := bbolt.Open(cfg.BboltPath)
		if err != nil {
			t.Fatal(err)
		}
		pa, _ := local.New(kekA)
		h, pub, err := pa.Generate(context.Background(), keyprovider.KeyRef{ID: "k1", Scope: "payments"})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC().Truncate(time.Microsecond)
		if err := st.CreateKey(context.Background(), store.Key{ID: "k1", Scope: "payments", State: store.Active, Public: pub,
			Provider: local.Name, Handle: h, CreatedAt: now, ActivatedAt: now}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		cfg.LocalKEKFile, _ = writeKEK(t)
		err = startAndStop(t, cfg)
		if err == nil || !strings.Contains(err.Error(), setting) || !strings.Contains(err.Error(), "signing key k1") {
			t.Fatalf("start-up with a KEK that does not hold the signing keys: %v", err)
		}
	})
}

// A JWKS certificate that does not load stops start-up naming the setting.
func TestStartupRefusesMissingJWKSCertificate(t *testing.T) {
	cfg := startupConfig(t)
	cfg.LocalKEKFile, _ = writeKEK(t)
	cfg.JWKSListen, cfg.JWKSRate = "127.0.0.1:0", 10
	cfg.JWKSCertFile, cfg.JWKSKeyFile = filepath.Join(t.TempDir(), "missing.crt"), filepath.Join(t.TempDir(), "missing.key")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := server.New(context.Background(), cfg, server.Options{Log: slog.New(slog.DiscardHandler)})
	if err == nil {
		t.Fatalf("started with a missing JWKS certificate: %v", s)
	}
	if !strings.Contains(err.Error(), "--jwks-cert / SIGNER_JWKS_CERT_FILE") {
		t.Fatalf("error %q does not name the setting", err)
	}
}
