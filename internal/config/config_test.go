package config_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/tools/go/packages"

	"github.com/plexsphere/signer/internal/config"
)

// valid returns the environment of a signer that passes Validate.
func valid(t *testing.T) {
	t.Setenv("SIGNER_SVID_CERT_FILE", "/id/svid.crt")
	t.Setenv("SIGNER_SVID_KEY_FILE", "/id/svid.key")
	t.Setenv("SIGNER_TRUST_BUNDLE_FILE", "/id/bundle.crt")
	t.Setenv("SIGNER_LOCAL_KEK_FILE", "/secrets/kek")
	t.Setenv("SIGNER_CHECKPOINT_LOG", "/anchor/checkpoints.jsonl")
}

func load(t *testing.T, args ...string) (config.Signer, error) {
	var c config.Signer
	if err := config.Load("test", "SIGNER_", &c, args); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// The allow-list merges the variable and every repeated flag.
func TestAllowListMergesEnvAndFlags(t *testing.T) {
	valid(t)
	t.Setenv("SIGNER_ALLOW_SPIFFE_IDS", "spiffe://td/a,spiffe://td/b")
	c, err := load(t, "--allow-spiffe-id", "spiffe://td/c", "--allow-spiffe-id", "spiffe://td/d")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"spiffe://td/a", "spiffe://td/b", "spiffe://td/c", "spiffe://td/d"}; !slices.Equal(c.AllowSPIFFEIDs, want) {
		t.Fatalf("allow-list = %v, want %v", c.AllowSPIFFEIDs, want)
	}
}

