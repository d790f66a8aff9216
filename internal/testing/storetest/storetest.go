// Package storetest is the conformance suite every store.Store passes. Each
// implementation's test calls Run with a constructor for a fresh, empty store.
package storetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// Opener returns an empty store and an attacker with write access to it.
type Opener func(t *testing.T) (store.Store, Tamper)

// Run runs the suite. open must return an empty store; Run closes it.
func Run(t *testing.T, open Opener) {
	keys := func(fn func(*testing.T, store.Store)) func(*testing.T, store.Store, Tamper) {
		return func(t *testing.T, s store.Store, _ Tamper) { fn(t, s) }
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store, x Tamper)
	}{
		{"CreateAndRead", keys(testCreateAndRead)},
		{"OneActivePerScope", keys(testOneActivePerScope)},
		{"OneOpenRotationPerScope", keys(testOneOpenRotation)},
		{"Lifecycle", keys(testLifecycle)},
		{"Refusals", keys(testRefusals)},
		{"Windows", keys(testWindows)},
		{"LifecycleRace", keys(testLifecycleRace)},
		{"LogKey", keys(testLogKey)},
		{"AuditAppendAndRead", keys(testAuditAppend)},
		{"AuditHeadMoved", keys(testAuditHeadMoved)},
		{"AuditFindRequest", keys(testFindRequest)},
		{"AuditQuery", keys(testAuditQuery)},
		{"AuditConcurrentWriters", keys(testAuditConcurrent)},
		{"AuditCheckpoints", keys(testCheckpoints)},
		{"AuditProofs", keys(testProofs)},
		{"AuditPrune", testPrune},
	}
	for _, tc := range tampers {
		tests = append(tests, struct {
			name string
			fn   func(t *testing.T, s store.Store, x Tamper)
		}{"Tamper/" + tc.name, tc.fn})
	}
	for _, tc := range anchorAttacks {
		tests = append(tests, struct {
			name string
			fn   func(t *testing.T, s store.Store, x Tamper)
		}{"Anchor/" + tc.name, tc.fn})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, x := open(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s, x)
		})
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newKey(id, scope string, st store.State, at time.Time) store.Key {
	pub := make(ed25519.PublicKey, ed25519.PublicKeySize)
	copy(pub, id)
	return store.Key{ID: id, Scope: scope, State: st, Public: pub, Provider: "test", Handle: []byte("h-" + id), CreatedAt: at}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

func testCreateAndRead(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := newKey("k1", "payments", store.Active, t0)
	k.ActivatedAt = t0
	must(t, s.CreateKey(ctx, k))
	got, err := s.Key(ctx, "k1")
	must(t, err)
	if got.ID != k.ID || got.Scope != k.Scope || got.State != store.Active || !bytes.Equal(got.Public, k.Public) ||
		!bytes.Equal(got.Handle, k.Handle) || got.Provider != "test" || !got.CreatedAt.Equal(t0) || !got.ActivatedAt.Equal(t0) {
		t.Fatalf("Key = %+v, want %+v", got, k)
	}
	act, err := s.ActiveKey(ctx, "payments")
	must(t, err)
	if act.ID != "k1" {
		t.Fatalf("ActiveKey = %q", act.ID)
	}
	_, err = s.Key(ctx, "nope")
	wantErr(t, err, signerr.ErrKeyNotFound)
	_, err = s.ActiveKey(ctx, "empty-scope")
	wantErr(t, err, signerr.ErrKeyNotFound)
	wantErr(t, s.CreateKey(ctx, newKey("k1", "other", store.Pending, t0)), signerr.ErrInvariant)
	must(t, s.Ping(ctx))
}

func testOneActivePerScope(t *testing.T, s store.Store) {
	ctx := context.Background()
	must(t, s.CreateKey(ctx, newKey("a1", "s", store.Active, t0)))
	wantErr(t, s.CreateKey(ctx, newKey("a2", "s", store.Active, t0)), signerr.ErrInvariant)
	must(t, s.CreateKey(ctx, newKey("b1", "other", store.Active, t0)))
	// Concurrent bootstraps of one scope: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.CreateKey(ctx, newKey(fmt.Sprintf("c%d", i), "race", store.Active, t0))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
		} else if !errors.Is(err, signerr.ErrInvariant) {
			t.Fatalf("concurrent bootstrap: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d concurrent bootstraps won, want 1", won)
	}
}

func testOneOpenRotation(t *testing.T, s store.Store) {
	ctx := context.Background()
	must(t, s.CreateKey(ctx, newKey("p1", "s", store.Pending, t0)))
	wantErr(t, s.CreateKey(ctx, newKey("p2", "s", store.Pending, t0)), signerr.ErrRotationInProgress)
	must(t, s.CreateKey(ctx, newKey("q1", "t", store.Pending, t0)))
}

func states(t *testing.T, s store.Store, scope string) string {
	t.Helper()
	keys, err := s.Keys(context.Background(), scope)
	must(t, err)
	out := ""
	for _, k := range keys {
		out += fmt.Sprintf("%s=%s ", k.ID, k.State)
	}
	return out
}

