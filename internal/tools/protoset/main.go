// Command protoset writes the signer's wire schema as a protobuf
// FileDescriptorSet: plexsphere/signer/v1/signer.proto with every file it
// imports, plus google/rpc/status.proto and google/rpc/error_details.proto,
// which define the error details every failed call carries
// (google.rpc.ErrorInfo, google.rpc.BadRequest). The signer never registers
// gRPC reflection, so this file is how a generic client such as grpcurl
// learns the schema and decodes error details instead of printing a raw
// blob:
//
//	grpcurl -protoset proto/plexsphere-signer.protoset ... plexsphere.signer.v1.SignerService/Sign
//
// The descriptors are those compiled into the Go packages this module pins
// (signerv1, errdetails, status), so the set always matches the generated
// code. `make proto` regenerates it; `make generate-check` and this
// package's test fail when the committed file is stale.
package main

import (
	"flag"
	"fmt"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Path is where the set is committed, relative to the module root.
const Path = "proto/plexsphere-signer.protoset"

func main() {
	out := flag.String("o", Path, "file to write")
	flag.Parse()
	b, err := build()
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "protoset:", err)
		os.Exit(1)
	}
}

// build returns the serialized set, each file after the files it imports.
func build() ([]byte, error) {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	for _, fd := range []protoreflect.FileDescriptor{
		signerv1.File_plexsphere_signer_v1_signer_proto,
		rpcstatus.File_google_rpc_status_proto,
		errdetails.File_google_rpc_error_details_proto,
	} {
		add(fd)
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(set)
}