// A flag overrides its variable; a repeated flag replaces a built-in
// default list instead of adding to it.
func TestFlagsOverrideEnvAndDefaults(t *testing.T) {
	valid(t)
	t.Setenv("SIGNER_MAX_PAYLOAD_BYTES", "1000")
	c, err := load(t, "--max-payload-bytes", "2000")
	if err != nil || c.MaxPayloadBytes != 2000 {
		t.Fatalf("MaxPayloadBytes = %d, %v", c.MaxPayloadBytes, err)
	}
	var s config.Sidecar
	t.Setenv("SIDECAR_UPSTREAM", "signer:8443")
	if err := config.Load("test", "SIDECAR_", &s, []string{"--listen", "unix:///tmp/a.sock"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Listen, []string{"unix:///tmp/a.sock"}) {
		t.Fatalf("Listen = %v: the default was not replaced", s.Listen)
	}
}

// Every invalid setting is named by its flag and its variable.
func TestValidateNamesTheSetting(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad spiffe id", nil, []string{"--allow-spiffe-id", "not-a-spiffe-id"}, "--allow-spiffe-id / SIGNER_ALLOW_SPIFFE_IDS"},
		{"core may not rotate", map[string]string{"SIGNER_ALLOW_SPIFFE_IDS": "spiffe://td/core"}, []string{"--rotation-allow-spiffe-id", "spiffe://td/core"}, "--rotation-allow-spiffe-id / SIGNER_ROTATION_ALLOW_SPIFFE_IDS"},
		{"unknown store", map[string]string{"SIGNER_STORE": "mysql"}, nil, "--store / SIGNER_STORE"},
		{"postgres without dsn", nil, []string{"--store", "postgres"}, "--postgres-dsn-file / SIGNER_POSTGRES_DSN_FILE"},
		{"payload limit", nil, []string{"--max-payload-bytes", "0"}, "--max-payload-bytes / SIGNER_MAX_PAYLOAD_BYTES"},
		{"payload not a number", map[string]string{"SIGNER_MAX_PAYLOAD_BYTES": "lots"}, nil, "--max-payload-bytes / SIGNER_MAX_PAYLOAD_BYTES"},
		{"listen", nil, []string{"--listen", "8443"}, "--listen / SIGNER_LISTEN"},
		{"bootstrap scope", nil, []string{"--bootstrap-scope", "a:b"}, "--bootstrap-scope / SIGNER_BOOTSTRAP_SCOPES"},
		{"two KEKs", map[string]string{"SIGNER_LOCAL_KEK": "x"}, nil, "--local-kek-file / SIGNER_LOCAL_KEK_FILE"},
		{"pkcs11 without module", nil, []string{"--provider", "pkcs11"}, "--pkcs11-module / SIGNER_PKCS11_MODULE"},
		{"log level", nil, []string{"--log-level", "loud"}, "--log-level / SIGNER_LOG_LEVEL"},
		{"grant for an identity not on the list", nil, []string{"--scope-grant", "spiffe://td/other=payments"}, "--scope-grant / SIGNER_SCOPE_GRANTS"},
		{"grant without scope", map[string]string{"SIGNER_ALLOW_SPIFFE_IDS": "spiffe://td/core"}, []string{"--scope-grant", "spiffe://td/core"}, "--scope-grant / SIGNER_SCOPE_GRANTS"},
		{"auto-rotate window below the floor", nil, []string{"--auto-rotate", "payments:720h:1m:48h"}, "--auto-rotate / SIGNER_AUTO_ROTATE"},
		{"auto-rotate period too short", nil, []string{"--auto-rotate", "payments:10m:1h:48h"}, "--auto-rotate / SIGNER_AUTO_ROTATE"},
		{"misspelt variable", map[string]string{"SIGNER_ALLOW_SPIFE_IDS": "x"}, nil, "unknown setting SIGNER_ALLOW_SPIFE_IDS"},
		{"no anchor outside the store", map[string]string{"SIGNER_CHECKPOINT_LOG": ""}, nil, "--audit-anchor-required / SIGNER_AUDIT_ANCHOR_REQUIRED: the audit log needs an anchor outside the store"},
		{"unanchored bound below two intervals", nil, []string{"--audit-max-unanchored", "15s"}, "--audit-max-unanchored / SIGNER_AUDIT_MAX_UNANCHORED"},
		{"epoch 0", nil, []string{"--audit-epoch", "0"}, "--audit-epoch / SIGNER_AUDIT_EPOCH"},
		{"prune without a connection", map[string]string{"SIGNER_STORE": "postgres", "SIGNER_POSTGRES_DSN": "x"}, []string{"--prune-audit-upto", "64", "--prune-audit-export", "e.jsonl"}, "--postgres-prune-dsn-file / SIGNER_POSTGRES_PRUNE_DSN_FILE: --prune-audit-upto / SIGNER_PRUNE_AUDIT_UPTO needs the prune role's connection string"},
		{"two prune connections", map[string]string{"SIGNER_STORE": "postgres", "SIGNER_POSTGRES_DSN": "x", "SIGNER_POSTGRES_PRUNE_DSN": "y"}, []string{"--postgres-prune-dsn-file", "f"}, "--postgres-prune-dsn-file / SIGNER_POSTGRES_PRUNE_DSN_FILE: set at most one"},
		{"connection timeout too long", nil, []string{"--connection-timeout", "5m"}, "--connection-timeout / SIGNER_CONNECTION_TIMEOUT"},
		{"per-source cap above the pool", nil, []string{"--max-connections", "10", "--max-connections-per-source", "11"}, "--max-connections-per-source / SIGNER_MAX_CONNECTIONS_PER_SOURCE: 11 is more than --max-connections / SIGNER_MAX_CONNECTIONS"},
		{"no pending denials", map[string]string{"SIGNER_MAX_PENDING_DENIALS": "0"}, nil, "--max-pending-denials / SIGNER_MAX_PENDING_DENIALS"},
		{"denial queue too slow to drain", nil, []string{"--denial-rate", "10", "--max-pending-denials", "51"}, "--max-pending-denials / SIGNER_MAX_PENDING_DENIALS: 51 denials take more than 5s to drain at --denial-rate / SIGNER_DENIAL_RATE=10"},
		{"denial wait zero", nil, []string{"--denial-max-wait", "0s"}, "--denial-max-wait / SIGNER_DENIAL_MAX_WAIT"},
		{"denied connection rate zero", nil, []string{"--denied-connection-rate", "0"}, "--denied-connection-rate / SIGNER_DENIED_CONNECTION_RATE: must be at least 1"},
		{"file init without a file", map[string]string{"SIGNER_CHECKPOINT_LOG": "", "SIGNER_WITNESS_POLICY_FILE": "/p"}, []string{"--checkpoint-log-init"}, "--checkpoint-log-init / SIGNER_CHECKPOINT_LOG_INIT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			valid(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := load(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}

// A rotation window shorter than the key-cache TTL is refused, naming both
// settings and both values; a window equal to the TTL is accepted.
func TestRotationWindowBelowKeyCacheTTLRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" accepts
	}{
		{[]string{"--key-cache-ttl", "30s", "--rotation-prepublish", "10s"},
			"--rotation-prepublish / SIGNER_ROTATION_PREPUBLISH: 10s is shorter than --key-cache-ttl / SIGNER_KEY_CACHE_TTL (30s)"},
		{[]string{"--key-cache-ttl", "30s", "--rotation-verify-only", "29s"},
			"--rotation-verify-only / SIGNER_ROTATION_VERIFY_ONLY: 29s is shorter than --key-cache-ttl / SIGNER_KEY_CACHE_TTL (30s)"},
		{[]string{"--key-cache-ttl", "30s", "--rotation-prepublish", "30s", "--rotation-verify-only", "30s"}, ""},
		{[]string{"--key-cache-ttl", "0s", "--rotation-prepublish", "0s", "--rotation-verify-only", "0s"}, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			valid(t)
			_, err := load(t, tc.args...)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestIdentityChoice(t *testing.T) {
	t.Setenv("SIGNER_LOCAL_KEK_FILE", "/secrets/kek")
	if _, err := load(t); err == nil || !strings.Contains(err.Error(), "no identity") {
		t.Fatalf("no identity: %v", err)
	}
	valid(t)
	if _, err := load(t, "--workload-api-addr", "unix:///run/spire/agent.sock"); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("two identities: %v", err)
	}
}

func TestSidecarRefusesNonLoopbackListen(t *testing.T) {
	t.Setenv("SIDECAR_UPSTREAM", "signer:8443")
	t.Setenv("SIDECAR_SIGNER_SPIFFE_ID", "spiffe://td/signer")
	t.Setenv("SIDECAR_WORKLOAD_API_ADDR", "unix:///run/spire/agent.sock")
	for _, addr := range []string{"0.0.0.0:7000", ":7000", "10.0.0.1:7000"} {
		var s config.Sidecar
		if err := config.Load("test", "SIDECAR_", &s, []string{"--listen", addr}); err != nil {
			t.Fatal(err)
		}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "--listen / SIDECAR_LISTEN") {
			t.Errorf("listen %s: %v", addr, err)
		}
	}
	var ok config.Sidecar
	if err := config.Load("test", "SIDECAR_", &ok, []string{"--listen", "localhost:7000", "--listen", "unix:///run/a.sock"}); err != nil {
		t.Fatal(err)
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("localhost: %v", err)
	}
	if as := ok.ListenAddrs(); len(as) != 2 || as[0].String() != "127.0.0.1:7000" || !as[1].IsUnix() {
		t.Fatalf("parsed addresses: %v", as)
	}
	var s config.Sidecar
	if err := config.Load("test", "SIDECAR_", &s, []string{"--listen", "127.0.0.1:7000", "--allow-uid", "1000"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "--allow-uid / SIDECAR_ALLOW_UIDS") {
		t.Errorf("uid list with TCP: %v", err)
	}
}

// internal/config is a leaf: of this module it links only the small leaf
// packages of rules (names, localaddr), never the sidecar, the store or
// anything else that would drag a binary's code into another's.
func TestConfigIsALeaf(t *testing.T) {
	pkgs, err := packages.Load(&packages.Config{Mode: packages.NeedName | packages.NeedImports | packages.NeedDeps}, ".")
	if err != nil || len(pkgs) != 1 {
		t.Fatalf("load: %v", err)
	}
	const module = "github.com/plexsphere/signer/"
	allowed := map[string]bool{module + "internal/names": true, module + "internal/localaddr": true, module + "internal/signvariant": true}
	seen := map[string]bool{}
	var walk func(p *packages.Package)
	walk = func(p *packages.Package) {
		for path, dep := range p.Imports {
			if seen[path] {
				continue
			}
			seen[path] = true
			if strings.HasPrefix(path, module) && !allowed[path] {
				t.Errorf("internal/config links %s", path)
			}
			walk(dep)
		}
	}
	walk(pkgs[0])
	if !seen[module+"internal/localaddr"] {
		t.Fatal("the walk saw no first-party package: the check sees nothing")
	}
}

// The identity settings are declared once and take each binary's prefix:
// the prefixed variables and flags are read, an unprefixed SVID_CERT_FILE
// is never a fallback, the reload default applies, and errors name the
// binary's own spelling.
func TestIdentitySettingsTakeTheBinarysPrefix(t *testing.T) {
	t.Setenv("SVID_CERT_FILE", "/stray/svid.crt")
	t.Setenv("SIDECAR_SVID_CERT_FILE", "/sidecar/svid.crt")
	t.Setenv("SIGNERCTL_SVID_CERT_FILE", "/ctl/svid.crt")
	valid(t)
	c, err := load(t, "--identity-reload", "7s")
	if err != nil {
		t.Fatal(err)
	}
	if c.SVIDCertFile != "/id/svid.crt" || c.IdentityReload.Seconds() != 7 {
		t.Fatalf("signer identity = %+v", c.Identity)
	}
	var s config.Sidecar
	if err := config.Load("test", "SIDECAR_", &s, []string{"--svid-key", "/sidecar/svid.key"}); err != nil {
		t.Fatal(err)
	}
	if s.SVIDCertFile != "/sidecar/svid.crt" || s.SVIDKeyFile != "/sidecar/svid.key" || s.IdentityReload.Seconds() != 5 {
		t.Fatalf("sidecar identity = %+v", s.Identity)
	}
	err = s.Validate()
	if err == nil || !strings.Contains(err.Error(), "--trust-bundle / SIDECAR_TRUST_BUNDLE_FILE: required with the other SVID files") {
		t.Fatalf("Validate = %v, want the sidecar's bundle setting named", err)
	}

	t.Setenv("SIGNER_SVID_CERT_FILE", "")
	t.Setenv("SIGNER_SVID_KEY_FILE", "")
	t.Setenv("SIGNER_TRUST_BUNDLE_FILE", "")
	if _, err := load(t); err == nil || !strings.Contains(err.Error(), "no identity") {
		t.Fatalf("signer without identity (a stray SVID_CERT_FILE set) = %v, want refused", err)
	}
	t.Setenv("SIGNER_IDENTITY_RELOAD", "soon")
	if _, err := load(t); err == nil || !strings.Contains(err.Error(), `--identity-reload / SIGNER_IDENTITY_RELOAD: cannot parse "soon"`) {
		t.Fatalf("bad reload = %v, want the setting named", err)
	}
}

// signerctl's witness policy is read from SIGNERCTL_WITNESS_POLICY_FILE and
// --witness-policy overrides it; both spellings name the setting.
func TestCtlWitnessPolicy(t *testing.T) {
	t.Setenv("SIGNERCTL_WITNESS_POLICY_FILE", "/etc/signer/witnesses.policy")
	var c config.Ctl
	if err := config.Load("signerctl", "SIGNERCTL_", &c, nil); err != nil || c.WitnessPolicyFile != "/etc/signer/witnesses.policy" {
		t.Fatalf("from the variable: %q, %v", c.WitnessPolicyFile, err)
	}
	if err := config.Load("signerctl", "SIGNERCTL_", &c, []string{"--witness-policy", "/tmp/p"}); err != nil || c.WitnessPolicyFile != "/tmp/p" {
		t.Fatalf("from the flag: %q, %v", c.WitnessPolicyFile, err)
	}
	if got := config.Name(&c, "WitnessPolicyFile"); got != "--witness-policy / SIGNERCTL_WITNESS_POLICY_FILE" {
		t.Fatalf("Name = %q", got)
	}
}

// A start-up failure is one JSON record that carries the settings apart;
// durations are logged as strings; a stray word is refused; --version
// wins over a bad environment.
func TestFatalRecordAndLoad(t *testing.T) {
	valid(t)
	var c config.Signer
	if err := config.Load("test", "SIGNER_", &c, []string{"--listen", ":1", "serve"}); err == nil || !strings.Contains(err.Error(), `unexpected argument "serve"`) {
		t.Fatalf("stray argument: %v", err)
	}
	t.Setenv("SIGNER_NO_SUCH", "1")
	if err := config.Load("test", "SIGNER_", &c, []string{"--version"}); !errors.Is(err, config.ErrVersion) {
		t.Fatalf("--version: %v", err)
	}
	err := fmt.Errorf("invalid configuration:\n%w", errors.Join(config.Errorf(&c, "Listen", "bad"), config.Errorf(&c, "LocalKEK", "worse")))
	var b bytes.Buffer
	config.Fatal(&b, "plexsphere-signer", err)
	var rec map[string]any
	if strings.Count(b.String(), "\n") != 1 || json.Unmarshal(b.Bytes(), &rec) != nil {
		t.Fatalf("not one JSON line: %q", b.String())
	}
	if rec["level"] != "ERROR" || rec["msg"] != "plexsphere-signer cannot start" || rec["err"] != err.Error() ||
		rec["setting"] != "--listen / SIGNER_LISTEN; SIGNER_LOCAL_KEK" {
		t.Fatalf("record: %v", rec)
	}
	b.Reset()
	config.Logger(&b, "info").Info("x", "took", 1500*time.Millisecond)
	if !strings.Contains(b.String(), `"took":"1.5s"`) {
		t.Fatalf("duration: %s", b.String())
	}
}
