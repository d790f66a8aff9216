// Package local is the in-process key provider: keys are generated with
// crypto/rand and sealed at rest with XChaCha20-Poly1305 under a 32-byte
// key-encryption key (KEK) that the operator supplies. The sealed blob is the
// handle the store keeps; the store never sees a key in clear.
//
// Use it for development and where no HSM or KMS is available. The private
// halves are in the signer's memory while it runs; the pkcs11 provider is the
// way to avoid even that.
package local

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
)

// Name is the provider name recorded with each key.
const Name = "local"

const sealVersion = 1

// Provider is the local provider.
type Provider struct {
	aead interface {
		Seal(dst, nonce, plaintext, additionalData []byte) []byte
		Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
		NonceSize() int
	}
}

var _ keyprovider.Provider = (*Provider)(nil)

// New returns a provider sealing under kek (32 bytes).
func New(kek []byte) (*Provider, error) {
	if len(kek) != chacha20poly1305.KeySize {
		return nil, fmt.Errorf("local: KEK must be %d bytes, got %d", chacha20poly1305.KeySize, len(kek))
	}
	aead, err := chacha20poly1305.NewX(kek)
	if err != nil {
		return nil, err
	}
	return &Provider{aead: aead}, nil
}

// ParseKEK decodes a KEK given as 64 hex digits or standard/URL base64 of 32
// bytes, surrounding whitespace ignored (so a file written by `openssl rand
// -hex 32` or `head -c32 /dev/urandom | base64` works as is).
func ParseKEK(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == chacha20poly1305.KeySize {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == chacha20poly1305.KeySize {
			return b, nil
		}
	}
	return nil, errors.New("a KEK must be 32 bytes as 64 hex digits or base64")
}

func (p *Provider) Name() string { return Name }

func aad(id string) []byte { return []byte("plexsphere-signer/local/v1:" + id) }

// Generate creates a key and returns it sealed: version || nonce || ciphertext.
// The key id is bound as associated data, so a blob cannot be replayed under
// another id.
func (p *Provider) Generate(_ context.Context, ref keyprovider.KeyRef) ([]byte, ed25519.PublicKey, error) {
	id := ref.ID
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("local: generate: %w", err)
	}
	seed := priv.Seed()
	defer clear(seed)
	nonce := make([]byte, p.aead.NonceSize(), 1+p.aead.NonceSize()+len(seed)+chacha20poly1305.Overhead)
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, nil, fmt.Errorf("local: nonce: %w", err)
	}
	handle := append([]byte{sealVersion}, nonce...)
	handle = p.aead.Seal(handle, nonce, seed, aad(id))
	return handle, pub, nil
}

// Load unseals a handle. A wrong KEK or a tampered blob fails here, not at
// sign time.
func (p *Provider) Load(_ context.Context, ref keyprovider.KeyRef, handle []byte) (keyprovider.Key, error) {
	id := ref.ID
	ns := p.aead.NonceSize()
	if len(handle) < 1+ns || handle[0] != sealVersion {
		return nil, fmt.Errorf("local: key %q: malformed handle: %w", id, signerr.ErrInvariant)
	}
	seed, err := p.aead.Open(nil, handle[1:1+ns], handle[1+ns:], aad(id))
	if err != nil {
		return nil, fmt.Errorf("local: key %q: unseal failed (wrong KEK or tampered handle): %w", id, signerr.ErrProviderUnavailable)
	}
	defer clear(seed)
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("local: key %q: bad seed length: %w", id, signerr.ErrInvariant)
	}
	return &key{id: id, priv: ed25519.NewKeyFromSeed(seed)}, nil
}

func (p *Provider) Health(context.Context) error { return nil }
func (p *Provider) Close() error                 { return nil }

type key struct {
	id   string
	priv ed25519.PrivateKey
}

func (k *key) ID() string               { return k.id }
func (k *key) Public() crypto.PublicKey { return k.priv.Public() }

func (k *key) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 {
		return nil, fmt.Errorf("local: only pure Ed25519 is supported: %w", signerr.ErrInvalidArgument)
	}
	return ed25519.Sign(k.priv, message), nil
}

func (k *key) SignContext(ctx context.Context, message []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ed25519.Sign(k.priv, message), nil
}
