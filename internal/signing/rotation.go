package signing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Windows make rotation safe by construction (see store.Windows). The
// VerifyOnly window is never shorter than the keyring TTL: a replica with a
// stale cache may still sign with a key demoted elsewhere, and that
// signature must still verify.
type Windows = store.Windows

// Rotation implements RotationService and start-up bootstrap.
type Rotation struct {
	signerv1.UnimplementedRotationServiceServer
	store    store.Store
	provider keyprovider.Provider
	keys     *Keyring
	windows  Windows
	now      func() time.Time
}

// NewRotation returns the control plane over s and p; kr is invalidated on
// every change.
func NewRotation(s store.Store, p keyprovider.Provider, kr *Keyring, w Windows, now func() time.Time) *Rotation {
	if now == nil {
		now = time.Now
	}
	w.VerifyOnly = max(w.VerifyOnly, kr.TTL())
	return &Rotation{store: s, provider: p, keys: kr, windows: w, now: now}
}

// newKey generates a key in the provider and returns its record in state st.
func (r *Rotation) newKey(ctx context.Context, scope string, st store.State) (store.Key, error) {
	id := names.NewKeyID()
	handle, pub, err := r.provider.Generate(ctx, keyprovider.KeyRef{ID: id, Scope: scope})
	if err != nil {
		return store.Key{}, err
	}
	now := r.now().UTC().Truncate(time.Microsecond) // what every store keeps
	k := store.Key{ID: id, Scope: scope, State: st, Public: pub, Provider: r.provider.Name(), Handle: handle, CreatedAt: now}
	if st == store.Active {
		k.ActivatedAt = now
	}
	return k, nil
}

// Open creates a PENDING key: published at once, signing only after Commit.
func (r *Rotation) Open(ctx context.Context, req *signerv1.OpenRequest) (*signerv1.OpenResponse, error) {
	k, err := r.open(ctx, req.GetScope())
	if err != nil {
		return nil, err
	}
	return &signerv1.OpenResponse{Key: KeyProto(k), CommittableAt: timestamppb.New(k.CreatedAt.Add(r.windows.PrePublish))}, nil
}

func (r *Rotation) open(ctx context.Context, scope string) (store.Key, error) {
	if err := names.CheckScope(scope); err != nil {
		return store.Key{}, err
	}
	// Refuse before generating: a refused Open must not leave an orphan
	// object in an HSM. The store's unique constraint still decides races.
	keys, err := r.store.Keys(ctx, scope)
	if err != nil {
		return store.Key{}, err
	}
	for _, k := range keys {
		if k.State == store.Pending {
			return store.Key{}, onKey(k.ID, fmt.Errorf("scope %q has PENDING key %q: %w", scope, k.ID, signerr.ErrRotationInProgress))
		}
	}
	k, err := r.newKey(ctx, scope, store.Pending)
	if err != nil {
		return store.Key{}, err
	}
	if err := r.store.CreateKey(ctx, k); err != nil {
		return store.Key{}, err
	}
	r.keys.Invalidate(scope)
	return k, nil
}

// target validates a (scope, key_id) request.
func target(scope, id string) error {
	if err := names.CheckScope(scope); err != nil {
		return err
	}
	return names.CheckKeyID(id)
}

// transition applies op with the signer's windows.
func (r *Rotation) transition(ctx context.Context, op store.Op, scope, id string) ([]store.Key, error) {
	return r.transitionWithin(ctx, op, scope, id, r.windows)
}

// transitionWithin applies op; the store checks state and windows w inside
// the transaction that applies it (store.Apply), never against a record read
// before it.
func (r *Rotation) transitionWithin(ctx context.Context, op store.Op, scope, id string, w Windows) ([]store.Key, error) {
	if err := target(scope, id); err != nil {
		return nil, err
	}
	now := r.now().UTC().Truncate(time.Microsecond)
	changed, err := r.store.Transition(ctx, op, scope, id, now, w)
	if errors.Is(err, signerr.ErrKeyNotFound) {
		return nil, err // no key was resolved: audited as key id "-"
	}
	if err != nil {
		return nil, onKey(id, err)
	}
	r.keys.Invalidate(scope)
	return changed, nil
}

// Commit makes the PENDING key ACTIVE and demotes the ACTIVE key.
func (r *Rotation) Commit(ctx context.Context, req *signerv1.CommitRequest) (*signerv1.CommitResponse, error) {
	changed, err := r.transition(ctx, store.OpCommit, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	resp := &signerv1.CommitResponse{Activated: KeyProto(changed[0])}
	if len(changed) > 1 {
		resp.Previous = KeyProto(changed[1])
	}
	return resp, nil
}

// Abort retires the PENDING key unused.
func (r *Rotation) Abort(ctx context.Context, req *signerv1.AbortRequest) (*signerv1.AbortResponse, error) {
	changed, err := r.transition(ctx, store.OpAbort, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	return &signerv1.AbortResponse{Key: KeyProto(changed[0])}, nil
}

// Retire unpublishes a PREVIOUS key; the ACTIVE key is refused.
func (r *Rotation) Retire(ctx context.Context, req *signerv1.RetireRequest) (*signerv1.RetireResponse, error) {
	changed, err := r.transition(ctx, store.OpRetire, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	return &signerv1.RetireResponse{Key: KeyProto(changed[0])}, nil
}

// ListKeys lists keys in every state.
func (r *Rotation) ListKeys(ctx context.Context, req *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	if req.GetScope() != "" {
		if err := names.CheckScope(req.GetScope()); err != nil {
			return nil, err
		}
	}
	keys, err := r.store.Keys(ctx, req.GetScope())
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ListKeysResponse{}
	for _, k := range keys {
		// signerctl jwks publishes from this list: a published key the
		// provider cannot vouch for fails the call rather than reach a
		// verifier.
		if k.State.Published() {
			if err := r.keys.Vouch(ctx, k); err != nil {
				return nil, onKey(k.ID, err)
			}
		}
		resp.Keys = append(resp.Keys, KeyProto(k))
	}
	return resp, nil
}

// Bootstrap gives scope its first ACTIVE key if it has none, and audits the
// creation like any other rotation. created is false when the scope already
// had a key (another replica may have won the race).
func (r *Rotation) Bootstrap(ctx context.Context, scope string, sink audit.Sink) (store.Key, bool, error) {
	if err := names.CheckScope(scope); err != nil {
		return store.Key{}, false, err
	}
	if k, err := r.store.ActiveKey(ctx, scope); err == nil {
		return k, false, nil
	} else if !errors.Is(err, signerr.ErrKeyNotFound) {
		return store.Key{}, false, err
	}
	k, err := r.newKey(ctx, scope, store.Active)
	if err != nil {
		return store.Key{}, false, err
	}
	if err := r.store.CreateKey(ctx, k); err != nil {
		if errors.Is(err, signerr.ErrInvariant) {
			if won, werr := r.store.ActiveKey(ctx, scope); werr == nil {
				return won, false, nil
			}
		}
		return store.Key{}, false, err
	}
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationRotate, "bootstrap", k.CreatedAt)
	e.Object, e.Reason, e.Code = auditlog.Object(scope, k.ID), auditlog.ReasonGranted, codes.OK.String()
	if err := sink.Submit(ctx, audit.LaneAdmitted, e).Wait(ctx); err != nil {
		return k, true, fmt.Errorf("bootstrap %s: key %s created but not audited: %w", scope, k.ID, err)
	}
	r.keys.Invalidate(scope)
	return k, true, nil
}
