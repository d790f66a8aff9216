package client

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Defaults of the public-key cache (see the With* options).
const (
	// DefaultMinRefresh is the least time between two fetches of one
	// scope's keys, however many unknown key ids are asked for.
	DefaultMinRefresh = time.Second
	// DefaultMaxStale is how long fetched keys are still used while
	// refreshes fail; after that Verify reports the outage.
	DefaultMaxStale = time.Hour
	// DefaultMaxScopes bounds the scopes the cache holds.
	DefaultMaxScopes = 1024
	// maxUnknown bounds the key ids remembered as unknown per scope.
	maxUnknown = 256
)

// cacheConfig is the cache's policy.
type cacheConfig struct {
	ttl        time.Duration // keys are used without a refresh this long
	minRefresh time.Duration // least time between fetches of one scope
	maxStale   time.Duration // keys are never used when older (refreshes failing)
	maxScopes  int
	now        func() time.Time
}

// cache holds each scope's published public keys. Reads are served from
// memory. A scope is fetched when its keys are older than the TTL or an
// unknown key id is asked for, but never twice within minRefresh, and with
// at most one fetch in flight per scope (the others wait for it). A key id
// that a fetch made for it did not find is remembered as unknown until the
// next fetch (negative caching), so the same junk id costs nothing, and
// many junk ids cost one fetch per minRefresh. A failed refresh keeps the keys already
// known, but only until they are maxStale old. The map of scopes is
// bounded; a scope the signer does not know is kept only as a short
// negative entry, first to go when room is needed.
//
// Deciding to fetch and joining (or starting) the fetch happen under one
// lock, and a fetch publishes its result and leaves under the same lock: a
// reader that found the keys stale either joins the fetch in flight or, if
// that fetch has finished, sees its result (before, a reader could see
// stale, then the fetch finish, then start a second fetch).
type cache struct {
	cfg   cacheConfig
	fetch func(ctx context.Context, scope string) ([]PublicKey, error)

	mu     sync.Mutex
	scopes map[string]*scopeKeys
}

type scopeKeys struct {
	keys     []PublicKey
	byID     map[string]PublicKey
	fetched  time.Time // last successful fetch; zero: never
	missing  bool      // the last successful fetch: the signer has no keys for the scope
	notFound error     // the signer's answer when missing (an *Error with its reason)
	tried    time.Time // last fetch finished, successful or not
	lastErr  error     // of the last fetch
	expired  bool      // forced stale by expire
	unknown  map[string]struct{}
	inflight *refresh
}

type refresh struct {
	done chan struct{}
	err  error
}

func newCache(cfg cacheConfig, fetch func(context.Context, string) ([]PublicKey, error)) *cache {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.maxScopes <= 0 {
		cfg.maxScopes = DefaultMaxScopes
	}
	cfg.maxStale = max(cfg.maxStale, cfg.ttl)
	return &cache{cfg: cfg, fetch: fetch, scopes: map[string]*scopeKeys{}}
}

// scope returns the scope's entry, making room for a new one: first a
// scope that is not in use (no fetch in flight) and holds nothing worth
// keeping (unknown to the signer, or too stale to use), else any scope not
// in use. Scopes with a fetch in flight are never evicted, so the map can
// exceed its bound only by the fetches in flight.
func (c *cache) scope(scope string) *scopeKeys {
	if s, ok := c.scopes[scope]; ok {
		return s
	}
	if len(c.scopes) >= c.cfg.maxScopes {
		now := c.cfg.now()
		victim := ""
		for name, s := range c.scopes { // random order
			if s.inflight != nil {
				continue
			}
			if victim == "" {
				victim = name
			}
			if s.missing || s.fetched.IsZero() || !c.usable(s, now) {
				victim = name
				break
			}
		}
		if victim != "" {
			delete(c.scopes, victim)
		}
	}
	s := &scopeKeys{}
	c.scopes[scope] = s
	return s
}

func (c *cache) fresh(s *scopeKeys, now time.Time) bool {
	return !s.expired && !s.fetched.IsZero() && now.Sub(s.fetched) < c.cfg.ttl
}

// usable reports whether the keys fetched may still be served.
func (c *cache) usable(s *scopeKeys, now time.Time) bool {
	return !s.fetched.IsZero() && now.Sub(s.fetched) < c.cfg.maxStale
}

