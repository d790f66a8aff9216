package main_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/proctest"
	"github.com/plexsphere/signer/internal/version"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

const (
	signerID = "spiffe://example.org/ns/plexsphere/sa/plexsphere-signer"
	coreID   = "spiffe://example.org/ns/core/sa/core"
)

var bin string

func TestMain(m *testing.M) { proctest.Main(m, "./cmd/plexsphere-signer", &bin) }

func binary(*testing.T) string { return bin }

// setup is a signer that starts: SVID files, a KEK (0600), a checkpoint
// file and a bbolt path in a fresh directory.
type setup struct {
	dir   string
	ca    *devpki.CA
	files devpki.Files
	kek   string
	db    string
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	s := &setup{dir: t.TempDir()}
	var err error
	if s.ca, err = devpki.NewCA("example.org"); err != nil {
		t.Fatal(err)
	}
	svid, _ := s.ca.Issue(signerID)
	if s.files, err = s.ca.WriteFiles(s.dir, "signer", svid); err != nil {
		t.Fatal(err)
	}
	s.kek = filepath.Join(s.dir, "kek")
	os.WriteFile(s.kek, []byte(hex.EncodeToString(make([]byte, 32))), 0o600)
	s.db = filepath.Join(s.dir, "signer.db")
	return s
}

// args are the flags of a signer that starts; extra come last (a later
// flag wins).
func (s *setup) args(extra ...string) []string {
	return append([]string{"--svid-cert", s.files.Cert, "--svid-key", s.files.Key, "--trust-bundle", s.files.Bundle,
		"--local-kek-file", s.kek, "--checkpoint-log", filepath.Join(s.dir, "checkpoints.jsonl"), "--bbolt-path", s.db,
		"--listen", "127.0.0.1:0", "--ops-listen", "", "--allow-spiffe-id", coreID, "--bootstrap-scope", "payments"}, extra...)
}

func (s *setup) storeCreated() bool {
	_, err := os.Stat(s.db)
	return err == nil
}

// fatal runs the signer to its end and returns its one fatal record.
func fatal(t *testing.T, env []string, args ...string) proctest.Line {
	t.Helper()
	p := proctest.Start(t, binary(t), env, args...)
	if code := p.Wait(time.Minute); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	var errs []proctest.Line
	for _, l := range p.Lines() {
		if l.Fields == nil {
			t.Fatalf("a stderr line that is not JSON: %q", l.Raw)
		}
		if l.Str("level") == "ERROR" {
			errs = append(errs, l)
		}
	}
	if len(errs) != 1 || errs[0].Str("msg") != "plexsphere-signer cannot start" {
		t.Fatalf("want one ERROR record \"plexsphere-signer cannot start\", got %d:\n%s", len(errs), p.Stderr())
	}
	return errs[0]
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "-version"} {
		code, out, errOut := proctest.Run(t, binary(t), []string{"SIGNER_NO_SUCH_SETTING=1"}, arg)
		if code != 0 || !strings.HasPrefix(out, "plexsphere-signer ") || !strings.Contains(out, "(commit ") || !strings.Contains(out, "go1.") {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q", arg, code, out, errOut)
		}
	}
}

