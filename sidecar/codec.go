package sidecar

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// frame is a message carried through unparsed.
type frame struct{ data mem.BufferSlice }

// codec passes frames through as bytes and leaves everything else (the
// health service's messages) to the protobuf codec. It keeps the wire name
// "proto" so peers see ordinary gRPC.
type codec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		// gRPC frees the returned buffers once written: ownership of the
		// reference Unmarshal took passes with them.
		d := f.data
		f.data = nil
		return d, nil
	}
	return protoCodec.Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		data.Ref()
		f.data = data
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}

func (codec) Name() string { return proto.Name }
