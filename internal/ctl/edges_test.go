package ctl_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// Help needs nothing: no identity, no signer. Every command's --help and
// -h, help <command> and the groups' --help print a usage and exit 0; a
// group without a command is a usage error; a real command without the
// identity settings is a configuration error naming flag and variable.
func TestProcessHelpNeedsNoIdentity(t *testing.T) {
	var none harness
	for _, args := range [][]string{
		{"help"}, {"-h"}, {"--help"},
		{"help", "keys"}, {"help", "audit", "export"}, {"help", "bench"}, {"help", "rotate", "open"},
		{"keys", "--help"}, {"keys", "-h"}, {"keys", "list", "--help"},
		{"rotate", "--help"}, {"rotate", "open", "--help"}, {"rotate", "commit", "-h"},
		{"audit", "--help"}, {"audit", "tail", "--help"}, {"audit", "prove", "--help"}, {"audit", "verify", "-h"},
		{"audit", "checkpoint-key", "--help"}, {"audit", "export", "--help"}, {"audit", "consistency", "--help"},
		{"jwks", "--help"}, {"jwks", "payments", "-h"}, {"bench", "--help"},
	} {
		code, out, errOut := none.exe(t, nil, args...)
		if code != 0 || !strings.Contains(out+errOut, "usage: signerctl") || strings.Contains(errOut, "invalid configuration") {
			t.Errorf("%v: exit %d\nstdout %s\nstderr %s", args, code, out, errOut)
		}
	}
	for _, group := range []string{"audit", "rotate"} {
		code, _, errOut := none.exe(t, nil, group)
		if code != 2 || !strings.Contains(errOut, group+" takes a command") || !strings.Contains(errOut, "usage: signerctl [global flags] "+group+" <command>") {
			t.Errorf("%s alone: exit %d\n%s", group, code, errOut)
		}
	}
	code, out, errOut := none.exe(t, nil, "keys", "list")
	if code != 2 || out != "" || !strings.Contains(errOut, "--signer-spiffe-id / SIGNERCTL_SIGNER_SPIFFE_ID: required") ||
		!strings.Contains(errOut, "--svid-cert / SIGNERCTL_SVID_CERT_FILE") || !strings.Contains(errOut, "--workload-api-addr / SIGNERCTL_WORKLOAD_API_ADDR") {
		t.Fatalf("keys list without identity: exit %d\n%s%s", code, out, errOut)
	}
}

// --version and version need nothing either, and say which build this is.
func TestProcessVersionNeedsNoIdentity(t *testing.T) {
	var none harness
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, out, errOut := none.exe(t, nil, args...)
		if code != 0 || !strings.HasPrefix(out, "signerctl ") || !strings.Contains(out, "(commit ") || !strings.Contains(out, "go1.") {
			t.Errorf("%v: exit %d\nstdout %s\nstderr %s", args, code, out, errOut)
		}
	}
}

