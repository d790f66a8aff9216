package kmsplugin

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha512"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A signature made before a rotation verifies through the plugin while its
// key is PREVIOUS, and no longer once the key is RETIRED (not published):
// neither by the scope's keys nor with the retired key named as the key
// version. Each check dials afresh, as each plugin invocation does. Real
// signer, real sidecar.
func TestVerifyRefusesARetiredKey(t *testing.T) {
	clock := signertest.NewClock(time.Now())
	env := signertest.Start(t, signertest.WithClock(clock), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.VerifyOnly = time.Minute, time.Hour
		c.ScopeSignVariants = []string{signertest.Scope + "=ed25519ph"}
	}))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	ctx := context.Background()
	plugin := func() *SignerVerifier {
		c, err := client.Dial(ctx, sc.Socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return NewSignerVerifier(ctx, c, signertest.Scope, sc.Socket, io.Discard)
	}
	msg := []byte("an artifact")
	digest := sha512.Sum512(msg)
	sv := plugin()
	old, err := sv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	pure, err := sv.SignMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	ph, err := sv.SignMessage(bytes.NewReader(nil), options.WithDigest(digest[:]), options.WithCryptoSignerOpts(crypto.SHA512))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sv.c.PublicKeys(ctx, signertest.Scope)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v, %v", keys, err)
	}
	oldID := keys[0].KeyID
	verify := func(sig []byte, opts ...signature.VerifyOption) error {
		return plugin().VerifySignature(bytes.NewReader(sig), bytes.NewReader(msg), opts...)
	}
	for _, sig := range [][]byte{pure, ph} {
		if err := verify(sig); err != nil {
			t.Fatalf("a fresh signature: %v", err)
		}
	}

	rot := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	opened, err := rot.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if _, err := rot.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: opened.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
	for _, sig := range [][]byte{pure, ph} {
		if err := verify(sig); err != nil {
			t.Fatalf("with its key PREVIOUS: %v", err)
		}
		if err := verify(sig, options.WithKeyVersion(oldID)); err != nil {
			t.Fatalf("with its key PREVIOUS, named: %v", err)
		}
	}
	clock.Advance(time.Hour)
	if _, err := rot.Retire(ctx, &signerv1.RetireRequest{Scope: signertest.Scope, KeyId: oldID}); err != nil {
		t.Fatal(err)
	}
	for _, sig := range [][]byte{pure, ph} {
		if err := verify(sig); !errors.Is(err, client.ErrInvalidSignature) {
			t.Fatalf("with its key RETIRED: %v, want ErrInvalidSignature", err)
		}
		if err := verify(sig, options.WithKeyVersion(oldID)); !errors.Is(err, client.ErrInvalidSignature) {
			t.Fatalf("with its RETIRED key named: %v, want ErrInvalidSignature", err)
		}
	}
	if k, err := plugin().PublicKey(options.WithKeyVersion(oldID)); err == nil {
		t.Fatalf("the RETIRED key %s served as a key version: %v (was %v)", oldID, k, old)
	}
}
