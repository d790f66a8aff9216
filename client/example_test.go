package client_test

import (
	"context"
	"crypto"
	"crypto/rand"
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
// adapter; the kid header is the pinned key id.
func ExampleClient_Signer() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plexsphere/signer.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s := c.Signer("payments")

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
