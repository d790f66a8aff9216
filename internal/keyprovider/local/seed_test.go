package local_test

import "crypto/ed25519"

func keyFromSeedPublic(seed []byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
}
