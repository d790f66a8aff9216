package ctl_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

type harness struct {
	env  *signertest.Env
	args []string // global flags for the operator identity
}

func start(t *testing.T) harness {
	clock := signertest.NewClock(time.Now())
	env := signertest.Start(t, signertest.WithClock(clock), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.VerifyOnly = time.Minute, time.Hour
	}))
	return harness{env: env, args: identityArgs(t, env, signertest.OperatorID)}
}

func identityArgs(t *testing.T, env *signertest.Env, id string) []string {
	svid := env.Issue(t, id)
	files, err := env.CA.WriteFiles(t.TempDir(), "op", svid)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--signer", env.Addr, "--signer-spiffe-id", signertest.SignerID,
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--trust-bundle", files.Bundle}
}

// run runs signerctl and returns its exit code and output.
func (h harness) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := ctl.Main(context.Background(), append(append([]string{}, h.args...), args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestKeysRotateAndJWKS(t *testing.T) {
	h := start(t)
	code, out, _ := h.run(t, "keys", "list")
	if code != ctl.ExitOK || !strings.Contains(out, "payments") || !strings.Contains(out, "ACTIVE") {
		t.Fatalf("keys list: %d\n%s", code, out)
	}
	code, out, _ = h.run(t, "--output", "json", "rotate", "open", "payments")
	var opened struct {
		Key struct {
			KeyID string `json:"key_id"`
			State string `json:"state"`
		} `json:"key"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &opened) != nil || opened.Key.State != "PENDING" {
		t.Fatalf("rotate open: %d\n%s", code, out)
	}
	pending := opened.Key.KeyID
	// Refused inside the pre-publication window: exit 1, the reason on stderr.
	code, _, errOut := h.run(t, "rotate", "commit", "payments", pending)
	if code != ctl.ExitRefused || !strings.Contains(errOut, "rotation step not ready") {
		t.Fatalf("early commit: %d %s", code, errOut)
	}
	// The JWKS publishes the PENDING key beside the ACTIVE one (RFC 8037).
	code, out, _ = h.run(t, "jwks", "payments")
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if code != ctl.ExitOK || json.Unmarshal([]byte(out), &set) != nil || len(set.Keys) != 2 {
		t.Fatalf("jwks: %d\n%s", code, out)
	}
	core := signerv1.NewSignerServiceClient(h.env.Dial(t, h.env.Issue(t, signertest.CoreID)))
	sig, err := core.Sign(context.Background(), &signerv1.SignRequest{Scope: "payments", Payload: []byte("jwks")})
	if err != nil {
		t.Fatal(err)
	}
	verified := false
	for _, k := range set.Keys {
		if k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["alg"] != "EdDSA" || k["use"] != "sig" {
			t.Fatalf("jwk %v", k)
		}
		x, err := base64.RawURLEncoding.DecodeString(k["x"])
		if err != nil || len(x) != 32 {
			t.Fatalf("jwk x %q", k["x"])
		}
		if k["kid"] == sig.KeyId && ed25519.Verify(x, []byte("jwks"), sig.Signature) {
			verified = true
		}
	}
	if !verified {
		t.Fatal("the JWKS key for the signing kid does not verify its signature")
	}
	h.env.Clock.Advance(time.Minute)
	if code, _, e := h.run(t, "rotate", "commit", "payments", pending); code != ctl.ExitOK {
		t.Fatalf("commit: %d %s", code, e)
	}
	code, out, _ = h.run(t, "--output", "json", "audit", "tail", "--relation", "rotate")
	// bootstrap, keys list, open (a ListKeys: does the scope exist?, then
	// Open), refused commit, jwks (a ListKeys), commit
	if code != ctl.ExitOK || strings.Count(out, `"relation": "rotate"`) != 7 || strings.Contains(out, `"caveat_context": null`) {
		t.Fatalf("audit tail: %d\n%s", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	h := start(t)
	if code, _, _ := h.run(t, "rotate", "retire", "payments"); code != ctl.ExitUsage {
		t.Errorf("missing argument: %d", code)
	}
	if code, _, _ := h.run(t, "frobnicate"); code != ctl.ExitUsage {
		t.Errorf("unknown command: %d", code)
	}
	if code, _, _ := h.run(t, "rotate", "commit", "payments", "nosuchkey"); code != ctl.ExitRefused {
		t.Errorf("unknown key: %d", code)
	}
	core := harness{env: h.env, args: identityArgs(t, h.env, signertest.CoreID)}
	if code, _, _ := core.run(t, "rotate", "open", "payments"); code != ctl.ExitDenied {
		t.Errorf("the core's identity rotating: %d", code)
	}
	gone := harness{args: append(append([]string{}, h.args...), "--signer", "127.0.0.1:1", "--timeout", "2s")}
	if code, _, _ := gone.run(t, "keys", "list"); code != ctl.ExitUnavailable {
		t.Errorf("unreachable signer: %d", code)
	}
}

// audit verify passes on an untouched log and fails (exit 5, naming where)
// on an edited entry, a deleted entry and a swapped pair, found by
// replaying the entries against the signed checkpoints; a log cut short is
// refused by the signer itself.
func TestAuditVerify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(b *bolt.Bucket) error
		want   string
	}{
		{"edited", func(b *bolt.Bucket) error {
			e, err := auditlog.ParseLeaf(b.Get(seqKey(3)))
			if err != nil {
				return err
			}
			e.Reason = auditlog.ReasonCaveatViolation
			leaf, err := auditlog.AppendLeaf(nil, &e)
			if err != nil {
				return err
			}
			return b.Put(seqKey(3), leaf)
		}, "do not hash to the root signed"},
		{"deleted", func(b *bolt.Bucket) error { return b.Delete(seqKey(3)) }, "entry 3 is missing"},
		{"swapped", func(b *bolt.Bucket) error {
			a, c := bytes.Clone(b.Get(seqKey(3))), bytes.Clone(b.Get(seqKey(4)))
			if err := b.Put(seqKey(3), c); err != nil {
				return err
			}
			return b.Put(seqKey(4), a)
		}, "do not hash to the root signed"},
		{"cut short", func(b *bolt.Bucket) error {
			last, _ := b.Cursor().Last()
			return b.Delete(last)
		}, "the signer reports its audit log broken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t)
			// Enough entries that 3 and 4 sit in a whole tile of the tree
			// (the signer's own checks recompute only the last partial one).
			for range 20 {
				if code, _, e := h.run(t, "keys", "list"); code != ctl.ExitOK {
					t.Fatal(e)
				}
			}
			if code, out, e := h.run(t, "--checkpoint-key", h.env.CheckpointKey, "audit", "verify"); code != ctl.ExitOK || !strings.Contains(out, "audit log verified") {
				t.Fatalf("untouched log: %d %s %s", code, out, e)
			}
			db := h.env.Bolt
			if err := db.Update(func(tx *bolt.Tx) error {
				if tc.name == "cut short" { // and the head moved back with it
					n := binary.BigEndian.Uint64(tx.Bucket([]byte("meta")).Get([]byte("audit_size")))
					if err := tx.Bucket([]byte("meta")).Put([]byte("audit_size"), seqKey(n-1)); err != nil {
						return err
					}
				}
				return tc.tamper(tx.Bucket([]byte("audit")))
			}); err != nil {
				t.Fatal(err)
			}
			code, _, e := h.run(t, "--checkpoint-key", h.env.CheckpointKey, "audit", "verify")
			if code != ctl.ExitBroken || !strings.Contains(e, tc.want) {
				t.Fatalf("%s log: exit %d, %s", tc.name, code, e)
			}
		})
	}
}

func seqKey(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

// bench through a sidecar: progress on stderr, a JSON report whose counts add
// up, and the signer's audit agreeing with it.
func TestBench(t *testing.T) {
	h := start(t)
	sc := signertest.StartSidecar(t, h.env.Addr, h.env.Source(h.env.Issue(t, signertest.CoreID)))
	before := h.env.LastSeq(t)
	var out, errb bytes.Buffer
	code := ctl.Main(context.Background(), []string{"bench", "--sidecar", sc.Socket, "--concurrency", "4", "--count", "200",
		"--payload-size", "100", "--json", "--progress", "10ms"}, &out, &errb)
	if code != ctl.ExitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r ctl.BenchReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	if r.Calls != 200 || r.OK != 200 || len(r.Errors) != 0 || r.PerSecond <= 0 || r.P50Micros <= 0 || r.P99Micros < r.P50Micros || r.MaxMicros < r.P99Micros {
		t.Fatalf("report %+v", r)
	}
	granted := 0
	for _, e := range h.env.AuditAfter(t, before) {
		if e.Relation == "sign" && e.Reason == "granted" {
			granted++
		}
	}
	if granted != 200 {
		t.Fatalf("%d granted sign entries for 200 signs", granted)
	}
	// Errors are counted by code, not hidden: an unknown scope fails all.
	out.Reset()
	code = ctl.Main(context.Background(), []string{"bench", "--sidecar", sc.Socket, "--count", "10", "--scope", "nosuchscope", "--progress", "0"}, &out, &errb)
	if code != ctl.ExitOK || !strings.Contains(out.String(), "errors        NotFound: 10") {
		t.Fatalf("exit %d, report:\n%s", code, out.String())
	}
}
