package signing_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/signvariant"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Arbitrary bytes as a SignRequest through the real handler (bbolt store,
// local provider): the answer is a signature that verifies with the
// scope's key, or an error of a known class. Never a panic, never an
// unclassified error.
func FuzzSignRequest(f *testing.F) {
	svc, keys := boltService(f, signing.Variants{"payments": {signvariant.Ed25519ph: true, signvariant.Ed25519ctx: true}}, "payments")
	key := keys[0]
	ctx := context.Background()
	digest := sha512.Sum512([]byte("hello"))
	for _, req := range []*signerv1.SignRequest{
		{Scope: "payments", Payload: []byte("hello")},
		{Scope: "payments", Payload: digest[:], Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519PH, Context: []byte("c")},
		{Scope: "payments", Payload: []byte("hello"), Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519CTX, Context: []byte("c")},
		{Scope: "other", Payload: []byte("hello"), Variant: 9},
		{Scope: "payments", Payload: []byte("x"), KeyId: proto.String(key.ID)},
		{Scope: "bad:scope"},
		{Scope: "payments", KeyId: proto.String("")},
		{Scope: "other", Payload: make([]byte, 2000)},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req signerv1.SignRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		resp, err := svc.Sign(ctx, &req)
		if err != nil {
			if errors.Is(err, signerr.ErrInternal) || signing.Classify(err).Err == signerr.ErrInternal {
				t.Fatalf("unclassified error for %v: %v", &req, err)
			}
			return
		}
		opts := signvariant.Options(signvariant.Variant(req.Variant), req.Context)
		if opts == nil {
			opts = &ed25519.Options{}
		}
		if resp.KeyId != key.ID || resp.Variant != req.Variant || ed25519.VerifyWithOptions(key.Public, req.Payload, resp.Signature, opts) != nil || len(req.Payload) > 1024 {
			t.Fatalf("granted %v with key %s", &req, resp.KeyId)
		}
	})
}
