package signing_test

import (
	"context"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

// boltService is the real Sign handler over a bbolt store and the local
// provider, with each scope bootstrapped (its ACTIVE key returned in
// order), a 1 KiB payload limit and variants as the scopes' policy.
func boltService(tb testing.TB, variants signing.Variants, scopes ...string) (*signing.Service, []store.Key) {
	tb.Helper()
	st := signertest.OpenBolt(tb)
	p := signertest.NewLocalProvider(tb)
	kr := keyring.New(st, p, time.Minute, nil)
	rot := keyring.NewLifecycle(st, p, kr, keyring.Windows{}, nil)
	keys := make([]store.Key, 0, len(scopes))
	for _, scope := range scopes {
		k, _, err := rot.Bootstrap(context.Background(), scope, discard{})
		if err != nil {
			tb.Fatal(err)
		}
		keys = append(keys, k)
	}
	return signing.NewService(kr, nil, 1024, variants), keys
}