// An identity file that is missing, or a trust bundle the signer's
// certificate does not chain to, is a configuration mistake: exit 2 naming
// the setting and the file, not 3 (signer unavailable).
func TestProcessIdentityFilesAreConfiguration(t *testing.T) {
	h := start(t)
	missing := filepath.Join(t.TempDir(), "nope.crt")
	for _, tc := range []struct{ flag, setting string }{
		{"--svid-cert", "--svid-cert / SIGNERCTL_SVID_CERT_FILE"},
		{"--svid-key", "--svid-key / SIGNERCTL_SVID_KEY_FILE"},
		{"--trust-bundle", "--trust-bundle / SIGNERCTL_TRUST_BUNDLE_FILE"},
	} {
		bad := harness{env: h.env, args: append(without(h.args, tc.flag), tc.flag, missing)}
		code, out, errOut := bad.exe(t, nil, "keys", "list")
		if code != 2 || out != "" || !strings.Contains(errOut, tc.setting+": open "+missing) {
			t.Errorf("missing %s: exit %d\n%s%s", tc.flag, code, out, errOut)
		}
	}

	other, err := devpki.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	// The operator's SVID does not chain to its bundle (a bundle of
	// another CA): the signer would end the handshake; found before.
	foreign := writeTemp(t, "foreign.crt", string(other.BundlePEM()))
	bad := harness{env: h.env, args: append(without(h.args, "--trust-bundle"), "--trust-bundle", foreign)}
	code, out, errOut := bad.exe(t, nil, "keys", "list")
	if code != 2 || out != "" || !strings.Contains(errOut, "--svid-cert / SIGNERCTL_SVID_CERT_FILE: the SVID in ") ||
		!strings.Contains(errOut, "("+signertest.OperatorID+") does not chain to --trust-bundle / SIGNERCTL_TRUST_BUNDLE_FILE ("+foreign+")") {
		t.Fatalf("a foreign trust bundle: exit %d\n%s%s", code, out, errOut)
	}

	// A whole identity of another CA: the signer's certificate does not
	// verify against this bundle.
	svid, err := other.Issue(signertest.OperatorID)
	if err != nil {
		t.Fatal(err)
	}
	files, err := other.WriteFiles(t.TempDir(), "op", svid)
	if err != nil {
		t.Fatal(err)
	}
	stranger := harness{env: h.env, args: append(without(without(without(h.args, "--svid-cert"), "--svid-key"), "--trust-bundle"),
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--trust-bundle", files.Bundle)}
	code, out, errOut = stranger.exe(t, nil, "keys", "list")
	if code != 2 || out != "" || !strings.Contains(errOut, "presents a certificate that does not verify against --trust-bundle / SIGNERCTL_TRUST_BUNDLE_FILE ("+files.Bundle+")") {
		t.Fatalf("the signer's certificate does not verify: exit %d\n%s%s", code, out, errOut)
	}
}

// The signer's errors keep what it knows: keys alone lists, a second
// rotate open names the PENDING key and how to close it, a denied
// identity is told which allow-list admits operators, a seq beyond the log
// says the log's size.
func TestProcessErrorsSayWhatTheSignerKnows(t *testing.T) {
	h := start(t)
	code, list, errOut := h.exe(t, nil, "keys", "list")
	if code != 0 {
		t.Fatalf("keys list: exit %d %s", code, errOut)
	}
	if code, out, errOut := h.exe(t, nil, "keys"); code != 0 || out != list {
		t.Fatalf("keys: exit %d\n%s%s\nwant\n%s", code, out, errOut, list)
	}

	code, out, errOut := h.exe(t, nil, "--output", "json", "rotate", "open", "payments")
	var opened struct {
		Key struct {
			KeyID string `json:"key_id"`
		} `json:"key"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &opened) != nil || opened.Key.KeyID == "" {
		t.Fatalf("rotate open: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = h.exe(t, nil, "rotate", "open", "payments")
	id := opened.Key.KeyID
	if code != 1 || out != "" || !strings.Contains(errOut, "FailedPrecondition: signing: rotation in progress: scope \"payments\" has PENDING key "+id) ||
		!strings.Contains(errOut, "signerctl rotate commit payments "+id) || !strings.Contains(errOut, "signerctl rotate abort payments "+id) {
		t.Fatalf("a second rotate open: exit %d\n%s%s", code, out, errOut)
	}

	core := harness{env: h.env, args: identityArgs(t, h.env, signertest.CoreID)}
	code, out, errOut = core.exe(t, nil, "rotate", "open", "payments")
	if code != 4 || out != "" || !strings.Contains(errOut, "PermissionDenied: signing: client identity denied\n") ||
		!strings.Contains(errOut, "does not admit "+signertest.CoreID) || !strings.Contains(errOut, "--rotation-allow-spiffe-id / SIGNER_ROTATION_ALLOW_SPIFFE_IDS") {
		t.Fatalf("a denied identity: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = h.pinned().exe(t, nil, "audit", "prove", "--seq", "999999")
	if code != 1 || out != "" || !strings.Contains(errOut, "NotFound: entry 999999 does not exist: the log has ") {
		t.Fatalf("prove beyond the log: exit %d\n%s%s", code, out, errOut)
	}
}

// tailJSON runs audit tail --output json and returns the entries' request
// ids and seqs, and stderr.
func tailJSON(t *testing.T, h harness, args ...string) (ids []string, seqs []uint64, errOut string) {
	t.Helper()
	code, out, errOut := h.exe(t, nil, append([]string{"--output", "json", "audit", "tail"}, args...)...)
	if code != 0 {
		t.Fatalf("audit tail %v: exit %d\n%s%s", args, code, out, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var e struct {
			Seq       uint64 `json:"seq"`
			RequestID string `json:"request_id"`
		}
		if err := dec.Decode(&e); err == io.EOF {
			return ids, seqs, errOut
		} else if err != nil {
			t.Fatalf("audit tail %v: %v\n%s", args, err, out)
		}
		ids, seqs = append(ids, e.RequestID), append(seqs, e.Seq)
	}
}

// audit tail prints the newest --limit entries, oldest first, and says
// when older ones exist; --after reads forward and says when more follow;
// the table has no blank lines.
func TestProcessAuditTailNewest(t *testing.T) {
	h := start(t)
	var signs []string
	for range 5 {
		signs = append(signs, signed(t, h.env))
	}
	ids, seqs, errOut := tailJSON(t, h, "--relation", "sign", "--limit", "3")
	if strings.Join(ids, " ") != strings.Join(signs[2:], " ") || !strings.Contains(errOut, "older entries precede seq "+itoa(seqs[0])) {
		t.Fatalf("the newest 3 signs: %v, want %v\n%s", ids, signs[2:], errOut)
	}
	ids, _, errOut = tailJSON(t, h, "--relation", "sign", "--limit", "10")
	if strings.Join(ids, " ") != strings.Join(signs, " ") || strings.Contains(errOut, "older") {
		t.Fatalf("every sign: %v, want %v\n%s", ids, signs, errOut)
	}
	ids, seqs, errOut = tailJSON(t, h, "--relation", "sign", "--after", "0", "--limit", "2")
	if strings.Join(ids, " ") != strings.Join(signs[:2], " ") || !strings.Contains(errOut, "more entries follow seq "+itoa(seqs[1])+": signerctl audit tail --after "+itoa(seqs[1])) {
		t.Fatalf("the first 2 signs: %v, want %v\n%s", ids, signs[:2], errOut)
	}
	code, out, errOut := h.exe(t, nil, "audit", "tail", "--limit", "4")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 5 || !strings.HasPrefix(lines[0], "SEQ ") || !strings.Contains(errOut, "older entries precede") {
		t.Fatalf("table: exit %d\n%s%s", code, out, errOut)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// audit tail --follow in a table prints only new rows: no line for a poll
// with nothing new, none of its own reads, and every row's columns where
// the header put them.
func TestProcessAuditTailFollowTable(t *testing.T) {
	h := start(t)
	signed(t, h.env)
	cmd := exec.Command(signerctlBin(t), append(append([]string{}, h.args...), "audit", "tail", "--follow", "--every", "20ms")...)
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
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var got []string
	signs := 0
	// wantSigns reads lines until n Sign outcome rows were printed.
	wantSigns := func(n int) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for signs < n {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("tail ended: %s", errb.String())
				}
				got = append(got, l)
				if strings.Contains(l, " sign ") && strings.HasSuffix(l, "SignerService/Sign") {
					signs++
				}
			case <-timeout:
				t.Fatalf("%d sign rows, want %d:\n%s", signs, n, strings.Join(got, "\n"))
			}
		}
	}
	wantSigns(1)
	// Ten polls with nothing new go by (each is itself audited, two
	// entries, left out of the output) before the next sign.
	polls := h.env.LastSeq(t)
	for h.env.LastSeq(t) < polls+20 {
		time.Sleep(10 * time.Millisecond) // a condition polled, not a guess at timing
	}
	signed(t, h.env)
	wantSigns(2)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		got = append(got, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tail after SIGINT: %v %s", err, errb.String())
	}
	header := got[0]
	cols := []string{"TIME", "SUBJECT", "RELATION", "OBJECT", "REASON", "CODE", "METHOD"}
	for _, l := range got[1:] {
		if strings.TrimSpace(l) == "" || strings.Contains(l, "AuditService") {
			t.Fatalf("a blank line or an own read in --follow's output:\n%s", strings.Join(got, "\n"))
		}
		for _, c := range cols {
			i := strings.Index(header, c)
			if len(l) <= i || l[i-1] != ' ' || l[i] == ' ' {
				t.Fatalf("column %s of %q is not under its header:\n%s", c, l, strings.Join(got, "\n"))
			}
		}
	}
}

// The prune traps: a prune run without the store's settings refuses the
// missing store (naming the setting) instead of creating an empty one in
// the working directory; after a prune, proving a pruned entry is
// NotFound saying it was pruned and where its proof is, not Internal.
func TestProcessProveAfterPrune(t *testing.T) {
	h := start(t)
	for range 10 {
		signed(t, h.env)
	}
	p := h.pinned()
	export := filepath.Join(t.TempDir(), "audit-0001.jsonl")
	code, out, errOut := p.exe(t, nil, "audit", "export", "--to", export, "--upto", "16")
	if code != 0 || !strings.Contains(out, "\n  plexsphere-signer --prune-audit-upto 16 --prune-audit-export "+export+"\n") {
		t.Fatalf("audit export: exit %d\n%s%s", code, out, errOut)
	}
	h.env.Stop()
	// The prune works on a copy: the stopped test signer's store stays
	// open in this process (and bbolt locks the file).
	pruned := filepath.Join(t.TempDir(), "signer.db")
	if err := h.env.Bolt.View(func(tx *bolt.Tx) error { return tx.CopyFile(pruned, 0o600) }); err != nil {
		t.Fatal(err)
	}

	// As printed, in a directory without a store and without the store's
	// settings: refused, nothing created.
	cwd := t.TempDir()
	bare := config.Signer{Store: "bbolt", BboltPath: "signer.db", Provider: "local", LocalKEKFile: h.env.Config.LocalKEKFile,
		PruneAuditUpTo: 16, PruneAuditExport: export, AuditMaxBatch: 1, DenialMaxWait: time.Second}
	t.Chdir(cwd)
	err := bare.Validate()
	if err == nil || !strings.Contains(err.Error(), "--bbolt-path / SIGNER_BBOLT_PATH: stat signer.db: no such file or directory") {
		t.Fatalf("a prune without the store: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cwd, "signer.db")); !os.IsNotExist(err) {
		t.Fatalf("the refused prune created a store: %v", err)
	}

	cfg := h.env.Config
	cfg.BboltPath, cfg.PruneAuditUpTo, cfg.PruneAuditExport = pruned, 16, export
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := server.Maintain(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	st, err := bbolt.Open(pruned)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env2 := h.env.Restart(t, signertest.WithStore(st))
	h = harness{env: env2, args: identityArgs(t, env2, signertest.OperatorID)}
	code, out, errOut = h.pinned().exe(t, nil, "audit", "prove", "--seq", "3")
	if code != 1 || out != "" || !strings.Contains(errOut, "NotFound: entry 3 was pruned: the store holds entries from seq 17 on (pruned up to 16); use the export") {
		t.Fatalf("prove a pruned entry: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := h.pinned().exe(t, nil, "audit", "prove", "--seq", "18"); code != 0 {
		t.Fatalf("prove an entry after the prune: exit %d %s", code, errOut)
	}
}

// A pinned checkpoint key the signer does not use (left over from another
// run) fails audit verify (exit 5) showing both keys and how to fix it.
func TestProcessVerifyShowsBothKeys(t *testing.T) {
	h := start(t)
	other := start(t)
	code, out, errOut := h.exe(t, nil, "--checkpoint-key", other.env.CheckpointKey, "audit", "verify")
	if code != 5 || out != "" || !strings.Contains(errOut, "expected (--checkpoint-key / SIGNERCTL_CHECKPOINT_KEY): "+other.env.CheckpointKey+"\n") ||
		!strings.Contains(errOut, "found (the signer reports): "+h.env.CheckpointKey+"\n") || !strings.Contains(errOut, "SIGNERCTL_CHECKPOINT_KEY="+h.env.CheckpointKey) {
		t.Fatalf("a leftover checkpoint key: exit %d\n%s%s", code, out, errOut)
	}
}
