package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Errors a call can match with errors.Is. Each mirrors the signer's sentinel
// of the same name; the mapping uses the wire reason the signer attaches,
// so it does not depend on message text.
var (
	// ErrClientIdentityDenied: the pod's identity (or this process's uid, at
	// the sidecar) may not call the signer.
	ErrClientIdentityDenied = errors.New("client: identity denied")
	// ErrKeyNotFound: no such key, or the scope has no key.
	ErrKeyNotFound = errors.New("client: key not found")
	// ErrScopeMismatch: the key belongs to another scope.
	ErrScopeMismatch = errors.New("client: key belongs to another scope")
	// ErrInvariant: the signer found its key store in an impossible state.
	ErrInvariant = errors.New("client: signer invariant violated")
	// ErrKeyRetired: the key is PREVIOUS or RETIRED and cannot sign.
	ErrKeyRetired = errors.New("client: key retired")
	// ErrRotationInProgress: the key is PENDING, or a rotation is open.
	ErrRotationInProgress = errors.New("client: rotation in progress")
	// ErrProviderUnavailable: the signer's HSM or KMS cannot serve now.
	ErrProviderUnavailable = errors.New("client: key provider unavailable")
	// ErrInvalidArgument: malformed scope or key id, or payload too large.
	ErrInvalidArgument = errors.New("client: invalid argument")
	// ErrUnavailable: the sidecar, the signer or its audit store cannot be
	// reached now; retrying later may succeed.
	ErrUnavailable = errors.New("client: signer unavailable")
	// ErrInternal: anything else the signer refused.
	ErrInternal = errors.New("client: internal error")
	// ErrNotFound: Prove found no such request of this caller in the log.
	ErrNotFound = errors.New("client: audit entry not found")
	// ErrVariantNotAllowed: the signer refused the Sign's RFC 8032 variant
	// (Ed25519ph, Ed25519ctx): the scope does not allow it
	// (SIGNER_SCOPE_SIGN_VARIANTS), the signer runs in FIPS 140-3 mode
	// (Ed25519ctx), or its key provider cannot make it. Error.Variant and
	// the message say which; retrying does not help.
	ErrVariantNotAllowed = errors.New("client: sign variant not allowed")
	// ErrInvalidSignature: Verify found the signature does not match.
	ErrInvalidSignature = errors.New("client: invalid signature")
)

var byReason = map[signerv1.ErrorReason]error{
	signerv1.ErrorReason_ERROR_REASON_CLIENT_IDENTITY_DENIED: ErrClientIdentityDenied,
	signerv1.ErrorReason_ERROR_REASON_KEY_NOT_FOUND:          ErrKeyNotFound,
	signerv1.ErrorReason_ERROR_REASON_ENTRY_NOT_FOUND:        ErrNotFound,
	signerv1.ErrorReason_ERROR_REASON_SCOPE_MISMATCH:         ErrScopeMismatch,
	signerv1.ErrorReason_ERROR_REASON_INVARIANT:              ErrInvariant,
	signerv1.ErrorReason_ERROR_REASON_KEY_RETIRED:            ErrKeyRetired,
	signerv1.ErrorReason_ERROR_REASON_ROTATION_IN_PROGRESS:   ErrRotationInProgress,
	signerv1.ErrorReason_ERROR_REASON_PROVIDER_UNAVAILABLE:   ErrProviderUnavailable,
	signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT:       ErrInvalidArgument,
	signerv1.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE:      ErrUnavailable,
	signerv1.ErrorReason_ERROR_REASON_KEY_ACTIVE:             ErrInternal,
	signerv1.ErrorReason_ERROR_REASON_ROTATION_NOT_READY:     ErrInternal,
	signerv1.ErrorReason_ERROR_REASON_INTERNAL:               ErrInternal,
	signerv1.ErrorReason_ERROR_REASON_STORE_UNAVAILABLE:      ErrUnavailable,
	signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_BROKEN:       ErrUnavailable,
	signerv1.ErrorReason_ERROR_REASON_AUDIT_LOG_UNANCHORED:   ErrUnavailable,
	signerv1.ErrorReason_ERROR_REASON_UNKNOWN_METHOD:         ErrInternal,
	signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED:    ErrVariantNotAllowed,
}

// byCode covers errors without a wire reason: transport failures and the
// sidecar's own refusals.
var byCode = map[codes.Code]error{
	codes.Unavailable:       ErrUnavailable,
	codes.PermissionDenied:  ErrClientIdentityDenied,
	codes.InvalidArgument:   ErrInvalidArgument,
	codes.ResourceExhausted: ErrInvalidArgument,
	codes.NotFound:          ErrKeyNotFound,
}

// Error is a failed call: errors.Is matches its sentinel, errors.As gives
// the signer's reason and, for ErrInvalidArgument, the rule the request
// broke; status.Code still sees the gRPC status.
//
//	var e *client.Error
//	if errors.As(err, &e) && e.Rule != "" {
//		log.Printf("%s %s", e.Field, e.Rule) // e.g. "payload must be at most 65536 bytes"
//	}
type Error struct {
	Sentinel error
	Status   *status.Status
	// Reason is the signer's wire reason (google.rpc.ErrorInfo reason, an
	// ErrorReason name such as "ERROR_REASON_KEY_NOT_FOUND"); "" when the
	// error carries none (transport failures, the sidecar's own refusals).
	Reason string
	// Field and Rule name the request field ("scope", "key_id", "payload")
	// and the rule it broke ("must be at most 65536 bytes"), from the
	// ErrorInfo metadata of an InvalidArgument. They never repeat the input.
	Field, Rule string
	// Variant is the refused variant ("ed25519ph", "ed25519ctx") of an
	// ErrVariantNotAllowed.
	Variant string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%v (%s: %s)", e.Sentinel, e.Status.Code(), e.Status.Message())
}

func (e *Error) Unwrap() error { return e.Sentinel }

// GRPCStatus lets status.FromError see through.
func (e *Error) GRPCStatus() *status.Status { return e.Status }

// fromStatus maps a call error to an *Error; context errors pass through.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Canceled:
		return &Error{Sentinel: context.Canceled, Status: st}
	case codes.DeadlineExceeded:
		return &Error{Sentinel: context.DeadlineExceeded, Status: st}
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if s, ok := byReason[signerv1.ErrorReason(signerv1.ErrorReason_value[info.Reason])]; ok {
				return &Error{Sentinel: s, Status: st, Reason: info.Reason, Field: info.Metadata["field"], Rule: info.Metadata["rule"],
					Variant: info.Metadata["variant"]}
			}
		}
	}
	if s, ok := byCode[st.Code()]; ok {
		return &Error{Sentinel: s, Status: st}
	}
	return &Error{Sentinel: ErrInternal, Status: st}
}