// Start-up mistakes end in one JSON record naming the setting, and those
// that can be found before the store is opened are: no store file is
// created.
func TestStartupErrorsNameTheSetting(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name    string
		env     func(s *setup) []string
		args    func(s *setup) []string
		setting string
		want    string
		store   bool // the store may exist after the failure
		once    bool // the error names the setting once
	}{
		{name: "stray argument", args: func(s *setup) []string { return s.args("serve") }, want: `unexpected argument "serve"`},
		{name: "unknown flag", args: func(s *setup) []string { return s.args("--no-such-flag") }, want: "flag provided but not defined: -no-such-flag (see -h"},
		{name: "no KEK", args: func(s *setup) []string { return s.args("--local-kek-file", "") }, setting: "--local-kek-file / SIGNER_LOCAL_KEK_FILE"},
		{name: "listen port in use", args: func(s *setup) []string { return s.args("--listen", busy.Addr().String()) },
			setting: "--listen / SIGNER_LISTEN", want: "address already in use"},
		{name: "ops port in use", args: func(s *setup) []string { return s.args("--ops-listen", busy.Addr().String()) },
			setting: "--ops-listen / SIGNER_OPS_LISTEN", want: "address already in use"},
		{name: "JWKS certificate missing", args: func(s *setup) []string {
			return s.args("--jwks-listen", "127.0.0.1:0", "--jwks-cert", filepath.Join(s.dir, "nope.crt"), "--jwks-key", filepath.Join(s.dir, "nope.key"))
		}, setting: "--jwks-cert / SIGNER_JWKS_CERT_FILE", want: "no such file"},
		{name: "SVID as the JWKS certificate", args: func(s *setup) []string {
			return s.args("--jwks-listen", "127.0.0.1:0", "--jwks-cert", s.files.Cert, "--jwks-key", s.files.Key)
		}, setting: "--jwks-cert / SIGNER_JWKS_CERT_FILE", want: "is an X.509-SVID"},
		{name: "checkpoint file not writable", args: func(s *setup) []string {
			return s.args("--checkpoint-log", filepath.Join(s.kek, "checkpoints.jsonl"))
		}, setting: "--checkpoint-log / SIGNER_CHECKPOINT_LOG", want: "not a directory"},
		{name: "world-readable KEK", args: func(s *setup) []string {
			os.Chmod(s.kek, 0o644)
			return s.args()
		}, setting: "--local-kek-file / SIGNER_LOCAL_KEK_FILE", want: "readable by every user (mode 0644): chmod 0400"},
		{name: "bad KEK given inline", env: func(*setup) []string { return []string{"SIGNER_LOCAL_KEK=tooshort"} },
			args: func(s *setup) []string { return s.args("--local-kek-file", "") }, setting: "SIGNER_LOCAL_KEK", once: true},
		{name: "allow-listed ID from a trust domain the bundle lacks", args: func(s *setup) []string {
			return s.args("--allow-spiffe-id", "spiffe://other.org/core")
		}, setting: "--allow-spiffe-id / SIGNER_ALLOW_SPIFFE_IDS", want: `trust domain "other.org"`},
		{name: "SVID file missing", args: func(s *setup) []string { return s.args("--svid-cert", filepath.Join(s.dir, "nope.crt")) },
			setting: "--svid-cert / SIGNER_SVID_CERT_FILE, --svid-key / SIGNER_SVID_KEY_FILE, --trust-bundle / SIGNER_TRUST_BUNDLE_FILE",
			want:    "nope.crt: no such file or directory", once: true},
		{name: "bbolt path in a missing directory", args: func(s *setup) []string {
			s.db = filepath.Join(s.dir, "missing", "signer.db")
			return s.args()
		}, setting: "--bbolt-path / SIGNER_BBOLT_PATH", want: "no such file or directory", once: true},
		{name: "malformed Postgres DSN", env: func(*setup) []string {
			return []string{"SIGNER_POSTGRES_DSN=postgres://signer:s3cretpw@[::1:5432/signer"}
		}, args: func(s *setup) []string { return s.args("--store", "postgres") }, setting: "SIGNER_POSTGRES_DSN"},
		{name: "unreachable Postgres", env: func(*setup) []string {
			return []string{"SIGNER_POSTGRES_DSN=postgres://signer:s3cretpw@127.0.0.1:1/signer?connect_timeout=2"}
		}, args: func(s *setup) []string { return s.args("--store", "postgres") }, setting: "SIGNER_POSTGRES_DSN", want: "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t)
			var env []string
			if tc.env != nil {
				env = tc.env(s)
			}
			rec := fatal(t, env, tc.args(s)...)
			msg := rec.Str("err")
			if tc.setting != "" {
				if rec.Str("setting") != tc.setting {
					t.Errorf("setting = %q, want %q (err %q)", rec.Str("setting"), tc.setting, msg)
				}
				if n := strings.Count(msg, tc.setting); tc.once && n != 1 {
					t.Errorf("the error names %q %d times: %q", tc.setting, n, msg)
				}
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("err %q does not say %q", msg, tc.want)
			}
			if strings.Contains(rec.Raw, "s3cretpw") {
				t.Errorf("the password is in the record: %s", rec.Raw)
			}
			if strings.Count(msg, s.db) > 1 {
				t.Errorf("the store path is repeated: %q", msg)
			}
			if s.storeCreated() && !tc.store {
				t.Errorf("the store %s was created before the mistake was found", s.db)
			}
		})
	}
}

