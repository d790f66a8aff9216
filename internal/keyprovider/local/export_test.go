package local

import (
	"crypto/ed25519"
	"crypto/rand"

	"github.com/plexsphere/signer/internal/keyprovider"
)

// PrivateForTest returns the key's private half (the same backing array),
// so a test can see Release zero it.
func PrivateForTest(k keyprovider.Key) ed25519.PrivateKey {
	lk := k.(*key)
	lk.mu.RLock()
	defer lk.mu.RUnlock()
	return lk.priv
}

// SealV2ForTest seals seed for ref in format 2 (XChaCha20-Poly1305), as
// versions before format 3 did, so a test can check such handles still
// open.
func SealV2ForTest(p *Provider, ref keyprovider.KeyRef, seed []byte) []byte {
	nonce := make([]byte, p.v2.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic(err)
	}
	h := append([]byte{sealV2}, p.check...)
	h = append(h, nonce...)
	return p.v2.Seal(h, nonce, seed, aad(ref, ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)))
}
