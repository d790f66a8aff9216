package main_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/proctest"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

const (
	signerID = "spiffe://example.org/ns/plexsphere/sa/plexsphere-signer"
	coreID   = "spiffe://example.org/ns/core/sa/core"
)

var bin string

func TestMain(m *testing.M) { proctest.Main(m, "./cmd/plexsphere-sidecar", &bin) }

func TestVersion(t *testing.T) {
	code, out, errOut := proctest.Run(t, bin, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "plexsphere-sidecar ") || !strings.Contains(out, "(commit ") || !strings.Contains(out, "go1.") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func files(t *testing.T, ca *devpki.CA, id string) devpki.Files {
	t.Helper()
	svid, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.WriteFiles(t.TempDir(), "svid", svid)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func idArgs(f devpki.Files) []string {
	return []string{"--svid-cert", f.Cert, "--svid-key", f.Key, "--trust-bundle", f.Bundle}
}

// A port-less upstream is refused at start, naming the setting, in one
// JSON record.
func TestPortlessUpstreamRefused(t *testing.T) {
	ca, _ := devpki.NewCA("example.org")
	f := files(t, ca, coreID)
	p := proctest.Start(t, bin, nil, append(idArgs(f), "--listen", "unix://"+filepath.Join(t.TempDir(), "s.sock"),
		"--upstream", "signer.plexsphere.svc", "--signer-spiffe-id", signerID)...)
	if code := p.Wait(time.Minute); code != 1 {
		t.Fatalf("exit %d", code)
	}
	l, ok := p.WaitLine(time.Second, proctest.Msg("plexsphere-sidecar cannot start"))
	if !ok || l.Str("setting") != "--upstream / SIDECAR_UPSTREAM" || !strings.Contains(l.Str("err"), "want host:port") {
		t.Fatalf("fatal record: %s\n%s", l.Raw, p.Stderr())
	}
}

// A GOGC or GOMAXPROCS that Go would ignore (and so run on its own
// defaults, not the sidecar's) is refused at start, naming the variable.
func TestIgnoredRuntimeSettingsRefused(t *testing.T) {
	for _, env := range []string{"GOMAXPROCS=abc", "GOMAXPROCS=0", "GOGC=fifty"} {
		code, _, errOut := proctest.Run(t, bin, []string{env}, "--listen", "unix:///nonexistent/s.sock")
		name := env[:strings.IndexByte(env, '=')]
		if code != 1 || !strings.Contains(errOut, "cannot start") || !strings.Contains(errOut, name+"=") {
			t.Errorf("%s: exit %d, stderr %q", env, code, errOut)
		}
	}
	// Valid values start as far as the settings: the error is the next one.
	code, _, errOut := proctest.Run(t, bin, []string{"GOMAXPROCS=2", "GOGC=off"}, "--listen", "unix:///nonexistent/s.sock")
	if code != 1 || strings.Contains(errOut, "GOMAXPROCS") || strings.Contains(errOut, "GOGC") {
		t.Errorf("valid values: exit %d, stderr %q", code, errOut)
	}
}

func TestWaitsForSVIDAndStopsCleanly(t *testing.T) {
	agent := proctest.NoSVIDAgent(t)
	opsAddr := proctest.FreeAddr(t)
	p := proctest.Start(t, bin, nil, "--workload-api-addr", agent, "--listen", "unix://"+filepath.Join(t.TempDir(), "s.sock"),
		"--upstream", "127.0.0.1:1", "--signer-spiffe-id", signerID, "--ops-listen", opsAddr)
	w, ok := p.WaitLine(30*time.Second, proctest.Msg("no SVID from the SPIFFE Workload API yet"))
	if !ok || w.Str("setting") != "--workload-api-addr / SIDECAR_WORKLOAD_API_ADDR" || !strings.Contains(w.Str("hint"), "registration entry") {
		t.Fatalf("waiting line: %s\n%s", w.Raw, p.Stderr())
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
	if _, ok := p.WaitLine(time.Second, proctest.Msg("stopped before an SVID arrived")); !ok || strings.Contains(p.Stderr(), "context canceled") {
		t.Fatalf("no clean stop line:\n%s", p.Stderr())
	}
}

// fakeSigner accepts TLS with src's SVID and h2 ALPN, verifying clients
// against src's bundle; it completes each handshake and then holds the
// connection.
func fakeSigner(t *testing.T, src identity.Source) string {
	t.Helper()
	cfg := identity.ServerTLS(src)
	cfg.NextProtos = []string{"h2"}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Read(make([]byte, 1<<16))
				}
			}()
		}
	}()
	return l.Addr().String()
}

