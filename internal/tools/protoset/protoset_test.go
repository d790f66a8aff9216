package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The committed set is what the pinned Go packages describe now.
func TestProtosetIsCurrent(t *testing.T) {
	want, err := build()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../../" + Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run 'make proto' and commit", Path)
	}
}

// A client that knows nothing but the committed protoset (as grpcurl
// -protoset does) decodes the error details of a real refused call: the
// raw grpc-status-details-bin trailer of a Sign with a malformed scope
// becomes a google.rpc.Status whose details are an ErrorInfo naming the
// reason, field and rule, and a BadRequest field violation; none repeats
// the input.
func TestProtosetDecodesErrorDetails(t *testing.T) {
	raw, err := os.ReadFile("../../../" + Path)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatal(err)
	}
	types := dynamicpb.NewTypes(files)

	env := signertest.Start(t)
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	const input = "secret/input"
	for _, tc := range []struct {
		name        string
		req         *signerv1.SignRequest
		field, rule string
	}{
		{"scope", &signerv1.SignRequest{Scope: input, Payload: []byte("p")}, "scope", "must be 1-128 characters"},
		{"payload", &signerv1.SignRequest{Scope: signertest.Scope, Payload: bytes.Repeat([]byte(input), 10000)}, "payload", "must be at most 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var trailer metadata.MD
			if _, err := core.Sign(context.Background(), tc.req, grpc.Trailer(&trailer)); err == nil {
				t.Fatal("accepted")
			}
			bin := trailer.Get("grpc-status-details-bin")
			if len(bin) != 1 {
				t.Fatalf("trailer %v", trailer)
			}
			stType, err := types.FindMessageByName("google.rpc.Status")
			if err != nil {
				t.Fatalf("the protoset lacks google.rpc.Status: %v", err)
			}
			st := stType.New().Interface()
			if err := proto.Unmarshal([]byte(bin[0]), st); err != nil {
				t.Fatal(err)
			}
			js, err := protojson.MarshalOptions{Resolver: types}.Marshal(st)
			if err != nil {
				t.Fatalf("details do not decode with the protoset alone: %v", err)
			}
			out := string(js)
			for _, want := range []string{
				`"@type":"type.googleapis.com/google.rpc.ErrorInfo"`, `"reason":"ERROR_REASON_INVALID_ARGUMENT"`,
				`"domain":"signer.plexsphere.dev"`, `"field":"` + tc.field + `"`, `"rule":"` + tc.rule,
				`"@type":"type.googleapis.com/google.rpc.BadRequest"`, `"description":"` + tc.rule,
				`"code":3`, `"message":"signing: invalid argument: ` + tc.field + `: ` + tc.rule,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("decoded status lacks %s:\n%s", want, out)
				}
			}
			if strings.Contains(out, input) {
				t.Errorf("the status repeats the input:\n%s", out)
			}
			// The reason is an ErrorReason value of the same set.
			enum, err := files.FindDescriptorByName("plexsphere.signer.v1.ErrorReason")
			if err != nil || enum.(protoreflect.EnumDescriptor).Values().ByName("ERROR_REASON_INVALID_ARGUMENT") == nil {
				t.Errorf("ErrorReason not in the set: %v", err)
			}
		})
	}
}
