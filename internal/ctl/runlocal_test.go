package ctl_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// freePort is a loopback port nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// runLocal is scripts/run-local.sh (make run) started as a process.
type runLocal struct {
	cmd    *exec.Cmd
	banner string // what it printed up to "press Ctrl-C"
	rest   chan string
	errors atomic.Int64
	errLog atomic.Pointer[string]
}

// note keeps count of the binaries' ERROR log lines and the last of them.
func (r *runLocal) note(l string) {
	if strings.Contains(l, `"level":"ERROR"`) {
		r.errors.Add(1)
		r.errLog.Store(&l)
	}
}

func startRunLocal(t *testing.T, bin, dir string, env ...string) *runLocal {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "run-local.sh"))
	cmd.Env = append(cleanEnv(), append([]string{"BIN=" + bin, "RUN_DIR=" + dir,
		"RUN_SIGNER_PORT=" + freePort(t), "RUN_OPS_PORT=" + freePort(t)}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &runLocal{cmd: cmd, rest: make(chan string, 1)}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var b strings.Builder
	timeout := time.After(90 * time.Second)
	for !strings.Contains(b.String(), "run-local: press Ctrl-C to stop") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("run-local ended before it was up:\n%s", b.String())
			}
			if !strings.HasPrefix(l, "{") { // not the binaries' JSON logs
				b.WriteString(l + "\n")
			} else {
				r.note(l)
			}
		case <-timeout:
			r.stop(t)
			t.Fatalf("run-local not up after 90s:\n%s", b.String())
		}
	}
	r.banner = b.String()
	go func() {
		var rest strings.Builder
		for l := range lines {
			if !strings.HasPrefix(l, "{") {
				rest.WriteString(l + "\n")
			} else {
				r.note(l)
			}
		}
		r.rest <- rest.String()
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// lastError is the binaries' last ERROR log line, if any, for a failure's
// message (the JSON logs are left out of the banner and the rest).
func (r *runLocal) lastError() string {
	if l := r.errLog.Load(); l != nil {
		return fmt.Sprintf("last of %d ERROR lines: %s\n", r.errors.Load(), *l)
	}
	return "no ERROR line from the binaries\n"
}

// stop sends SIGTERM (as Ctrl-C's INT would) and returns what it printed
// since the banner.
func (r *runLocal) stop(t *testing.T) string {
	t.Helper()
	if r.cmd.ProcessState != nil {
		return ""
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	err := r.cmd.Wait()
	r.cmd.Stdout.(*io.PipeWriter).Close()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return <-r.rest
}

// envFile reads the export lines of an env file.
func envFile(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		kv, ok := strings.CutPrefix(l, "export ")
		if !ok {
			t.Fatalf("%s: not an export line: %q", path, l)
		}
		env = append(env, kv)
	}
	return env
}

func lookup(env []string, name string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// make run → signerctl: the banner's export lines are signerctl.env's,
// checkpoint key included, and signerctl works with them as they are;
// KEEP keeps the store and the checkpoint key across runs; a new store
// with a leftover checkpoint key fails audit verify showing both keys.
func TestProcessMakeRun(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is needed to run scripts/run-local.sh")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/plexsphere/signer/cmd/...", "github.com/plexsphere/signer/examples/core")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "run")
	none := harness{}
	signerctl := func(env []string, args ...string) (int, string, string) {
		return none.exe(t, env, args...)
	}

	run := startRunLocal(t, bin, dir, "RUN_KEEP=1")
	env := envFile(t, filepath.Join(dir, "signerctl.env"))
	for _, kv := range env {
		if !strings.Contains(run.banner, "\nexport "+kv+"\n") {
			t.Fatalf("the banner does not print export %s:\n%s", kv, run.banner)
		}
	}
	key := lookup(env, "SIGNERCTL_CHECKPOINT_KEY")
	if key == "" || len(env) != 6 {
		t.Fatalf("signerctl.env: %v", env)
	}
	code, keys, errOut := signerctl(env, "keys")
	if code != 0 || !strings.Contains(keys, "payments") {
		t.Fatalf("keys with signerctl.env: exit %d\n%s%s", code, keys, errOut)
	}
	if code, out, errOut := signerctl(env, "audit", "verify"); code != 0 || strings.Contains(errOut, "warning") {
		t.Fatalf("audit verify with signerctl.env: exit %d\n%s%s", code, out, errOut)
	}
	// An export takes whole tiles (audit.TileSize entries): eight more
	// audited calls make sure one is complete, however few Signs the
	// example core has made by now.
	for range 8 {
		if code, out, errOut := signerctl(env, "keys"); code != 0 {
			t.Fatalf("keys: exit %d\n%s%s", code, out, errOut)
		}
	}
	export := filepath.Join(t.TempDir(), "audit-0001.jsonl")
	code, out, errOut := signerctl(env, "audit", "export", "--to", export)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	printed := strings.Fields(lines[len(lines)-1])
	if code != 0 || len(printed) != 5 || printed[0] != "plexsphere-signer" || printed[1] != "--prune-audit-upto" {
		t.Fatalf("audit export: exit %d\n%s%s", code, out, errOut)
	}
	if out := run.stop(t); !strings.Contains(out, "kept "+dir) {
		t.Fatalf("stopping a kept run:\n%s", out)
	}

	// The prune as printed, from a directory without a store: without
	// the store's settings it is refused naming them and creates nothing;
	// with signer.env's it prunes.
	prune := func(env []string) (int, string) {
		cmd := exec.Command(filepath.Join(bin, printed[0]), printed[1:]...)
		cmd.Dir, cmd.Env = t.TempDir(), append(cleanEnv(), env...)
		out, err := cmd.CombinedOutput()
		if _, serr := os.Stat(filepath.Join(cmd.Dir, "signer.db")); !os.IsNotExist(serr) {
			t.Fatalf("the prune created signer.db in its working directory:\n%s", out)
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := prune(nil); code == 0 || !strings.Contains(out, "--bbolt-path / SIGNER_BBOLT_PATH: stat signer.db: no such file or directory") {
		t.Fatalf("the prune without the store's settings: exit %d\n%s", code, out)
	}
	if code, out := prune(envFile(t, filepath.Join(dir, "signer.env"))); code != 0 || !strings.Contains(out, "audit entries pruned") {
		t.Fatalf("the prune with signer.env: exit %d\n%s", code, out)
	}

	run = startRunLocal(t, bin, dir, "RUN_KEEP=1")
	kept := envFile(t, filepath.Join(dir, "signerctl.env"))
	if lookup(kept, "SIGNERCTL_CHECKPOINT_KEY") != key {
		t.Fatalf("the kept run's checkpoint key %q, the first run's %q", lookup(kept, "SIGNERCTL_CHECKPOINT_KEY"), key)
	}
	if code, out, errOut := signerctl(kept, "keys"); code != 0 || out != keys {
		t.Fatalf("the kept run's keys: exit %d\n%s%s\nwant\n%s\nrun-local since its banner:\n%s%s", code, out, errOut, keys, run.stop(t), run.lastError())
	}
	if code, out, errOut := signerctl(kept, "audit", "verify", "--after", export); code != 0 {
		t.Fatalf("audit verify of the kept, pruned run: exit %d\n%s%s", code, out, errOut)
	}
	upto := printed[2]
	if code, out, errOut := signerctl(kept, "audit", "prove", "--seq", "3"); code != 1 || !strings.Contains(errOut, "NotFound: entry 3 was pruned: ") ||
		!strings.Contains(errOut, "(pruned up to "+upto+"); use the export") {
		t.Fatalf("prove a pruned entry: exit %d\n%s%s", code, out, errOut)
	}
	run.stop(t)

	run = startRunLocal(t, bin, dir)
	fresh := envFile(t, filepath.Join(dir, "signerctl.env"))
	newKey := lookup(fresh, "SIGNERCTL_CHECKPOINT_KEY")
	if newKey == key {
		t.Fatalf("a run without KEEP kept the checkpoint key %s", key)
	}
	leftover := append(append([]string{}, fresh...), "SIGNERCTL_CHECKPOINT_KEY="+key)
	code, out, errOut = signerctl(leftover, "audit", "verify")
	if code != 5 || out != "" || !strings.Contains(errOut, "expected (--checkpoint-key / SIGNERCTL_CHECKPOINT_KEY): "+key+"\n") ||
		!strings.Contains(errOut, "found (the signer reports): "+newKey+"\n") || !strings.Contains(errOut, "bin/run/signerctl.env") {
		t.Fatalf("a leftover checkpoint key: exit %d\n%s%s", code, out, errOut)
	}
	if out := run.stop(t); !strings.Contains(out, "removed "+dir) {
		t.Fatalf("stopping a run without KEEP:\n%s", out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s after a run without KEEP: %v", dir, err)
	}
}
