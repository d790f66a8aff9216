package ctl_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// signed makes a Sign call as the core and returns its request id.
func signed(t *testing.T, env *signertest.Env) string {
	t.Helper()
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	r, err := core.Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("prove me")})
	if err != nil {
		t.Fatal(err)
	}
	return r.RequestId
}

// pinned is the harness with the log's checkpoint key pinned (no warning,
// no CheckpointVerifierKey call) and more global flags.
func (h harness) pinned(flags ...string) harness {
	return harness{env: h.env, args: append(append(append([]string{}, h.args...), "--checkpoint-key", h.env.CheckpointKey), flags...)}
}

func (h harness) verifier(t *testing.T) *auditlog.Verifier {
	t.Helper()
	v, err := auditlog.NewVerifier(h.env.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// checkpointJSON runs audit checkpoint --output json.
func (h harness) checkpoint(t *testing.T, flags ...string) (size uint64, note string) {
	t.Helper()
	code, out, errOut := h.run(t, append([]string{"--output", "json", "audit", "checkpoint"}, flags...)...)
	var cp struct {
		Size uint64 `json:"size"`
		Note string `json:"note"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &cp) != nil {
		t.Fatalf("audit checkpoint %v: exit %d\n%s%s", flags, code, out, errOut)
	}
	return cp.Size, cp.Note
}

func writeTemp(t *testing.T, name, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// audit prove prints a request's two entries with their leaf indexes and
// inclusion proofs and the checkpoint, in text and JSON; --format
// tlog-proof is a C2SP tlog-proof of the outcome entry (or of --seq's) that
// verifies offline and fails on any changed byte; --size proves to an older
// stored checkpoint; a request not in the log is NotFound saying so.
func TestAuditProve(t *testing.T) {
	h := start(t)
	p := h.pinned()
	rid := signed(t, h.env)
	older, _ := p.checkpoint(t)
	v := h.verifier(t)

	code, out, errOut := p.run(t, "audit", "prove", rid)
	if code != ctl.ExitOK || len(regexp.MustCompile(`(?m)^  request_id +`+rid+`$`).FindAllString(out, -1)) != 2 || !strings.Contains(out, "(leaf index 1)") ||
		!strings.Contains(out, "inclusion proof (") || !regexp.MustCompile(`(?m)^  relation +sign$`).MatchString(out) ||
		!strings.Contains(out, "no cosignatures") || !strings.Contains(out, "verified: 2 entries in the checkpoint of size") {
		t.Fatalf("audit prove: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = p.run(t, "--output", "json", "audit", "prove", rid)
	var proved struct {
		Entries []struct {
			Seq            uint64   `json:"seq"`
			Relation       string   `json:"relation"`
			RequestID      string   `json:"request_id"`
			Leaf           []byte   `json:"leaf"`
			LeafIndex      uint64   `json:"leaf_index"`
			InclusionProof [][]byte `json:"inclusion_proof"`
		} `json:"entries"`
		Checkpoint struct {
			Size uint64 `json:"size"`
			Note string `json:"note"`
		} `json:"checkpoint"`
		Cosigners []string `json:"cosigners"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &proved) != nil || len(proved.Entries) != 2 || proved.Cosigners != nil {
		t.Fatalf("audit prove --output json: exit %d\n%s%s", code, out, errOut)
	}
	cp, err := v.Open([]byte(proved.Checkpoint.Note))
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range proved.Entries {
		if e.RequestID != rid || e.LeafIndex != e.Seq-1 || e.Relation != []string{"connect", "sign"}[i] {
			t.Fatalf("entry %d: %+v", i, e)
		}
		if err := auditlog.VerifyInclusion(cp, e.LeafIndex, e.Leaf, e.InclusionProof); err != nil {
			t.Fatalf("the printed proof of entry %d: %v", e.Seq, err)
		}
	}
	outcome := proved.Entries[1].Seq
	// --format json is --output json.
	if code, out2, _ := p.run(t, "audit", "prove", "--format", "json", rid); code != ctl.ExitOK || !json.Valid([]byte(out2)) {
		t.Fatalf("--format json: exit %d\n%s", code, out2)
	}

	file := filepath.Join(t.TempDir(), "proof")
	code, out, errOut = p.run(t, "audit", "prove", "--format", "tlog-proof", "--out", file, rid)
	if code != ctl.ExitOK || out != "" {
		t.Fatalf("tlog-proof --out: exit %d\n%s%s", code, out, errOut)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := v.VerifyProof(b, nil)
	if err != nil || e.Seq != outcome || e.RequestID.String() != rid || e.Relation != auditlog.RelationSign || e.Reason != auditlog.ReasonGranted || len(e.SignatureSHA256) != 32 {
		t.Fatalf("the tlog-proof: entry %+v, %v\n%s", e, err, b)
	}
	tamperedFails(t, v, nil, b)

	code, out, errOut = p.run(t, "audit", "prove", "--format", "tlog-proof", "--seq", strconv.FormatUint(outcome-1, 10))
	if e, _, err := v.VerifyProof([]byte(out), nil); code != ctl.ExitOK || err != nil || e.Seq != outcome-1 || e.Relation != auditlog.RelationConnect {
		t.Fatalf("--seq %d: exit %d, entry %+v, %v\n%s", outcome-1, code, e, err, errOut)
	}
	code, out, errOut = p.run(t, "audit", "prove", "--format", "tlog-proof", "--size", strconv.FormatUint(older, 10), rid)
	if _, got, err := v.VerifyProof([]byte(out), nil); code != ctl.ExitOK || err != nil || got.Size != older {
		t.Fatalf("--size %d: exit %d, checkpoint %d, %v\n%s", older, code, got.Size, err, errOut)
	}

	// Not in the log: NotFound (exit 1), said as such, not "key not found".
	code, out, errOut = p.run(t, "audit", "prove", auditlog.NewRequestID().String())
	if code != ctl.ExitRefused || out != "" || !strings.Contains(errOut, "NotFound: request ") || !strings.Contains(errOut, "not found in the audit log") || strings.Contains(errOut, "key not found") {
		t.Fatalf("unknown request: exit %d\n%s%s", code, out, errOut)
	}
	// A size with no stored checkpoint is NotFound too.
	if code, _, errOut := p.run(t, "audit", "prove", "--size", strconv.FormatUint(older+1, 10), rid); code != ctl.ExitRefused || !strings.Contains(errOut, "not found") {
		t.Fatalf("--size %d: exit %d %s", older+1, code, errOut)
	}
	for _, args := range [][]string{{"not-a-request-id"}, {}, {"--seq", "3", rid}, {"--format", "pem", rid}} {
		if code, _, _ := p.run(t, append([]string{"audit", "prove"}, args...)...); code != ctl.ExitUsage {
			t.Fatalf("audit prove %v: exit %d, want usage", args, code)
		}
	}
}

// tamperedFails changes each byte of the proof's leaf and hashes, its
// index and its checkpoint's root, one at a time, and wants every one
// refused.
func tamperedFails(t *testing.T, v *auditlog.Verifier, policy *auditlog.WitnessPolicy, b []byte) {
	t.Helper()
	proof, err := auditlog.ParseProof(b)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, p auditlog.Proof) {
		t.Helper()
		m, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := v.VerifyProof(m, policy); err == nil {
			t.Fatalf("a proof with %s verifies", what)
		}
	}
	for i := range proof.Leaf {
		p := proof
		p.Leaf = bytes.Clone(proof.Leaf)
		p.Leaf[i] ^= 1
		check(fmt.Sprintf("leaf byte %d changed", i), p)
	}
	for j, h := range proof.Hashes {
		for i := range h {
			p := proof
			p.Hashes = append([][]byte{}, proof.Hashes...)
			p.Hashes[j] = bytes.Clone(h)
			p.Hashes[j][i] ^= 0x80
			check(fmt.Sprintf("byte %d of hash %d changed", i, j), p)
		}
	}
	p := proof
	p.Index++
	check("another index", p)
	// And in the text: one byte of the checkpoint's root line.
	i := bytes.LastIndex(b, []byte("\n\n"))
	i = bytes.LastIndexByte(b[:i], '\n') + 1
	bad := bytes.Clone(b)
	bad[i+1] ^= 1
	if _, _, err := v.VerifyProof(bad, policy); err == nil {
		t.Fatal("a proof with its checkpoint's root changed verifies")
	}
}

// --help on every command and group (and help <command>) prints its usage,
// exits 0 and sends nothing: "--help" is never taken for a request id or
// a scope, and the signer's audit log does not grow.
func TestHelpSendsNothing(t *testing.T) {
	h := start(t)
	before := h.env.LastSeq(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "prove", "--help"}, "audit prove"},
		{[]string{"audit", "prove", "-h"}, "audit prove"},
		{[]string{"audit", "prove", "--seq", "2", "--help"}, "audit prove"},
		{[]string{"jwks", "--help"}, "jwks"},
		{[]string{"jwks", "payments", "-h"}, "jwks"},
		{[]string{"audit", "consistency", "--help"}, "audit consistency"},
		{[]string{"audit", "verify", "--help"}, "audit verify"},
		{[]string{"audit", "checkpoint", "--help"}, "audit checkpoint"},
		{[]string{"help", "audit", "prove"}, "audit prove"},
		{[]string{"help", "jwks"}, "jwks"},
		{[]string{"keys", "--help"}, "keys"},
		{[]string{"keys", "list", "-h"}, "keys list"},
		{[]string{"rotate", "--help"}, "rotate"},
		{[]string{"rotate", "open", "--help"}, "rotate open"},
		{[]string{"rotate", "commit", "payments", "--help"}, "rotate commit"},
		{[]string{"audit", "--help"}, "audit"},
		{[]string{"audit", "tail", "--help"}, "audit tail"},
		{[]string{"audit", "export", "--help"}, "audit export"},
		{[]string{"help", "keys"}, "keys"},
	} {
		code, out, errOut := h.run(t, tc.args...)
		if code != ctl.ExitOK || out != "" || !strings.Contains(errOut, "usage: signerctl [global flags] "+tc.want+" ") {
			t.Fatalf("%v: exit %d\nstdout %q\nstderr %s", tc.args, code, out, errOut)
		}
	}
	_, _, errOut := h.run(t, "audit", "prove", "--help")
	for _, flag := range []string{"-seq", "-size", "-format", "tlog-proof", "-out"} {
		if !strings.Contains(errOut, flag) {
			t.Fatalf("audit prove --help does not name %s:\n%s", flag, errOut)
		}
	}
	code, out, _ := h.run(t, "help")
	if code != ctl.ExitOK || !strings.Contains(out, "audit consistency") || !strings.Contains(out, "-witness-policy") || !strings.Contains(out, "6 the log was restored") {
		t.Fatalf("help: exit %d\n%s", code, out)
	}
	if after := h.env.LastSeq(t); after != before {
		t.Fatalf("--help sent calls: the audit log grew from %d to %d entries", before, after)
	}
}

