package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeFetch counts fetches and serves a settable key set; it may block until
// released, so a test can pile callers onto one fetch.
type fakeFetch struct {
	calls   atomic.Int32
	mu      sync.Mutex
	keys    []PublicKey
	err     error
	started chan struct{} // if set, closed at the first call
	once    sync.Once
	release chan struct{}
}

func (f *fakeFetch) fetch(ctx context.Context, _ string) ([]PublicKey, error) {
	f.calls.Add(1)
	if f.started != nil {
		f.once.Do(func() { close(f.started) })
	}
	if f.release != nil {
		<-f.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys, f.err
}

func (f *fakeFetch) set(err error, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	if err == nil {
		f.keys = nil
		for _, id := range ids {
			f.keys = append(f.keys, PublicKey{KeyID: id, Key: make(ed25519.PublicKey, 32)})
		}
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testCache(f *fakeFetch, clk *clock, minRefresh time.Duration) *cache {
	return newCache(cacheConfig{ttl: time.Minute, minRefresh: minRefresh, maxStale: time.Hour, now: clk.now}, f.fetch)
}

// Concurrent readers of a stale scope share one fetch. The fetch is let go
// as soon as it starts, whoever has arrived by then: a reader arriving
// later must see its result, not start a second fetch. (The baseline made
// this test wait for the readers with sleeps and still saw 2 fetches for 32
// readers under load: a reader could find the scope stale, then the fetch
// finish, then start another.)
func TestCacheOneFetchInFlightPerScope(t *testing.T) {
	f := &fakeFetch{started: make(chan struct{}), release: make(chan struct{})}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := testCache(f, clk, 0)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.key(context.Background(), "s", "k1")
			errs <- err
		}()
	}
	<-f.started
	close(f.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("%d fetches for %d concurrent readers, want 1", got, n)
	}
}

// The same race, many times over, with a fetch that returns at once (the
// widest window for a late reader): each time the keys go stale, the
// readers that pile in cause exactly one fetch.
func TestCacheStaleReadersCauseOneFetch(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := testCache(f, clk, 0)
	for round := range 1000 {
		clk.advance(2 * time.Minute)
		before := f.calls.Load()
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.Gosched()
				if _, err := c.key(context.Background(), "s", "k1"); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got := f.calls.Load() - before; got != 1 {
			t.Fatalf("round %d: %d fetches for one stale period, want 1", round, got)
		}
	}
}

func TestCacheRefreshRules(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := testCache(f, clk, time.Second)
	ctx := context.Background()
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.key(ctx, "s", "k1"); err != nil || f.calls.Load() != 1 {
		t.Fatalf("fresh hit fetched again: calls=%d err=%v", f.calls.Load(), err)
	}
	// An unknown key id refreshes, even when fresh, once the last fetch is
	// at least the minimum refresh interval old.
	f.set(nil, "k1", "k2")
	if _, err := c.key(ctx, "s", "k2"); !errors.Is(err, ErrKeyNotFound) || f.calls.Load() != 1 {
		t.Fatalf("unknown key id within the minimum interval: calls=%d err=%v", f.calls.Load(), err)
	}
	clk.advance(time.Second)
	if _, err := c.key(ctx, "s", "k2"); err != nil || f.calls.Load() != 2 {
		t.Fatalf("unknown key id: calls=%d err=%v", f.calls.Load(), err)
	}
	// Still unknown after a refresh: ErrKeyNotFound, remembered until the
	// next fetch.
	clk.advance(time.Second)
	if _, err := c.key(ctx, "s", "k9"); !errors.Is(err, ErrKeyNotFound) || f.calls.Load() != 3 {
		t.Fatalf("missing key: calls=%d err=%v", f.calls.Load(), err)
	}
	clk.advance(time.Second)
	if _, err := c.key(ctx, "s", "k9"); !errors.Is(err, ErrKeyNotFound) || f.calls.Load() != 3 {
		t.Fatalf("a key id known to be missing was fetched again: calls=%d err=%v", f.calls.Load(), err)
	}
	// TTL expiry refreshes; a failed refresh keeps the stale keys.
	clk.advance(2 * time.Minute)
	f.set(errors.New("signer down"))
	calls := f.calls.Load()
	if _, err := c.key(ctx, "s", "k2"); err != nil {
		t.Fatalf("stale key not served while the signer is down: %v", err)
	}
	if f.calls.Load() != calls+1 {
		t.Fatal("stale entry was not refreshed")
	}
	keys, err := c.keys(ctx, "s")
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys while down: %v %v", keys, err)
	}
	// A key unknown while the signer is down reports the outage.
	clk.advance(time.Second)
	if _, err := c.key(ctx, "s", "k3"); err == nil || errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("unknown key while down: %v", err)
	}
	// A retired key disappears on the next refresh.
	f.set(nil, "k2")
	clk.advance(2 * time.Minute)
	if _, err := c.key(ctx, "s", "k1"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("retired key still verifies: %v", err)
	}
	// A first fetch that fails is an error, not an empty list.
	f.set(errors.New("down"))
	if _, err := c.keys(ctx, "other"); err == nil {
		t.Fatal("first fetch failure returned no error")
	}
}

