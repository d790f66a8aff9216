package local_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/testing/keyprovidertest"
)

func newKEK(t *testing.T) []byte {
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	return kek
}

func TestConformance(t *testing.T) {
	kek := newKEK(t)
	keyprovidertest.Run(t, func(t *testing.T) keyprovider.Provider {
		p, err := local.New(kek)
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
}

// The handle is the only thing the store keeps: it must not contain the seed
// or the private key, and it must not open under another KEK or another id.
func TestHandleIsSealed(t *testing.T) {
	ctx := context.Background()
	p, _ := local.New(newKEK(t))
	ref := keyprovider.KeyRef{ID: "k1", Scope: "s"}
	h, pub, err := p.Generate(ctx, ref)
	ref.Public = pub
	if err != nil {
		t.Fatal(err)
	}
	// No 32-byte window of the handle may be the seed of this key.
	for i := 0; i+32 <= len(h); i++ {
		if keyFromSeedPublic(h[i : i+32]).Equal(pub) {
			t.Fatalf("handle contains the seed in clear at offset %d", i)
		}
	}
	other, _ := local.New(newKEK(t))
	if _, err := other.Load(ctx, ref, h); !errors.Is(err, signerr.ErrProviderUnavailable) {
		t.Fatalf("load under another KEK: %v", err)
	}
	if _, err := p.Load(ctx, keyprovider.KeyRef{ID: "k2", Scope: "s", Public: pub}, h); err == nil {
		t.Fatal("a handle loaded under another key id")
	}
	h2, _, _ := p.Generate(ctx, ref)
	if bytes.Equal(h, h2) {
		t.Fatal("two sealings are identical (nonce reuse)")
	}
}

func TestParseKEK(t *testing.T) {
	hex := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	for _, s := range []string{hex, hex + "\n", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"} {
		b, err := local.ParseKEK(s)
		if err != nil || b[31] != 0x1f {
			t.Errorf("ParseKEK(%q) = %x, %v", s, b, err)
		}
	}
	for _, s := range []string{"", "short", hex[:62]} {
		if _, err := local.ParseKEK(s); err == nil {
			t.Errorf("ParseKEK(%q) accepted", s)
		}
	}
	if _, err := local.New(make([]byte, 16)); err == nil {
		t.Error("New accepted a 16-byte KEK")
	}
}
