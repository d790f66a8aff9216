package keyring_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// counting is the real store with its key reads counted.
type counting struct {
	store.Store
	keys atomic.Int64
}

func (c *counting) Keys(ctx context.Context, scope string) ([]store.Key, error) {
	c.keys.Add(1)
	return c.Store.Keys(ctx, scope)
}

type fixture struct {
	st    *bbolt.Store
	db    *bolt.DB // the file under st, as its writer could edit it
	cs    *counting
	p     keyprovider.Provider
	kr    *keyring.Keyring
	rot   *keyring.Lifecycle
	clock *signertest.Clock
}

func newFixture(t *testing.T, o keyring.Options, scopes ...string) *fixture {
	t.Helper()
	f := &fixture{p: signertest.NewLocalProvider(t), clock: signertest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	f.st, f.db = signertest.OpenBoltDB(t)
	f.cs = &counting{Store: f.st}
	f.kr = keyring.NewWith(f.cs, f.p, time.Second, f.clock.Now, o)
	f.rot = keyring.NewLifecycle(f.cs, f.p, f.kr, keyring.Windows{PrePublish: time.Minute, VerifyOnly: time.Hour}, f.clock.Now)
	for _, s := range scopes {
		if _, _, err := f.rot.Bootstrap(context.Background(), s, discard{}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// Scopes chosen by a caller cannot grow the cache: an unknown scope's empty
// answer is not kept (it was, forever: +42 MiB for 200k scopes), entries
// expire and are swept, and each map is capped.
func TestKeyringBoundedForUnknownScopes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{MaxCached: 8}, "payments")
	for i := range 20000 {
		ks, err := f.kr.Published(ctx, fmt.Sprintf("nosuch%d", i))
		if err != nil || len(ks) != 0 {
			t.Fatalf("unknown scope: %v %v", ks, err)
		}
	}
	if _, pub, _, _ := f.kr.CachedForTest(); pub != 0 {
		t.Fatalf("%d empty results cached for unknown scopes", pub)
	}
	// Real scopes fill the cache only up to its cap.
	for i := range 20 {
		s := fmt.Sprintf("real%d", i)
		if _, _, err := f.rot.Bootstrap(ctx, s, discard{}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.kr.Published(ctx, s); err != nil {
			t.Fatal(err)
		}
		if _, err := f.kr.Active(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if act, pub, _, _ := f.kr.CachedForTest(); act > 8 || pub > 8 {
		t.Fatalf("cache above its cap of 8: active %d, published %d", act, pub)
	}
	// Expired entries leave at the next sweep.
	f.clock.Advance(2 * time.Second)
	f.kr.Sweep()
	if act, pub, id, _ := f.kr.CachedForTest(); act+pub+id != 0 {
		t.Fatalf("expired entries kept: active %d, published %d, by id %d", act, pub, id)
	}
}

// Store change notices are rate limited per scope: a flood of them (anyone
// who can write to the notice channel can send them) costs one reload per
// scope per interval, and a notice still takes effect within the interval.
func TestKeyringNoticesRateLimited(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{NoticeInterval: 500 * time.Millisecond}, "payments")
	if _, err := f.kr.Published(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	before := f.cs.keys.Load()
	for range 1000 {
		f.kr.Notice("payments")
		f.kr.Notice("")
		f.kr.Notice("nosuch")
		if _, err := f.kr.Published(ctx, "payments"); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.cs.keys.Load() - before; n > 2 {
		t.Fatalf("1000 notices caused %d store reads, want at most 2", n)
	}
	// Once the interval is over the next read goes to the store.
	f.clock.Advance(500 * time.Millisecond)
	before = f.cs.keys.Load()
	if _, err := f.kr.Published(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	if f.cs.keys.Load() == before {
		t.Fatal("a noticed change was not reloaded after the interval")
	}
}

// A loaded key is bound to the record it was loaded for. Moving the
// payments key's row to scope billing (an attacker with write access to the
// store) must not let Sign(billing) reuse the unsealed payments key that
// the keyring already holds under the same id: the provider is asked again
// and refuses the moved record.
func TestKeyringLoadedKeyBoundToRecord(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{}, "payments")
	rec, err := f.kr.Active(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.kr.Load(ctx, rec); err != nil {
		t.Fatal(err)
	}
	moved := rec
	moved.Scope = "billing"
	if k, err := f.kr.Load(ctx, moved); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("the moved record loaded (key %v, err %v): it would sign for billing with the payments key", k, err)
	}
	other := rec
	other.Public = make([]byte, 32)
	if _, err := f.kr.Load(ctx, other); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("a record with another public key loaded: %v", err)
	}
	// The move in the store itself, read through the keyring after its TTL.
	if err := f.db.Update(func(tx *bolt.Tx) error {
		return moveScope(tx, rec.ID, "billing")
	}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Second)
	got, err := f.kr.Active(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.kr.Sign(ctx, got, []byte("m"), nil); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("Sign(billing) with the moved payments key: %v", err)
	}
}

// A key that is RETIRED leaves memory: the rotation on this replica
// releases it at once, and a key nobody uses any more (retired by another
// replica) is released by the sweep when its life ends.
func TestKeyringReleasesKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{}, "payments")
	rec, _ := f.kr.Active(ctx, "payments")
	first, err := f.kr.Load(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	open, err := f.rot.Open(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	if _, err := f.rot.Transition(ctx, store.OpCommit, "payments", open.ID); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	if _, err := f.rot.Transition(ctx, store.OpRetire, "payments", rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := first.SignContext(ctx, []byte("m")); !errors.Is(err, keyprovider.ErrReleased) {
		t.Fatalf("the retired key still signs from memory: %v", err)
	}
	if _, _, _, loaded := f.kr.CachedForTest(); loaded != 0 {
		t.Fatalf("%d keys still loaded after the rotation", loaded)
	}

	// Another replica's retire: no invalidation here, only time.
	now, _ := f.kr.Active(ctx, "payments")
	k, err := f.kr.Load(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if sig, err := f.kr.Sign(ctx, now, []byte("m"), nil); err != nil || len(sig) != 64 {
		t.Fatalf("sign: %v", err)
	}
	f.clock.Advance(time.Minute)
	f.kr.Sweep()
	if _, err := k.SignContext(ctx, []byte("m")); !errors.Is(err, keyprovider.ErrReleased) {
		t.Fatalf("an unused key outlived its life in memory: %v", err)
	}
	// Sign loads it again transparently.
	if _, err := f.kr.Sign(ctx, now, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
}

// Many Signs on a cold cache load the key concurrently: every one of them
// signs (none meets a copy released by another's load).
func TestKeyringConcurrentColdLoads(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{}, "payments")
	rec, err := f.kr.Active(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		f.kr.Invalidate("")
		errs := make(chan error, 32)
		for range 32 {
			go func() {
				_, err := f.kr.Sign(ctx, rec, []byte("m"), nil)
				errs <- err
			}()
		}
		for range 32 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

// downProvider fails every Load while down is set, as an HSM does when its
// token is gone.
type downProvider struct {
	keyprovider.Provider
	down *atomic.Bool
}

func (p downProvider) Load(ctx context.Context, ref keyprovider.KeyRef, h []byte) (keyprovider.Key, error) {
	if p.down.Load() {
		return nil, fmt.Errorf("token removed: %w", signerr.ErrProviderUnavailable)
	}
	return p.Provider.Load(ctx, ref, h)
}

// A key vouched for once stays vouched while the provider is down, so
// verifiers keep getting the keys they already trust; a key never vouched
// for is not published until the provider can vouch for it, and a record
// whose public key changed under the same id must be vouched for again.
func TestKeyringVouchesOnceAndFailsClosed(t *testing.T) {
	f := newFixture(t, keyring.Options{}, "payments")
	var down atomic.Bool
	kr := keyring.New(f.st, downProvider{f.p, &down}, 0, f.clock.Now)
	ctx := context.Background()
	ks, err := kr.Published(ctx, "payments")
	if err != nil || len(ks) != 1 {
		t.Fatalf("Published = %v, %v", ks, err)
	}
	down.Store(true)
	if ks, err := kr.Published(ctx, "payments"); err != nil || len(ks) != 1 {
		t.Fatalf("a vouched key while the provider is down: %v, %v", ks, err)
	}
	down.Store(false)
	if _, err := f.rot.Open(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	if _, err := kr.Published(ctx, "payments"); !errors.Is(err, signerr.ErrProviderUnavailable) {
		t.Fatalf("a never-vouched PENDING key while the provider is down: %v, want ErrProviderUnavailable", err)
	}
	forged := ks[0]
	forged.Public = make([]byte, len(forged.Public))
	down.Store(false)
	if err := kr.Vouch(ctx, forged); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("a changed public key under a vouched id: %v, want ErrInvariant", err)
	}
}

// setState rewrites key id's state (and handle, if not nil) in the file, as
// a store writer would.
func (f *fixture) setState(t *testing.T, id string, st store.State, handle []byte) {
	t.Helper()
	if err := f.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("keys"))
		var rec map[string]any
		if err := json.Unmarshal(b.Get([]byte(id)), &rec); err != nil {
			return err
		}
		rec["state"] = st.String()
		if handle != nil {
			rec["handle"] = handle
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), raw)
	}); err != nil {
		t.Fatal(err)
	}
}

// A retired key brought back by a store writer (RETIRED set back to ACTIVE,
// the new key demoted to PREVIOUS, even with the sealed handle restored from
// a backup) never signs and is never published: the keyring saw it
// RETIRED, and remembers; a fresh keyring (a restart) refuses it by the
// audit log's history; and without the handle the material is gone anyway.
func TestRetiredKeyNeverComesBack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, keyring.Options{}, "payments")
	old, err := f.kr.Active(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	next, err := f.rot.Open(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	if _, err := f.rot.Transition(ctx, store.OpCommit, "payments", next.ID); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	retired, err := f.rot.Transition(ctx, store.OpRetire, "payments", old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !store.Destroyed(retired[0]) {
		t.Fatalf("the retired key keeps its handle: %d bytes", len(retired[0].Handle))
	}
	if _, err := f.kr.Published(ctx, "payments"); err != nil { // the keyring reads it RETIRED
		t.Fatal(err)
	}

	// Back to ACTIVE with the sealed handle restored, the new key PREVIOUS.
	f.setState(t, old.ID, store.Active, old.Handle)
	f.setState(t, next.ID, store.Previous, nil)
	f.clock.Advance(2 * time.Second) // past the record cache
	if k, err := f.kr.Active(ctx, "payments"); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("Active = %s, %v: the retired key is back", k.ID, err)
	}
	if ks, err := f.kr.Published(ctx, "payments"); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("Published = %v, %v", ks, err)
	}
	if err := f.kr.Vouch(ctx, store.Key{ID: old.ID, Scope: "payments", State: store.Active, Public: old.Public, Provider: old.Provider, Handle: old.Handle}); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("Vouch of the restored record: %v", err)
	}

	// A restarted signer's keyring never saw it: the audit log's history
	// says RETIRED.
	h := keyring.NewHistory()
	for _, e := range []auditlog.Entry{rotation("bootstrap", old.ID), rotation("/plexsphere.signer.v1.RotationService/Commit", next.ID),
		rotation("/plexsphere.signer.v1.RotationService/Retire", old.ID)} {
		leaf, err := auditlog.AppendLeaf(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		h.Observe(0, leaf)
	}
	if h.Floor(old.ID) != store.Retired || h.Floor(next.ID) != store.Active {
		t.Fatalf("history: old %s, next %s", h.Floor(old.ID), h.Floor(next.ID))
	}
	fresh := keyring.NewWith(f.st, f.p, time.Second, f.clock.Now, keyring.Options{Floor: h.Floor})
	if k, err := fresh.Active(ctx, "payments"); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("a fresh keyring with the log's history: Active = %s, %v", k.ID, err)
	}
	// Without the log's history, the restored handle would sign: the
	// history is what stops it after a restart.
	bare := keyring.New(f.st, f.p, time.Second, f.clock.Now)
	if k, err := bare.Active(ctx, "payments"); err != nil || k.ID != old.ID {
		t.Fatalf("a keyring without history: %s, %v (the test's premise)", k.ID, err)
	}
	// Without the handle (the store kept the tombstone), the record alone
	// claims a key whose material is gone.
	f.setState(t, old.ID, store.Active, []byte{})
	f.clock.Advance(2 * time.Second)
	if _, err := bare.Active(ctx, "payments"); !errors.Is(err, signerr.ErrInvariant) || !strings.Contains(err.Error(), "material was destroyed") {
		t.Fatalf("the tombstoned key as ACTIVE: %v", err)
	}
}

// rotation is a granted rotation entry of key id in scope payments, as the
// audit middleware writes it.
func rotation(method, id string) auditlog.Entry {
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationRotate, method, time.Now())
	e.Object, e.Reason, e.Code = auditlog.Object("payments", id), auditlog.ReasonGranted, "OK"
	return e
}
