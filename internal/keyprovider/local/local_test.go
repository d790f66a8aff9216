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
	}, keyprovidertest.Options{SealedHandles: true})
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
	if _, err := p.Load(ctx, keyprovider.KeyRef{ID: "k2", Scope: "s", Public: pub}, h); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("a handle loaded under another key id: %v", err)
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

// A sealed key opens only for the record it was made for: the attacker who
// can write the store moves a row to another scope, swaps rows or edits the
// public key, and every variant is ErrInvariant (not the wrong-KEK error,
// which means something else to an operator). A handle of the old format,
// which bound only the id, is refused.
func TestHandleBoundToRecord(t *testing.T) {
	ctx := context.Background()
	p, _ := local.New(newKEK(t))
	pay := keyprovider.KeyRef{ID: "kpay", Scope: "payments"}
	hPay, pubPay, err := p.Generate(ctx, pay)
	if err != nil {
		t.Fatal(err)
	}
	pay.Public = pubPay
	bill := keyprovider.KeyRef{ID: "kbill", Scope: "billing"}
	hBill, pubBill, err := p.Generate(ctx, bill)
	if err != nil {
		t.Fatal(err)
	}
	bill.Public = pubBill
	if _, err := p.Load(ctx, pay, hPay); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		ref    keyprovider.KeyRef
		handle []byte
	}{
		{"moved to another scope", keyprovider.KeyRef{ID: "kpay", Scope: "billing", Public: pubPay}, hPay},
		{"handle swapped in", keyprovider.KeyRef{ID: "kpay", Scope: "payments", Public: pubPay}, hBill},
		{"handle and public key swapped in", keyprovider.KeyRef{ID: "kpay", Scope: "payments", Public: pubBill}, hBill},
		{"id swapped", keyprovider.KeyRef{ID: "kbill", Scope: "billing", Public: pubPay}, hPay},
		{"public key edited", keyprovider.KeyRef{ID: "kpay", Scope: "payments", Public: pubBill}, hPay},
		{"no public key", keyprovider.KeyRef{ID: "kpay", Scope: "payments"}, hPay},
		{"format 1", pay, append([]byte{1}, hPay[1:]...)},
	} {
		if k, err := p.Load(ctx, tc.ref, tc.handle); !errors.Is(err, signerr.ErrInvariant) || k != nil {
			t.Errorf("%s: key=%v err=%v, want ErrInvariant", tc.name, k, err)
		}
	}
	if _, _, err := p.Generate(ctx, keyprovider.KeyRef{ID: "k"}); err == nil {
		t.Error("generated a key with no scope")
	}
}

// A released key is zeroed and refuses to sign; it never signs with zeros.
func TestReleaseZeroes(t *testing.T) {
	ctx := context.Background()
	p, _ := local.New(newKEK(t))
	ref := keyprovider.KeyRef{ID: "k", Scope: "s"}
	h, pub, _ := p.Generate(ctx, ref)
	ref.Public = pub
	k, err := p.Load(ctx, ref, h)
	if err != nil {
		t.Fatal(err)
	}
	priv := local.PrivateForTest(k)
	k.(keyprovider.Releaser).Release()
	if !bytes.Equal(priv, make([]byte, len(priv))) {
		t.Fatal("Release left key bytes in memory")
	}
	if _, err := k.SignContext(ctx, []byte("m")); !errors.Is(err, keyprovider.ErrReleased) {
		t.Fatalf("a released key signed: %v", err)
	}
}
