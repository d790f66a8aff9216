package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Keys rotate twice (and the first retires) while a core signs without
// pause through its sidecar: not one sign fails, every signature verifies
// with the client's key cache at that moment, and the rotate entries are in
// the order the operator acted.
func TestRotationUnderSustainedSigning(t *testing.T) {
	srv := pgtest.Require(t)
	st, _ := srv.Open(t)
	clock := signertest.NewClock(time.Now())
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithClock(clock),
		signertest.WithConfig(func(c *config.Signer) { c.PrePublish, c.VerifyOnly = time.Minute, time.Hour }))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	core, err := client.Dial(context.Background(), sc.Socket, client.WithCacheTTL(time.Hour), client.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	ctx := context.Background()

	var signs, failures atomic.Int64
	keys := sync.Map{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msg := fmt.Appendf(nil, "%d-%d", g, i)
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				sig, err := core.Sign(cctx, signertest.Scope, msg)
				if err == nil {
					err = core.Verify(cctx, signertest.Scope, sig.KeyID, msg, sig.Bytes)
				}
				cancel()
				if err != nil {
					failures.Add(1)
					t.Errorf("sign+verify: %v", err)
					return
				}
				keys.Store(sig.KeyID, true)
				signs.Add(1)
			}
		}()
	}
	progress := func() {
		for target := signs.Load() + 30; signs.Load() < target && failures.Load() == 0; {
			time.Sleep(5 * time.Millisecond)
		}
	}
	list, err := op.ListKeys(ctx, &signerv1.ListKeysRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	first := list.Keys[0].KeyId
	var steps []string
	rotate := func() {
		progress()
		o, err := op.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
		if err != nil {
			t.Fatal(err)
		}
		progress()
		clock.Advance(time.Minute)
		if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: o.Key.KeyId}); err != nil {
			t.Fatal(err)
		}
		steps = append(steps, "Open", "Commit")
	}
	rotate()
	progress()
	clock.Advance(time.Hour)
	if _, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: signertest.Scope, KeyId: first}); err != nil {
		t.Fatal(err)
	}
	steps = append(steps, "Retire")
	rotate()
	progress()
	close(stop)
	wg.Wait()

	n := 0
	keys.Range(func(any, any) bool { n++; return true })
	if failures.Load() != 0 || n != 3 {
		t.Fatalf("%d failures in %d signs; signed with %d keys (want 3)", failures.Load(), signs.Load(), n)
	}
	entries, err := signerv1.NewAuditServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID))).List(ctx,
		&signerv1.ListAuditRequest{Relation: "rotate", Reason: "granted"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries.Entries {
		if m := e.Method[strings.LastIndex(e.Method, "/")+1:]; m != "ListKeys" {
			got = append(got, m)
		}
	}
	if want := append([]string{"bootstrap"}, steps...); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("rotate entries %v, want %v", got, want)
	}
	t.Logf("%d signs across 2 rotations and a retirement, 0 failures", signs.Load())
}
