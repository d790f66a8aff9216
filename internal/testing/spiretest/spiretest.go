// Package spiretest runs a real SPIRE server and agent for tests (SPIRE
// v1.13.3, built by `make spire` into bin/): sqlite datastore, disk key
// manager, join-token node attestation, and the unix workload attestor with
// binary paths, so each test binary or process gets the SVID registered for
// its executable. Without the binaries, tests skip saying so, except under
// CI=true, where they fail.
package spiretest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"
)

// TrustDomain is the trust domain the server issues in.
const TrustDomain = "example.org"

// Server is a running SPIRE server and agent.
type Server struct {
	bin, dir     string
	serverSocket string
	// WorkloadAPI is the agent's socket, as a go-spiffe address.
	WorkloadAPI string
	agentID     string
}

// Bin finds spire-server and spire-agent: $SPIRE_BIN, else bin/ of the
// repository.
func Bin(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SPIRE_BIN")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !strings.Contains(d, "tools") {
				dir = filepath.Join(d, "bin")
				break
			}
		}
	}
	for _, b := range []string{"spire-server", "spire-agent"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			testenv.Require(t, "SPIRE", fmt.Sprintf("%s not found in %s: run `make spire`", b, dir))
		}
	}
	return dir
}

// Start runs a server and an agent until the test ends. svidTTL is the
// default X509-SVID TTL (SPIRE rotates at half of it).
func Start(t testing.TB, svidTTL time.Duration) *Server {
	t.Helper()
	bin := Bin(t)
	// Unix socket paths are short on Linux (108 bytes): keep the dir short.
	dir, err := os.MkdirTemp("", "spire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{bin: bin, dir: dir, serverSocket: filepath.Join(dir, "server.sock"),
		WorkloadAPI: "unix://" + filepath.Join(dir, "agent.sock"), agentID: "spiffe://" + TrustDomain + "/spire-agent"}
	port := testenv.FreePort(t)
	serverConf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = "%s"
  trust_domain = "%s"
  data_dir = "%s/server"
  log_level = "WARN"
  default_x509_svid_ttl = "%s"
  ca_ttl = "24h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "%s/server/datastore.sqlite3"
    }
  }
  KeyManager "disk" {
    plugin_data { keys_path = "%s/server/keys.json" }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`, port, s.serverSocket, TrustDomain, dir, svidTTL, dir, dir)
	os.MkdirAll(filepath.Join(dir, "server"), 0o700)
	os.MkdirAll(filepath.Join(dir, "agent"), 0o700)
	if err := os.WriteFile(filepath.Join(dir, "server.conf"), []byte(serverConf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.run(t, "server", "spire-server", "run", "-config", filepath.Join(dir, "server.conf"))
	s.waitHealthy(t, "spire-server", "healthcheck", "-socketPath", s.serverSocket)

	out := s.cli(t, "token", "generate", "-spiffeID", s.agentID, "-ttl", "600")
	token := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "Token:"))
	agentConf := fmt.Sprintf(`agent {
  data_dir = "%s/agent"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = "%s/agent.sock"
  trust_domain = "%s"
  insecure_bootstrap = true
  join_token = "%s"
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data { discover_workload_path = true }
  }
}
`, dir, port, dir, TrustDomain, token)
	if err := os.WriteFile(filepath.Join(dir, "agent.conf"), []byte(agentConf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.run(t, "agent", "spire-agent", "run", "-config", filepath.Join(dir, "agent.conf"))
	s.waitHealthy(t, "spire-agent", "healthcheck", "-socketPath", filepath.Join(dir, "agent.sock"))
	return s
}

// run starts a SPIRE process, stopped when the test ends; its output goes
// to a log file shown if the test fails.
func (s *Server) run(t testing.TB, name, bin string, args ...string) {
	log, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(s.bin, bin), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s log:\n%s", name, b)
		}
		log.Close()
	})
}

func (s *Server) waitHealthy(t testing.TB, bin string, args ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(s.bin, bin), args...).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 60s: %v\n%s", bin, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *Server) cli(t testing.TB, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "spire-server"), append(args, "-socketPath", s.serverSocket)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("spire-server %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.Bytes()
}

// Register gives the executable at path the SPIFFE ID id, with the given
// SVID TTL (0: the server default).
func (s *Server) Register(t testing.TB, id, path string, ttl time.Duration) {
	t.Helper()
	args := []string{"entry", "create", "-parentID", s.agentID, "-spiffeID", id, "-selector", "unix:path:" + path}
	if ttl > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(ttl.Seconds())))
	}
	out := s.cli(t, args...)
	if !regexp.MustCompile(`Entry ID\s*:`).Match(out) {
		t.Fatalf("entry create: %s", out)
	}
}
