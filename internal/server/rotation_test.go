package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Every lifecycle transition and refusal, with its gRPC code and its one
// rotate entry asserted together, in the order an operator would meet them.
func TestRotationLifecycle(t *testing.T) {
	clock := signertest.NewClock(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC))
	env := signertest.Start(t, signertest.WithClock(clock), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.VerifyOnly = 10*time.Minute, time.Hour
		c.BootstrapScopes = []string{scope, "other"}
	}))
	ctx := context.Background()
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	list, err := op.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	keyOf := map[string]string{}
	for _, k := range list.Keys {
		keyOf[k.Scope] = k.KeyId
	}
	first, otherKey := keyOf[scope], keyOf["other"]
	var pending, second, aborted string

	// step is one RPC: the code it must return and the rotate entry it must
	// leave (object "" means the key id the call resolved, checked by id).
	step := func(name string, call func() (string, error), code codes.Code, reason, object string) {
		t.Helper()
		seq := env.LastSeq(t)
		id, err := call()
		if status.Code(err) != code {
			t.Fatalf("%s: code %v (%v), want %v", name, status.Code(err), err, code)
		}
		if object == "" {
			object = "signing-key:payments:" + id
		}
		_, mw := rpcEntriesAny(t, env, seq)
		if len(mw) != 1 || mw[0].Relation != auditlog.RelationRotate || mw[0].Reason != reason || mw[0].Object != object || mw[0].Code != code.String() {
			t.Fatalf("%s: entries %+v, want one rotate %s %s", name, mw, reason, object)
		}
	}
	open := func(s string) func() (string, error) {
		return func() (string, error) {
			r, err := op.Open(ctx, &signerv1.OpenRequest{Scope: s})
			return r.GetKey().GetKeyId(), err
		}
	}
	commit := func(id string) func() (string, error) {
		return func() (string, error) {
			_, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: scope, KeyId: id})
			return id, err
		}
	}
	retire := func(id string) func() (string, error) {
		return func() (string, error) {
			_, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: scope, KeyId: id})
			return id, err
		}
	}
	abort := func(id string) func() (string, error) {
		return func() (string, error) {
			_, err := op.Abort(ctx, &signerv1.AbortRequest{Scope: scope, KeyId: id})
			return id, err
		}
	}
	const granted, caveat, insufficient = auditlog.ReasonGranted, auditlog.ReasonCaveatViolation, auditlog.ReasonInsufficientRelation
	fp := codes.FailedPrecondition

	r, err := op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	pending = r.Key.KeyId
	if r.Key.State != signerv1.KeyState_KEY_STATE_PENDING || !r.CommittableAt.AsTime().Equal(clock.Now().Add(10*time.Minute)) {
		t.Fatalf("Open = %v", r)
	}
	published, _ := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
	if len(published.Keys) != 2 {
		t.Fatalf("a PENDING key must be published at once: %v", published.Keys)
	}
	step("second Open", func() (string, error) {
		_, err := op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
		return pending, err
	}, fp, caveat, "")
	step("Commit inside the pre-publication window", commit(pending), fp, caveat, "")
	step("Commit of the ACTIVE key", commit(first), fp, caveat, "")
	step("Commit of an unknown key", commit("nosuchkey"), codes.NotFound, insufficient, "signing-key:payments:-")
	step("Commit of another scope's key", commit(otherKey), codes.PermissionDenied, insufficient, "")
	step("Retire of a PENDING key", retire(pending), fp, caveat, "")
	step("Open with a malformed scope", open("no:colons"), codes.InvalidArgument, insufficient, "signing-key:-:-")

	clock.Advance(10 * time.Minute)
	step("Commit", commit(pending), codes.OK, granted, "")
	second = pending
	if sig, err := core.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}); err != nil || sig.KeyId != second {
		t.Fatalf("after Commit Sign used %v (%v), want %s", sig.GetKeyId(), err, second)
	}
	step("Retire of the ACTIVE key", retire(second), fp, caveat, "")
	step("Retire inside the verify-only window", retire(first), fp, caveat, "")
	if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("m"), KeyId: &first}); status.Code(err) != fp {
		t.Fatalf("Sign with the PREVIOUS key: %v", err)
	}

	clock.Advance(time.Hour)
	step("Retire", retire(first), codes.OK, granted, "")
	step("Retire of a RETIRED key", retire(first), fp, caveat, "")
	published, _ = core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
	if len(published.Keys) != 1 || published.Keys[0].KeyId != second {
		t.Fatalf("after Retire the published keys are %v", published.Keys)
	}
	if _, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope, KeyId: &first}); status.Code(err) != fp {
		t.Fatalf("PublicKey of a RETIRED key: %v", err)
	}

	r, err = op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	aborted = r.Key.KeyId
	step("Abort of the ACTIVE key", abort(second), fp, caveat, "")
	step("Abort", abort(aborted), codes.OK, granted, "")
	step("Abort of an aborted key", abort(aborted), fp, caveat, "")
	step("Open after Abort", open(scope), codes.OK, granted, "")

	all, err := op.ListKeys(ctx, &signerv1.ListKeysRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]signerv1.KeyState{}
	for _, k := range all.Keys {
		states[k.KeyId] = k.State
	}
	if states[first] != signerv1.KeyState_KEY_STATE_RETIRED || states[second] != signerv1.KeyState_KEY_STATE_ACTIVE || states[aborted] != signerv1.KeyState_KEY_STATE_RETIRED || len(states) != 4 {
		t.Fatalf("final states %v", states)
	}
}

// With scope grants, an admitted identity may sign only its granted scopes;
// a denial is audited insufficient_relation at admission.
func TestScopeGrants(t *testing.T) {
	wide := "spiffe://example.org/ns/plexsphere/sa/batch"
	env := signertest.Start(t, signertest.WithConfig(func(c *config.Signer) {
		c.AllowSPIFFEIDs = []string{signertest.CoreID, wide}
		c.ScopeGrants = []string{signertest.CoreID + "=" + scope, wide + "=*"}
		c.BootstrapScopes = []string{scope, "billing"}
	}))
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	batch := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, wide)))
	ctx := context.Background()
	if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}); err != nil {
		t.Fatalf("granted scope: %v", err)
	}
	seq := env.LastSeq(t)
	_, err := core.Sign(ctx, &signerv1.SignRequest{Scope: "billing", Payload: []byte("m")})
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "signing: client identity denied" {
		t.Fatalf("scope not granted: %v", err)
	}
	adm, mw := rpcEntriesAny(t, env, seq)
	if len(adm) != 1 || adm[0].Reason != auditlog.ReasonInsufficientRelation || adm[0].Object != "signing-key:billing:-" ||
		len(mw) != 1 || mw[0].Reason != auditlog.ReasonInsufficientRelation || mw[0].Object != "signing-key:billing:-" {
		t.Fatalf("entries %+v %+v", adm, mw)
	}
	for _, s := range []string{scope, "billing"} {
		if _, err := batch.Sign(ctx, &signerv1.SignRequest{Scope: s, Payload: []byte("m")}); err != nil {
			t.Fatalf("wildcard grant, scope %s: %v", s, err)
		}
	}
}

// rpcEntriesAny splits entries after seq like rpcEntries, without pinning
// timestamps (these tests move the clock).
func rpcEntriesAny(t *testing.T, env *signertest.Env, seq uint64) (admission, middleware []auditlog.Entry) {
	t.Helper()
	for _, e := range env.AuditAfter(t, seq) {
		if e.Relation == auditlog.RelationConnect {
			admission = append(admission, e)
		} else {
			middleware = append(middleware, e)
		}
	}
	return admission, middleware
}
