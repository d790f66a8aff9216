package ctl_test

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/internal/testing/testenv"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// exported is one block of keys export's PEM output: the comment lines
// before it and the key it holds.
type exported struct {
	comments map[string]string // scope, key-id, state
	key      ed25519.PublicKey
}

// parseExport reads every block as Go's pem.Decode and x509 read them,
// with the "# name: value" lines before each.
func parseExport(t *testing.T, out string) []exported {
	t.Helper()
	var got []exported
	rest := []byte(out)
	for {
		before, _, found := strings.Cut(string(rest), "-----BEGIN")
		block, r := pem.Decode(rest)
		if block == nil {
			if found {
				t.Fatalf("a BEGIN line pem.Decode does not read:\n%s", rest)
			}
			return got
		}
		rest = r
		if block.Type != "PUBLIC KEY" || len(block.Headers) != 0 {
			t.Fatalf("block %q with headers %v, want a plain PUBLIC KEY", block.Type, block.Headers)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			t.Fatalf("x509.ParsePKIXPublicKey: %v", err)
		}
		key, ok := pub.(ed25519.PublicKey)
		if !ok {
			t.Fatalf("a %T, not an Ed25519 key", pub)
		}
		e := exported{comments: map[string]string{}, key: key}
		for _, line := range strings.FieldsFunc(before, func(r rune) bool { return r == '\n' }) {
			name, value, ok := strings.Cut(strings.TrimPrefix(line, "# "), ": ")
			if !ok || !strings.HasPrefix(line, "# ") {
				t.Fatalf("line %q before the block is not a '# name: value' comment", line)
			}
			e.comments[name] = value
		}
		got = append(got, e)
	}
}

// openssl runs the openssl command line (Debian's), the third party that
// reads the exported key. Without it the test fails under CI and skips
// elsewhere.
func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if testenv.CI() {
			t.Fatal("openssl is not installed (scripts/deps.sh installs it)")
		}
		t.Skip("openssl is not installed")
	}
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

