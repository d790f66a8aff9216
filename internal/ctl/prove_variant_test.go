package ctl_test

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"regexp"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// audit prove shows what the leaf records of a Sign in a variant: the
// variant and the context's digest, so an auditor proving an Ed25519ph
// signature sees it was one (the text output left both out).
func TestAuditProveShowsSignVariant(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(time.Now())), signertest.WithConfig(func(c *config.Signer) {
		c.ScopeSignVariants = []string{signertest.Scope + "=ed25519ph"}
	}))
	h := harness{env: env, args: identityArgs(t, env, signertest.OperatorID)}
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	digest := sha512.Sum512([]byte("a large artifact"))
	r, err := core.Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: digest[:],
		Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519PH, Context: []byte("release")})
	if err != nil {
		t.Fatal(err)
	}
	c := sha256.Sum256([]byte("release"))
	code, out, errOut := h.pinned().run(t, "audit", "prove", r.RequestId)
	if code != ctl.ExitOK || !regexp.MustCompile(`(?m)^  sign_variant +ed25519ph$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^  context_sha256 +`+hex.EncodeToString(c[:])+`$`).MatchString(out) {
		t.Fatalf("audit prove of an Ed25519ph Sign: exit %d\n%s%s", code, out, errOut)
	}
}
