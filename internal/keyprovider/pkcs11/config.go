// Package pkcs11 keeps keys inside a PKCS#11 token (an HSM; SoftHSM2 in
// tests): Ed25519 key pairs are generated in the token as non-extractable,
// sensitive objects and every signature is made there with CKM_EDDSA. The
// signer never sees a private half; the store keeps only the object's
// CKA_ID.
//
// It needs cgo and the build tag pkcs11; a build without them answers
// ErrNotBuilt when asked for this provider.
package pkcs11

import (
	"errors"
	"log/slog"
)

// Name is the provider name recorded with each key.
const Name = "pkcs11"

// ErrNotBuilt is returned by Open in a build without the pkcs11 tag.
var ErrNotBuilt = errors.New("this build has no pkcs11 provider: build with cgo and -tags pkcs11 (the plexsphere-signer-pkcs11 image)")

// What a connection can fail on, so that start-up names the setting to fix.
// Each is wrapped together with signerr.ErrProviderUnavailable.
var (
	ErrModule  = errors.New("pkcs11: the module cannot be loaded or initialised")
	ErrNoToken = errors.New("pkcs11: no token with this label")
	ErrLogin   = errors.New("pkcs11: login refused (check the PIN)")
)

// Config locates the token.
type Config struct {
	Module     string // path of the PKCS#11 library (.so)
	TokenLabel string
	// PIN returns the user PIN; it is called at every (re)connection, so a
	// corrected PIN file is picked up without a restart. Never logged.
	PIN      func() (string, error)
	Sessions int // sessions kept open for concurrent signing
	Log      *slog.Logger
}
