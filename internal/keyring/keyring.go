package keyring

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// Defaults of Options.
const (
	// DefaultMaxCached bounds each of the keyring's maps (records by scope,
	// published sets, records by id, loaded keys): above the 10k scopes the
	// signer is sized for, far below what an attacker's junk would need.
	DefaultMaxCached = 16384
	// DefaultNoticeInterval is the least time between two reloads of one
	// scope caused by store change notices.
	DefaultNoticeInterval = time.Second
	// minKeyLife is how long an unsealed key is kept without use of its
	// record when the record cache is off (TTL 0).
	minKeyLife = time.Minute
)

// Keyring resolves scopes and key ids to store records and loaded provider
// keys, caching both. Records are re-read after TTL, and at once after a
// rotation on this replica (Invalidate) or, rate limited, after a change
// notice from the store (Notice), so replicas sharing a store converge
// within TTL at worst.
//
// Every map is bounded and only what exists is cached: an empty answer (an
// unknown scope, an unknown id) is never kept, so callers choosing names
// cannot grow it. Loaded keys are kept for the life of their record in the
// cache (at least a minute) and bound to the record they were loaded for
// (id, scope, public key): a record that changed under the same id goes
// back to the provider, which refuses a moved or swapped one. A key that
// leaves the cache is released (zeroed where the provider holds it in
// memory), so a RETIRED key's private half does not stay in the process.
type Keyring struct {
	store    store.Store
	provider keyprovider.Provider
	ttl      time.Duration
	now      func() time.Time
	opts     Options

	mu        sync.RWMutex
	active    map[string]cached[store.Key]   // scope → its ACTIVE key
	published map[string]cached[[]store.Key] // scope → published keys
	byID      map[string]cached[store.Key]   // key id → record
	loaded    map[string]loadedKey           // key id → provider key
	vouched   map[string]vouch               // key id → the record the provider vouched for
	noticed   map[string]time.Time           // scope → last reload forced by a notice
	seen      map[string]store.State         // key id → the furthest state read for it
}

// Options bound the keyring; zero values take the defaults.
type Options struct {
	MaxCached      int           // entries per map
	NoticeInterval time.Duration // least time between notice-driven reloads of a scope
	// Floor, if set, is the furthest state the audit log took a key to
	// (History.Floor): a record behind it is refused.
	Floor func(id string) store.State
}

type cached[T any] struct {
	v       T
	scope   string
	expires time.Time
}

type vouch struct {
	scope  string
	public ed25519.PublicKey
}

type loadedKey struct {
	key     keyprovider.Key
	scope   string
	public  ed25519.PublicKey
	expires time.Time
}

// New caches records for ttl (0 disables the record cache).
func New(s store.Store, p keyprovider.Provider, ttl time.Duration, now func() time.Time) *Keyring {
	return NewWith(s, p, ttl, now, Options{})
}

// NewWith is New with explicit bounds.
func NewWith(s store.Store, p keyprovider.Provider, ttl time.Duration, now func() time.Time, o Options) *Keyring {
	if now == nil {
		now = time.Now
	}
	if o.MaxCached <= 0 {
		o.MaxCached = DefaultMaxCached
	}
	if o.NoticeInterval <= 0 {
		o.NoticeInterval = DefaultNoticeInterval
	}
	return &Keyring{store: s, provider: p, ttl: ttl, now: now, opts: o,
		active: map[string]cached[store.Key]{}, published: map[string]cached[[]store.Key]{},
		byID: map[string]cached[store.Key]{}, loaded: map[string]loadedKey{}, vouched: map[string]vouch{}, noticed: map[string]time.Time{},
		seen: map[string]store.State{}}
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

func keep[T any](r *Keyring, m map[string]cached[T], k, scope string, v T) {
	if r.ttl <= 0 {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := m[k]; !ok && len(m) >= r.opts.MaxCached {
		r.sweepLocked(now)
		if len(m) >= r.opts.MaxCached {
			for victim := range m { // Go's map order is random: a random victim
				delete(m, victim)
				break
			}
		}
	}
	m[k] = cached[T]{v: v, scope: scope, expires: now.Add(r.ttl)}
}

// Invalidate drops the cached records and loaded keys of a scope ("" drops
// everything) at once: this replica changed them.
func (r *Keyring) Invalidate(scope string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(scope, time.Time{})
}

// Notice is told of a key change announced by the store (another replica
// rotated). Anyone who can write to the store's notice channel can send
// them, so they are rate limited per scope: a scope's cache is dropped at
// once if no notice dropped it within the notice interval, otherwise what
// was cached since expires when that interval ends. A flood of notices thus
// costs at most one reload per scope per interval, and a genuine change is
// seen within the interval. Notices for scopes not cached cost nothing.
func (r *Keyring) Notice(scope string) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, ok := r.noticed[scope]; ok && now.Before(last.Add(r.opts.NoticeInterval)) {
		r.expireLocked(scope, last.Add(r.opts.NoticeInterval))
		return
	}
	if scope == "" || r.cachedLocked(scope) {
		if len(r.noticed) >= r.opts.MaxCached {
			r.sweepLocked(now)
		}
		if len(r.noticed) < r.opts.MaxCached {
			r.noticed[scope] = now
		}
		r.expireLocked(scope, time.Time{})
	}
}

// cachedLocked reports, in constant time (a notice flood must stay cheap),
// whether the scope's records are cached. Records cached only by key id
// (pinned Signs) are not looked for: they expire with the TTL, the
// fallback the notices only shorten.
func (r *Keyring) cachedLocked(scope string) bool {
	_, active := r.active[scope]
	_, published := r.published[scope]
	return active || published
}

// expireIn makes the scope's entries ("" every entry) expire by deadline; a
// zero deadline drops them now.
func expireIn[T any](m map[string]cached[T], scope string, deadline time.Time) {
	for k, c := range m {
		if scope != "" && c.scope != scope {
			continue
		}
		if deadline.IsZero() {
			delete(m, k)
		} else if deadline.Before(c.expires) {
			c.expires = deadline
			m[k] = c
		}
	}
}

// expireLocked is expireIn over every map; dropped keys are released.
func (r *Keyring) expireLocked(scope string, deadline time.Time) {
	expireIn(r.active, scope, deadline)
	expireIn(r.published, scope, deadline)
	expireIn(r.byID, scope, deadline)
	for id, l := range r.loaded {
		if scope != "" && l.scope != scope {
			continue
		}
		if deadline.IsZero() {
			delete(r.loaded, id)
			release(l.key)
		} else if deadline.Before(l.expires) {
			l.expires = deadline
			r.loaded[id] = l
		}
	}
}

func release(k keyprovider.Key) {
	if rk, ok := k.(keyprovider.Releaser); ok {
		rk.Release()
	}
}

// Sweep drops expired entries and releases loaded keys past their life.
func (r *Keyring) Sweep() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked(now)
}

