package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/pkcs11"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

func providers(b *testing.B) map[string]keyprovider.Provider {
	out := map[string]keyprovider.Provider{"local": signertest.NewLocalProvider(b)}
	tok := hsmtest.New(b)
	p, err := pkcs11.Open(pkcs11.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: func() (string, error) { return tok.PIN, nil }, Sessions: 8})
	switch {
	case errors.Is(err, pkcs11.ErrNotBuilt):
		b.Logf("pkcs11 provider not in this build (use -tags pkcs11)")
	case err != nil:
		b.Fatal(err)
	default:
		out["pkcs11"] = p
		b.Cleanup(func() { p.Close() })
	}
	return out
}

// BenchmarkG_Provider: a provider's SignContext alone, local (in-process
// Ed25519) beside pkcs11 (SoftHSM2, one session per goroutine up to 8).
func BenchmarkG_Provider(b *testing.B) {
	ctx := context.Background()
	ps := providers(b)
	for _, name := range []string{"local", "pkcs11"} {
		p, ok := ps[name]
		if !ok {
			continue
		}
		ref := keyprovider.KeyRef{ID: "bench-" + name, Scope: "bench"}
		h, pub, err := p.Generate(ctx, ref)
		if err != nil {
			b.Fatal(err)
		}
		ref.Public = pub
		k, err := p.Load(ctx, ref, h)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/inflight=%d", name, n), func(b *testing.B) {
				drive(b, n, func(ctx context.Context) error { _, err := k.SignContext(ctx, payload); return err })
			})
		}
	}
}

// BenchmarkH_DirectPKCS11: the direct mTLS path with durable bbolt audit,
// keys in SoftHSM2 (compare BenchmarkB_Direct, keys local).
func BenchmarkH_DirectPKCS11(b *testing.B) {
	p, ok := providers(b)["pkcs11"]
	if !ok {
		b.Skip("pkcs11 provider not in this build")
	}
	env := signertest.Start(b, signertest.WithProvider(p))
	call := directCall(b, env)
	for _, n := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", n), func(b *testing.B) { drive(b, n, call) })
	}
}
