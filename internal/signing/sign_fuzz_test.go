package signing_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Arbitrary bytes as a SignRequest through the real handler (bbolt store,
// local provider): the answer is a signature that verifies with the
// scope's key, or an error of a known class. Never a panic, never an
// unclassified error.
func FuzzSignRequest(f *testing.F) {
	st := signertest.OpenBolt(f)
	p := signertest.NewLocalProvider(f)
	kr := keyring.New(st, p, time.Minute, nil)
	rot := keyring.NewLifecycle(st, p, kr, keyring.Windows{}, nil)
	ctx := context.Background()
	key, _, err := rot.Bootstrap(ctx, "payments", discard{})
	if err != nil {
		f.Fatal(err)
	}
	svc := signing.NewService(kr, nil, 1024, nil)
	for _, req := range []*signerv1.SignRequest{
		{Scope: "payments", Payload: []byte("hello")},
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
		if resp.KeyId != key.ID || !ed25519.Verify(key.Public, req.Payload, resp.Signature) || len(req.Payload) > 1024 {
			t.Fatalf("granted %v with key %s", &req, resp.KeyId)
		}
	})
}
