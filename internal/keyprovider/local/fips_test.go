package local_test

import (
	"context"
	"crypto/ed25519"
	"crypto/fips140"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/testing/testenv"
)

// New keys are sealed in format 3 (AES-256-GCM); a key sealed in format 2
// (XChaCha20-Poly1305) by an earlier version still opens, signs, and stays
// bound to its record.
func TestFormat2StillOpens(t *testing.T) {
	if fips140.Enforced() {
		testenv.Require(t, "a run outside GODEBUG=fips140=only", "format 2 is refused under fips140=only (TestFIPSOnlyMode checks that)")
	}
	ctx := context.Background()
	p, err := local.New(newKEK(t))
	if err != nil {
		t.Fatal(err)
	}
	ref := keyprovider.KeyRef{ID: "k3", Scope: "s"}
	h3, pub3, err := p.Generate(ctx, ref)
	if err != nil || h3[0] != 3 {
		t.Fatalf("a new handle is format %d (%v), want 3", h3[0], err)
	}
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = 7
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	ref2 := keyprovider.KeyRef{ID: "k2", Scope: "s", Public: pub}
	h2 := local.SealV2ForTest(p, ref2, seed)
	k, err := p.Load(ctx, ref2, h2)
	if err != nil {
		t.Fatalf("format 2 handle: %v", err)
	}
	sig, err := k.SignContext(ctx, []byte("m"))
	if err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Fatalf("format 2 key signs: %v", err)
	}
	if _, err := p.Load(ctx, keyprovider.KeyRef{ID: "k2", Scope: "other", Public: pub}, h2); !errors.Is(err, signerr.ErrInvariant) {
		t.Fatalf("format 2 handle moved to another scope: %v", err)
	}
	if _, err := p.Load(ctx, keyprovider.KeyRef{ID: "k3", Scope: "s", Public: pub3}, h3); err != nil {
		t.Fatal(err)
	}
	// A handle relabelled as the other format (the version byte is not in
	// the AAD; the formats' sealing keys differ, so neither opens), a
	// format 3 handle cut short or with a flipped bit, a format 3 handle
	// moved to another record: tampering (ErrInvariant), never a key.
	relabel := func(h []byte, v byte) []byte { return append([]byte{v}, h[1:]...) }
	flip := append([]byte(nil), h3...)
	flip[len(flip)-1] ^= 1
	for _, tc := range []struct {
		name   string
		ref    keyprovider.KeyRef
		handle []byte
	}{
		{"format 3 relabelled 2", keyprovider.KeyRef{ID: "k3", Scope: "s", Public: pub3}, relabel(h3, 2)},
		{"format 2 relabelled 3", ref2, relabel(h2, 3)},
		{"format 3 cut after the check value", keyprovider.KeyRef{ID: "k3", Scope: "s", Public: pub3}, h3[:9]},
		{"format 3 cut inside the nonce", keyprovider.KeyRef{ID: "k3", Scope: "s", Public: pub3}, h3[:15]},
		{"format 3 bit flipped", keyprovider.KeyRef{ID: "k3", Scope: "s", Public: pub3}, flip},
		{"format 3 moved to another scope", keyprovider.KeyRef{ID: "k3", Scope: "other", Public: pub3}, h3},
		{"format 3 under another id", keyprovider.KeyRef{ID: "k4", Scope: "s", Public: pub3}, h3},
	} {
		if k, err := p.Load(ctx, tc.ref, tc.handle); !errors.Is(err, signerr.ErrInvariant) || k != nil {
			t.Errorf("%s: key=%v err=%v, want ErrInvariant", tc.name, k, err)
		}
	}
}

// Under GODEBUG=fips140=only (which no running process can switch on, so
// the test binary runs itself) the provider starts, generates, seals and
// signs with approved algorithms only; a format 2 handle is refused as
// ErrProviderUnavailable naming the fix, not as tampering.
func TestFIPSOnlyMode(t *testing.T) {
	kek := strings.Repeat("ab", 32)
	if os.Getenv("LOCAL_FIPS_ONLY_CHILD") == "1" {
		fipsOnlyChild(t, kek, os.Getenv("LOCAL_FIPS_ONLY_V2"))
		return
	}
	if fips140.Enforced() {
		// The parent seals a format 2 handle, which fips140=only forbids.
		testenv.Require(t, "a run outside GODEBUG=fips140=only", "this run is fips140=only; the test starts such a run itself")
	}
	k, _ := local.ParseKEK(kek)
	p, err := local.New(k)
	if err != nil {
		t.Fatal(err)
	}
	seed := make([]byte, ed25519.SeedSize)
	ref := keyprovider.KeyRef{ID: "k2", Scope: "s"}
	h2 := local.SealV2ForTest(p, ref, seed)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFIPSOnlyMode$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "LOCAL_FIPS_ONLY_CHILD=1", "LOCAL_FIPS_ONLY_V2="+hex.EncodeToString(h2))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestFIPSOnlyMode") {
		t.Fatalf("the fips140=only run: %v\n%s", err, out)
	}
}

func fipsOnlyChild(t *testing.T, kekHex, v2Hex string) {
	if !fips140.Enabled() || !fips140.Enforced() {
		t.Fatal("the child does not run in fips140=only")
	}
	ctx := context.Background()
	kek, _ := local.ParseKEK(kekHex)
	p, err := local.New(kek)
	if err != nil {
		t.Fatalf("New under fips140=only: %v", err)
	}
	ref := keyprovider.KeyRef{ID: "k3", Scope: "s"}
	h, pub, err := p.Generate(ctx, ref)
	if err != nil {
		t.Fatalf("Generate under fips140=only: %v", err)
	}
	ref.Public = pub
	k, err := p.Load(ctx, ref, h)
	if err != nil {
		t.Fatalf("Load under fips140=only: %v", err)
	}
	if sig, err := k.SignContext(ctx, []byte("m")); err != nil || !ed25519.Verify(pub, []byte("m"), sig) {
		t.Fatalf("Sign under fips140=only: %v", err)
	}
	h2, _ := hex.DecodeString(v2Hex)
	seedPub := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	_, err = p.Load(ctx, keyprovider.KeyRef{ID: "k2", Scope: "s", Public: seedPub}, h2)
	if !errors.Is(err, signerr.ErrProviderUnavailable) || !errors.Is(err, local.ErrNotApproved) || !strings.Contains(err.Error(), "fips140=only") || !strings.Contains(err.Error(), "rotate scope") {
		t.Fatalf("a format 2 handle under fips140=only: %v", err)
	}
	// Under another KEK the KEK is named, not the mode.
	other, _ := local.ParseKEK(strings.Repeat("cd", 32))
	po, err := local.New(other)
	if err != nil {
		t.Fatal(err)
	}
	_, err = po.Load(ctx, keyprovider.KeyRef{ID: "k2", Scope: "s", Public: seedPub}, h2)
	if !errors.Is(err, signerr.ErrProviderUnavailable) || errors.Is(err, local.ErrNotApproved) || !strings.Contains(err.Error(), "another key-encryption key") {
		t.Fatalf("a format 2 handle under another KEK: %v", err)
	}
}
