package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// These tests run the signerctl binary as an operator would: built once,
// executed as a process against a real signer over mTLS, judged by exit
// code, stdout and stderr.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// signerctlBin builds cmd/signerctl once per test binary.
func signerctlBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "signerctl-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "signerctl")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/plexsphere/signer/cmd/signerctl")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// exe runs signerctl with the harness identity and args; env adds
// variables. It returns the exit code, stdout and stderr.
func (h harness) exe(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(signerctlBin(t), append(append([]string{}, h.args...), args...)...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatal(err)
	return 0, "", ""
}

// cleanEnv is the environment without SIGNERCTL_ settings.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGNERCTL_") {
			env = append(env, kv)
		}
	}
	return env
}

// without returns args less flag and its value.
func without(args []string, flag string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == flag {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// The signer's SPIFFE ID has no default: leaving it out is exit 2 naming
// both spellings; a wrong one is exit 2 saying what the signer presented
// and which setting to fix, from the flag or from the variable.
func TestProcessSignerSPIFFEID(t *testing.T) {
	h := start(t)
	bare := harness{env: h.env, args: without(h.args, "--signer-spiffe-id")}
	code, out, errOut := bare.exe(t, nil, "keys", "list")
	if code != 2 || out != "" || !strings.Contains(errOut, "--signer-spiffe-id / SIGNERCTL_SIGNER_SPIFFE_ID: required") || strings.Contains(errOut, "example.org/ns/plexsphere/sa/plexsphere-signer") {
		t.Fatalf("no signer ID: exit %d\n%s%s", code, out, errOut)
	}
	const wrong = "spiffe://example.org/ns/plexsphere/sa/not-the-signer"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flag", nil, []string{"--signer-spiffe-id", wrong}},
		{"variable", []string{"SIGNERCTL_SIGNER_SPIFFE_ID=" + wrong}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := bare.exe(t, tc.env, append(tc.args, "keys", "list")...)
			want := "presents SPIFFE ID " + signertest.SignerID + ", not " + wrong + ": set --signer-spiffe-id / SIGNERCTL_SIGNER_SPIFFE_ID"
			if code != 2 || out != "" || !strings.Contains(errOut, want) {
				t.Fatalf("wrong signer ID: exit %d, want 2 and %q\n%s", code, want, errOut)
			}
		})
	}
	// The right ID still works.
	if code, _, errOut := h.exe(t, nil, "keys", "list"); code != 0 {
		t.Fatalf("right ID: exit %d %s", code, errOut)
	}
}

