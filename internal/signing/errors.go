package signing

import (
	"context"
	"errors"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Class is what an error means to the caller and to the audit log.
type Class struct {
	Err     error // the sentinel; its text is the only message a caller sees
	Code    codes.Code
	Reason  string // audit reason
	WireTag signerv1.ErrorReason
}

// Table is the single mapping from sentinel to gRPC code, audit reason and
// wire reason. The audit middleware and Status both read it through
// Classify; a test proves every signerr sentinel has exactly one row.
var Table = []Class{
	{signerr.ErrClientIdentityDenied, codes.PermissionDenied, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_CLIENT_IDENTITY_DENIED},
	{signerr.ErrKeyNotFound, codes.NotFound, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_KEY_NOT_FOUND},
	{signerr.ErrEntryNotFound, codes.NotFound, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_ENTRY_NOT_FOUND},
	{signerr.ErrScopeMismatch, codes.PermissionDenied, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_SCOPE_MISMATCH},
	{signerr.ErrInvariant, codes.Internal, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INVARIANT},
	{signerr.ErrKeyRetired, codes.FailedPrecondition, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_KEY_RETIRED},
	{signerr.ErrRotationInProgress, codes.FailedPrecondition, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_ROTATION_IN_PROGRESS},
	{signerr.ErrProviderUnavailable, codes.Unavailable, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_PROVIDER_UNAVAILABLE},
	{signerr.ErrKeyActive, codes.FailedPrecondition, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_KEY_ACTIVE},
	{signerr.ErrRotationNotReady, codes.FailedPrecondition, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_ROTATION_NOT_READY},
	{signerr.ErrInvalidArgument, codes.InvalidArgument, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	// A variant refused by policy (the scope's setting, FIPS mode) or by
	// the provider: a state-time refusal like a retired key, retrying
	// cannot help until an operator changes the configuration.
	{signerr.ErrVariantNotAllowed, codes.FailedPrecondition, auditlog.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED},
	// Outages of the store and of the audit log are unclassified in the
	// contract's terms: insufficient_relation, the reason a later reader
	// would see if the entry could be stored.
	{signerr.ErrStoreUnavailable, codes.Unavailable, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_STORE_UNAVAILABLE},
	{signerr.ErrAuditUnavailable, codes.Unavailable, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE},
	{signerr.ErrAuditLogBroken, codes.Unavailable, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_BROKEN},
	{signerr.ErrAuditLogUnanchored, codes.Unavailable, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_UNANCHORED},
	{signerr.ErrInternal, codes.Internal, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL},
}

var (
	classGranted  = Class{Code: codes.OK, Reason: auditlog.ReasonGranted}
	classCanceled = Class{context.Canceled, codes.Canceled, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL}
	classDeadline = Class{context.DeadlineExceeded, codes.DeadlineExceeded, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL}
	classInternal = Table[len(Table)-1]
	// classUnknownMethod answers an admitted peer calling a method the
	// signer does not serve. It is audited like any other outcome.
	classUnknownMethod = Class{errUnknownMethod, codes.Unimplemented, auditlog.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_UNKNOWN_METHOD}
)

var errUnknownMethod = errors.New("signing: unknown method")

// Classify finds err's class. nil is granted (codes.OK). An error matching
// no sentinel is unclassified: Internal, insufficient_relation, and the
// caller sees only ErrInternal's text.
func Classify(err error) Class {
	if err == nil {
		return classGranted
	}
	for _, c := range Table {
		if errors.Is(err, c.Err) {
			return c
		}
	}
	switch {
	case errors.Is(err, errUnknownMethod):
		return classUnknownMethod
	case errors.Is(err, context.Canceled):
		return classCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return classDeadline
	}
	return classInternal
}

// Outcome is err's audit reason and gRPC code name, for entries written
// outside an RPC (automatic rotation): the same table as every RPC's.
func Outcome(err error) (reason, code string) {
	c := Classify(err)
	return c.Reason, c.Code.String()
}

// Domain is the google.rpc.ErrorInfo domain of every signer error.
const Domain = "signer.plexsphere.dev"

// Status converts err to the gRPC status the caller sees: the class code,
// the sentinel's text (never the wrapped internal text) and an ErrorInfo
// whose reason is the ErrorReason enum name. An InvalidArgument that names
// its rule says which (field and rule, never the input) in the message, in
// the ErrorInfo metadata ("field", "rule") and in a google.rpc.BadRequest
// field violation, the detail generic gRPC tooling shows for bad requests.
// A rotation step refused inside its window says which step and when it
// will be accepted (message, and ErrorInfo metadata "step", "ready_at").
// An audit entry the log does not hold says the log's size or how far it
// was pruned (ErrorInfo metadata "log_size", "pruned_up_to").
// Both detail types are in proto/plexsphere-signer.protoset.
func Status(err error) error {
	if err == nil {
		return nil
	}
	c := Classify(err)
	msg := c.Err.Error()
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: c.WireTag.String(), Domain: Domain}}
	var inv *signerr.InvalidError
	if c.Err == signerr.ErrInvalidArgument && errors.As(err, &inv) {
		msg = inv.Error()
		details[0].(*errdetails.ErrorInfo).Metadata = map[string]string{"field": inv.Field, "rule": inv.Rule}
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: inv.Field, Description: inv.Rule}}})
	}
	var ve *signerr.VariantError
	if c.Err == signerr.ErrVariantNotAllowed && errors.As(err, &ve) {
		msg = ve.Error()
		details[0].(*errdetails.ErrorInfo).Metadata = map[string]string{"variant": ve.Variant}
	}
	var nr *signerr.NotReadyError
	if c.Err == signerr.ErrRotationNotReady && errors.As(err, &nr) {
		msg = nr.Error()
		details[0].(*errdetails.ErrorInfo).Metadata = map[string]string{"step": nr.Step, "ready_at": nr.ReadyAt.UTC().Format(time.RFC3339Nano)}
	}
	var me *signerr.MissingError
	if c.Err == signerr.ErrEntryNotFound && errors.As(err, &me) {
		// The message stays the sentinel's; what the log knows is in
		// the metadata (signerctl prints it).
		md := map[string]string{}
		if me.Size > 0 {
			md["log_size"] = strconv.FormatUint(me.Size, 10)
		}
		if me.PrunedUpTo > 0 {
			md["pruned_up_to"] = strconv.FormatUint(me.PrunedUpTo, 10)
		}
		details[0].(*errdetails.ErrorInfo).Metadata = md
	}
	st := status.New(c.Code, msg)
	if d, derr := st.WithDetails(details...); derr == nil {
		st = d
	}
	return st.Err()
}
