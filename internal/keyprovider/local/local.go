// Package local is the in-process key provider: keys are generated with
// crypto/rand and sealed at rest with AES-256-GCM under a 32-byte
// key-encryption key (KEK) that the operator supplies. The sealed blob is the
// handle the store keeps; the store never sees a key in clear. The sealing
// binds each key to its record (key id, scope, public half) as AEAD
// associated data, and carries a check value of the KEK, so that a wrong KEK
// (ErrProviderUnavailable) is told apart from a record moved or swapped in
// the store (ErrInvariant).
//
// Use it for development and where no HSM or KMS is available. The private
// halves are in the signer's memory while it runs; the pkcs11 provider is the
// way to avoid even that.
//
// Every algorithm it uses for a new key is one the FIPS 140-3 Go
// Cryptographic Module approves (Ed25519, HKDF-SHA256, AES-256-GCM with
// module-generated nonces), so a FIPS build (GOFIPS140) runs it in
// fips140=on and fips140=only alike. Keys sealed by earlier versions
// (format 2, XChaCha20-Poly1305, not approved) still open, except under
// fips140=only, where they are refused with the fix (see Load).
package local

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/fips140"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
)

// Name is the provider name recorded with each key.
const Name = "local"

// Seal formats. Version 1 bound only the key id; the project was
// pre-release, so version 1 handles are refused rather than carried
// (recreate such a store). Version 2 binds the key id, the scope and the
// public half, sealed with XChaCha20-Poly1305: still opened, never written.
// Version 3 binds the same, sealed with AES-256-GCM, which the FIPS 140-3
// module approves (XChaCha20-Poly1305 it does not): every new key.
const (
	sealV2      = 2
	sealVersion = 3
)

// kekSize is the KEK's length: 256 bits, for AES-256 and, in format 2,
// XChaCha20.
const kekSize = 32

// checkSize is the length of the KEK check value in each handle.
const checkSize = 8

// ErrNotApproved is a key sealed with an algorithm FIPS 140-only mode
// (GODEBUG=fips140=only) forbids: format 2, XChaCha20-Poly1305. It comes
// with signerr.ErrProviderUnavailable (the key cannot be used here; the
// record is intact), and start-up names the mode rather than the KEK.
var ErrNotApproved = errors.New("sealed with an algorithm FIPS 140-only mode does not approve")

// Provider is the local provider.
type Provider struct {
	// aead seals and opens format 3: AES-256-GCM whose 96-bit nonce the
	// module draws and prepends (cipher.NewGCMWithRandomNonce: the only GCM
	// fips140=only allows). A KEK seals a few keys per rotation, far below
	// the 2^32 sealings a random-nonce GCM key may take.
	aead cipher.AEAD
	// v2 opens format 2 (XChaCha20-Poly1305); nil under fips140=only,
	// which forbids it.
	v2 cipher.AEAD
	// check identifies the KEK without revealing it (an HKDF output beside
	// the sealing key): a handle sealed under another KEK is told apart from
	// a handle that was moved, swapped or edited in the store.
	check []byte
}

var _ keyprovider.Provider = (*Provider)(nil)

