package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/keyprovider/pkcs11"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// failingAudit makes AppendAudit fail while set.
type failingAudit struct {
	store.Store
	mu   sync.Mutex
	fail bool
}

func (f *failingAudit) set(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

func (f *failingAudit) failing() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("disk full")
	}
	return nil
}

func (f *failingAudit) AppendAudit(ctx context.Context, b *audit.Batch) error {
	if err := f.failing(); err != nil {
		return err
	}
	return f.Store.AppendAudit(ctx, b)
}

func (f *failingAudit) AppendAuditLocked(ctx context.Context, after uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	if err := f.failing(); err != nil {
		return err
	}
	return f.Store.AppendAuditLocked(ctx, after, build)
}

// Two signers (Postgres with a password in its DSN + keys in a token with a
// PIN; bbolt + local keys under a KEK) are driven through every error path
// while their logs are captured at debug level. The log must hold none of
// the payload, the PIN, the DSN password, the KEK or a sealed key; and every
// denied or failed RPC must have its one line with the peer and the reason.
func TestLogsNeverLeakSecrets(t *testing.T) {
	srv := pgtest.Require(t)
	var buf testenv.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const payload = "payload-secret-3b9f1c-do-not-log"
	const pin, wrongPIN = "pin-Zq81xW", "wrong-pin-Xy7t"
	ctx := context.Background()

	// Signer A: Postgres as the service role (its password is in the DSN),
	// keys in a SoftHSM2 token.
	pgStore, _ := srv.Open(t)
	tok := hsmtest.NewWithPIN(t, pin)
	hsm, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: func() (string, error) { return pin, nil }, Sessions: 2, Log: log})
	if errors.Is(err, pkcs11.ErrNotBuilt) {
		testenv.Require(t, "the pkcs11 build", fmt.Sprintf("%v: run the tests with -tags pkcs11", err))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer hsm.Close()
	// A provider with a wrong PIN logs its failure too.
	bad, _ := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: func() (string, error) { return wrongPIN, nil }, Sessions: 1, Log: log})
	bad.Health(ctx)
	bad.Close()
	a := signertest.Start(t, signertest.WithStore(pgStore), signertest.WithProvider(hsm), signertest.WithLogger(log),
		signertest.WithConfig(func(c *config.Signer) { c.MaxPayloadBytes = 1024; c.KeyCacheTTL = 0 }))

	// Signer B: bbolt and the local provider; its audit store can be made
	// to fail.
	fa := &failingAudit{Store: signertest.OpenBolt(t)}
	b := signertest.Start(t, signertest.WithStore(fa), signertest.WithLogger(log))
	kekRaw, _ := os.ReadFile(b.Config.LocalKEKFile)
	kek, err := local.ParseKEK(string(kekRaw))
	if err != nil {
		t.Fatal(err)
	}

	failed := 0
	call := func(err error) {
		if err != nil {
			failed++
		}
	}
	for _, env := range []*signertest.Env{a, b} {
		core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
		op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
		stranger := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, "spiffe://example.org/ns/x/sa/stranger")))
		anonymous := signerv1.NewSignerServiceClient(env.Dial(t, nil))
		sign := func(c signerv1.SignerServiceClient, scope string, p []byte, keyID *string) error {
			_, err := c.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: p, KeyId: keyID})
			return err
		}
		str := func(s string) *string { return &s }
		if err := sign(core, signertest.Scope, []byte(payload), nil); err != nil {
			t.Fatal(err)
		}
		opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
		if err != nil {
			t.Fatal(err)
		}
		call(sign(core, "bad:scope", []byte(payload), nil))
		call(sign(core, signertest.Scope, bytes.Repeat([]byte(payload), 100), nil))
		call(sign(core, signertest.Scope, []byte(payload), str("nosuchkey")))
		call(sign(core, signertest.Scope, []byte(payload), &opened.Key.KeyId))
		call(sign(core, "empty", []byte(payload), nil))
		call(sign(stranger, signertest.Scope, []byte(payload), nil))
		call(sign(anonymous, signertest.Scope, []byte(payload), nil))
		_, err = op.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: opened.Key.KeyId})
		call(err)
		_, err = core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: "empty"})
		call(err)
	}
	// Provider failure on A: the token goes away for one call.
	away := t.TempDir()
	ents, _ := os.ReadDir(tok.Dir)
	for _, e := range ents {
		os.Rename(filepath.Join(tok.Dir, e.Name()), filepath.Join(away, e.Name()))
	}
	aCore := signerv1.NewSignerServiceClient(a.Dial(t, a.Issue(t, signertest.CoreID)))
	_, err = aCore.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte(payload)})
	call(err)
	for _, e := range ents {
		os.Rename(filepath.Join(away, e.Name()), filepath.Join(tok.Dir, e.Name()))
	}
	// Audit failure on B.
	fa.set(true)
	bCore := signerv1.NewSignerServiceClient(b.Dial(t, b.Issue(t, signertest.CoreID)))
	_, err = bCore.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte(payload)})
	call(err)
	fa.set(false)
	a.Stop()
	b.Stop()

	logs := buf.String()
	secrets := map[string]string{"pin": pin, "wrong pin": wrongPIN, "DSN password": pgtest.AppPassword,
		"KEK (hex)": hex.EncodeToString(kek), "KEK (base64)": base64.StdEncoding.EncodeToString(kek)}
	for _, form := range []struct{ name, v string }{
		{"payload", payload}, {"payload (base64)", base64.StdEncoding.EncodeToString([]byte(payload))[:24]},
		{"payload (hex)", hex.EncodeToString([]byte(payload))[:24]},
	} {
		secrets[form.name] = form.v
	}
	keys, _ := fa.Keys(ctx, "")
	for _, k := range keys {
		secrets["sealed key "+k.ID] = base64.StdEncoding.EncodeToString(k.Handle)[:24]
		secrets["sealed key (hex) "+k.ID] = hex.EncodeToString(k.Handle)[:24]
	}
	for name, v := range secrets {
		if strings.Contains(logs, v) {
			t.Errorf("the log contains the %s", name)
		}
	}

	// One line per denied or failed RPC, each with the peer and the reason.
	lines := 0
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", l)
		}
		switch rec["msg"] {
		case "rpc denied", "rpc failed", "rpc withheld: audit entries not committed":
			lines++
			if _, ok := rec["peer"]; !ok || rec["reason"] == nil || rec["reason"] == "" {
				t.Errorf("line without peer or reason: %s", l)
			}
		}
	}
	if lines != failed {
		t.Fatalf("%d denied/failed RPC log lines for %d failed RPCs", lines, failed)
	}
	if testing.Verbose() {
		t.Logf("%d log lines checked, %d failed RPCs each logged once", strings.Count(logs, "\n"), failed)
	}
}
