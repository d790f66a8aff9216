package client

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/plexsphere/signer/internal/signvariant"
)

// ScopeSigner is a crypto.Signer for one scope, so JWT, SSH and X.509
// libraries can sign through the signer unchanged. It is bound to the
// scope's ACTIVE key (at NewSigner, or on first use for the deprecated
// Signer) and pins every signature to that key id, so Public() always
// matches what Sign produced. After a rotation Sign fails with
// ErrKeyRetired; take a new ScopeSigner then.
type ScopeSigner struct {
	c       *Client
	scope   string
	timeout time.Duration

	mu  sync.Mutex
	key *PublicKey
}

var _ crypto.Signer = (*ScopeSigner)(nil)

// signTimeout bounds Public, KeyID and Sign, which carry no context.
const signTimeout = 10 * time.Second

// NewSigner returns a crypto.Signer for scope, bound now to the scope's
// ACTIVE key. A scope that does not resolve is an error here, with its
// reason, instead of a nil Public() later: a malformed scope is
// ErrInvalidArgument (errors.As to *Error gives the field and rule), an
// unknown scope or one without an ACTIVE key ErrKeyNotFound, an unreachable
// signer ErrUnavailable. Sign, Public and KeyID then carry no context and
// are each bounded by a 10-second timeout; SignContext takes the caller's.
func (c *Client) NewSigner(ctx context.Context, scope string) (*ScopeSigner, error) {
	s := &ScopeSigner{c: c, scope: scope, timeout: signTimeout}
	if _, err := s.bind(ctx); err != nil {
		return nil, fmt.Errorf("client: signer for scope %q: %w", scope, err)
	}
	return s, nil
}

// Signer returns a crypto.Signer for scope, bound on first use.
//
// Deprecated: use NewSigner. A Signer whose scope does not resolve returns
// nil from Public and "" from KeyID, which libraries report as an unrelated
// "key is invalid"; NewSigner returns the reason instead.
func (c *Client) Signer(scope string) *ScopeSigner {
	return &ScopeSigner{c: c, scope: scope, timeout: signTimeout}
}

// Scope is the scope this signer signs for.
func (s *ScopeSigner) Scope() string { return s.scope }

func (s *ScopeSigner) bind(ctx context.Context) (PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != nil {
		return *s.key, nil
	}
	k, err := s.c.active(ctx, s.scope)
	if err != nil {
		return PublicKey{}, err
	}
	s.key = &k
	return k, nil
}

// KeyID is the pinned key's id (for a JWT "kid" header), or "" if the key
// cannot be resolved.
func (s *ScopeSigner) KeyID() string {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	k, err := s.bind(ctx)
	if err != nil {
		return ""
	}
	return k.KeyID
}

// Public returns the pinned key's public half, or nil if it cannot be
// resolved (crypto.Signer has no error return; Sign will report why).
func (s *ScopeSigner) Public() crypto.PublicKey {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	k, err := s.bind(ctx)
	if err != nil {
		return nil
	}
	return k.Key
}

// Sign signs message with the pinned key, in the variant opts selects as
// crypto/ed25519's PrivateKey.Sign does (see Client.SignWith): pure
// Ed25519 for HashFunc() 0 (message is the whole message), Ed25519ph for
// crypto.SHA512 (message is the SHA-512 digest), Ed25519ctx for
// *ed25519.Options with a Context and Hash 0. Another hash is
// ErrInvalidArgument; a variant the scope does not allow
// ErrVariantNotAllowed.
func (s *ScopeSigner) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.SignContext(ctx, message, opts)
}

// SignContext is Sign with the caller's context.
func (s *ScopeSigner) SignContext(ctx context.Context, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, _, err := signvariant.Of(opts); err != nil {
		// Refused before the key is bound: a bad option is the caller's
		// error whatever the signer's state.
		return nil, fmt.Errorf("client: %v: %w", err, ErrInvalidArgument)
	}
	k, err := s.bind(ctx)
	if err != nil {
		return nil, err
	}
	id := k.KeyID
	sig, err := s.c.sign(ctx, s.scope, message, &id, opts)
	if err != nil {
		if errors.Is(err, ErrKeyRetired) {
			// The scope rotated: make the next Signer bind to the new key.
			s.c.cache.expire(s.scope)
		}
		return nil, err
	}
	return sig.Bytes, nil
}