// With a Workload API that issues no SVID, the signer says so every few
// seconds with the fix, answers liveness (not readiness) on the ops port,
// and a SIGTERM ends it cleanly.
func TestWaitsForSVIDAndStopsCleanly(t *testing.T) {
	s := newSetup(t)
	agent := proctest.NoSVIDAgent(t)
	opsAddr := proctest.FreeAddr(t)
	p := proctest.Start(t, binary(t), nil, "--workload-api-addr", agent, "--local-kek-file", s.kek,
		"--checkpoint-log", filepath.Join(s.dir, "checkpoints.jsonl"), "--bbolt-path", s.db,
		"--listen", "127.0.0.1:0", "--ops-listen", opsAddr)
	if _, ok := p.WaitLine(30*time.Second, proctest.Msg("starting")); !ok {
		t.Fatal("no start-up line")
	}
	w, ok := p.WaitLine(30*time.Second, proctest.Msg("no SVID from the SPIFFE Workload API yet"))
	if !ok {
		t.Fatal("no waiting line")
	}
	if w.Str("level") != "WARN" || w.Str("setting") != "--workload-api-addr / SIGNER_WORKLOAD_API_ADDR" || w.Str("addr") != agent ||
		!strings.Contains(w.Str("hint"), "registration entry") || !strings.Contains(w.Str("last_error"), "no identity issued") {
		t.Fatalf("waiting line lacks the setting, address, hint or cause: %s", w.Raw)
	}
	if d, err := time.ParseDuration(w.Str("waited")); err != nil || d < 4*time.Second {
		t.Fatalf("waited = %q: not a human duration of about 5s", w.Str("waited"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code, _, err := proctest.Get(ctx, "http://"+opsAddr+"/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz while waiting: %d %v", code, err)
	}
	if code, _, err := proctest.Get(ctx, "http://"+opsAddr+"/readyz"); err != nil || code != 503 {
		t.Fatalf("/readyz while waiting: %d %v", code, err)
	}
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM while waiting, want 0", code)
	}
	l, ok := p.WaitLine(time.Second, proctest.Msg("stopped before an SVID arrived"))
	if !ok || !strings.Contains(l.Str("err"), "no SVID arrived") {
		t.Fatalf("no line saying no SVID arrived:\n%s", p.Stderr())
	}
	if strings.Contains(p.Stderr(), "context canceled") {
		t.Fatalf("stderr says context canceled:\n%s", p.Stderr())
	}
	if s.storeCreated() {
		t.Fatal("the store was created while waiting for the SVID")
	}
}

// A running signer: a version line, build_info, failed handshakes logged
// with the peer and the cause and counted, and at debug a line per
// handshake and per RPC (durations as strings).
func TestServingLogsAndMetrics(t *testing.T) {
	s := newSetup(t)
	opsAddr := proctest.FreeAddr(t)
	addr := proctest.FreeAddr(t)
	p := proctest.Start(t, binary(t), nil, s.args("--listen", addr, "--ops-listen", opsAddr, "--log-level", "debug",
		"--audit-anchor-required=true")...)
	v, ok := p.WaitLine(30*time.Second, proctest.Msg("plexsphere-signer starting"))
	if !ok || v.Str("version") == "" || v.Str("commit") == "" || !strings.HasPrefix(v.Str("go"), "go1.") {
		t.Fatalf("no version line: %s", v.Raw)
	}
	// The binary is built with this test's environment (GOFIPS140,
	// GODEBUG): it runs in the mode this process does.
	build := version.Get()
	if v.Str("fips") != build.FIPS || v.Str("fips_module") != build.FIPSModule {
		t.Fatalf("version line says fips %q module %q, want %q %q: %s", v.Str("fips"), v.Str("fips_module"), build.FIPS, build.FIPSModule, v.Raw)
	}
	if _, ok := p.WaitLine(60*time.Second, proctest.Msg("signer serving")); !ok {
		t.Fatal("the signer did not serve")
	}

	// A client from a foreign CA (same trust domain).
	foreign, _ := devpki.NewCA("example.org")
	fs, _ := foreign.Issue(coreID)
	ff, _ := foreign.WriteFiles(t.TempDir(), "core", fs)
	fsrc, err := identity.NewFileSource(ff.Cert, ff.Key, ff.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fsrc.Close()
	// It trusts the signer (its bundle), so only the signer refuses.
	cfg := identity.ClientTLSFrom(fsrc, mustSource(t, s), tlsconfig.AuthorizeAny())
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err == nil {
		c.Read(make([]byte, 1)) // the server's verdict arrives after the client's Finished
		c.Close()
	}
	l, ok := p.WaitLine(10*time.Second, proctest.Msg("tls handshake failed"))
	if !ok || l.Str("reason") != "unknown_ca" || !strings.HasPrefix(l.Str("peer_addr"), "127.0.0.1:") || l.Str("presented") != coreID ||
		!strings.Contains(l.Str("hint"), "SIGNER_TRUST_BUNDLE_FILE") {
		t.Fatalf("handshake failure line: %s", l.Raw)
	}

	// An admitted call: a debug handshake line and an RPC summary.
	core, _ := s.ca.Issue(coreID)
	cf, _ := s.ca.WriteFiles(t.TempDir(), "core", core)
	csrc, err := identity.NewFileSource(cf.Cert, cf.Key, cf.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer csrc.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		identity.ClientTLS(csrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(signerID))))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := signerv1.NewSignerServiceClient(conn).PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: "payments"}); err != nil {
		t.Fatalf("PublicKey: %v", err)
	}
	h, ok := p.WaitLine(10*time.Second, func(l proctest.Line) bool { return l.Str("msg") == "tls handshake" && l.Str("peer") == coreID })
	if !ok || h.Str("level") != "DEBUG" || h.Str("tls_version") != "TLS 1.3" {
		t.Fatalf("no debug handshake line: %s", h.Raw)
	}
	r, ok := p.WaitLine(10*time.Second, func(l proctest.Line) bool { return l.Str("msg") == "rpc" })
	if !ok || r.Str("method") != signerv1.SignerService_PublicKey_FullMethodName || r.Str("peer") != coreID || r.Str("code") != "OK" {
		t.Fatalf("no RPC summary: %s", r.Raw)
	}
	if _, err := time.ParseDuration(r.Str("took")); err != nil {
		t.Fatalf("took = %v: not a duration string", r.Fields["took"])
	}

	code, body, err := proctest.Get(ctx, "http://"+opsAddr+"/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, want := range []string{`plexsphere_signer_tls_handshake_failures_total{reason="unknown_ca"} 1`, `plexsphere_build_info{commit="`,
		`fips="` + build.FIPS + `",fips_module="` + build.FIPSModule + `"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func mustSource(t *testing.T, s *setup) *identity.FileSource {
	src, err := identity.NewFileSource(s.files.Cert, s.files.Key, s.files.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}
