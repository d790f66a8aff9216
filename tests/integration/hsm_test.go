package integration

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
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

// On SoftHSM2 2.6.1 a scope allowed Ed25519ph and Ed25519ctx still gets no
// such signature: the token accepts CK_EDDSA_PARAMS and ignores them, the
// provider catches the pure signature it made instead and the signer
// refuses (FailedPrecondition, VARIANT_NOT_ALLOWED, naming the token),
// audited caveat_violation with no signature digest. Pure Ed25519 signs.
func TestSignVariantsOnHSM(t *testing.T) {
	p, _ := openHSM(t)
	env := signertest.Start(t, signertest.WithProvider(p), signertest.WithConfig(func(c *config.Signer) {
		c.ScopeSignVariants = []string{signertest.Scope + "=ed25519ph", signertest.Scope + "=ed25519ctx"}
	}))
	c := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	ctx := context.Background()
	digest := sha512.Sum512([]byte("hsm"))
	for _, req := range []*signerv1.SignRequest{
		{Scope: signertest.Scope, Payload: digest[:], Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519PH},
		{Scope: signertest.Scope, Payload: []byte("hsm"), Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519CTX, Context: []byte("c")},
	} {
		size, err := env.Store.AuditSize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Sign(ctx, req)
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "PKCS#11 token does not sign it") {
			t.Fatalf("%v on SoftHSM2: %v, want FailedPrecondition naming the token", req.Variant, err)
		}
		entries, err := store.ListAudit(ctx, env.Store, store.AuditQuery{AfterSeq: size, Subject: auditlog.SubjectSigner})
		if err != nil || len(entries) != 1 {
			t.Fatalf("%d middleware entries (%v), want 1", len(entries), err)
		}
		if e := entries[0]; e.Reason != auditlog.ReasonCaveatViolation || e.Code != "FailedPrecondition" || e.SignatureSHA256 != nil ||
			e.SignVariant != strings.ToLower(strings.TrimPrefix(req.Variant.String(), "SIGN_VARIANT_")) {
			t.Fatalf("entry %+v", e)
		}
	}
	if _, err := c.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("hsm")}); err != nil {
		t.Fatalf("pure Ed25519 on the same token: %v", err)
	}
}
