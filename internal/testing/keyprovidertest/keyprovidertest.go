// Package keyprovidertest is the conformance suite every key provider passes.
package keyprovidertest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
)

// Options say how a provider keeps keys.
type Options struct {
	// SealedHandles: the handle carries the key sealed (the local
	// provider), so the store's tombstone is what destroys it; otherwise the
	// handle only names a key the provider holds (an HSM's objects), and
	// after Destroy the old handle must load nothing.
	SealedHandles bool
	// VariantsRefused: the provider cannot sign Ed25519ph and Ed25519ctx
	// (SoftHSM2 2.6.1 ignores CK_EDDSA_PARAMS) and must refuse them with a
	// *signerr.VariantError; otherwise it must sign them as crypto/ed25519
	// verifies.
	VariantsRefused bool
}

// Run runs the suite. open returns a provider; calls to open within one Run
// must share their backing (same KEK, same token), so a handle from one
// instance loads in another.
func Run(t *testing.T, open func(t *testing.T) keyprovider.Provider, o Options) {
	ctx := context.Background()
	p := open(t)
	t.Cleanup(func() { p.Close() })

	newKey := func(t *testing.T, id string) ([]byte, ed25519.PublicKey, keyprovider.Key) {
		t.Helper()
		h, pub, err := p.Generate(ctx, keyprovider.KeyRef{ID: id, Scope: "conformance"})
		if err != nil {
			t.Fatalf("Generate(%s): %v", id, err)
		}
		if len(pub) != ed25519.PublicKeySize {
			t.Fatalf("public key is %d bytes", len(pub))
		}
		k, err := p.Load(ctx, keyprovider.KeyRef{ID: id, Scope: "conformance", Public: pub}, h)
		if err != nil {
			t.Fatalf("Load(%s): %v", id, err)
		}
		return h, pub, k
	}

	t.Run("GenerateLoadSign", func(t *testing.T) {
		_, pub, k := newKey(t, "conf-a")
		if k.ID() != "conf-a" {
			t.Fatalf("ID = %q", k.ID())
		}
		if got, ok := k.Public().(ed25519.PublicKey); !ok || !got.Equal(pub) {
			t.Fatalf("Public() = %v, want %x", k.Public(), pub)
		}
		msg := []byte("conformance message")
		sig, err := k.SignContext(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatal("SignContext signature does not verify")
		}
		if ed25519.Verify(pub, []byte("other message"), sig) {
			t.Fatal("signature verifies for another message")
		}
		sig2, err := k.Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil || !ed25519.Verify(pub, msg, sig2) {
			t.Fatalf("crypto.Signer Sign: err=%v", err)
		}
		if _, err := k.Sign(rand.Reader, msg, crypto.SHA256); !errors.Is(err, signerr.ErrInvalidArgument) {
			t.Fatalf("Sign with a SHA-256 pre-hash: %v, want ErrInvalidArgument (Ed25519 hashes with SHA-512 only)", err)
		}
	})

	// Ed25519ph and Ed25519ctx, through SignOptions and crypto.Signer's
	// Sign: signed as crypto/ed25519 verifies them and in no other scheme,
	// or refused with a VariantError, never answered with a signature in
	// another scheme.
	t.Run("Variants", func(t *testing.T) {
		_, pub, k := newKey(t, "conf-variants")
		msg := []byte("conformance message")
		digest := sha512.Sum512(msg)
		for _, tc := range []struct {
			name    string
			message []byte
			opts    *ed25519.Options
			signer  crypto.SignerOpts // for crypto.Signer's Sign
		}{
			{"ed25519ph", digest[:], &ed25519.Options{Hash: crypto.SHA512}, crypto.SHA512},
			{"ed25519ph with context", digest[:], &ed25519.Options{Hash: crypto.SHA512, Context: "conformance"}, &ed25519.Options{Hash: crypto.SHA512, Context: "conformance"}},
			{"ed25519ctx", msg, &ed25519.Options{Context: "conformance"}, &ed25519.Options{Context: "conformance"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for i, sign := range []func() ([]byte, error){
					func() ([]byte, error) { return k.SignOptions(ctx, tc.message, tc.opts) },
					func() ([]byte, error) { return k.Sign(rand.Reader, tc.message, tc.signer) },
				} {
					sig, err := sign()
					if o.VariantsRefused {
						var ve *signerr.VariantError
						if !errors.As(err, &ve) || sig != nil {
							t.Fatalf("call %d: %x, %v; want a VariantError and no signature", i, sig, err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("call %d: %v", i, err)
					}
					if err := ed25519.VerifyWithOptions(pub, tc.message, sig, tc.opts); err != nil {
						t.Fatalf("call %d: does not verify in its variant: %v", i, err)
					}
					if ed25519.Verify(pub, tc.message, sig) || ed25519.Verify(pub, msg, sig) {
						t.Fatalf("call %d: verifies as pure Ed25519", i)
					}
				}
			})
		}
		if _, err := k.SignOptions(ctx, msg, &ed25519.Options{Hash: crypto.SHA512}); !errors.Is(err, signerr.ErrInvalidArgument) {
			t.Fatalf("Ed25519ph over a %d-byte message: %v, want ErrInvalidArgument", len(msg), err)
		}
		if _, err := k.SignOptions(ctx, msg, &ed25519.Options{Context: string(make([]byte, 256))}); !errors.Is(err, signerr.ErrInvalidArgument) {
			t.Fatalf("a 256-byte context: %v, want ErrInvalidArgument", err)
		}
		// nil options are pure Ed25519, as SignContext.
		if sig, err := k.SignOptions(ctx, msg, nil); err != nil || !ed25519.Verify(pub, msg, sig) {
			t.Fatalf("SignOptions(nil): %v", err)
		}
	})

	t.Run("DistinctKeys", func(t *testing.T) {
		_, a, _ := newKey(t, "conf-b1")
		_, b, _ := newKey(t, "conf-b2")
		if a.Equal(b) {
			t.Fatal("two generated keys are equal")
		}
	})

	t.Run("HandleLoadsInAnotherInstance", func(t *testing.T) {
		h, pub, _ := newKey(t, "conf-c")
		p2 := open(t)
		defer p2.Close()
		k, err := p2.Load(ctx, keyprovider.KeyRef{ID: "conf-c", Scope: "conformance", Public: pub}, h)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := k.SignContext(ctx, []byte("m"))
		if err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
			t.Fatalf("key from another instance: err=%v", err)
		}
	})

	t.Run("BadHandleRefused", func(t *testing.T) {
		h, pub, _ := newKey(t, "conf-d")
		ref := keyprovider.KeyRef{ID: "conf-d", Scope: "conformance", Public: pub}
		bad := bytes.Clone(h)
		bad[len(bad)-1] ^= 0xff
		if _, err := p.Load(ctx, ref, bad); err == nil {
			t.Fatal("a tampered handle loaded")
		}
		if _, err := p.Load(ctx, ref, nil); err == nil {
			t.Fatal("an empty handle loaded")
		}
	})

	// A key is bound to its record: loading it for another scope, another
	// id or another public key (a row moved or swapped in the store) is
	// ErrInvariant and yields no key.
	t.Run("BoundToRecord", func(t *testing.T) {
		h, pub, _ := newKey(t, "conf-g")
		h2, pub2, _ := newKey(t, "conf-g2")
		for _, tc := range []struct {
			name   string
			ref    keyprovider.KeyRef
			handle []byte
		}{
			{"another scope", keyprovider.KeyRef{ID: "conf-g", Scope: "elsewhere", Public: pub}, h},
			{"another public key", keyprovider.KeyRef{ID: "conf-g", Scope: "conformance", Public: pub2}, h},
			{"another record's handle", keyprovider.KeyRef{ID: "conf-g", Scope: "conformance", Public: pub}, h2},
			{"another record's handle and public key", keyprovider.KeyRef{ID: "conf-g", Scope: "conformance", Public: pub2}, h2},
		} {
			k, err := p.Load(ctx, tc.ref, tc.handle)
			if !errors.Is(err, signerr.ErrInvariant) || k != nil {
				t.Errorf("%s: key=%v err=%v, want ErrInvariant", tc.name, k, err)
			}
		}
	})

	// Retirement destroys a key for good: after Destroy, neither the
	// store's tombstone nor (where the handle only names the key, an HSM's
	// objects) the old handle loads it; destroying it again, or a key of
	// another record under its handle, leaves the other key whole.
	t.Run("Destroy", func(t *testing.T) {
		h, pub, _ := newKey(t, "conf-x")
		h2, pub2, _ := newKey(t, "conf-x2")
		ref := keyprovider.KeyRef{ID: "conf-x", Scope: "conformance", Public: pub}
		if err := p.Destroy(ctx, keyprovider.KeyRef{ID: "conf-x", Scope: "elsewhere", Public: pub}, h); err == nil && !o.SealedHandles {
			t.Fatal("Destroy of a record that is not the key's accepted")
		}
		if err := p.Destroy(ctx, ref, h); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Load(ctx, ref, []byte{}); err == nil {
			t.Fatal("the tombstone loaded")
		}
		if !o.SealedHandles {
			if _, err := p.Load(ctx, ref, h); err == nil {
				t.Fatal("a destroyed key loaded from its old handle")
			}
		}
		if err := p.Destroy(ctx, ref, h); err != nil {
			t.Fatalf("destroying a destroyed key: %v", err)
		}
		if _, err := p.Load(ctx, keyprovider.KeyRef{ID: "conf-x2", Scope: "conformance", Public: pub2}, h2); err != nil {
			t.Fatalf("another key after the destroy: %v", err)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		_, _, k := newKey(t, "conf-e")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := k.SignContext(cctx, []byte("m")); err == nil {
			t.Fatal("SignContext signed with a canceled context")
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		_, pub, k := newKey(t, "conf-f")
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					msg := fmt.Appendf(nil, "g%d-%d", g, i)
					sig, err := k.SignContext(ctx, msg)
					if err != nil {
						errs <- err
						return
					}
					if !ed25519.Verify(pub, msg, sig) {
						errs <- fmt.Errorf("signature %d/%d does not verify", g, i)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})

	t.Run("Health", func(t *testing.T) {
		if err := p.Health(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
