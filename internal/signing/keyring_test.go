package signing_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
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
	cs    *counting
	p     keyprovider.Provider
	kr    *signing.Keyring
	rot   *signing.Rotation
	clock *signertest.Clock
}

func newFixture(t *testing.T, o signing.KeyringOptions, scopes ...string) *fixture {
	t.Helper()
	f := &fixture{st: signertest.OpenBolt(t), p: signertest.NewLocalProvider(t),
		clock: signertest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	f.cs = &counting{Store: f.st}
	f.kr = signing.NewKeyringWith(f.cs, f.p, time.Second, f.clock.Now, o)
	f.rot = signing.NewRotation(f.cs, f.p, f.kr, signing.Windows{PrePublish: time.Minute, VerifyOnly: time.Hour}, f.clock.Now)
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
	f := newFixture(t, signing.KeyringOptions{MaxCached: 8}, "payments")
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
	f := newFixture(t, signing.KeyringOptions{NoticeInterval: 500 * time.Millisecond}, "payments")
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
	f := newFixture(t, signing.KeyringOptions{}, "payments")
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
	if err := f.st.DB().Update(func(tx *bolt.Tx) error {
		return moveScope(tx, rec.ID, "billing")
	}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Second)
	got, err := f.kr.Active(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.kr.Sign(ctx, got, []byte("m")); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("Sign(billing) with the moved payments key: %v", err)
	}
}

// A key that is RETIRED leaves memory: the rotation on this replica
// releases it at once, and a key nobody uses any more (retired by another
// replica) is released by the sweep when its life ends.
func TestKeyringReleasesKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, signing.KeyringOptions{}, "payments")
	rec, _ := f.kr.Active(ctx, "payments")
	first, err := f.kr.Load(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	open, err := f.rot.Open(ctx, &signerv1.OpenRequest{Scope: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	if _, err := f.rot.Commit(ctx, &signerv1.CommitRequest{Scope: "payments", KeyId: open.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	if _, err := f.rot.Retire(ctx, &signerv1.RetireRequest{Scope: "payments", KeyId: rec.ID}); err != nil {
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
	if sig, err := f.kr.Sign(ctx, now, []byte("m")); err != nil || len(sig) != 64 {
		t.Fatalf("sign: %v", err)
	}
	f.clock.Advance(time.Minute)
	f.kr.Sweep()
	if _, err := k.SignContext(ctx, []byte("m")); !errors.Is(err, keyprovider.ErrReleased) {
		t.Fatalf("an unused key outlived its life in memory: %v", err)
	}
	// Sign loads it again transparently.
	if _, err := f.kr.Sign(ctx, now, []byte("m")); err != nil {
		t.Fatal(err)
	}
}

// Many Signs on a cold cache load the key concurrently: every one of them
// signs (none meets a copy released by another's load).
func TestKeyringConcurrentColdLoads(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, signing.KeyringOptions{}, "payments")
	rec, err := f.kr.Active(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		f.kr.Invalidate("")
		errs := make(chan error, 32)
		for range 32 {
			go func() {
				_, err := f.kr.Sign(ctx, rec, []byte("m"))
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
	f := newFixture(t, signing.KeyringOptions{}, "payments")
	var down atomic.Bool
	kr := signing.NewKeyring(f.st, downProvider{f.p, &down}, 0, f.clock.Now)
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
	if _, err := f.rot.Open(ctx, &signerv1.OpenRequest{Scope: "payments"}); err != nil {
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
