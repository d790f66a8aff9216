package local

import (
	"crypto/ed25519"

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
