package client_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/plexsphere/signer/client"
)

// Sign through the pod's sidecar and verify locally with the cached public
// key.
func Example_sign() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	msg := []byte("settle invoice 42")
	sig, err := c.Sign(ctx, "payments", msg)
	switch {
	case client.IsRetryable(err):
		log.Fatalf("signer unavailable, retry later: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	if err := c.Verify(ctx, "payments", sig.KeyID, msg, sig.Bytes); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("signed with key %s\n", sig.KeyID)
}

// Map refusals with errors.Is.
func ExampleClient_Verify() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var keyID string
	var payload, sig []byte // as received from a peer
	switch err := c.Verify(ctx, "payments", keyID, payload, sig); {
	case err == nil:
		fmt.Println("valid")
	case errors.Is(err, client.ErrInvalidSignature):
		fmt.Println("forged or corrupted")
	case errors.Is(err, client.ErrKeyNotFound):
		fmt.Println("unknown or retired key")
	default:
		log.Fatal(err)
	}
}

// A compact JWS (RFC 7515, alg EdDSA) signed through the crypto.Signer
// adapter; the kid header is the pinned key id. NewSigner resolves the key
// first, so a scope that does not resolve says why.
func ExampleClient_NewSigner() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSigner(ctx, "payments")
	var e *client.Error
	switch {
	case errors.Is(err, client.ErrInvalidArgument) && errors.As(err, &e):
		log.Fatalf("scope %s", e.Rule) // "scope must be 1-128 characters of [A-Za-z0-9._-], ..."
	case errors.Is(err, client.ErrKeyNotFound):
		log.Fatal("no such scope, or it has no ACTIVE key yet")
	case client.IsRetryable(err):
		log.Fatalf("signer unavailable, retry later: %v", err)
	case err != nil:
		log.Fatal(err)
	}

	b64 := base64.RawURLEncoding.EncodeToString
	header, _ := json.Marshal(map[string]string{"alg": "EdDSA", "typ": "JWT", "kid": s.KeyID()})
	claims, _ := json.Marshal(map[string]any{"sub": "order-42", "exp": time.Now().Add(time.Hour).Unix()})
	input := b64(header) + "." + b64(claims)
	sig, err := s.Sign(rand.Reader, []byte(input), crypto.Hash(0))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(input + "." + b64(sig))
}

// The rule a request broke, from errors.As: the signer names the field and
// the rule, never the input.
func ExampleError() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, err = c.Sign(ctx, "payments", make([]byte, 100_000)) // over the default 64 KiB
	if e := (*client.Error)(nil); errors.As(err, &e) && e.Rule != "" {
		fmt.Println(e.Field, e.Rule) // payload must be at most 65536 bytes
	}
}

// Sign in Ed25519ph (HashEdDSA): hash the message locally, send only the
// 64-byte SHA-512 digest, verify with the standard library in the same
// variant. The scope must allow it on the signer
// (SIGNER_SCOPE_SIGN_VARIANTS=payments=ed25519ph).
func ExampleClient_SignWith() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	digest := sha512.Sum512([]byte("a large artifact, hashed where it lives"))
	opts := &ed25519.Options{Hash: crypto.SHA512}
	sig, err := c.SignWith(ctx, "payments", digest[:], opts)
	if errors.Is(err, client.ErrVariantNotAllowed) {
		log.Fatalf("ask the operator to allow ed25519ph for the scope: %v", err)
	} else if err != nil {
		log.Fatal(err)
	}
	keys, err := c.PublicKeys(ctx, "payments")
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range keys {
		if k.KeyID == sig.KeyID && ed25519.VerifyWithOptions(k.Key, digest[:], sig.Bytes, opts) == nil {
			fmt.Printf("Ed25519ph signature by %s (request %s)\n", sig.KeyID, sig.RequestID)
		}
	}
}
