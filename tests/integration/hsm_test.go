package integration

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"google.golang.org/grpc/codes"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/pkcs11"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// openHSM opens the pkcs11 provider on a fresh SoftHSM2 token. A build
// without the pkcs11 tag cannot run these tests: skip, or fail under CI.
func openHSM(t *testing.T) (keyprovider.Provider, hsmtest.Token) {
	t.Helper()
	tok := hsmtest.New(t)
	p, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: func() (string, error) { return tok.PIN, nil }, Sessions: 4})
	if errors.Is(err, pkcs11.ErrNotBuilt) {
		testenv.Require(t, "the pkcs11 build", fmt.Sprintf("%v: run the tests with -tags pkcs11", err))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, tok
}

// The token disappears mid-load: Signs fail Unavailable, each audited
// caveat_violation, no signature leaves without its granted entry, and
// signing resumes when the token returns, without a restart.
func TestHSMTokenRemovedMidLoad(t *testing.T) {
	p, tok := openHSM(t)
	env := signertest.Start(t, signertest.WithProvider(p))
	l := startLoad(signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID))), signertest.Scope, 4)
	l.waitFor(t, "signing", func(ok, _ int) bool { return ok >= 50 })
	// Pull the token: SoftHSM2 keeps a token as a directory.
	ents, err := os.ReadDir(tok.Dir)
	if err != nil || len(ents) == 0 {
		t.Fatalf("token directory: %v", err)
	}
	away := t.TempDir()
	for _, e := range ents {
		if err := os.Rename(filepath.Join(tok.Dir, e.Name()), filepath.Join(away, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	l.waitFor(t, "failures while the token is gone", func(_, failed int) bool { return failed >= 20 })
	for _, e := range ents {
		if err := os.Rename(filepath.Join(away, e.Name()), filepath.Join(tok.Dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	okBefore, _ := l.counts()
	l.waitFor(t, "recovery", func(ok, _ int) bool { return ok >= okBefore+50 })

	granted := map[string]int{}
	refused := 0
	l.end(t, func() map[string]int {
		entries, err := store.ListAudit(context.Background(), env.Store, store.AuditQuery{Relation: auditlog.RelationSign})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			switch {
			case e.Reason == auditlog.ReasonGranted:
				granted[hex.EncodeToString(e.SignatureSHA256)]++
			case e.Reason == auditlog.ReasonCaveatViolation && e.Code == codes.Unavailable.String():
				refused++
			default:
				t.Errorf("unexpected sign entry %+v", e)
			}
		}
		return granted
	})
	if len(granted) != len(l.returned) || refused != l.failures[codes.Unavailable] {
		t.Fatalf("%d granted rows for %d signatures; %d caveat_violation rows for %d failures", len(granted), len(l.returned), refused, l.failures[codes.Unavailable])
	}
	t.Logf("token pulled mid-load: %d signatures, %d refused Unavailable (each audited caveat_violation)", len(l.returned), refused)
}

// Keys made through the signer live in the token: the conformance of the
// full path (bootstrap, sign, verify) on a real HSM.
func TestSignerOnHSM(t *testing.T) {
	p, _ := openHSM(t)
	env := signertest.Start(t, signertest.WithProvider(p))
	c := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	ctx := context.Background()
	resp, err := c.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("hsm")})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := env.Store.Keys(ctx, signertest.Scope)
	if err != nil || len(keys) != 1 || keys[0].Provider != "pkcs11" || string(keys[0].Handle) != keys[0].ID {
		t.Fatalf("stored key %+v (%v): want a pkcs11 handle naming the token object", keys, err)
	}
	pk, err := c.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope})
	if err != nil || !ed25519Verify(pk.Keys[0].PublicKey, []byte("hsm"), resp.Signature) {
		t.Fatalf("signature does not verify with the published key: %v", err)
	}
}