func sweepIn[T any](m map[string]cached[T], now time.Time) {
	for k, c := range m {
		if !now.Before(c.expires) {
			delete(m, k)
		}
	}
}

func (r *Keyring) sweepLocked(now time.Time) {
	sweepIn(r.active, now)
	sweepIn(r.published, now)
	sweepIn(r.byID, now)
	for id, l := range r.loaded {
		if !now.Before(l.expires) {
			delete(r.loaded, id)
			release(l.key)
		}
	}
	for scope, at := range r.noticed {
		if !now.Before(at.Add(r.opts.NoticeInterval)) {
			delete(r.noticed, scope)
		}
	}
}

// Run sweeps every interval until ctx ends, so that keys nobody asks for
// any more (a key retired by another replica) leave memory on time.
func (r *Keyring) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Invalidate("")
			return
		case <-t.C:
			r.Sweep()
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
	if err := r.admit(k); err != nil {
		return k, err
	}
	keep(r, r.byID, id, k.Scope, k)
	return k, nil
}

// admit refuses a record whose key's state went back: behind a state this
// keyring read for it before, or behind what the audit log says of it
// (Options.Floor), or alive with its material destroyed (a retired key's
// tombstone). RETIRED is terminal; only a store writer's edit (a restored
// row, a flipped state) makes a record go back, and it never signs or
// reaches a verifier. The furthest state read is remembered (bounded).
func (r *Keyring) admit(k store.Key) error {
	floor := store.State(0)
	if r.opts.Floor != nil {
		floor = r.opts.Floor(k.ID)
	}
	r.mu.Lock()
	seen := r.seen[k.ID]
	if k.State > seen {
		if _, ok := r.seen[k.ID]; ok || len(r.seen) < r.opts.MaxCached {
			r.seen[k.ID] = k.State
		}
	}
	r.mu.Unlock()
	switch {
	case k.State < seen:
		return fmt.Errorf("keyring: key %q of scope %q is %s in the store, but was %s: a key's state never goes back (the record was edited or restored): %w", k.ID, k.Scope, k.State, seen, signerr.ErrInvariant)
	case k.State < floor:
		return fmt.Errorf("keyring: key %q of scope %q is %s in the store, but the audit log took it to %s: the record was edited or restored: %w", k.ID, k.Scope, k.State, floor, signerr.ErrInvariant)
	case k.State != store.Retired && store.Destroyed(k):
		return fmt.Errorf("keyring: key %q of scope %q is %s in the store, but its material was destroyed when it retired: %w", k.ID, k.Scope, k.State, signerr.ErrInvariant)
	}
	return nil
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
	if err := r.admit(k); err != nil {
		return store.Key{}, err
	}
	keep(r, r.active, scope, scope, k)
	return k, nil
}

// Published returns the scope's PENDING, ACTIVE and PREVIOUS keys, each
// vouched for by the provider (Vouch). A scope with none is not cached.
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
		if err := r.admit(k); err != nil {
			return nil, err
		}
		if k.State.Published() {
			if err := r.Vouch(ctx, k); err != nil {
				return nil, err
			}
			ks = append(ks, k)
		}
	}
	if len(ks) > 0 {
		keep(r, r.published, scope, scope, ks)
	}
	return ks, nil
}

