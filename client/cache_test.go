package client

import (
	"context"
	"crypto/ed25519"
	"errors"
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
	release chan struct{}
}

func (f *fakeFetch) fetch(ctx context.Context, _ string) ([]PublicKey, error) {
	f.calls.Add(1)
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

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestCacheOneFetchInFlightPerScope(t *testing.T) {
	f := &fakeFetch{release: make(chan struct{})}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(time.Minute, clk.now, f.fetch)
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
	// Every caller is parked on the one fetch before it is let go.
	for f.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
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

func TestCacheRefreshRules(t *testing.T) {
	f := &fakeFetch{}
	f.set(nil, "k1")
	clk := &clock{t: time.Unix(1000, 0)}
	c := newCache(time.Minute, clk.now, f.fetch)
	ctx := context.Background()
	if _, err := c.key(ctx, "s", "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.key(ctx, "s", "k1"); err != nil || f.calls.Load() != 1 {
		t.Fatalf("fresh hit fetched again: calls=%d err=%v", f.calls.Load(), err)
	}
	// An unknown key id refreshes at once, even when fresh.
	f.set(nil, "k1", "k2")
	if _, err := c.key(ctx, "s", "k2"); err != nil || f.calls.Load() != 2 {
		t.Fatalf("unknown key id: calls=%d err=%v", f.calls.Load(), err)
	}
	// Still unknown after a refresh: ErrKeyNotFound.
	if _, err := c.key(ctx, "s", "k9"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	// TTL expiry refreshes; a failed refresh keeps the stale keys.
	clk.t = clk.t.Add(2 * time.Minute)
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
	if _, err := c.key(ctx, "s", "k3"); err == nil || errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("unknown key while down: %v", err)
	}
	// A retired key disappears on the next refresh.
	f.set(nil, "k2")
	clk.t = clk.t.Add(2 * time.Minute)
	if _, err := c.key(ctx, "s", "k1"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("retired key still verifies: %v", err)
	}
	// A first fetch that fails is an error, not an empty list.
	f.set(errors.New("down"))
	if _, err := c.keys(ctx, "other"); err == nil {
		t.Fatal("first fetch failure returned no error")
	}
}
