package integration

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/testing/devpki"
)

// buildBinary builds a command of this module into a temp dir.
func buildBinary(t *testing.T, pkg string, tags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// The real binaries refuse to start on an invalid configuration, exit
// non-zero and name the setting to fix.
func TestStartupRefusals(t *testing.T) {
	signer := buildBinary(t, "./cmd/plexsphere-signer")
	sidecar := buildBinary(t, "./cmd/plexsphere-sidecar")
	dir := t.TempDir()
	ca, err := devpki.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := ca.Issue("spiffe://example.org/ns/plexsphere/sa/plexsphere-signer")
	f, err := ca.WriteFiles(dir, "signer", svid)
	if err != nil {
		t.Fatal(err)
	}
	id := []string{"--svid-cert", f.Cert, "--svid-key", f.Key, "--trust-bundle", f.Bundle}
	// The signer's own settings the cases share: an anchor outside the
	// store, which production requires.
	sid := append([]string{"--checkpoint-log", filepath.Join(dir, "checkpoints.jsonl")}, id...)
	for _, tc := range []struct {
		name string
		bin  string
		args []string
		want string
	}{
		{"pkcs11 asked of a build without it", signer, append([]string{"--provider", "pkcs11", "--pkcs11-module", "/usr/lib/softhsm/libsofthsm2.so",
			"--pkcs11-token-label", "t", "--pkcs11-pin-file", f.Key, "--listen", "127.0.0.1:0", "--ops-listen", ""}, sid...),
			"--provider / SIGNER_PROVIDER: this build has no pkcs11 provider"},
		{"no KEK", signer, sid, "--local-kek-file / SIGNER_LOCAL_KEK_FILE"},
		{"bad allow-list entry", signer, append([]string{"--allow-spiffe-id", "core", "--local-kek-file", f.Key}, sid...), "--allow-spiffe-id / SIGNER_ALLOW_SPIFFE_IDS"},
		{"no anchor outside the store", signer, append([]string{"--local-kek-file", f.Key}, id...), "--audit-anchor-required / SIGNER_AUDIT_ANCHOR_REQUIRED: the audit log needs an anchor outside the store"},
		{"unreadable identity", signer, []string{"--svid-cert", "/nonexistent", "--svid-key", f.Key, "--trust-bundle", f.Bundle,
			"--local-kek-file", f.Key, "--listen", "127.0.0.1:0", "--ops-listen", "", "--checkpoint-log", filepath.Join(dir, "checkpoints.jsonl")}, "--svid-cert / SIGNER_SVID_CERT_FILE, --svid-key / SIGNER_SVID_KEY_FILE, --trust-bundle / SIGNER_TRUST_BUNDLE_FILE: identity: open /nonexistent: no such file or directory"},
		{"sidecar on a non-loopback address", sidecar, append([]string{"--listen", "0.0.0.0:7000", "--upstream", "signer:8443",
			"--signer-spiffe-id", "spiffe://example.org/x"}, id...), "--listen / SIDECAR_LISTEN"},
		{"sidecar without the signer's identity", sidecar, append([]string{"--listen", "127.0.0.1:7000", "--upstream", "signer:8443"}, id...),
			"--signer-spiffe-id / SIDECAR_SIGNER_SPIFFE_ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(tc.bin, tc.args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if err == nil || !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output does not name %q:\n%s", tc.want, out)
			}
		})
	}
}