// keys export over a real signer: the ACTIVE key by default, as PEM that Go
// and OpenSSL read, equal to the key PublicKey and the JWKS publish; a
// signature the signer made verifies with OpenSSL against it; PENDING and
// PREVIOUS on request; a RETIRED key and an unknown scope are refused.
func TestKeysExport(t *testing.T) {
	h := start(t)
	ctx := context.Background()
	core := signerv1.NewSignerServiceClient(h.env.Dial(t, h.env.Issue(t, signertest.CoreID)))
	dir := t.TempDir()

	code, out, e := h.run(t, "keys", "export", "payments")
	if code != ctl.ExitOK {
		t.Fatalf("keys export: exit %d: %s", code, e)
	}
	blocks := parseExport(t, out)
	if len(blocks) != 1 {
		t.Fatalf("%d blocks, want the ACTIVE key alone:\n%s", len(blocks), out)
	}
	pk, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: "payments"})
	if err != nil || len(pk.Keys) != 1 {
		t.Fatalf("PublicKey: %v %v", pk, err)
	}
	active := pk.Keys[0]
	if b := blocks[0]; !b.key.Equal(ed25519.PublicKey(active.PublicKey)) ||
		b.comments["scope"] != "payments" || b.comments["key-id"] != active.KeyId || b.comments["state"] != "ACTIVE" {
		t.Fatalf("exported %+v, PublicKey says %s %x", b, active.KeyId, active.PublicKey)
	}
	// The same key as the JWKS's x for that kid.
	code, out, _ = h.run(t, "jwks", "payments")
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &set) != nil || len(set.Keys) != 1 || set.Keys[0]["kid"] != active.KeyId ||
		set.Keys[0]["x"] != base64.RawURLEncoding.EncodeToString(blocks[0].key) {
		t.Fatalf("jwks %d %s, exported %x", code, out, blocks[0].key)
	}

	// OpenSSL reads the file (the comments before the block included) and
	// verifies a signature the signer made; a changed payload does not.
	keyFile := filepath.Join(dir, "payments.pem")
	if code, _, e := h.run(t, "keys", "export", "--out", keyFile, "payments"); code != ctl.ExitOK {
		t.Fatalf("--out: exit %d: %s", code, e)
	}
	if o, err := openssl(t, "pkey", "-pubin", "-in", keyFile, "-noout"); err != nil {
		t.Fatalf("openssl pkey -pubin: %v\n%s", err, o)
	}
	payload := []byte("verified by a third party")
	sig, err := core.Sign(ctx, &signerv1.SignRequest{Scope: "payments", Payload: payload})
	if err != nil || sig.KeyId != active.KeyId {
		t.Fatalf("Sign: %v %v", sig, err)
	}
	payloadFile, sigFile, otherFile := filepath.Join(dir, "payload"), filepath.Join(dir, "sig"), filepath.Join(dir, "other")
	for f, b := range map[string][]byte{payloadFile: payload, sigFile: sig.Signature, otherFile: []byte("verified by a third partY")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(in string) (string, error) {
		return openssl(t, "pkeyutl", "-verify", "-pubin", "-inkey", keyFile, "-rawin", "-in", in, "-sigfile", sigFile)
	}
	if o, err := verify(payloadFile); err != nil || !strings.Contains(o, "Signature Verified Successfully") {
		t.Fatalf("openssl pkeyutl -verify: %v\n%s", err, o)
	}
	if o, err := verify(otherFile); err == nil {
		t.Fatalf("openssl verified the signature over another payload:\n%s", o)
	}

	// A rotation: PENDING on request, every published key with --state all.
	code, out, _ = h.run(t, "--output", "json", "rotate", "open", "payments")
	var opened struct {
		Key struct {
			KeyID string `json:"key_id"`
		} `json:"key"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &opened) != nil {
		t.Fatalf("rotate open: %d\n%s", code, out)
	}
	pending := opened.Key.KeyID
	if code, out, _ := h.run(t, "keys", "export", "payments", "--state", "pending"); code != ctl.ExitOK ||
		len(parseExport(t, out)) != 1 || parseExport(t, out)[0].comments["key-id"] != pending || parseExport(t, out)[0].comments["state"] != "PENDING" {
		t.Fatalf("--state pending: %d\n%s", code, out)
	}
	h.env.Clock.Advance(time.Minute)
	if code, _, e := h.run(t, "rotate", "commit", "payments", pending); code != ctl.ExitOK {
		t.Fatalf("commit: %d %s", code, e)
	}
	code, out, _ = h.run(t, "keys", "export", "--state", "all", "payments")
	states := map[string]string{}
	for _, b := range parseExport(t, out) {
		states[b.comments["key-id"]] = b.comments["state"]
	}
	if code != ctl.ExitOK || len(states) != 2 || states[pending] != "ACTIVE" || states[active.KeyId] != "PREVIOUS" {
		t.Fatalf("--state all after commit: %d %v\n%s", code, states, out)
	}
	// Several blocks, comments between them: OpenSSL reads the first.
	allFile := filepath.Join(dir, "all.pem")
	if err := os.WriteFile(allFile, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if o, err := openssl(t, "pkey", "-pubin", "-in", allFile, "-noout"); err != nil {
		t.Fatalf("openssl pkey -pubin on two blocks: %v\n%s", err, o)
	}
	// The PREVIOUS key by id still verifies the signature it made.
	if code, _, e := h.run(t, "keys", "export", "--key-id", active.KeyId, "--out", keyFile, "payments"); code != ctl.ExitOK {
		t.Fatalf("--key-id PREVIOUS: %d %s", code, e)
	}
	if o, err := verify(payloadFile); err != nil {
		t.Fatalf("openssl with the PREVIOUS key: %v\n%s", err, o)
	}

	// Retired: not published, never exported.
	h.env.Clock.Advance(time.Hour)
	if code, _, e := h.run(t, "rotate", "retire", "payments", active.KeyId); code != ctl.ExitOK {
		t.Fatalf("retire: %d %s", code, e)
	}
	code, _, e = h.run(t, "keys", "export", "--key-id", active.KeyId, "payments")
	if code != ctl.ExitRefused || !strings.Contains(e, "RETIRED") || !strings.Contains(e, "not exported") {
		t.Fatalf("a RETIRED key: exit %d: %s", code, e)
	}
	if code, out, _ := h.run(t, "keys", "export", "--state", "all", "payments"); code != ctl.ExitOK || len(parseExport(t, out)) != 1 || strings.Contains(out, active.KeyId) {
		t.Fatalf("--state all after retire: %d\n%s", code, out)
	}

	// JSON: the key as every command prints it, with its PEM.
	code, out, _ = h.run(t, "--output", "json", "keys", "export", "payments")
	var js []struct {
		KeyID     string `json:"key_id"`
		State     string `json:"state"`
		PublicKey []byte `json:"public_key"`
		PEM       string `json:"pem"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &js) != nil || len(js) != 1 || js[0].KeyID != pending || js[0].State != "ACTIVE" ||
		len(parseExport(t, js[0].PEM)) != 1 || !parseExport(t, js[0].PEM)[0].key.Equal(ed25519.PublicKey(js[0].PublicKey)) {
		t.Fatalf("--output json: %d\n%s", code, out)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown scope", []string{"nosuchscope"}, ctl.ExitRefused, `scope "nosuchscope" has no keys`},
		{"unknown key id", []string{"--key-id", "nosuchkey", "payments"}, ctl.ExitRefused, `scope "payments" has no key nosuchkey`},
		{"no key in that state", []string{"--state", "pending", "payments"}, ctl.ExitRefused, `scope "payments" has no PENDING key`},
		{"retired is not a state to export", []string{"--state", "retired", "payments"}, ctl.ExitUsage, "RETIRED keys are not published"},
		{"key id and state", []string{"--key-id", pending, "--state", "active", "payments"}, ctl.ExitUsage, "exclude each other"},
		{"no scope", nil, ctl.ExitUsage, "takes 1 argument"},
		{"bad format", []string{"--format", "der", "payments"}, ctl.ExitUsage, "use pem or json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, e := h.run(t, append([]string{"keys", "export"}, tc.args...)...)
			if code != tc.code || !strings.Contains(e, tc.want) || out != "" {
				t.Fatalf("exit %d (want %d), stdout %q, stderr:\n%s", code, tc.code, out, e)
			}
		})
	}
}
