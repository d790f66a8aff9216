package keyring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

// Windows make rotation safe by construction (see store.Windows). The
// VerifyOnly window is never shorter than the keyring TTL: a replica with a
// stale cache may still sign with a key demoted elsewhere, and that
// signature must still verify.
type Windows = store.Windows

// Lifecycle is the key lifecycle every path shares (RotationService's
// handlers, start-up bootstrap, automatic rotation): keys are made in the
// provider, moved through their states by the store under store.Apply's
// rules, and destroyed when they retire.
type Lifecycle struct {
	store    store.Store
	provider keyprovider.Provider
	keys     *Keyring
	windows  Windows
	now      func() time.Time
	log      *slog.Logger
}

// NewLifecycle changes keys of s made by p; kr is invalidated on every
// change.
func NewLifecycle(s store.Store, p keyprovider.Provider, kr *Keyring, w Windows, now func() time.Time) *Lifecycle {
	if now == nil {
		now = time.Now
	}
	w.VerifyOnly = max(w.VerifyOnly, kr.TTL())
	return &Lifecycle{store: s, provider: p, keys: kr, windows: w, now: now, log: slog.Default()}
}

// Windows are the lifecycle's waiting times.
func (l *Lifecycle) Windows() Windows { return l.windows }

// Store is the store the lifecycle changes.
func (l *Lifecycle) Store() store.Store { return l.store }

// Keys is the keyring the lifecycle invalidates.
func (l *Lifecycle) Keys() *Keyring { return l.keys }

// Now is the lifecycle's clock.
func (l *Lifecycle) Now() time.Time { return l.now() }

// newKey generates a key in the provider and returns its record in state st.
func (l *Lifecycle) newKey(ctx context.Context, scope string, st store.State) (store.Key, error) {
	id := names.NewKeyID()
	handle, pub, err := l.provider.Generate(ctx, keyprovider.KeyRef{ID: id, Scope: scope})
	if err != nil {
		return store.Key{}, err
	}
	now := l.now().UTC().Truncate(time.Microsecond) // what every store keeps
	k := store.Key{ID: id, Scope: scope, State: st, Public: pub, Provider: l.provider.Name(), Handle: handle, CreatedAt: now}
	if st == store.Active {
		k.ActivatedAt = now
	}
	return k, nil
}

// Open creates a PENDING key: published at once, signing only after Commit.
func (l *Lifecycle) Open(ctx context.Context, scope string) (store.Key, error) {
	if err := names.CheckScope(scope); err != nil {
		return store.Key{}, err
	}
	// Refuse before generating: a refused Open must not leave an orphan
	// object in an HSM. The store's unique constraint still decides races.
	keys, err := l.store.Keys(ctx, scope)
	if err != nil {
		return store.Key{}, err
	}
	for _, k := range keys {
		if k.State == store.Pending {
			return store.Key{}, OnKey(k.ID, fmt.Errorf("scope %q has PENDING key %q: %w", scope, k.ID, signerr.ErrRotationInProgress))
		}
	}
	k, err := l.newKey(ctx, scope, store.Pending)
	if err != nil {
		return store.Key{}, err
	}
	if err := l.store.CreateKey(ctx, k); err != nil {
		return store.Key{}, err
	}
	l.keys.Invalidate(scope)
	return k, nil
}

// Transition applies op with the lifecycle's windows.
func (l *Lifecycle) Transition(ctx context.Context, op store.Op, scope, id string) ([]store.Key, error) {
	return l.TransitionWithin(ctx, op, scope, id, l.windows)
}

// TransitionWithin applies op; the store checks state and windows w inside
// the transaction that applies it (store.Apply), never against a record
// read before it. A key that retires has its material destroyed: the
// store keeps a tombstone instead of its handle in the same transaction, and
// the provider destroys what it holds (an HSM's objects) right after.
func (l *Lifecycle) TransitionWithin(ctx context.Context, op store.Op, scope, id string, w Windows) ([]store.Key, error) {
	if err := names.CheckScope(scope); err != nil {
		return nil, err
	}
	if err := names.CheckKeyID(id); err != nil {
		return nil, err
	}
	var before store.Key
	if op == store.OpRetire || op == store.OpAbort {
		var err error
		if before, err = l.store.Key(ctx, id); err != nil {
			return nil, err
		}
	}
	now := l.now().UTC().Truncate(time.Microsecond)
	changed, err := l.store.Transition(ctx, op, scope, id, now, w)
	if errors.Is(err, signerr.ErrKeyNotFound) {
		return nil, err // no key was resolved: audited as key id "-"
	}
	if err != nil {
		return nil, OnKey(id, err)
	}
	l.keys.Invalidate(scope)
	if changed[0].State == store.Retired && !store.Destroyed(before) {
		ref := keyprovider.KeyRef{ID: before.ID, Scope: before.Scope, Public: before.Public}
		if derr := l.provider.Destroy(ctx, ref, before.Handle); derr != nil {
			// The store no longer holds the handle: the key cannot sign or
			// be published again through this signer. The provider's copy
			// (an HSM object) is left for the operator.
			l.log.Error("retired key's material not destroyed in the provider; destroy it by hand", "key_id", id, "scope", scope, "err", derr)
		}
	}
	return changed, nil
}

// Bootstrap gives scope its first ACTIVE key if it has none, and audits the
// creation like any other rotation. created is false when the scope already
// had a key (another replica may have won the race).
func (l *Lifecycle) Bootstrap(ctx context.Context, scope string, sink audit.Sink) (store.Key, bool, error) {
	if err := names.CheckScope(scope); err != nil {
		return store.Key{}, false, err
	}
	if k, err := l.store.ActiveKey(ctx, scope); err == nil {
		return k, false, nil
	} else if !errors.Is(err, signerr.ErrKeyNotFound) {
		return store.Key{}, false, err
	}
	k, err := l.newKey(ctx, scope, store.Active)
	if err != nil {
		return store.Key{}, false, err
	}
	if err := l.store.CreateKey(ctx, k); err != nil {
		if errors.Is(err, signerr.ErrInvariant) {
			if won, werr := l.store.ActiveKey(ctx, scope); werr == nil {
				return won, false, nil
			}
		}
		return store.Key{}, false, err
	}
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationRotate, "bootstrap", k.CreatedAt)
	e.Object, e.Reason, e.Code = auditlog.Object(scope, k.ID), auditlog.ReasonGranted, "OK"
	if err := sink.Submit(ctx, audit.LaneAdmitted, e).Wait(ctx); err != nil {
		return k, true, fmt.Errorf("bootstrap %s: key %s created but not audited: %w", scope, k.ID, err)
	}
	l.keys.Invalidate(scope)
	return k, true, nil
}

// KeyError carries the key a refused request resolved to, for the audit
// object: Sign pinned to a retired key is audited against that key.
type KeyError struct {
	KeyID string
	Err   error
}

func (e *KeyError) Error() string { return e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// OnKey annotates err with the key it is about ("" leaves it alone).
func OnKey(keyID string, err error) error {
	if err == nil || keyID == "" {
		return err
	}
	return &KeyError{KeyID: keyID, Err: err}
}
