package bench

import (
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// signerProc is plexsphere-signer running as its own process, configured
// through its environment as a deployment configures it.
type signerProc struct {
	*proc
	// Env carries the CA and the address, so the bench's clients (directCall,
	// the sidecar, the relay) treat it like an in-process signer. Its other
	// fields are unset.
	Env      *signertest.Env
	OpsAddr  string
	BoltPath string // with the bbolt store
}

// startSigner runs plexsphere-signer with the local provider, durable bbolt
// in a temp dir, CoreID allowed to sign and Scope bootstrapped; set
// overrides or adds SIGNER_* variables (SIGNER_STORE=postgres, say). It
// returns once /readyz answers (start-up includes checking the whole stored
// audit log, so large logs take a while).
func startSigner(b testing.TB, ca *devpki.CA, set map[string]string) *signerProc {
	b.Helper()
	return startSignerBin(b, "", ca, set)
}

// startSignerBin is startSigner with the signer binary bin ("": this
// checkout's).
func startSignerBin(b testing.TB, bin string, ca *devpki.CA, set map[string]string) *signerProc {
	b.Helper()
	if bin == "" {
		bin = binPath(b, "plexsphere-signer")
	}
	dir := b.TempDir()
	files := writeSVID(b, ca, dir, "signer", signertest.SignerID)
	addr, ops := freeAddr(b), freeAddr(b)
	vars := map[string]string{
		"SIGNER_LISTEN":                    addr,
		"SIGNER_OPS_LISTEN":                ops,
		"SIGNER_ALLOW_SPIFFE_IDS":          signertest.CoreID,
		"SIGNER_ROTATION_ALLOW_SPIFFE_IDS": signertest.OperatorID,
		"SIGNER_SVID_CERT_FILE":            files.Cert,
		"SIGNER_SVID_KEY_FILE":             files.Key,
		"SIGNER_TRUST_BUNDLE_FILE":         files.Bundle,
		"SIGNER_STORE":                     "bbolt",
		"SIGNER_BBOLT_PATH":                filepath.Join(dir, "signer.db"),
		"SIGNER_PROVIDER":                  "local",
		"SIGNER_LOCAL_KEK":                 randHex(32),
		"SIGNER_BOOTSTRAP_SCOPES":          scope,
		"SIGNER_LOG_LEVEL":                 "warn",
		// The anchor outside the store that production requires: a
		// checkpoint file (on the same disk here).
		"SIGNER_CHECKPOINT_LOG": filepath.Join(dir, "checkpoints.jsonl"),
	}
	maps.Copy(vars, set)
	var env []string
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, k+"="+vars[k])
	}
	p := startProc(b, "signer", bin, env)
	s := &signerProc{proc: p, Env: &signertest.Env{CA: ca, Addr: addr}, OpsAddr: ops}
	if vars["SIGNER_STORE"] == "bbolt" {
		s.BoltPath = vars["SIGNER_BBOLT_PATH"]
	}
	waitHTTP(b, p, "http://"+ops+"/readyz", 30*time.Minute)
	return s
}

// startFloorSigner runs the framework floor (cmd/floorsigner) with the
// signer's SPIFFE ID, trusting ca; its Env dials it like the signer.
func startFloorSigner(b testing.TB, ca *devpki.CA) (*proc, *signertest.Env) {
	b.Helper()
	dir := b.TempDir()
	files := writeSVID(b, ca, dir, "floor", signertest.SignerID)
	addr := freeAddr(b)
	p := startProc(b, "signer", binPath(b, "floorsigner"), nil,
		"--listen", addr, "--cert", files.Cert, "--key", files.Key, "--bundle", files.Bundle)
	p.role = "signer" // the process in the signer's seat
	return p, &signertest.Env{CA: ca, Addr: addr}
}

// startRelay runs the sidecar seat's floor (cmd/floorrelay) in front of
// env with the core's identity; it returns the Unix socket.
func startRelay(b testing.TB, env *signertest.Env) (string, *proc) {
	b.Helper()
	dir := b.TempDir()
	files := writeSVID(b, env.CA, dir, "core", signertest.CoreID)
	sock := filepath.Join(dir, "relay.sock")
	p := startProc(b, "sidecar", binPath(b, "floorrelay"), nil,
		"--listen", sock, "--upstream", env.Addr, "--server-id", signertest.SignerID,
		"--cert", files.Cert, "--key", files.Key, "--bundle", files.Bundle)
	return sock, p
}

// startSidecarProcess runs plexsphere-sidecar with the core's identity in
// front of env, configured only through its SIDECAR_* environment (so the
// bench does not depend on the sidecar's Go API); it returns the Unix socket.
func startSidecarProcess(b testing.TB, env *signertest.Env, extraEnv ...string) (string, *proc) {
	b.Helper()
	return startSidecarBinary(b, env, "sidecar", binPath(b, "plexsphere-sidecar"), extraEnv...)
}

// startSidecarBinary is startSidecarProcess with another sidecar binary
// (BENCH_SIDECAR_BEFORE) in the seat named role.
func startSidecarBinary(b testing.TB, env *signertest.Env, role, bin string, extraEnv ...string) (string, *proc) {
	b.Helper()
	dir := b.TempDir()
	files := writeSVID(b, env.CA, dir, "core", signertest.CoreID)
	sock := filepath.Join(dir, "signer.sock")
	p := startProc(b, role, bin, append([]string{
		"SIDECAR_LISTEN=unix://" + sock,
		"SIDECAR_UPSTREAM=" + env.Addr,
		"SIDECAR_SIGNER_SPIFFE_ID=" + signertest.SignerID,
		"SIDECAR_SVID_CERT_FILE=" + files.Cert,
		"SIDECAR_SVID_KEY_FILE=" + files.Key,
		"SIDECAR_TRUST_BUNDLE_FILE=" + files.Bundle,
		"SIDECAR_LOG_LEVEL=warn",
	}, extraEnv...))
	return sock, p
}

func writeSVID(b testing.TB, ca *devpki.CA, dir, name, id string) devpki.Files {
	b.Helper()
	svid, err := ca.Issue(id)
	if err != nil {
		b.Fatal(err)
	}
	f, err := ca.WriteFiles(dir, name, svid)
	if err != nil {
		b.Fatal(err)
	}
	return f
}
