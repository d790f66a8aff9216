package signing_test

import (
	"context"
	"crypto/sha512"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/signvariant"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The variant policy at its edges, through the real handler: enum values
// outside 0..2 (negative, past a byte, unknown) are invalid, not read
// modulo 256 or as pure; a key_id-pinned Sign is held to the request's
// scope's policy, and pinning another scope's key from an allowed scope
// is a scope mismatch, never a way to sign that key in a variant.
func TestSignVariantEdges(t *testing.T) {
	svc, keys := boltService(t, signing.Variants{"payments": {signvariant.Ed25519ph: true}}, "payments", "docs")
	pay, docs := keys[0], keys[1]
	ctx := context.Background()
	digest := sha512.Sum512([]byte("m"))
	ph := signerv1.SignVariant_SIGN_VARIANT_ED25519PH
	for _, tc := range []struct {
		name string
		req  *signerv1.SignRequest
		want error
	}{
		{"variant -1", &signerv1.SignRequest{Scope: "payments", Payload: []byte("m"), Variant: -1}, signerr.ErrInvalidArgument},
		{"variant 256 (1 modulo a byte)", &signerv1.SignRequest{Scope: "payments", Payload: digest[:], Variant: 257}, signerr.ErrInvalidArgument},
		{"variant 256 (0 modulo a byte)", &signerv1.SignRequest{Scope: "payments", Payload: []byte("m"), Variant: 256}, signerr.ErrInvalidArgument},
		{"variant 3", &signerv1.SignRequest{Scope: "payments", Payload: []byte("m"), Variant: 3}, signerr.ErrInvalidArgument},
		{"ctx where only ph is allowed", &signerv1.SignRequest{Scope: "payments", Payload: []byte("m"),
			Variant: signerv1.SignVariant_SIGN_VARIANT_ED25519CTX, Context: []byte("c")}, signerr.ErrVariantNotAllowed},
		{"ph pinned to the scope's own key, scope not allowed", &signerv1.SignRequest{Scope: "docs", Payload: digest[:], Variant: ph,
			KeyId: proto.String(docs.ID)}, signerr.ErrVariantNotAllowed},
		{"ph from an allowed scope pinned to another scope's key", &signerv1.SignRequest{Scope: "payments", Payload: digest[:], Variant: ph,
			KeyId: proto.String(docs.ID)}, signerr.ErrScopeMismatch},
		{"ph pinned to the allowed scope's key", &signerv1.SignRequest{Scope: "payments", Payload: digest[:], Variant: ph,
			KeyId: proto.String(pay.ID)}, nil},
	} {
		resp, err := svc.Sign(ctx, tc.req)
		if tc.want == nil {
			if err != nil || resp.KeyId != pay.ID || resp.Variant != ph {
				t.Errorf("%s: %v %v", tc.name, resp, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || resp != nil {
			t.Errorf("%s: %v, %v; want %v", tc.name, resp, err, tc.want)
		}
	}
}
