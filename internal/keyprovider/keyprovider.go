// Package keyprovider is the boundary to wherever private keys live. A
// provider generates Ed25519 keys and signs with them by handle; the signer
// stores only the handle and the public half. With an HSM provider the
// private half never leaves the token; with the local provider it exists
// only in this process, sealed at rest.
//
// Providers return signerr.ErrProviderUnavailable (wrapped) when they cannot
// serve, so callers see Unavailable and the audit log caveat_violation.
package keyprovider

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"fmt"

	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signvariant"
)

// Key is a provider-held Ed25519 key. Sign (crypto.Signer) behaves as
// crypto/ed25519's PrivateKey.Sign: pure Ed25519 for opts.HashFunc() 0 and
// no context, Ed25519ph for SHA-512 (message is the digest), Ed25519ctx
// for a *ed25519.Options with a context. SignContext signs pure Ed25519
// with the caller's deadline and cancellation; SignOptions is the same for
// any variant (opts nil: pure).
//
// A provider that cannot make a variant refuses with a
// *signerr.VariantError, never with a signature in another scheme: a
// token that ignores the variant's parameters is caught by verifying its
// answer before it is returned.
type Key interface {
	crypto.Signer
	ID() string
	SignContext(ctx context.Context, message []byte) ([]byte, error)
	SignOptions(ctx context.Context, message []byte, opts *ed25519.Options) ([]byte, error)
}

// Releaser is a Key whose private half lives in this process's memory.
// Release zeroes it; afterwards the key refuses to sign with ErrReleased
// (never with a zeroed key). A holder calls Release when it drops the key.
type Releaser interface {
	Release()
}

// ErrReleased is returned by a released key. The caller loads the key again;
// if it reaches a caller it is a provider that cannot sign right now.
var ErrReleased = fmt.Errorf("keyprovider: key released: %w", signerr.ErrProviderUnavailable)

// KeyRef is what binds a provider key to its record in the store: its id,
// its scope and its public half.
type KeyRef struct {
	ID     string
	Scope  string
	Public ed25519.PublicKey // ignored by Generate
}

// Provider generates and loads keys.
type Provider interface {
	// Name is stored with each key so the signer can refuse a key made by
	// another provider.
	Name() string
	// Generate makes a new key for ref (its id and scope) and returns the
	// handle to store and the public half.
	Generate(ctx context.Context, ref KeyRef) (handle []byte, pub ed25519.PublicKey, err error)
	// Load returns the key for a handle Generate returned. A handle that was
	// not made for ref (another id, scope or public half: a record moved or
	// swapped in the store) is refused with signerr.ErrInvariant.
	Load(ctx context.Context, ref KeyRef, handle []byte) (Key, error)
	// Destroy destroys the key of ref and handle for good, so that nothing
	// can load it again (a key retires: RETIRED is terminal). The store
	// replaces the handle with a tombstone in the transaction that retires
	// the key; Destroy removes what the provider itself holds (an HSM's
	// objects). A key the provider no longer holds is not an error; a key
	// that is not the one ref describes is left alone (ErrInvariant).
	Destroy(ctx context.Context, ref KeyRef, handle []byte) error
	// Health reports whether the provider can sign now.
	Health(ctx context.Context) error
	Close() error
}

// SignerOptions is what a provider key's crypto.Signer Sign does with its
// opts, as crypto/ed25519's own key does: nil for pure Ed25519,
// Ed25519ph for SHA-512, Ed25519ctx for a context; any other hash is
// ErrInvalidArgument.
func SignerOptions(opts crypto.SignerOpts) (*ed25519.Options, error) {
	v, c, err := signvariant.Of(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, signerr.ErrInvalidArgument)
	}
	return signvariant.Options(v, c), nil
}