// audit consistency proves a stored checkpoint (or a saved one) is a
// prefix of a newer one, in text and JSON, and exits 5 on a checkpoint
// signed by the log's key for another tree (a fork).
func TestAuditConsistency(t *testing.T) {
	h := start(t)
	p := h.pinned()
	v := h.verifier(t)
	oldSize, oldNote := p.checkpoint(t)
	saved := writeTemp(t, "cp", oldNote)
	for range 3 {
		p.run(t, "keys", "list")
	}
	newSize, _ := p.checkpoint(t)

	old, to := strconv.FormatUint(oldSize, 10), strconv.FormatUint(newSize, 10)
	code, out, errOut := p.run(t, "audit", "consistency", old, to)
	if code != ctl.ExitOK || !strings.Contains(out, "old checkpoint: example.org/plexsphere-signer, size "+old) ||
		!strings.Contains(out, ", size "+to+", root ") || !strings.Contains(out, "consistency proof (") ||
		!strings.Contains(out, "verified: the log at size "+old+" is a prefix of the log at size "+to+"\n") {
		t.Fatalf("audit consistency %s %s: exit %d\n%s%s", old, to, code, out, errOut)
	}
	code, out, errOut = p.run(t, "--output", "json", "audit", "consistency", old, to)
	var proved struct {
		OK  bool `json:"ok"`
		Old struct {
			Note string `json:"note"`
		} `json:"old"`
		New struct {
			Note string `json:"note"`
		} `json:"new"`
		Hashes    [][]byte `json:"hashes"`
		Cosigners []string `json:"cosigners"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &proved) != nil || !proved.OK || len(proved.Hashes) == 0 || proved.Cosigners != nil {
		t.Fatalf("audit consistency --output json: exit %d\n%s%s", code, out, errOut)
	}
	a, err1 := v.Open([]byte(proved.Old.Note))
	b, err2 := v.Open([]byte(proved.New.Note))
	if err1 != nil || err2 != nil || a.Size != oldSize || b.Size != newSize || auditlog.VerifyConsistency(a, b, proved.Hashes) != nil {
		t.Fatalf("the printed proof does not verify: %v %v\n%s", err1, err2, out)
	}
	// The newest by default; a saved checkpoint instead of OLD.
	for _, args := range [][]string{{old}, {"--from", saved}, {"--from", saved, to}, {"--format", "json", old}} {
		code, out, errOut := p.run(t, append([]string{"audit", "consistency"}, args...)...)
		if code != ctl.ExitOK || !strings.Contains(out, "size") {
			t.Fatalf("audit consistency %v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	// Sizes are odd (the bootstrap entry, then two per call): none is
	// stored at an even size.
	if code, _, errOut := p.run(t, "audit", "consistency", strconv.FormatUint(oldSize+1, 10)); code != ctl.ExitRefused || !strings.Contains(errOut, "no stored checkpoint of size") {
		t.Fatalf("an unstored size: exit %d %s", code, errOut)
	}
	if code, _, _ := p.run(t, "audit", "consistency", to, old); code != ctl.ExitUsage {
		t.Fatalf("OLD > NEW: exit %d", code)
	}
	// The log's key signing another tree at the saved size: a fork.
	forged := writeTemp(t, "forged", string(forge(t, h.env, auditlog.EpochOrigin(v.Origin(), 1), oldSize, bytes.Repeat([]byte{7}, 32)).Note))
	code, _, errOut = p.run(t, "audit", "consistency", "--from", forged)
	if code != ctl.ExitBroken || !strings.Contains(errOut, "consistency fails from size "+old) {
		t.Fatalf("a forked checkpoint: exit %d %s", code, errOut)
	}
	if code, _, errOut := p.run(t, "audit", "verify", "--checkpoint", forged); code != ctl.ExitBroken || !strings.Contains(errOut, "consistency fails at size "+old) {
		t.Fatalf("audit verify --checkpoint a forked checkpoint: exit %d %s", code, errOut)
	}
}

// forge signs a checkpoint with the log's own key (what only someone
// holding it could do).
func forge(t *testing.T, env *signertest.Env, origin string, size uint64, root []byte) auditlog.Checkpoint {
	t.Helper()
	k, rec, err := server.LogKey(context.Background(), env.Store, env.Provider, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := audit.NewNoteSigner(origin, ed25519.PublicKey(rec.Public), func(msg []byte) ([]byte, error) {
		return k.Sign(rand.Reader, msg, crypto.Hash(0))
	})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.SignCheckpoint(s, size, root)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// With real witnesses and --witness-policy: audit verify passes and names
// both sizes and the cosigners; checkpoint --witnessed prints the cosigned
// note; prove's tlog-proof verifies offline with the policy; consistency
// names the cosigners; export seals with the witnessed checkpoint. A
// policy naming a witness key that never cosigned, and a witness of the
// policy stopped before the checkpoint is cosigned, are exit 5 naming what
// is missing.
func TestWitnessPolicy(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(time.Now())), signertest.WithWitnesses("w1.example", "w2.example"))
	h := harness{env: env, args: identityArgs(t, env, signertest.OperatorID)}
	policy := env.Config.WitnessPolicyFile
	p := h.pinned("--witness-policy", policy)
	v := h.verifier(t)
	rid := signed(t, env)

	code, out, errOut := p.run(t, "audit", "verify")
	if code != ctl.ExitOK || !strings.Contains(out, "audit log verified") ||
		!strings.Contains(out, "witnessed: the newest witnessed checkpoint has size") || !strings.Contains(out, "cosigned by w1.example, w2.example (checked with the witness policy)") {
		t.Fatalf("audit verify --witness-policy: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = p.run(t, "--output", "json", "audit", "verify")
	var verified struct {
		Checkpoint struct {
			Size uint64 `json:"size"`
		} `json:"checkpoint"`
		Witnessed struct {
			Size uint64 `json:"size"`
			Note string `json:"note"`
		} `json:"witnessed"`
		Cosigners []string `json:"cosigners"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &verified) != nil || verified.Witnessed.Size < verified.Checkpoint.Size ||
		strings.Join(verified.Cosigners, " ") != "w1.example w2.example" {
		t.Fatalf("audit verify --witness-policy --output json: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := v.OpenWitnessed([]byte(verified.Witnessed.Note), env.WitnessPolicy); err != nil {
		t.Fatalf("the witnessed checkpoint printed: %v", err)
	}
	// The same by the variable.
	if code, _, errOut := h.pinned().exe(t, []string{"SIGNERCTL_WITNESS_POLICY_FILE=" + policy}, "audit", "verify"); code != ctl.ExitOK {
		t.Fatalf("SIGNERCTL_WITNESS_POLICY_FILE: exit %d %s", code, errOut)
	}

	code, out, errOut = p.run(t, "audit", "checkpoint", "--witnessed")
	if _, err := v.OpenWitnessed([]byte(out), env.WitnessPolicy); code != ctl.ExitOK || err != nil {
		t.Fatalf("audit checkpoint --witnessed: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	// Without a policy the cosignatures are printed but not checked.
	code, out, errOut = h.pinned().run(t, "audit", "checkpoint", "--witnessed")
	if code != ctl.ExitOK || !env.WitnessPolicy.Satisfied([]byte(out)) || !strings.Contains(errOut, "the cosignatures are not checked") {
		t.Fatalf("audit checkpoint --witnessed without a policy: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = p.run(t, "audit", "prove", "--format", "tlog-proof", rid)
	if e, cp, err := v.VerifyProof([]byte(out), env.WitnessPolicy); code != ctl.ExitOK || err != nil || e.RequestID.String() != rid || e.Relation != auditlog.RelationSign {
		t.Fatalf("tlog-proof with witnesses: exit %d, entry %+v, checkpoint %d, %v\n%s%s", code, e, cp.Size, err, out, errOut)
	}
	tamperedFails(t, v, env.WitnessPolicy, []byte(out))
	code, out, errOut = p.run(t, "audit", "prove", rid)
	if code != ctl.ExitOK || !strings.Contains(out, "cosigned by w1.example, w2.example (checked with the witness policy)") {
		t.Fatalf("audit prove with witnesses: exit %d\n%s%s", code, out, errOut)
	}

	oldSize, _ := p.checkpoint(t)
	code, out, errOut = p.run(t, "--output", "json", "audit", "consistency", strconv.FormatUint(oldSize, 10))
	var consistent struct {
		New struct {
			Note string `json:"note"`
		} `json:"new"`
		Cosigners []string `json:"cosigners"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &consistent) != nil || strings.Join(consistent.Cosigners, " ") != "w1.example w2.example" {
		t.Fatalf("audit consistency with witnesses: exit %d\n%s%s", code, out, errOut)
	}

	// export: the trailer is the witnessed checkpoint, and the export
	// verifies as the prune will check it.
	exportFile := filepath.Join(t.TempDir(), "audit-0001.jsonl")
	if code, out, errOut := p.run(t, "audit", "export", "--to", exportFile, "--upto", "5"); code != ctl.ExitOK {
		t.Fatalf("audit export: exit %d\n%s%s", code, out, errOut)
	}
	f, err := os.Open(exportFile)
	if err != nil {
		t.Fatal(err)
	}
	info, err := audit.VerifyExport(f, v, nil)
	f.Close()
	if err != nil || info.Header.To != 5 {
		t.Fatalf("the export: %+v, %v", info.Header, err)
	}
	if _, err := v.OpenWitnessed(info.Checkpoint.Note, env.WitnessPolicy); err != nil {
		t.Fatalf("the export's checkpoint is not the witnessed one: %v\n%s", err, info.Checkpoint.Note)
	}

	// A policy naming a witness whose key never cosigned anything.
	_, vkey, err := note.GenerateKey(rand.Reader, "w3.example")
	if err != nil {
		t.Fatal(err)
	}
	w3, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	never := writeTemp(t, "never.policy", env.Witnesses[0].PolicyLine()+"\nwitness w3.example "+w3+" http://127.0.0.1:1\ngroup both all w1.example w3.example\nquorum both\n")
	code, out, errOut = h.pinned("--witness-policy", never).run(t, "audit", "verify")
	if code != ctl.ExitBroken || out != "" || !strings.Contains(errOut, "is not cosigned by the witness policy's quorum (--witness-policy / SIGNERCTL_WITNESS_POLICY_FILE): cosigned by w1.example; missing w3.example") {
		t.Fatalf("a policy with a witness that never cosigned: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := h.pinned("--witness-policy", never).run(t, "audit", "prove", rid); code != ctl.ExitBroken || !strings.Contains(errOut, "missing w3.example") {
		t.Fatalf("prove under that policy: exit %d %s", code, errOut)
	}
	if code, _, errOut := h.pinned("--witness-policy", writeTemp(t, "bad.policy", "quorum nobody\n")).run(t, "audit", "verify"); code != ctl.ExitUsage || !strings.Contains(errOut, "--witness-policy / SIGNERCTL_WITNESS_POLICY_FILE") {
		t.Fatalf("a policy that does not parse: exit %d %s", code, errOut)
	}

	// A witness of the policy stops: the signer goes on serving (within
	// its unanchored bound, on a clock that does not move), but what it
	// signs from now on is not cosigned.
	env.Witnesses[1].Stop()
	for range 3 {
		if code, _, errOut := p.run(t, "keys", "list"); code != ctl.ExitOK {
			t.Fatalf("the signer stopped serving: %s", errOut)
		}
	}
	code, out, errOut = p.run(t, "audit", "verify")
	if code != ctl.ExitBroken || out != "" || !strings.Contains(errOut, "are not witnessed: the signer's newest checkpoint has size") ||
		!strings.Contains(errOut, "a witness of the policy (w1.example, w2.example) has not cosigned since") {
		t.Fatalf("a witness stopped: exit %d\n%s%s", code, out, errOut)
	}
	// Without the policy the log itself still verifies.
	if code, _, errOut := h.pinned().run(t, "audit", "verify"); code != ctl.ExitOK {
		t.Fatalf("without the policy: exit %d %s", code, errOut)
	}
}

// A checkpoint saved before a restore is of an earlier epoch: audit verify
// prints the epoch record and exits 0 if the restore kept it (consistent
// with the new epoch's first checkpoint), 6 if the restore lost entries it
// covers. The restore is a real one: a backup of the signer's bbolt file
// taken while it ran (bbolt's Tx.CopyFile), the signer stopped and started
// on the backup with SIGNER_AUDIT_EPOCH=2.
func TestVerifyAcrossEpochs(t *testing.T) {
	h := start(t)
	p := h.pinned()
	for range 3 {
		p.run(t, "keys", "list")
	}
	_, early := p.checkpoint(t)
	earlyFile := writeTemp(t, "early", early)
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := h.env.Bolt.View(func(tx *bolt.Tx) error { return tx.CopyFile(backup, 0o600) }); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		p.run(t, "keys", "list")
	}
	lateSize, late := p.checkpoint(t)
	lateFile := writeTemp(t, "late", late)

	restored, err := bbolt.Open(backup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restored.Close() })
	const reason = "restored the backup of this morning after the disk failed"
	env2 := h.env.Restart(t, signertest.WithStore(restored), signertest.WithConfig(func(c *config.Signer) {
		c.AuditEpoch, c.AuditEpochReason = 2, reason
	}))
	h2 := harness{env: env2, args: identityArgs(t, env2, signertest.OperatorID)}.pinned()

	code, out, errOut := h2.run(t, "audit", "verify", "--checkpoint", earlyFile)
	if code != ctl.ExitOK || !strings.Contains(out, "audit log verified") || !strings.Contains(out, "epoch 2 began at entry ") ||
		!strings.Contains(out, strconv.Quote(reason)) || !strings.Contains(out, "the restore kept it; proved to the first checkpoint of epoch 2") {
		t.Fatalf("a checkpoint the restore kept: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = h2.run(t, "audit", "verify", "--checkpoint", lateFile)
	if code != ctl.ExitRestored || !strings.Contains(out, "audit log verified") || !strings.Contains(out, "epoch 2 began at entry ") ||
		!strings.Contains(out, "the newest checkpoint of epoch 1 it found: size ") ||
		!strings.Contains(errOut, "the log was restored behind your checkpoint: "+lateFile+" (epoch 1, size "+strconv.FormatUint(lateSize, 10)+")") {
		t.Fatalf("a checkpoint the restore went behind: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = h2.run(t, "--output", "json", "audit", "verify", "--checkpoint", lateFile)
	var verified struct {
		OK             bool    `json:"ok"`
		ConsistentWith *string `json:"consistent_with"`
		RestoredBehind *string `json:"restored_behind"`
		Epochs         []struct {
			Epoch              int    `json:"epoch"`
			Seq                uint64 `json:"seq"`
			RestoredSize       uint64 `json:"restored_size"`
			Reason             string `json:"reason"`
			PreviousCheckpoint struct {
				Size uint64 `json:"size"`
			} `json:"previous_checkpoint"`
		} `json:"epochs"`
	}
	if code != ctl.ExitRestored || json.Unmarshal([]byte(out), &verified) != nil || !verified.OK || verified.ConsistentWith != nil ||
		verified.RestoredBehind == nil || len(verified.Epochs) != 1 || verified.Epochs[0].Epoch != 2 || verified.Epochs[0].Reason != reason ||
		verified.Epochs[0].Seq != verified.Epochs[0].RestoredSize+1 || verified.Epochs[0].RestoredSize >= lateSize ||
		verified.Epochs[0].PreviousCheckpoint.Size < lateSize { // the old signer's last, at its stop
		t.Fatalf("--output json: exit %d\n%s%s", code, out, errOut)
	}
	// A checkpoint of the new epoch is checked as before.
	_, now := h2.checkpoint(t)
	if code, out, errOut := h2.run(t, "audit", "verify", "--checkpoint", writeTemp(t, "now", now)); code != ctl.ExitOK || !strings.Contains(out, "consistent with the checkpoint in") {
		t.Fatalf("a checkpoint of epoch 2: exit %d\n%s%s", code, out, errOut)
	}
}