// An unknown scope is exit 1 with NotFound, for jwks and keys list --scope;
// rotate open never creates a scope by a typo: that takes --create (before
// or after the scope).
func TestProcessUnknownScope(t *testing.T) {
	h := start(t)
	for _, args := range [][]string{{"jwks", "nosuchscope"}, {"keys", "list", "--scope", "nosuchscope"}} {
		code, out, errOut := h.exe(t, nil, args...)
		if code != 1 || out != "" || !strings.Contains(errOut, `NotFound: scope "nosuchscope" has no keys`) {
			t.Fatalf("%v: exit %d\nstdout %q\nstderr %s", args, code, out, errOut)
		}
	}
	code, out, errOut := h.exe(t, nil, "rotate", "open", "paymnets")
	if code != 1 || out != "" || !strings.Contains(errOut, `NotFound: scope "paymnets" has no keys; to create it, run: signerctl rotate open --create paymnets`) {
		t.Fatalf("open of a typo: exit %d\n%s%s", code, out, errOut)
	}
	if keys, _ := listKeys(t, h, "paymnets"); len(keys) != 0 {
		t.Fatalf("a refused open created the scope: %v", keys)
	}
	for scope, args := range map[string][]string{"fresh": {"rotate", "open", "--create", "fresh"}, "fresh2": {"rotate", "open", "fresh2", "--create"}} {
		code, out, errOut := h.exe(t, nil, append([]string{"--output", "json"}, args...)...)
		var step struct {
			Step string `json:"step"`
			Key  struct {
				Scope string `json:"scope"`
				State string `json:"state"`
			} `json:"key"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &step) != nil || step.Step != "open" || step.Key.State != "PENDING" || step.Key.Scope != scope {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	// --create on a scope that exists is simply an open.
	if code, _, errOut := h.exe(t, nil, "rotate", "open", "--create", signertest.Scope); code != 0 {
		t.Fatalf("open --create of an existing scope: exit %d %s", code, errOut)
	}
}

func listKeys(t *testing.T, h harness, scope string) ([]*signerv1.Key, error) {
	t.Helper()
	resp, err := signerv1.NewRotationServiceClient(h.env.Dial(t, h.env.Issue(t, signertest.OperatorID))).
		ListKeys(context.Background(), &signerv1.ListKeysRequest{Scope: scope})
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

var stepTime = regexp.MustCompile(`not ready to (commit|retire) until (\S+)`)

// A step refused inside its window says which step and when it will be
// accepted: commit at the committable_at rotate open printed, retire at the
// end of the verify-only window.
func TestProcessNotReadySaysWhichStepAndWhen(t *testing.T) {
	h := start(t) // pre-publication 1m, verify-only 1h
	code, out, _ := h.exe(t, nil, "--output", "json", "rotate", "open", signertest.Scope)
	var opened struct {
		Key struct {
			KeyID string `json:"key_id"`
		} `json:"key"`
		CommittableAt string `json:"committable_at"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &opened) != nil {
		t.Fatalf("open: %d %s", code, out)
	}
	committable, err := time.Parse(time.RFC3339Nano, opened.CommittableAt)
	if err != nil {
		t.Fatal(err)
	}
	wantStep := func(errOut, step string, at time.Time) {
		t.Helper()
		m := stepTime.FindStringSubmatch(errOut)
		if m == nil || m[1] != step {
			t.Fatalf("stderr %q does not say not ready to %s", errOut, step)
		}
		got, err := time.Parse(time.RFC3339Nano, m[2])
		if err != nil || !got.Equal(at) {
			t.Fatalf("not ready to %s until %s, want %s", step, m[2], at.Format(time.RFC3339Nano))
		}
	}
	code, out, errOut := h.exe(t, nil, "rotate", "commit", signertest.Scope, opened.Key.KeyID)
	if code != 1 || out != "" {
		t.Fatalf("early commit: exit %d %s", code, errOut)
	}
	wantStep(errOut, "commit", committable)

	h.env.Clock.Advance(time.Minute)
	code, out, errOut = h.exe(t, nil, "--output", "json", "rotate", "commit", signertest.Scope, opened.Key.KeyID)
	var committed struct {
		Previous struct {
			KeyID         string `json:"key_id"`
			DeactivatedAt string `json:"deactivated_at"`
		} `json:"previous"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &committed) != nil || committed.Previous.KeyID == "" {
		t.Fatalf("commit: exit %d\n%s%s", code, out, errOut)
	}
	demoted, err := time.Parse(time.RFC3339Nano, committed.Previous.DeactivatedAt)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut = h.exe(t, nil, "rotate", "retire", signertest.Scope, committed.Previous.KeyID)
	if code != 1 || out != "" || strings.Contains(errOut, "not ready to commit") {
		t.Fatalf("early retire: exit %d %s", code, errOut)
	}
	wantStep(errOut, "retire", demoted.Add(time.Hour))
}

var microTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

// JSON is the same everywhere: a key has the same fields in keys list and
// in every rotate step, times are RFC 3339 UTC with microseconds or null,
// rotate open carries committable_at, and audit entries use the same time
// format. Tables print the same times.
func TestProcessJSONIsConsistent(t *testing.T) {
	h := start(t)
	code, out, errOut := h.exe(t, nil, "--output", "json", "keys", "list")
	var listed []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 {
		t.Fatalf("keys list: exit %d\n%s%s", code, out, errOut)
	}
	keyFields := fieldNames(listed[0])
	if want := "activated_at created_at deactivated_at key_id public_key retired_at scope state"; keyFields != want {
		t.Fatalf("key fields %q, want %q", keyFields, want)
	}
	wantTimes(t, listed[0], "created_at", "activated_at")
	wantNull(t, listed[0], "deactivated_at", "retired_at")

	code, out, errOut = h.exe(t, nil, "--output", "json", "rotate", "open", signertest.Scope)
	var opened map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &opened) != nil {
		t.Fatalf("rotate open: exit %d\n%s%s", code, out, errOut)
	}
	if got := fieldNames(opened); got != "committable_at key previous step" {
		t.Fatalf("rotate open fields %q", got)
	}
	wantTimes(t, opened, "committable_at")
	wantNull(t, opened, "previous")
	key := opened["key"].(map[string]any)
	if fieldNames(key) != keyFields {
		t.Fatalf("rotate open key fields %q, keys list %q", fieldNames(key), keyFields)
	}
	wantTimes(t, key, "created_at")
	wantNull(t, key, "activated_at", "deactivated_at", "retired_at")

	code, out, errOut = h.exe(t, nil, "--output", "json", "rotate", "abort", signertest.Scope, key["key_id"].(string))
	var aborted map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &aborted) != nil || fieldNames(aborted) != "key previous step" || aborted["step"] != "abort" {
		t.Fatalf("rotate abort: exit %d\n%s%s", code, out, errOut)
	}
	wantTimes(t, aborted["key"].(map[string]any), "created_at", "retired_at")

	code, out, errOut = h.exe(t, nil, "--output", "json", "audit", "tail", "--limit", "3")
	dec := json.NewDecoder(strings.NewReader(out))
	n := 0
	for ; ; n++ {
		var e map[string]any
		if err := dec.Decode(&e); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("audit tail: %v\n%s", err, out)
		}
		wantTimes(t, e, "timestamp")
	}
	if code != 0 || n != 3 {
		t.Fatalf("audit tail: exit %d, %d entries\n%s", code, n, errOut)
	}

	// The table prints the same times, "-" where JSON has null.
	code, out, _ = h.exe(t, nil, "keys", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "SCOPE") {
		t.Fatalf("keys list table: %d\n%s", code, out)
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); f[1] == listed[0]["key_id"] {
			if len(f) != 7 || !microTime.MatchString(f[3]) || f[3] != listed[0]["created_at"] || f[4] != listed[0]["activated_at"] || f[5] != "-" {
				t.Fatalf("table row %q", l)
			}
			return
		}
	}
	t.Fatalf("the ACTIVE key is not in the table:\n%s", out)
}

func fieldNames(m map[string]any) string {
	var names []string
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

func wantTimes(t *testing.T, m map[string]any, fields ...string) {
	t.Helper()
	for _, f := range fields {
		s, ok := m[f].(string)
		if !ok || !microTime.MatchString(s) {
			t.Fatalf("%s = %#v, want RFC 3339 UTC with microseconds", f, m[f])
		}
	}
}

func wantNull(t *testing.T, m map[string]any, fields ...string) {
	t.Helper()
	for _, f := range fields {
		if v, present := m[f]; !present || v != nil {
			t.Fatalf("%s = %#v (present %v), want null", f, v, present)
		}
	}
}

// audit tail --follow leaves out the entries of its own polls (each poll is
// audited: an admission and an audit_read entry) unless --include-own, and
// stops cleanly (exit 0) on SIGINT.
func TestProcessAuditTailFollowExcludesOwnReads(t *testing.T) {
	h := start(t)
	core := signerv1.NewSignerServiceClient(h.env.Dial(t, h.env.Issue(t, signertest.CoreID)))
	sign := func() string {
		t.Helper()
		r, err := core.Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("tail")})
		if err != nil {
			t.Fatal(err)
		}
		return r.RequestId
	}
	const list = "/plexsphere.signer.v1.AuditService/List"
	for _, tc := range []struct {
		name    string
		extra   []string
		wantOwn bool
	}{
		{"default", nil, false},
		{"include-own", []string{"--include-own"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, h.args...), "--output", "json", "audit", "tail", "--follow", "--every", "20ms")
			cmd := exec.Command(signerctlBin(t), append(args, tc.extra...)...)
			cmd.Env = cleanEnv()
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			entries := make(chan map[string]any)
			go func() {
				defer close(entries)
				dec := json.NewDecoder(stdout)
				for {
					var e map[string]any
					if dec.Decode(&e) != nil {
						return
					}
					entries <- e
				}
			}()
			ownSeen := 0
			// waitFor reads entries until one of request id arrives.
			waitFor := func(id string) {
				t.Helper()
				timeout := time.After(30 * time.Second)
				for {
					select {
					case e, ok := <-entries:
						if !ok {
							t.Fatalf("tail ended: %s", errb.String())
						}
						if e["method"] == list {
							ownSeen++
						}
						if e["request_id"] == id {
							return
						}
					case <-timeout:
						t.Fatalf("request %s never printed", id)
					}
				}
			}
			// Sign 1 is printed by some poll P, whose own entries are
			// committed before P answers, so before sign 2 is made: the
			// poll that prints sign 2 has read them too.
			waitFor(sign())
			waitFor(sign())
			if tc.wantOwn {
				for ownSeen == 0 {
					waitFor(sign())
				}
			}
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			for e := range entries {
				if e["method"] == list {
					ownSeen++
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("tail after SIGINT: %v %s", err, errb.String())
			}
			if (ownSeen > 0) != tc.wantOwn {
				t.Fatalf("%d entries of its own polls printed, want them: %v", ownSeen, tc.wantOwn)
			}
		})
	}
}
