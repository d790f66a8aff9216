//go:build !(cgo && pkcs11)

package pkcs11

import "github.com/plexsphere/signer/internal/keyprovider"

// Open reports that this build has no pkcs11 provider.
func Open(Config) (keyprovider.Provider, error) { return nil, ErrNotBuilt }
