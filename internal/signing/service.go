package signing

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// DefaultMaxPayload is the Sign payload limit unless configured.
const DefaultMaxPayload = 64 << 10

// Service implements SignerService.
type Service struct {
	signerv1.UnimplementedSignerServiceServer
	keys       *keyring.Keyring
	audit      *AuditReader
	maxPayload int
}

// NewService serves keys from kr and proofs of a caller's own requests from
// ar; payloads over maxPayload bytes are refused.
func NewService(kr *keyring.Keyring, ar *AuditReader, maxPayload int) *Service {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	return &Service{keys: kr, audit: ar, maxPayload: maxPayload}
}

// Prove proves a request of the caller's own is in the audit log.
func (s *Service) Prove(ctx context.Context, req *signerv1.ProveRequest) (*signerv1.ProveInclusionResponse, error) {
	return s.audit.ProveOwn(ctx, callerID(ctx), req)
}

// Sign signs with the scope's ACTIVE key (or the pinned key_id, which must be
// it). PENDING → ErrRotationInProgress; PREVIOUS/RETIRED → ErrKeyRetired;
// another scope's key → ErrScopeMismatch; unknown → ErrKeyNotFound.
func (s *Service) Sign(ctx context.Context, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	if err := names.CheckScope(req.GetScope()); err != nil {
		return nil, err
	}
	switch n := len(req.GetPayload()); {
	case n == 0:
		return nil, signerr.Invalid("payload", "must not be empty")
	case n > s.maxPayload:
		return nil, signerr.Invalid("payload", fmt.Sprintf("must be at most %d bytes", s.maxPayload))
	}
	if req.KeyId != nil {
		if err := names.CheckKeyID(req.GetKeyId()); err != nil {
			return nil, err
		}
	}
	rec, err := s.keys.Signing(ctx, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, keyring.OnKey(rec.ID, err)
	}
	sig, err := s.keys.Sign(ctx, rec, req.GetPayload())
	if err != nil {
		return nil, keyring.OnKey(rec.ID, err)
	}
	return &signerv1.SignResponse{Signature: sig, KeyId: rec.ID, Scope: req.GetScope()}, nil
}

// PublicKey returns the scope's published keys, or the one pinned key.
func (s *Service) PublicKey(ctx context.Context, req *signerv1.PublicKeyRequest) (*signerv1.PublicKeyResponse, error) {
	scope := req.GetScope()
	if err := names.CheckScope(scope); err != nil {
		return nil, err
	}
	if req.KeyId != nil {
		if err := names.CheckKeyID(req.GetKeyId()); err != nil {
			return nil, err
		}
		rec, err := s.keys.Record(ctx, req.GetKeyId())
		if err != nil {
			return nil, err
		}
		switch {
		case rec.Scope != scope:
			return nil, keyring.OnKey(rec.ID, fmt.Errorf("key %q is not in scope %q: %w", rec.ID, scope, signerr.ErrScopeMismatch))
		case !rec.State.Published():
			return nil, keyring.OnKey(rec.ID, fmt.Errorf("key %q is %s: %w", rec.ID, rec.State, signerr.ErrKeyRetired))
		}
		if err := s.keys.Vouch(ctx, rec); err != nil {
			return nil, keyring.OnKey(rec.ID, err)
		}
		return &signerv1.PublicKeyResponse{Scope: scope, Keys: []*signerv1.Key{KeyProto(rec)}}, nil
	}
	keys, err := s.keys.Published(ctx, scope)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("scope %q has no published key: %w", scope, signerr.ErrKeyNotFound)
	}
	resp := &signerv1.PublicKeyResponse{Scope: scope}
	for _, k := range keys {
		resp.Keys = append(resp.Keys, KeyProto(k))
	}
	return resp, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// KeyProto is a key's public wire form; the handle never leaves the signer.
func KeyProto(k store.Key) *signerv1.Key {
	return &signerv1.Key{
		KeyId:         k.ID,
		Scope:         k.Scope,
		PublicKey:     k.Public,
		State:         signerv1.KeyState(k.State),
		CreatedAt:     ts(k.CreatedAt),
		ActivatedAt:   ts(k.ActivatedAt),
		DeactivatedAt: ts(k.DeactivatedAt),
		RetiredAt:     ts(k.RetiredAt),
	}
}
