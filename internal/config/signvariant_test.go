package config_test

import (
	"crypto/fips140"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/signvariant"
)

// SIGNER_SCOPE_SIGN_VARIANTS and --scope-sign-variant merge into scope →
// variants; every malformed entry is refused at start-up naming the
// setting.
func TestScopeSignVariants(t *testing.T) {
	if fips140.Enabled() {
		t.Skip("runs without FIPS mode; TestFIPSRefusesEd25519ctx covers it")
	}
	valid(t)
	t.Setenv("SIGNER_SCOPE_SIGN_VARIANTS", "payments=ed25519ph,payments=ed25519ctx")
	c, err := load(t, "--scope-sign-variant", "docs=ed25519ph")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.SignVariants()
	if err != nil || len(got) != 2 || !got["payments"][signvariant.Ed25519ph] || !got["payments"][signvariant.Ed25519ctx] ||
		!got["docs"][signvariant.Ed25519ph] || got["docs"][signvariant.Ed25519ctx] {
		t.Fatalf("SignVariants() = %v, %v", got, err)
	}
	for _, bad := range []string{"payments", "payments=ed448", "payments=ed25519", "Bad Scope=ed25519ph", "=ed25519ph", "payments=ED25519PH"} {
		t.Run(bad, func(t *testing.T) {
			valid(t)
			t.Setenv("SIGNER_SCOPE_SIGN_VARIANTS", bad)
			_, err := load(t)
			if err == nil || !strings.Contains(err.Error(), "--scope-sign-variant / SIGNER_SCOPE_SIGN_VARIANTS") {
				t.Fatalf("%q: %v, want a refusal naming the setting", bad, err)
			}
		})
	}
}

// In FIPS 140-3 mode a configuration that allows Ed25519ctx for any scope
// does not start (the error names the setting); Ed25519ph still does. The
// mode is switched on at run time in a child process (GODEBUG=fips140=on),
// which runs this test again.
func TestFIPSRefusesEd25519ctx(t *testing.T) {
	if os.Getenv("FIPS_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFIPSRefusesEd25519ctx$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "FIPS_CHILD=1", "GODEBUG=fips140=on")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestFIPSRefusesEd25519ctx") {
			t.Fatalf("FIPS child: %v\n%s", err, out)
		}
		return
	}
	if !fips140.Enabled() {
		t.Fatal("GODEBUG=fips140=on did not enable FIPS mode in the child")
	}
	if err := signvariant.Approved(signvariant.Ed25519ctx); err == nil {
		t.Fatal("Ed25519ctx approved in FIPS mode")
	}
	if err := signvariant.Approved(signvariant.Ed25519ph); err != nil {
		t.Fatalf("Ed25519ph refused in FIPS mode: %v", err)
	}
	valid(t)
	t.Setenv("SIGNER_SCOPE_SIGN_VARIANTS", "payments=ed25519ph,docs=ed25519ctx")
	_, err := load(t)
	if err == nil || !strings.Contains(err.Error(), "--scope-sign-variant / SIGNER_SCOPE_SIGN_VARIANTS") ||
		!strings.Contains(err.Error(), "docs=ed25519ctx") || !strings.Contains(err.Error(), "FIPS") {
		t.Fatalf("ed25519ctx in FIPS mode: %v, want a refusal naming the setting, the entry and FIPS", err)
	}
	valid(t)
	t.Setenv("SIGNER_SCOPE_SIGN_VARIANTS", "payments=ed25519ph")
	if _, err := load(t); err != nil {
		t.Fatalf("ed25519ph in FIPS mode: %v", err)
	}
}
