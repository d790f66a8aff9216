// Package witnesstest runs a real C2SP tlog-witness for tests (omniwitness
// from github.com/transparency-dev/witness, built by `make witness` into
// bin/): a fresh Ed25519 witness key, a sqlite database in a temp dir (so a
// restart keeps what the witness has cosigned), the test's logs as
// --additional_logs, and nothing that reaches out: no public witness network
// config, no distributor, no bastion, no metrics listener. The C2SP endpoint
// is URL+"/add-checkpoint"; cosignatures verify with VKey (a
// tlog-cosignature/v1 key, signature type 0x04). Without the binary, tests
// skip saying so, except under CI=true, where they fail.
//
// The log configuration is kept in the witness's database and only added to
// (INSERT OR IGNORE): a log added with AddLogs is known from the restart on,
// but a log dropped from the list stays known and a log's key cannot be
// changed for an origin the witness already has.
//
// Where this omniwitness (v0.0.0-20260720115447-2e1c6971d19e) departs from
// c2sp.org/tlog-witness (pinned by witnesstest_test.go): an unknown origin
// and a checkpoint without a valid signature of the log's key get 500, not
// 404 and 403; the first checkpoint of a log is cosigned whatever its old
// size (no 409 for old != 0).
package witnesstest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// Log is a log the witness accepts checkpoints for.
type Log struct {
	// Origin is the checkpoint's first line.
	Origin string
	// VKey is the log's note verifier key, "<name>+<hash>+<base64>".
	VKey string
}

// Witness is a running omniwitness.
type Witness struct {
	// URL is the base URL; the tlog-witness endpoint is URL+"/add-checkpoint".
	URL string
	// Name is the witness's key name, the name on its cosignatures.
	Name string
	// VKey is the witness's tlog-cosignature/v1 verifier key (type 0x04),
	// as formats/note.NewVerifierForCosignatureV1 and witness policies take it.
	VKey string

	bin, dir, addr string
	keyPath        string
	dbPath         string
	logsPath       string

	mu   sync.Mutex
	logs []Log
	cmd  *exec.Cmd
	done chan struct{}
	runs int
	out  testenv.SyncBuffer
}

// Bin finds omniwitness: $WITNESS_BIN, else bin/ of the repository.
func Bin(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("WITNESS_BIN")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !strings.Contains(d, "tools") {
				dir = filepath.Join(d, "bin")
				break
			}
		}
	}
	bin := filepath.Join(dir, "omniwitness")
	if _, err := os.Stat(bin); err != nil {
		testenv.Require(t, "the witness", fmt.Sprintf("omniwitness not found in %s: run `make witness`", dir))
	}
	return bin
}

// Start runs a witness named name (a note key name: no spaces, no '+')
// that accepts checkpoints of logs, until the test ends. Its output is
// shown if the test fails.
func Start(t testing.TB, name string, logs ...Log) *Witness {
	t.Helper()
	bin := Bin(t)
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatalf("witness key %q: %v", name, err)
	}
	cosigVKey, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w := &Witness{
		Name: name, VKey: cosigVKey, bin: bin, dir: dir,
		addr:     "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
		keyPath:  filepath.Join(dir, "witness.key"),
		dbPath:   filepath.Join(dir, "witness.db"),
		logsPath: filepath.Join(dir, "logs.yaml"),
	}
	w.URL = "http://" + w.addr
	if err := os.WriteFile(w.keyPath, []byte(skey), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Stop()
		if t.Failed() {
			t.Logf("omniwitness %s output:\n%s", name, w.Logs())
		}
	})
	w.mu.Lock()
	w.logs = append([]Log(nil), logs...)
	w.mu.Unlock()
	w.writeLogs(t)
	w.start(t)
	return w
}

// PolicyLine is the witness as a line of a witness policy
// (formats/witness.ParsePolicy): "witness <Name> <VKey> <URL>".
func (w *Witness) PolicyLine() string {
	return fmt.Sprintf("witness %s %s %s", w.Name, w.VKey, w.URL)
}

// Logs is what the witness has written to stdout and stderr, over all its
// runs. The output of a running process is copied asynchronously: a line
// it logs while answering a request may arrive after the answer; after
// Stop or Restart, the earlier runs' output is complete.
func (w *Witness) Logs() string { return w.out.String() }

// AddLogs adds logs to the witness's configuration and restarts it, keeping
// its key, database and address.
func (w *Witness) AddLogs(t testing.TB, logs ...Log) {
	t.Helper()
	w.mu.Lock()
	w.logs = append(w.logs, logs...)
	w.mu.Unlock()
	w.writeLogs(t)
	w.Restart(t)
}

// Restart stops the witness and starts it again with the same key,
// database and address.
func (w *Witness) Restart(t testing.TB) {
	t.Helper()
	w.Stop()
	w.start(t)
}

// Stop ends the witness process, if it runs.
func (w *Witness) Stop() {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.cmd, w.done = nil, nil
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	// omniwitness installs no signal handler: an interrupt ends it at once.
	// Every accepted checkpoint is already committed (sqlite WAL,
	// synchronous=FULL) before its cosignature is returned.
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// writeLogs writes the --additional_logs file (omniwitness's ConfigYAML:
// Logs: [{Origin, PublicKey, URL}]). No Feeder and no URL: this version of
// omniwitness polls no log anyway; checkpoints come only through
// add-checkpoint. Scalars are JSON strings, which YAML reads as
// double-quoted strings.
func (w *Witness) writeLogs(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	logs := append([]Log(nil), w.logs...)
	w.mu.Unlock()
	var b strings.Builder
	b.WriteString("Logs:\n")
	if len(logs) == 0 {
		b.WriteString("  []\n")
	}
	for _, l := range logs {
		if l.Origin == "" || l.VKey == "" {
			t.Fatalf("witnesstest: a log needs an Origin and a VKey: %+v", l)
		}
		if _, err := note.NewVerifier(l.VKey); err != nil {
			t.Fatalf("witnesstest: log %q: verifier key %q: %v", l.Origin, l.VKey, err)
		}
		origin, _ := json.Marshal(l.Origin)
		vkey, _ := json.Marshal(l.VKey)
		fmt.Fprintf(&b, "  - Origin: %s\n    PublicKey: %s\n", origin, vkey)
	}
	if err := os.WriteFile(w.logsPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs the process and waits until its HTTP server answers.
func (w *Witness) start(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	w.runs++
	fmt.Fprintf(&w.out, "--- witnesstest: run %d of omniwitness on %s ---\n", w.runs, w.addr)
	cmd := exec.Command(w.bin,
		"--listen", w.addr,
		"--metrics_listen=", // no Prometheus listener
		"--private_key_path", w.keyPath,
		"--db_file", w.dbPath,
		"--additional_logs", w.logsPath,
		// Left unset on purpose: --public_witness_config_url (no fetch of
		// the public witness network's log list), --rest_distro_url (no
		// distributor), --bastion_addr (no bastion).
	)
	cmd.Stdout, cmd.Stderr = &w.out, &w.out
	if err := cmd.Start(); err != nil {
		w.mu.Unlock()
		t.Fatalf("start omniwitness: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	w.cmd, w.done = cmd, done
	w.mu.Unlock()

	// The listener opens before the database; the server answers once all
	// is set up. Any HTTP answer (404 for GET /) means it is serving.
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(w.URL + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("omniwitness exited before serving (%v):\n%s", cmd.ProcessState, w.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("omniwitness not serving on %s after 30s: %v\n%s", w.addr, err, w.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
