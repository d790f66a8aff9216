package signing

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// Keyring resolves scopes and key ids to store records and loaded provider
// keys, caching both. Records are re-read after TTL, and at once after a
// rotation on this replica (Invalidate) or a change notice from the store,
// so replicas sharing a store converge within TTL at worst. Loaded keys are
// cached by id for the life of the process: a key id never changes material.
type Keyring struct {
	store    store.Store
	provider keyprovider.Provider
	ttl      time.Duration
	now      func() time.Time

	mu        sync.RWMutex
	active    map[string]cached[store.Key]   // scope → its ACTIVE key
	published map[string]cached[[]store.Key] // scope → published keys
	byID      map[string]cached[store.Key]   // key id → record
	loaded    map[string]keyprovider.Key     // key id → provider key
}

type cached[T any] struct {
	v       T
	expires time.Time
}

// NewKeyring caches records for ttl (0 disables the cache).
func NewKeyring(s store.Store, p keyprovider.Provider, ttl time.Duration, now func() time.Time) *Keyring {
	if now == nil {
		now = time.Now
	}
	return &Keyring{store: s, provider: p, ttl: ttl, now: now,
		active: map[string]cached[store.Key]{}, published: map[string]cached[[]store.Key]{},
		byID: map[string]cached[store.Key]{}, loaded: map[string]keyprovider.Key{}}
}

// TTL is the longest a replica may act on a superseded record.
func (r *Keyring) TTL() time.Duration { return r.ttl }

func lookup[T any](r *Keyring, m map[string]cached[T], k string) (T, bool) {
	r.mu.RLock()
	c, ok := m[k]
	r.mu.RUnlock()
	if ok && r.now().Before(c.expires) {
		return c.v, true
	}
	var zero T
	return zero, false
}

func keep[T any](r *Keyring, m map[string]cached[T], k string, v T) {
	if r.ttl <= 0 {
		return
	}
	r.mu.Lock()
	m[k] = cached[T]{v: v, expires: r.now().Add(r.ttl)}
	r.mu.Unlock()
}

// Invalidate drops the cached records of a scope ("" drops everything).
func (r *Keyring) Invalidate(scope string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if scope == "" {
		clear(r.active)
		clear(r.published)
		clear(r.byID)
		return
	}
	delete(r.active, scope)
	delete(r.published, scope)
	for id, c := range r.byID {
		if c.v.Scope == scope {
			delete(r.byID, id)
		}
	}
}

// Record returns the key with id.
func (r *Keyring) Record(ctx context.Context, id string) (store.Key, error) {
	if k, ok := lookup(r, r.byID, id); ok {
		return k, nil
	}
	k, err := r.store.Key(ctx, id)
	if err != nil {
		return store.Key{}, err
	}
	keep(r, r.byID, id, k)
	return k, nil
}

// Active returns the scope's ACTIVE key.
func (r *Keyring) Active(ctx context.Context, scope string) (store.Key, error) {
	if k, ok := lookup(r, r.active, scope); ok {
		return k, nil
	}
	k, err := r.store.ActiveKey(ctx, scope)
	if err != nil {
		return store.Key{}, err
	}
	keep(r, r.active, scope, k)
	return k, nil
}

// Published returns the scope's PENDING, ACTIVE and PREVIOUS keys.
func (r *Keyring) Published(ctx context.Context, scope string) ([]store.Key, error) {
	if ks, ok := lookup(r, r.published, scope); ok {
		return ks, nil
	}
	all, err := r.store.Keys(ctx, scope)
	if err != nil {
		return nil, err
	}
	var ks []store.Key
	for _, k := range all {
		if k.State.Published() {
			ks = append(ks, k)
		}
	}
	keep(r, r.published, scope, ks)
	return ks, nil
}

// Load returns the provider key for a record.
func (r *Keyring) Load(ctx context.Context, rec store.Key) (keyprovider.Key, error) {
	r.mu.RLock()
	k, ok := r.loaded[rec.ID]
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	if rec.Provider != r.provider.Name() {
		return nil, fmt.Errorf("keyring: key %q belongs to provider %q, this signer runs %q: %w",
			rec.ID, rec.Provider, r.provider.Name(), signerr.ErrProviderUnavailable)
	}
	k, err := r.provider.Load(ctx, keyprovider.KeyRef{ID: rec.ID, Scope: rec.Scope, Public: rec.Public}, rec.Handle)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.loaded[rec.ID] = k
	r.mu.Unlock()
	return k, nil
}

// Signing resolves the key that may sign for scope: its ACTIVE key, or keyID
// if set, which must be that ACTIVE key. On a refusal rec.ID is the key
// found (it may not sign), "" when none was.
func (r *Keyring) Signing(ctx context.Context, scope, keyID string) (rec store.Key, err error) {
	if keyID == "" {
		return r.Active(ctx, scope)
	}
	rec, err = r.Record(ctx, keyID)
	if err != nil {
		return store.Key{}, err
	}
	switch {
	case rec.Scope != scope:
		return rec, fmt.Errorf("key %q is not in scope %q: %w", keyID, scope, signerr.ErrScopeMismatch)
	case rec.State != store.Active:
		return rec, fmt.Errorf("key %q is %s: %w", keyID, rec.State, store.StateError(rec.State))
	}
	return rec, nil
}
