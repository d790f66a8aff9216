package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature/kms"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin"
	"github.com/sigstore/sigstore/pkg/signature/options"

	"github.com/plexsphere/signer/internal/testing/signertest"
)

// testSigstore drives the plugin through sigstore's own loader with the
// environment (PATH, PLEXSPHERE_SIDECAR_ADDR) already set.
func testSigstore(t *testing.T, r *rig) {
	ctx := context.Background()
	sv, err := kms.Get(ctx, "plexsphere://"+signertest.Scope, crypto.SHA256)
	if err != nil {
		t.Fatalf("kms.Get: %v", err)
	}
	active := r.active(t, signertest.Scope)
	pub, err := sv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	if !active.Key.Equal(pub) {
		t.Fatalf("PublicKey %x, the signer's ACTIVE key %x", pub, active.Key)
	}
	if got := sv.DefaultAlgorithm(); got != "ed25519" {
		t.Fatalf("DefaultAlgorithm %q", got)
	}

	msg := make([]byte, 4096)
	rand.Read(msg)
	before := r.signer.LastSeq(t)
	sig, err := sv.SignMessage(bytes.NewReader(msg), options.WithContext(ctx))
	if err != nil {
		t.Fatalf("SignMessage: %v", err)
	}
	if !ed25519.Verify(active.Key, msg, sig) {
		t.Fatal("the plugin's signature does not verify with ed25519.Verify")
	}
	sum := sha256.Sum256(msg)
	var granted int
	for _, e := range r.signer.AuditAfter(t, before) {
		if e.Relation == "sign" && e.Reason == "granted" && bytes.Equal(e.PayloadSHA256, sum[:]) {
			granted++
		}
	}
	if granted != 1 {
		t.Fatalf("%d granted sign entries over the message, want 1", granted)
	}
	if err := sv.VerifySignature(bytes.NewReader(sig), bytes.NewReader(msg)); err != nil {
		t.Fatalf("VerifySignature: %v", err)
	}
	tampered := append([]byte(nil), msg...)
	tampered[7] ^= 0x80
	if err := sv.VerifySignature(bytes.NewReader(sig), bytes.NewReader(tampered)); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("VerifySignature of a tampered message: %v", err)
	}

	// sigstore's crypto.Signer wrapper sends the message as the "digest"
	// with hash 0: pure Ed25519, as crypto.Signer means it.
	cs, _, err := sv.CryptoSigner(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, err = cs.Sign(rand.Reader, msg, crypto.Hash(0))
	if err != nil {
		t.Fatalf("CryptoSigner.Sign: %v", err)
	}
	if !ed25519.Verify(active.Key, msg, sig) {
		t.Fatal("the CryptoSigner's signature does not verify with ed25519.Verify")
	}
	if !active.Key.Equal(cs.Public()) {
		t.Fatal("CryptoSigner.Public is not the ACTIVE key")
	}
	// Ed25519ph: a message over the signer's payload limit, hashed here;
	// the signer gets its SHA-512 digest only.
	large := make([]byte, 1<<20)
	rand.Read(large)
	sig, err = sv.SignMessage(bytes.NewReader(large), options.WithCryptoSignerOpts(crypto.SHA512))
	if err != nil {
		t.Fatalf("SignMessage, SHA-512: %v", err)
	}
	d512 := sha512.Sum512(large)
	if err := ed25519.VerifyWithOptions(active.Key, d512[:], sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
		t.Fatalf("the Ed25519ph signature does not verify with ed25519.VerifyWithOptions: %v", err)
	}
	if ed25519.Verify(active.Key, large, sig) {
		t.Fatal("an Ed25519ph signature verified as pure Ed25519")
	}
	// The digest given by the caller (cosign's way), through the crypto.Signer too.
	if sig, err = cs.Sign(rand.Reader, d512[:], crypto.SHA512); err != nil {
		t.Fatalf("CryptoSigner.Sign, SHA-512: %v", err)
	}
	if err := ed25519.VerifyWithOptions(active.Key, d512[:], sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
		t.Fatalf("the CryptoSigner's Ed25519ph signature: %v", err)
	}
	if err := sv.VerifySignature(bytes.NewReader(sig), bytes.NewReader(large)); err != nil {
		t.Fatalf("VerifySignature of an Ed25519ph signature over the whole message: %v", err)
	}
	if err := sv.VerifySignature(bytes.NewReader(sig), bytes.NewReader(nil), options.WithDigest(d512[:])); err != nil {
		t.Fatalf("VerifySignature of an Ed25519ph signature over its digest: %v", err)
	}
	// A SHA-256 prehash is not Ed25519: refused before anything is signed.
	d := sha256.Sum256(msg)
	if _, err := cs.Sign(rand.Reader, d[:], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "SHA-512 only") {
		t.Fatalf("a SHA-256 prehash: %v", err)
	}

	if _, err := sv.CreateKey(ctx, "ed25519"); !errors.Is(err, cliplugin.ErrorPluginReturnError) || !strings.Contains(err.Error(), "signerctl rotate open --create "+signertest.Scope) {
		t.Fatalf("CreateKey: %v", err)
	}
	other, err := kms.Get(ctx, "plexsphere://nope", crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.SignMessage(bytes.NewReader(msg)); err == nil || !strings.Contains(err.Error(), `scope "nope" is unknown to the signer`) {
		t.Fatalf("an unknown scope: %v", err)
	}
}