// New returns a provider sealing under kek (32 bytes). The sealing keys and
// the KEK check value are derived from kek with HKDF-SHA256, under distinct
// labels, so the check value says nothing about the sealing keys. The check
// value is the same for both formats: a KEK opens the handles of either.
func New(kek []byte) (*Provider, error) {
	if len(kek) != kekSize {
		return nil, fmt.Errorf("local: KEK must be %d bytes, got %d", kekSize, len(kek))
	}
	check, err := hkdf.Key(sha256.New, kek, nil, "plexsphere-signer/local/v2 kek-check", checkSize)
	if err != nil {
		return nil, err
	}
	sealKey, err := hkdf.Key(sha256.New, kek, nil, "plexsphere-signer/local/v3 seal", kekSize)
	if err != nil {
		return nil, err
	}
	defer clear(sealKey)
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	p := &Provider{aead: aead, check: check}
	if !fips140.Enforced() {
		v2Key, err := hkdf.Key(sha256.New, kek, nil, "plexsphere-signer/local/v2 seal", chacha20poly1305.KeySize)
		if err != nil {
			return nil, err
		}
		defer clear(v2Key)
		if p.v2, err = chacha20poly1305.NewX(v2Key); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// ParseKEK decodes a KEK given as 64 hex digits or standard/URL base64 of 32
// bytes, surrounding whitespace ignored (so a file written by `openssl rand
// -hex 32` or `head -c32 /dev/urandom | base64` works as is).
func ParseKEK(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == kekSize {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == kekSize {
			return b, nil
		}
	}
	return nil, errors.New("a KEK must be 32 bytes as 64 hex digits or base64")
}

func (p *Provider) Name() string { return Name }

// aad binds a sealed seed to its record: key id, scope and public half,
// each length-prefixed so no two records encode alike.
func aad(ref keyprovider.KeyRef, pub ed25519.PublicKey) []byte {
	b := []byte("plexsphere-signer/local/v2\x00")
	for _, f := range [][]byte{[]byte(ref.ID), []byte(ref.Scope), pub} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// Generate creates a key for ref and returns it sealed (format 3):
// version || KEK check || nonce || ciphertext. The key id, scope and public
// half are the associated data, so the blob opens only for that record.
func (p *Provider) Generate(_ context.Context, ref keyprovider.KeyRef) ([]byte, ed25519.PublicKey, error) {
	if ref.ID == "" || ref.Scope == "" {
		return nil, nil, fmt.Errorf("local: generate: a key needs an id and a scope: %w", signerr.ErrInvariant)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("local: generate: %w", err)
	}
	defer clear(priv)
	seed := priv.Seed()
	defer clear(seed)
	handle := make([]byte, 1+checkSize, 1+checkSize+len(seed)+p.aead.Overhead())
	handle[0] = sealVersion
	copy(handle[1:], p.check)
	// The nonce is drawn by the module and leads the ciphertext.
	handle = p.aead.Seal(handle, nil, seed, aad(ref, pub))
	return handle, pub, nil
}

// Load unseals a handle for ref. A handle sealed under another KEK is
// ErrProviderUnavailable (the operator's KEK is wrong, nothing can sign); a
// handle that does not open for ref's id, scope and public half, or whose key
// is not ref.Public, is ErrInvariant (the record was moved, swapped or
// edited in the store) and never signs. A format 2 handle under
// fips140=only is ErrProviderUnavailable: nothing is wrong with the record,
// the mode forbids its cipher.
func (p *Provider) Load(_ context.Context, ref keyprovider.KeyRef, handle []byte) (keyprovider.Key, error) {
	id := ref.ID
	aead, nonceSize := p.aead, 0 // format 3: the nonce is part of what Open takes
	if len(handle) >= 1 && handle[0] == sealV2 {
		aead, nonceSize = p.v2, chacha20poly1305.NonceSizeX
	}
	// A wrong KEK is named before the mode: it is the more basic mistake.
	switch {
	case len(handle) >= 1 && handle[0] == 1:
		return nil, fmt.Errorf("local: key %q: sealed in format 1, which did not bind scope and public key; this version refuses it (recreate the store): %w", id, signerr.ErrInvariant)
	case len(handle) < 1+checkSize+nonceSize || (handle[0] != sealVersion && handle[0] != sealV2):
		return nil, fmt.Errorf("local: key %q: malformed handle: %w", id, signerr.ErrInvariant)
	case !hmac.Equal(handle[1:1+checkSize], p.check):
		return nil, fmt.Errorf("local: key %q: sealed under another key-encryption key (its check value differs): %w", id, signerr.ErrProviderUnavailable)
	case len(ref.Public) != ed25519.PublicKeySize:
		return nil, fmt.Errorf("local: key %q: record has no valid public key: %w", id, signerr.ErrInvariant)
	case aead == nil: // format 2 under fips140=only
		return nil, fmt.Errorf("local: key %q: %w (XChaCha20-Poly1305, seal format 2, before this version) under GODEBUG=fips140=only: "+
			"run with fips140=on and rotate scope %q (new keys are sealed with AES-256-GCM), or use the pkcs11 provider: %w", id, ErrNotApproved, ref.Scope, signerr.ErrProviderUnavailable)
	}
	nonce := handle[1+checkSize : 1+checkSize+nonceSize]
	seed, err := aead.Open(nil, nonce, handle[1+checkSize+nonceSize:], aad(ref, ref.Public))
	if err != nil {
		return nil, fmt.Errorf("local: key %q: the sealed key does not belong to this record (scope %q, id and public key bound at generation): moved, swapped or edited in the store: %w", id, ref.Scope, signerr.ErrInvariant)
	}
	defer clear(seed)
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("local: key %q: bad seed length: %w", id, signerr.ErrInvariant)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	if !pub.Equal(ref.Public) {
		clear(priv)
		return nil, fmt.Errorf("local: key %q: private half does not match the record's public key: %w", id, signerr.ErrInvariant)
	}
	return &key{id: id, pub: pub, priv: priv}, nil
}

// Destroy has nothing to destroy: the key existed at rest only sealed in
// its handle, which the store replaces with a tombstone as the key retires;
// a copy loaded in memory is released (zeroed) by its holder.
func (p *Provider) Destroy(context.Context, keyprovider.KeyRef, []byte) error { return nil }

func (p *Provider) Health(context.Context) error { return nil }
func (p *Provider) Close() error                 { return nil }

// key holds an unsealed private key. Release zeroes it; a signature is never
// made with a released (zeroed) key: the lock orders the two.
type key struct {
	id  string
	pub ed25519.PublicKey

	mu   sync.RWMutex
	priv ed25519.PrivateKey // nil once released
}

var _ keyprovider.Releaser = (*key)(nil)

func (k *key) ID() string               { return k.id }
func (k *key) Public() crypto.PublicKey { return k.pub }

func (k *key) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	o, err := keyprovider.SignerOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return k.sign(message, o)
}

func (k *key) SignContext(ctx context.Context, message []byte) ([]byte, error) {
	return k.SignOptions(ctx, message, nil)
}

func (k *key) SignOptions(ctx context.Context, message []byte, opts *ed25519.Options) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return k.sign(message, opts)
}

func (k *key) sign(message []byte, opts *ed25519.Options) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.priv == nil {
		return nil, fmt.Errorf("local: key %q: %w", k.id, keyprovider.ErrReleased)
	}
	if opts == nil {
		return ed25519.Sign(k.priv, message), nil
	}
	// crypto/ed25519 checks the digest length (Ed25519ph), the context
	// length and the hash; the signer checked them already, so a refusal
	// here is a caller of the provider passing what the wire never could.
	sig, err := k.priv.Sign(nil, message, opts)
	if err != nil {
		return nil, fmt.Errorf("local: %v: %w", err, signerr.ErrInvalidArgument)
	}
	return sig, nil
}

// Release zeroes the private key. The expanded key crypto/ed25519 derives
// for each signature lives on the stack of that call and cannot be reached
// from here; the copies made by the unseal are cleared as they go.
func (k *key) Release() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.priv)
	k.priv = nil
}