// Key ids chosen by an attacker (a forged token's kid) do not become
// signer round trips: 500 Verify calls with unknown ids, each one new,
// cost one fetch per minimum interval, and repeating a junk id costs none.
// (Before, each call fetched: 500 calls, 500 fetches, 1,000 audit rows.)
func TestCacheUnknownKeyIDsDoNotFetch(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := testCache(f, clk, time.Second)
	ctx := context.Background()
	for i := range 500 {
		if _, err := c.key(ctx, "s", fmt.Sprintf("junk%d", i)); !errors.Is(err, ErrKeyNotFound) {
			t.Fatal(err)
		}
		if _, err := c.key(ctx, "s", "junk0"); !errors.Is(err, ErrKeyNotFound) {
			t.Fatal(err)
		}
		if i%100 == 99 {
			clk.advance(time.Second)
		}
	}
	if n := f.calls.Load(); n > 6 {
		t.Fatalf("%d fetches for 1,000 lookups of unknown ids over 5 s, want at most 6", n)
	}
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatal(err)
	}
}

// Scopes named by an attacker do not grow the cache: the map stays within
// its bound, unknown scopes go first, and a real scope stays cached.
func TestCacheBoundedScopes(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(cacheConfig{ttl: time.Minute, minRefresh: time.Second, maxStale: time.Hour, maxScopes: 16, now: clk.now}, f.fetch)
	ctx := context.Background()
	if _, err := c.key(ctx, "real", "k1"); err != nil {
		t.Fatal(err)
	}
	f.set(ErrKeyNotFound)
	for i := range 1000 {
		if _, err := c.key(ctx, fmt.Sprintf("junk%d", i), "k1"); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("unknown scope: %v", err)
		}
	}
	c.mu.Lock()
	n := len(c.scopes)
	c.mu.Unlock()
	if n > 16 {
		t.Fatalf("%d scopes cached, bound 16", n)
	}
	calls := f.calls.Load()
	if _, err := c.key(ctx, "real", "k1"); err != nil || f.calls.Load() != calls {
		t.Fatalf("the real scope was evicted by junk: %v (fetches %d → %d)", err, calls, f.calls.Load())
	}
}

// Keys are trusted stale only for so long: while refreshes fail, keys
// fetched more than maxStale ago are no longer used (a key retired during
// the outage must stop verifying at some point).
func TestCacheBoundedStaleness(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := testCache(f, clk, time.Second)
	ctx := context.Background()
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatal(err)
	}
	f.set(errors.New("signer down"))
	clk.advance(59 * time.Minute)
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatalf("within the staleness bound: %v", err)
	}
	clk.advance(time.Minute)
	if _, err := c.key(ctx, "s", "k1"); err == nil {
		t.Fatal("a key fetched an hour ago verified while the signer is down")
	}
	if _, err := c.keys(ctx, "s"); err == nil {
		t.Fatal("keys fetched an hour ago served while the signer is down")
	}
	f.set(nil, "k1")
	clk.advance(time.Second)
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatalf("after the signer returned: %v", err)
	}
}
