package signerr

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Domain is the google.rpc.ErrorInfo domain of every signer error.
const Domain = "signer.plexsphere.dev"

// Status converts err to the gRPC status the caller sees: the class code, the
// sentinel's text (never the wrapped internal text) and an ErrorInfo whose
// reason is the ErrorReason enum name.
func Status(err error) error {
	if err == nil {
		return nil
	}
	c := Classify(err)
	st := status.New(c.Code, c.Err.Error())
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: c.WireTag.String(), Domain: Domain}); derr == nil {
		st = d
	}
	return st.Err()
}
