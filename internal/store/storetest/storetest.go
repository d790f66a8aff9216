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

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// Run runs the suite. open must return an empty store; Run closes it.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateAndRead", testCreateAndRead},
		{"OneActivePerScope", testOneActivePerScope},
		{"OneOpenRotationPerScope", testOneOpenRotation},
		{"Lifecycle", testLifecycle},
		{"Refusals", testRefusals},
		{"AuditChain", testAuditChain},
		{"AuditQuery", testAuditQuery},
		{"AuditConcurrentBatches", testAuditConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s)
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
	changed, err := s.Transition(ctx, store.OpCommit, "s", "k2", t1)
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
	_, err = s.Transition(ctx, store.OpRetire, "s", "k1", t1)
	must(t, err)
	must(t, s.CreateKey(ctx, newKey("k3", "s", store.Pending, t0.Add(2*time.Second))))
	_, err = s.Transition(ctx, store.OpAbort, "s", "k3", t1)
	must(t, err)
	if got := states(t, s, "s"); got != "k1=RETIRED k2=ACTIVE k3=RETIRED " {
		t.Fatalf("after retire and abort: %s", got)
	}
	// A first commit in a scope without an ACTIVE key demotes nothing.
	must(t, s.CreateKey(ctx, newKey("n1", "new", store.Pending, t0)))
	changed, err = s.Transition(ctx, store.OpCommit, "new", "n1", t1)
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
		_, err := s.Transition(ctx, tc.op, tc.scope, tc.id, t0)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s %s/%s: err = %v, want %v", tc.op, tc.scope, tc.id, err, tc.want)
		}
	}
	if got := states(t, s, "s"); got != "act=ACTIVE pen=PENDING " {
		t.Fatalf("refusals changed state: %s", got)
	}
}

func entry(i int, rel string) audit.Entry {
	return audit.Entry{ID: audit.NewID(), RequestID: fmt.Sprint("r", i), Subject: audit.SubjectSigner, Relation: rel,
		Object: audit.Object("s", fmt.Sprint("k", i%3)), Reason: audit.ReasonGranted, CaveatContext: []string{},
		Timestamp: t0.Add(time.Duration(i) * time.Millisecond), Method: "/m", Code: "OK"}
}

func verify(t *testing.T, entries []audit.Entry) {
	t.Helper()
	var v audit.Verifier
	for _, e := range entries {
		if err := v.Add(e); err != nil {
			t.Fatal(err)
		}
	}
}

func testAuditChain(t *testing.T, s store.Store) {
	ctx := context.Background()
	batch := []audit.Entry{entry(1, "sign"), entry(2, "sign")}
	must(t, s.AppendAudit(ctx, batch))
	if batch[0].Seq != 1 || batch[1].Seq != 2 || batch[1].PrevHash != batch[0].Hash || batch[0].Hash == "" {
		t.Fatalf("AppendAudit did not chain the batch: %+v", batch)
	}
	must(t, s.AppendAudit(ctx, []audit.Entry{entry(3, "public_key")}))
	got, err := s.ListAudit(ctx, store.AuditQuery{})
	must(t, err)
	if len(got) != 3 {
		t.Fatalf("ListAudit = %d entries", len(got))
	}
	verify(t, got)
	e := got[0]
	if e.Subject != audit.SubjectSigner || e.Relation != "sign" || e.Object != "signing-key:s:k1" || e.Reason != "granted" ||
		e.CaveatContext == nil || len(e.CaveatContext) != 0 || !e.Timestamp.Equal(t0.Add(time.Millisecond)) || e.Timestamp.Location() != time.UTC {
		t.Fatalf("entry read back = %+v", e)
	}
}

func testAuditQuery(t *testing.T, s store.Store) {
	ctx := context.Background()
	var batch []audit.Entry
	for i := range 10 {
		rel := "sign"
		if i%2 == 1 {
			rel = "public_key"
		}
		batch = append(batch, entry(i, rel))
	}
	batch[4].Reason = audit.ReasonCaveatViolation
	must(t, s.AppendAudit(ctx, batch))
	got, err := s.ListAudit(ctx, store.AuditQuery{Relation: "public_key"})
	must(t, err)
	if len(got) != 5 {
		t.Fatalf("relation filter: %d", len(got))
	}
	got, err = s.ListAudit(ctx, store.AuditQuery{AfterSeq: 7})
	must(t, err)
	if len(got) != 3 || got[0].Seq != 8 {
		t.Fatalf("after seq 7: %d entries", len(got))
	}
	got, err = s.ListAudit(ctx, store.AuditQuery{Limit: 2, Reason: audit.ReasonGranted})
	must(t, err)
	if len(got) != 2 || got[1].Seq != 2 {
		t.Fatalf("limit: %+v", got)
	}
	got, err = s.ListAudit(ctx, store.AuditQuery{ObjectPrefix: "signing-key:s:k1", Reason: audit.ReasonCaveatViolation})
	must(t, err)
	if len(got) != 1 || got[0].Seq != 5 {
		t.Fatalf("object prefix + reason: %+v", got)
	}
}

func testAuditConcurrent(t *testing.T, s store.Store) {
	ctx := context.Background()
	const writers, batches, per = 4, 10, 8
	var wg sync.WaitGroup
	errs := make(chan error, writers*batches)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				batch := make([]audit.Entry, per)
				for i := range batch {
					batch[i] = entry(w*1000+b*per+i, "sign")
				}
				errs <- s.AppendAudit(ctx, batch)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	got, err := s.ListAudit(ctx, store.AuditQuery{})
	must(t, err)
	if len(got) != writers*batches*per {
		t.Fatalf("%d entries, want %d", len(got), writers*batches*per)
	}
	ids := map[string]bool{}
	for _, e := range got {
		if ids[e.ID] {
			t.Fatalf("duplicate entry %s", e.ID)
		}
		ids[e.ID] = true
	}
	verify(t, got)
}