// startLocked joins the fetch in flight or starts one, unless the scope was
// fetched less than minRefresh ago; nil means no fetch.
func (c *cache) startLocked(scope string, s *scopeKeys, now time.Time) *refresh {
	if s.inflight != nil {
		return s.inflight
	}
	if !s.tried.IsZero() && now.Sub(s.tried) < c.cfg.minRefresh {
		return nil
	}
	r := &refresh{done: make(chan struct{})}
	s.inflight = r
	go c.run(scope, s, r)
	return r
}

// wait waits for r (if any) and then takes the lock again.
func (c *cache) wait(ctx context.Context, r *refresh) error {
	if r == nil {
		c.mu.Lock()
		return nil
	}
	select {
	case <-r.done:
		c.mu.Lock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run performs one fetch. It is detached from any one caller's context so a
// caller giving up does not fail the others waiting on it. The signer
// answering "no such key" for the scope is a result (an empty scope), not a
// failure.
func (c *cache) run(scope string, s *scopeKeys, r *refresh) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := c.fetch(ctx, scope)
	missing := errors.Is(err, ErrKeyNotFound)
	notFound := err
	if missing {
		keys, err = nil, nil
	}
	c.mu.Lock()
	now := c.cfg.now()
	s.tried, s.lastErr = now, err
	if err == nil {
		s.keys, s.missing, s.fetched, s.expired = keys, missing, now, false
		s.notFound = nil
		if missing {
			s.notFound = notFound
		}
		s.byID = make(map[string]PublicKey, len(keys))
		for _, k := range keys {
			s.byID[k.KeyID] = k
		}
		s.unknown = nil
	}
	s.inflight = nil
	r.err = err
	c.mu.Unlock()
	close(r.done)
}

// keys returns the scope's keys, refreshing if stale; stale keys are
// returned while a refresh fails, up to maxStale.
func (c *cache) keys(ctx context.Context, scope string) ([]PublicKey, error) {
	c.mu.Lock()
	s := c.scope(scope)
	now := c.cfg.now()
	if !c.fresh(s, now) {
		r := c.startLocked(scope, s, now)
		c.mu.Unlock()
		if err := c.wait(ctx, r); err != nil {
			return nil, err
		}
		now = c.cfg.now()
	}
	defer c.mu.Unlock()
	switch {
	case c.usable(s, now) && s.missing && s.notFound != nil:
		return nil, s.notFound
	case c.usable(s, now) && s.missing:
		return nil, ErrKeyNotFound
	case c.usable(s, now):
		return s.keys, nil
	case s.lastErr != nil:
		return nil, s.lastErr
	}
	return nil, ErrUnavailable
}

// key returns one key, refreshing when the cache is stale or lacks it
// (within the rules above).
func (c *cache) key(ctx context.Context, scope, id string) (PublicKey, error) {
	c.mu.Lock()
	s := c.scope(scope)
	now := c.cfg.now()
	k, ok := s.byID[id]
	fresh := c.fresh(s, now)
	if ok && fresh {
		c.mu.Unlock()
		return k, nil
	}
	if _, unknown := s.unknown[id]; !ok && unknown && fresh {
		c.mu.Unlock()
		return PublicKey{}, ErrKeyNotFound
	}
	r := c.startLocked(scope, s, now)
	c.mu.Unlock()
	if err := c.wait(ctx, r); err != nil {
		return PublicKey{}, err
	}
	defer c.mu.Unlock()
	now = c.cfg.now()
	k, ok = s.byID[id]
	switch {
	case ok && c.usable(s, now):
		// Refreshed, or the refresh failed and the stale key stands.
		return k, nil
	case c.usable(s, now) && (s.lastErr == nil || s.missing):
		// The keys in hand are the signer's latest answer: id is not one.
		// Remembered only when a fetch made for this lookup said so.
		if r == nil {
			return PublicKey{}, ErrKeyNotFound
		}
		if s.unknown == nil {
			s.unknown = map[string]struct{}{}
		}
		if len(s.unknown) >= maxUnknown {
			clear(s.unknown)
		}
		s.unknown[id] = struct{}{}
		return PublicKey{}, ErrKeyNotFound
	case s.lastErr != nil:
		return PublicKey{}, s.lastErr
	}
	return PublicKey{}, ErrUnavailable
}

// expire makes the next read refresh (within minRefresh of the last fetch,
// the keys in hand are used).
func (c *cache) expire(scope string) {
	c.mu.Lock()
	c.scope(scope).expired = true
	c.mu.Unlock()
}