func source(t *testing.T, f devpki.Files) identity.Source {
	src, err := identity.NewFileSource(f.Cert, f.Key, f.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// A failed handshake with the upstream says what was expected, what was
// presented, and which setting to fix; /metrics carries build_info.
func TestUpstreamHandshakeFailuresNameTheSetting(t *testing.T) {
	ca, _ := devpki.NewCA("example.org")
	foreign, _ := devpki.NewCA("example.org")
	core := files(t, ca, coreID)
	for _, tc := range []struct {
		name      string
		server    devpki.Files
		reason    string
		presented string
		setting   string
	}{
		{"wrong signer ID", files(t, ca, "spiffe://example.org/ns/other/sa/other"), "wrong_id", "spiffe://example.org/ns/other/sa/other", "--signer-spiffe-id / SIDECAR_SIGNER_SPIFFE_ID"},
		{"foreign CA", files(t, foreign, signerID), "unknown_ca", signerID, "--svid-cert / SIDECAR_SVID_CERT_FILE, --svid-key / SIDECAR_SVID_KEY_FILE, --trust-bundle / SIDECAR_TRUST_BUNDLE_FILE"},
		{"signer refuses the sidecar", func() devpki.Files {
			// The signer's SVID is from the sidecar's CA, its bundle is not.
			f := files(t, ca, signerID)
			other := files(t, foreign, signerID)
			f.Bundle = other.Bundle
			return f
		}(), "rejected_by_peer", "", "--svid-cert / SIDECAR_SVID_CERT_FILE, --svid-key / SIDECAR_SVID_KEY_FILE, --trust-bundle / SIDECAR_TRUST_BUNDLE_FILE"},
		{"nothing listens", devpki.Files{}, "unreachable", "", "--upstream / SIDECAR_UPSTREAM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upstream := proctest.FreeAddr(t)
			if tc.server.Cert != "" {
				upstream = fakeSigner(t, source(t, tc.server))
			}
			opsAddr := proctest.FreeAddr(t)
			p := proctest.Start(t, bin, nil, append(idArgs(core), "--listen", "unix://"+filepath.Join(t.TempDir(), "s.sock"),
				"--upstream", upstream, "--signer-spiffe-id", signerID, "--ops-listen", opsAddr, "--log-level", "debug")...)
			l, ok := p.WaitLine(20*time.Second, proctest.Msg("signer replica unreachable"))
			if !ok {
				t.Fatal("no line for the failed upstream")
			}
			if l.Str("reason") != tc.reason || l.Str("expected") != signerID || l.Str("presented") != tc.presented ||
				l.Str("setting") != tc.setting || l.Str("addr") != upstream || l.Str("hint") == "" {
				t.Fatalf("line: %s", l.Raw)
			}
			// Retried about once a second (a debug line each); warned once
			// per 10 s per cause.
			attempts := 0
			if _, ok := p.WaitLine(20*time.Second, func(x proctest.Line) bool {
				if x.Str("msg") == "signer replica still unreachable" {
					attempts++
				}
				return attempts == 3
			}); !ok {
				t.Fatal("fewer than 3 more attempts")
			}
			n := 0
			for _, x := range p.Lines() {
				if x.Str("level") == "WARN" || strings.Contains(x.Str("msg"), "upstream state") {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d warnings over 4 attempts, want 1:\n%s", n, p.Stderr())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			code, body, err := proctest.Get(ctx, "http://"+opsAddr+"/metrics")
			if err != nil || code != 200 || !strings.Contains(body, `plexsphere_build_info{commit="`) || !strings.Contains(body, "plexsphere_sidecar_upstream_ready 0") {
				t.Fatalf("/metrics: %d %v", code, err)
			}
		})
	}
}

// In front of a real signer at debug: the replica's handshake (who it
// presented, TLS 1.3, h2) and one line per call.
func TestDebugLinesInFrontOfASigner(t *testing.T) {
	env := signertest.Start(t)
	svid := env.Issue(t, signertest.CoreID)
	f, err := env.CA.WriteFiles(t.TempDir(), "core", svid)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	p := proctest.Start(t, bin, nil, append(idArgs(f), "--listen", "unix://"+sock, "--upstream", env.Addr,
		"--signer-spiffe-id", signertest.SignerID, "--log-level", "debug")...)
	h, ok := p.WaitLine(30*time.Second, proctest.Msg("tls handshake with signer replica"))
	if !ok || h.Str("presented") != signertest.SignerID || h.Str("tls_version") != "TLS 1.3" || h.Str("alpn") != "h2" {
		t.Fatalf("handshake line: %s", h.Raw)
	}
	if _, ok := p.WaitLine(30*time.Second, proctest.Msg("sidecar listening")); !ok {
		t.Fatal("not listening")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Sign(ctx, signertest.Scope, []byte("m")); err != nil {
		t.Fatalf("Sign through the sidecar: %v", err)
	}
	l, ok := p.WaitLine(10*time.Second, proctest.Msg("call"))
	if !ok || l.Str("method") != "/plexsphere.signer.v1.SignerService/Sign" || l.Str("code") != "OK" {
		t.Fatalf("call line: %s", l.Raw)
	}
	if _, err := time.ParseDuration(l.Str("took")); err != nil {
		t.Fatalf("took = %v", l.Fields["took"])
	}
}
