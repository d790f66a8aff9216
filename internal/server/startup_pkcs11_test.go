//go:build cgo && pkcs11

package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
)

// A missing token, a wrong PIN or a module that does not load stop
// start-up, naming the setting; before, the provider logged "will retry",
// the signer started and every Sign failed Unavailable.
func TestStartupRefusesUnusableToken(t *testing.T) {
	tok := hsmtest.New(t)
	pinFile := func(pin string) string {
		p := filepath.Join(t.TempDir(), "pin")
		if err := os.WriteFile(p, []byte(pin), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := func() config.Signer {
		cfg := startupConfig(t)
		cfg.Provider, cfg.PKCS11Module, cfg.PKCS11TokenLabel, cfg.PKCS11PINFile = "pkcs11", tok.Module, tok.Label, pinFile(tok.PIN)
		cfg.BootstrapScopes = []string{"payments"}
		return cfg
	}
	if err := startAndStop(t, base()); err != nil {
		t.Fatalf("a usable token: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		edit       func(*config.Signer)
	}{
		{"missing token", "--pkcs11-token-label / SIGNER_PKCS11_TOKEN_LABEL", func(c *config.Signer) { c.PKCS11TokenLabel = "no-such-token" }},
		{"wrong PIN", "--pkcs11-pin-file / SIGNER_PKCS11_PIN_FILE", func(c *config.Signer) { c.PKCS11PINFile = pinFile("0000") }},
		{"module not loadable", "--pkcs11-module / SIGNER_PKCS11_MODULE", func(c *config.Signer) { c.PKCS11Module = filepath.Join(t.TempDir(), "nosuch.so") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.edit(&cfg)
			err := startAndStop(t, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start-up: %v, want an error naming %s", err, tc.want)
			}
			if strings.Contains(err.Error(), tok.PIN) {
				t.Fatalf("the error shows the PIN: %v", err)
			}
		})
	}
}
