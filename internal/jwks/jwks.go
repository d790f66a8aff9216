// Package jwks publishes a scope's verification keys as an RFC 7517 JSON Web
// Key Set of RFC 8037 OKP (Ed25519) keys: the one builder behind
// `signerctl jwks` and the signer's HTTPS endpoint (handler.go), so both
// always publish the same keys in the same form. It holds public halves only.
package jwks

import (
	"encoding/base64"

	"github.com/plexsphere/signer/internal/store"
)

// Key is an RFC 8037 OKP key; kid is the signer's key id.
type Key struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

// Set is a JWK Set. Keys is never nil, so an empty set is {"keys":[]}.
type Set struct {
	Keys []Key `json:"keys"`
}

// FromKeys returns the published keys among keys, in their order: PENDING
// (so verifiers learn a key before it signs), ACTIVE, and PREVIOUS (so
// signatures made before a rotation still verify). RETIRED keys are left
// out: they never sign again and verifiers must stop trusting them.
func FromKeys(keys []store.Key) Set {
	set := Set{Keys: []Key{}}
	for _, k := range keys {
		if !k.State.Published() {
			continue
		}
		set.Keys = append(set.Keys, Key{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k.Public),
			Kid: k.ID, Use: "sig", Alg: "EdDSA"})
	}
	return set
}