// keyLife is how long a loaded key is kept.
func (r *Keyring) keyLife() time.Duration { return max(r.ttl, minKeyLife) }

// Load returns the provider key for a record: the cached one if it was
// loaded for this very record (id, scope, public key), else the provider's,
// which refuses a handle that was not made for the record (ErrInvariant).
// The key's public half must be the record's.
func (r *Keyring) Load(ctx context.Context, rec store.Key) (keyprovider.Key, error) {
	now := r.now()
	r.mu.RLock()
	l, ok := r.loaded[rec.ID]
	r.mu.RUnlock()
	if ok && l.scope == rec.Scope && l.public.Equal(rec.Public) && now.Before(l.expires) {
		return l.key, nil
	}
	k, err := r.fromProvider(ctx, rec)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.vouchLocked(rec)
	if old, ok := r.loaded[rec.ID]; ok && old.scope == rec.Scope && old.public.Equal(rec.Public) && now.Before(old.expires) {
		// Another caller loaded the same key meanwhile: keep one copy,
		// never release a key a concurrent Sign may be using.
		r.mu.Unlock()
		release(k)
		return old.key, nil
	} else if ok {
		release(old.key)
	} else if len(r.loaded) >= r.opts.MaxCached {
		r.sweepLocked(now)
		for victim, v := range r.loaded {
			if len(r.loaded) < r.opts.MaxCached {
				break
			}
			delete(r.loaded, victim)
			release(v.key)
		}
	}
	r.loaded[rec.ID] = loadedKey{key: k, scope: rec.Scope, public: rec.Public, expires: now.Add(r.keyLife())}
	r.mu.Unlock()
	return k, nil
}

// fromProvider loads rec's key from the provider, which refuses a handle
// not made for rec (ErrInvariant), and checks its public half is rec's.
func (r *Keyring) fromProvider(ctx context.Context, rec store.Key) (keyprovider.Key, error) {
	if rec.Provider != r.provider.Name() {
		return nil, fmt.Errorf("keyring: key %q belongs to provider %q, this signer runs %q: %w",
			rec.ID, rec.Provider, r.provider.Name(), signerr.ErrProviderUnavailable)
	}
	k, err := r.provider.Load(ctx, keyprovider.KeyRef{ID: rec.ID, Scope: rec.Scope, Public: rec.Public}, rec.Handle)
	if err != nil {
		return nil, err
	}
	if pub, ok := k.Public().(ed25519.PublicKey); !ok || !pub.Equal(rec.Public) {
		release(k)
		return nil, fmt.Errorf("keyring: key %q: the provider's public key is not the record's: %w", rec.ID, signerr.ErrInvariant)
	}
	return k, nil
}

// Vouch checks, before rec's public key goes to a verifier, that the
// provider holds its private half bound to rec's id, scope and public key.
// A row written into the store by someone who holds no key (a forged
// PENDING or PREVIOUS key that verifiers would then trust) is refused with
// ErrInvariant. A record vouched for once stays vouched (bounded, never
// for a changed scope or public key), so a provider outage does not stop
// publication of keys already checked; the private half is released at
// once unless a Sign loaded it.
func (r *Keyring) Vouch(ctx context.Context, rec store.Key) error {
	if err := r.admit(rec); err != nil {
		return err
	}
	r.mu.RLock()
	v, ok := r.vouched[rec.ID]
	r.mu.RUnlock()
	if ok && v.scope == rec.Scope && v.public.Equal(rec.Public) {
		return nil
	}
	k, err := r.fromProvider(ctx, rec)
	if err != nil {
		return err
	}
	release(k)
	r.mu.Lock()
	r.vouchLocked(rec)
	r.mu.Unlock()
	return nil
}

func (r *Keyring) vouchLocked(rec store.Key) {
	if _, ok := r.vouched[rec.ID]; !ok && len(r.vouched) >= r.opts.MaxCached {
		// Forget one (any) record: clearing the lot would make every
		// published key cost a provider load again at once.
		for id := range r.vouched {
			delete(r.vouched, id)
			break
		}
	}
	r.vouched[rec.ID] = vouch{scope: rec.Scope, public: rec.Public}
}

// Sign signs message with the key of rec. A key released between Load and
// its use (swept, or invalidated by a rotation) is loaded again once. opts
// nil is pure Ed25519 (Key.SignContext); otherwise Key.SignOptions signs in
// the variant opts selects.
func (r *Keyring) Sign(ctx context.Context, rec store.Key, message []byte, opts *ed25519.Options) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		key, err := r.Load(ctx, rec)
		if err != nil {
			return nil, err
		}
		var sig []byte
		if opts == nil {
			// Pure Ed25519 takes the path every provider and wrapper
			// (metrics, fault-injecting test keys) has always served.
			sig, err = key.SignContext(ctx, message)
		} else {
			sig, err = key.SignOptions(ctx, message, opts)
		}
		if errors.Is(err, keyprovider.ErrReleased) && attempt == 0 {
			continue
		}
		return sig, err
	}
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
