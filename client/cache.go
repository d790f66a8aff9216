package client

import (
	"context"
	"sync"
	"time"
)

// cache holds each scope's published public keys. Reads are served from
// memory; a refresh happens when the TTL has passed or an unknown key id is
// asked for, with at most one fetch in flight per scope (the others wait for
// it). A failed refresh keeps the keys already known.
type cache struct {
	ttl   time.Duration
	now   func() time.Time
	fetch func(ctx context.Context, scope string) ([]PublicKey, error)

	mu     sync.Mutex
	scopes map[string]*scopeKeys
}

type scopeKeys struct {
	keys     []PublicKey
	byID     map[string]PublicKey
	fetched  time.Time
	expired  bool // forced stale by expire
	inflight *refresh
}

type refresh struct {
	done chan struct{}
	err  error
}

func newCache(ttl time.Duration, now func() time.Time, fetch func(context.Context, string) ([]PublicKey, error)) *cache {
	return &cache{ttl: ttl, now: now, fetch: fetch, scopes: map[string]*scopeKeys{}}
}

func (c *cache) scope(scope string) *scopeKeys {
	s, ok := c.scopes[scope]
	if !ok {
		s = &scopeKeys{}
		c.scopes[scope] = s
	}
	return s
}

// refresh fetches the scope's keys, joining a fetch already in flight.
func (c *cache) refresh(ctx context.Context, scope string) error {
	c.mu.Lock()
	s := c.scope(scope)
	r := s.inflight
	if r == nil {
		r = &refresh{done: make(chan struct{})}
		s.inflight = r
		go c.run(scope, s, r)
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run performs one fetch. It is detached from any one caller's context so a
// caller giving up does not fail the others waiting on it.
func (c *cache) run(scope string, s *scopeKeys, r *refresh) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := c.fetch(ctx, scope)
	c.mu.Lock()
	if err == nil {
		s.keys = keys
		s.byID = make(map[string]PublicKey, len(keys))
		for _, k := range keys {
			s.byID[k.KeyID] = k
		}
		s.fetched = c.now()
		s.expired = false
	}
	s.inflight = nil
	r.err = err
	c.mu.Unlock()
	close(r.done)
}

func (c *cache) fresh(s *scopeKeys) bool {
	return !s.expired && !s.fetched.IsZero() && c.now().Sub(s.fetched) < c.ttl
}

// keys returns the scope's keys, refreshing if stale; stale keys are
// returned if the refresh fails and there are any.
func (c *cache) keys(ctx context.Context, scope string) ([]PublicKey, error) {
	c.mu.Lock()
	s := c.scope(scope)
	if c.fresh(s) {
		keys := s.keys
		c.mu.Unlock()
		return keys, nil
	}
	c.mu.Unlock()
	err := c.refresh(ctx, scope)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && s.fetched.IsZero() {
		return nil, err
	}
	return s.keys, nil
}

// key returns one key, refreshing when the cache is stale or lacks it.
func (c *cache) key(ctx context.Context, scope, id string) (PublicKey, error) {
	c.mu.Lock()
	s := c.scope(scope)
	k, ok := s.byID[id]
	fresh := c.fresh(s)
	c.mu.Unlock()
	if ok && fresh {
		return k, nil
	}
	err := c.refresh(ctx, scope)
	c.mu.Lock()
	k, found := s.byID[id]
	c.mu.Unlock()
	switch {
	case found:
		// Either refreshed, or the refresh failed and the stale key stands.
		return k, nil
	case err != nil:
		return PublicKey{}, err
	}
	return PublicKey{}, ErrKeyNotFound
}

// expire makes the next read refresh.
func (c *cache) expire(scope string) {
	c.mu.Lock()
	c.scope(scope).expired = true
	c.mu.Unlock()
}
