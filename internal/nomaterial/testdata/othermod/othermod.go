// Package othermod is a third-party module that hides a private key behind
// an alias; the fixture module imports it.
package othermod

import "crypto/ed25519"

// Key is ed25519.PrivateKey under another name.
type Key = ed25519.PrivateKey

// New returns a key without the caller ever spelling the type.
func New() Key { return make(Key, ed25519.PrivateKeySize) }