func testLifecycle(t *testing.T, s store.Store) {
	ctx := context.Background()
	must(t, s.CreateKey(ctx, newKey("k1", "s", store.Active, t0)))
	must(t, s.CreateKey(ctx, newKey("k2", "s", store.Pending, t0.Add(time.Second))))
	t1 := t0.Add(time.Minute)
	changed, err := s.Transition(ctx, store.OpCommit, "s", "k2", t1, store.Windows{})
	must(t, err)
	if len(changed) != 2 || changed[0].ID != "k2" || changed[0].State != store.Active || !changed[0].ActivatedAt.Equal(t1) ||
		changed[1].ID != "k1" || changed[1].State != store.Previous || !changed[1].DeactivatedAt.Equal(t1) {
		t.Fatalf("commit changed = %+v", changed)
	}
	if got := states(t, s, "s"); got != "k1=PREVIOUS k2=ACTIVE " {
		t.Fatalf("after commit: %s", got)
	}
	act, err := s.ActiveKey(ctx, "s")
	must(t, err)
	if act.ID != "k2" {
		t.Fatalf("active = %s", act.ID)
	}
	_, err = s.Transition(ctx, store.OpRetire, "s", "k1", t1, store.Windows{})
	must(t, err)
	must(t, s.CreateKey(ctx, newKey("k3", "s", store.Pending, t0.Add(2*time.Second))))
	_, err = s.Transition(ctx, store.OpAbort, "s", "k3", t1, store.Windows{})
	must(t, err)
	if got := states(t, s, "s"); got != "k1=RETIRED k2=ACTIVE k3=RETIRED " {
		t.Fatalf("after retire and abort: %s", got)
	}
	// A first commit in a scope without an ACTIVE key demotes nothing.
	must(t, s.CreateKey(ctx, newKey("n1", "new", store.Pending, t0)))
	changed, err = s.Transition(ctx, store.OpCommit, "new", "n1", t1, store.Windows{})
	must(t, err)
	if len(changed) != 1 {
		t.Fatalf("first commit changed %d keys", len(changed))
	}
	must(t, s.CreateKey(ctx, newKey("o1", "other", store.Active, t0)))
	all, err := s.Keys(ctx, "")
	must(t, err)
	if len(all) != 5 {
		t.Fatalf("Keys(all) = %d keys, want 5", len(all))
	}
}

// The store itself refuses a transition inside its window: Commit before the
// PENDING key was published PrePublish, Retire before the key was PREVIOUS
// VerifyOnly. The state changes nothing until the window has passed.
func testWindows(t *testing.T, s store.Store) {
	ctx := context.Background()
	w := store.Windows{PrePublish: 10 * time.Minute, VerifyOnly: time.Hour}
	must(t, s.CreateKey(ctx, newKey("old", "s", store.Active, t0)))
	must(t, s.CreateKey(ctx, newKey("new", "s", store.Pending, t0)))
	_, err := s.Transition(ctx, store.OpCommit, "s", "new", t0.Add(10*time.Minute-time.Microsecond), w)
	wantErr(t, err, signerr.ErrRotationNotReady)
	if got := states(t, s, "s"); got != "old=ACTIVE new=PENDING " && got != "new=PENDING old=ACTIVE " {
		t.Fatalf("a refused Commit changed state: %s", got)
	}
	demoted := t0.Add(10 * time.Minute)
	_, err = s.Transition(ctx, store.OpCommit, "s", "new", demoted, w)
	must(t, err)
	_, err = s.Transition(ctx, store.OpRetire, "s", "old", demoted.Add(time.Hour-time.Microsecond), w)
	wantErr(t, err, signerr.ErrRotationNotReady)
	old, err := s.Key(ctx, "old")
	must(t, err)
	if old.State != store.Previous {
		t.Fatalf("a refused Retire changed state: %s", old.State)
	}
	_, err = s.Transition(ctx, store.OpRetire, "s", "old", demoted.Add(time.Hour), w)
	must(t, err)
}

func testRefusals(t *testing.T, s store.Store) {
	ctx := context.Background()
	must(t, s.CreateKey(ctx, newKey("act", "s", store.Active, t0)))
	must(t, s.CreateKey(ctx, newKey("pen", "s", store.Pending, t0)))
	must(t, s.CreateKey(ctx, newKey("oth", "other", store.Active, t0)))
	for _, tc := range []struct {
		op        store.Op
		scope, id string
		want      error
	}{
		{store.OpRetire, "s", "act", signerr.ErrKeyActive},
		{store.OpRetire, "s", "pen", signerr.ErrRotationInProgress},
		{store.OpCommit, "s", "act", signerr.ErrKeyActive},
		{store.OpAbort, "s", "act", signerr.ErrKeyActive},
		{store.OpCommit, "s", "oth", signerr.ErrScopeMismatch},
		{store.OpCommit, "s", "missing", signerr.ErrKeyNotFound},
	} {
		_, err := s.Transition(ctx, tc.op, tc.scope, tc.id, t0, store.Windows{})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s %s/%s: err = %v, want %v", tc.op, tc.scope, tc.id, err, tc.want)
		}
	}
	if got := states(t, s, "s"); got != "act=ACTIVE pen=PENDING " {
		t.Fatalf("refusals changed state: %s", got)
	}
}
