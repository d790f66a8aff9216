package signing

import (
	"context"
	"log/slog"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Rotation implements RotationService over the key lifecycle
// (keyring.Lifecycle): the wire in, the lifecycle's answer out.
type Rotation struct {
	signerv1.UnimplementedRotationServiceServer
	life *keyring.Lifecycle
	// Log, if set, gets one line per successful rotation step (the audit
	// log has the entry; this is for the operator reading the pod's log).
	Log *slog.Logger
}

// done logs a successful step: operation, scope, the keys it changed and
// the operator who asked.
func (r *Rotation) done(ctx context.Context, op, scope string, keys ...store.Key) {
	if r.Log == nil {
		return
	}
	attrs := []any{"operation", op, "scope", scope, "operator", peeridentity.PeerOf(ctx).ID}
	for _, k := range keys {
		attrs = append(attrs, "key_"+strings.ToLower(k.State.String()), k.ID)
	}
	r.Log.Info("rotation", attrs...)
}

// NewRotation serves l.
func NewRotation(l *keyring.Lifecycle) *Rotation { return &Rotation{life: l} }

// Open creates a PENDING key: published at once, signing only after Commit.
func (r *Rotation) Open(ctx context.Context, req *signerv1.OpenRequest) (*signerv1.OpenResponse, error) {
	k, err := r.life.Open(ctx, req.GetScope())
	if err != nil {
		return nil, err
	}
	r.done(ctx, "open", req.GetScope(), k)
	return &signerv1.OpenResponse{Key: KeyProto(k), CommittableAt: timestamppb.New(k.CreatedAt.Add(r.life.Windows().PrePublish))}, nil
}

// Commit makes the PENDING key ACTIVE and demotes the ACTIVE key.
func (r *Rotation) Commit(ctx context.Context, req *signerv1.CommitRequest) (*signerv1.CommitResponse, error) {
	changed, err := r.life.Transition(ctx, store.OpCommit, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	r.done(ctx, "commit", req.GetScope(), changed...)
	resp := &signerv1.CommitResponse{Activated: KeyProto(changed[0])}
	if len(changed) > 1 {
		resp.Previous = KeyProto(changed[1])
	}
	return resp, nil
}

// Abort retires the PENDING key unused.
func (r *Rotation) Abort(ctx context.Context, req *signerv1.AbortRequest) (*signerv1.AbortResponse, error) {
	changed, err := r.life.Transition(ctx, store.OpAbort, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	r.done(ctx, "abort", req.GetScope(), changed...)
	return &signerv1.AbortResponse{Key: KeyProto(changed[0])}, nil
}

// Retire unpublishes a PREVIOUS key and destroys its material; the ACTIVE
// key is refused.
func (r *Rotation) Retire(ctx context.Context, req *signerv1.RetireRequest) (*signerv1.RetireResponse, error) {
	changed, err := r.life.Transition(ctx, store.OpRetire, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, err
	}
	r.done(ctx, "retire", req.GetScope(), changed...)
	return &signerv1.RetireResponse{Key: KeyProto(changed[0])}, nil
}

// ListKeys lists keys in every state.
func (r *Rotation) ListKeys(ctx context.Context, req *signerv1.ListKeysRequest) (*signerv1.ListKeysResponse, error) {
	if req.GetScope() != "" {
		if err := names.CheckScope(req.GetScope()); err != nil {
			return nil, err
		}
	}
	keys, err := r.life.Store().Keys(ctx, req.GetScope())
	if err != nil {
		return nil, err
	}
	resp := &signerv1.ListKeysResponse{}
	for _, k := range keys {
		// signerctl jwks publishes from this list: a published key the
		// provider cannot vouch for (or whose state went back) fails the
		// call rather than reach a verifier.
		if k.State.Published() {
			if err := r.life.Keys().Vouch(ctx, k); err != nil {
				return nil, keyring.OnKey(k.ID, err)
			}
		}
		resp.Keys = append(resp.Keys, KeyProto(k))
	}
	return resp, nil
}
