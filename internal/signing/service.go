package signing

import (
	"context"
	"crypto/sha512"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signvariant"
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
	variants   Variants
}

// Variants says which scopes may sign in which variants besides pure
// Ed25519, which every scope may use (config.Signer.SignVariants, from
// SIGNER_SCOPE_SIGN_VARIANTS).
type Variants map[string]map[signvariant.Variant]bool

// NewService serves keys from kr and proofs of a caller's own requests from
// ar; payloads over maxPayload bytes are refused; a scope signs in Ed25519ph
// or Ed25519ctx only if variants allows it.
func NewService(kr *keyring.Keyring, ar *AuditReader, maxPayload int, variants Variants) *Service {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	return &Service{keys: kr, audit: ar, maxPayload: maxPayload, variants: variants}
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
	v, err := checkVariant(req)
	if err != nil {
		return nil, err
	}
	if err := s.allow(req.GetScope(), v); err != nil {
		return nil, err
	}
	rec, err := s.keys.Signing(ctx, req.GetScope(), req.GetKeyId())
	if err != nil {
		return nil, keyring.OnKey(rec.ID, err)
	}
	sig, err := s.keys.Sign(ctx, rec, req.GetPayload(), signvariant.Options(v, req.GetContext()))
	if err != nil {
		return nil, keyring.OnKey(rec.ID, err)
	}
	return &signerv1.SignResponse{Signature: sig, KeyId: rec.ID, Scope: req.GetScope(), Variant: req.GetVariant()}, nil
}

// checkVariant checks the request's variant and context against RFC 8032:
// the rules, never the input, are named in the refusal.
func checkVariant(req *signerv1.SignRequest) (signvariant.Variant, error) {
	n := req.GetVariant()
	if n < 0 || n > 255 || !signvariant.Variant(n).Known() {
		return 0, signerr.Invalid("variant", "must be SIGN_VARIANT_ED25519, SIGN_VARIANT_ED25519PH or SIGN_VARIANT_ED25519CTX")
	}
	v, c := signvariant.Variant(n), req.GetContext()
	if len(c) > signvariant.MaxContext {
		return 0, signerr.Invalid("context", fmt.Sprintf("must be at most %d bytes (RFC 8032)", signvariant.MaxContext))
	}
	switch v {
	case signvariant.Ed25519:
		if len(c) != 0 {
			return 0, signerr.Invalid("context", "must be empty with pure Ed25519 (a context is Ed25519ctx or Ed25519ph)")
		}
	case signvariant.Ed25519ph:
		if len(req.GetPayload()) != sha512.Size {
			return 0, signerr.Invalid("payload", "must be the 64-byte SHA-512 digest of the message with SIGN_VARIANT_ED25519PH")
		}
	case signvariant.Ed25519ctx:
		if len(c) == 0 {
			return 0, signerr.Invalid("context", "must not be empty with SIGN_VARIANT_ED25519CTX")
		}
	}
	return v, nil
}

// allow refuses a variant the scope may not use, or that FIPS mode does
// not approve (signvariant.Approved: the one FIPS rule). Pure Ed25519 is
// always allowed.
func (s *Service) allow(scope string, v signvariant.Variant) error {
	if v == signvariant.Ed25519 {
		return nil
	}
	if err := signvariant.Approved(v); err != nil {
		return &signerr.VariantError{Variant: v.String(), Why: "the signer runs in FIPS 140-3 mode, which does not approve it"}
	}
	if !s.variants[scope][v] {
		return &signerr.VariantError{Variant: v.String(), Why: fmt.Sprintf("scope %q does not allow it (SIGNER_SCOPE_SIGN_VARIANTS / --scope-sign-variant)", scope)}
	}
	return nil
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
