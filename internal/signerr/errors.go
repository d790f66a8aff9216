// Package signerr holds the signer's error sentinels and the one table that
// maps each to its gRPC code, audit reason and wire reason. The audit
// middleware and the status conversion both read Classify; nothing else
// decides a code or a reason.
//
// It is a leaf package so that stores and key providers can return these
// sentinels without importing the service.
package signerr

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/plexsphere/signer/internal/audit"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

var (
	// ErrClientIdentityDenied: the peer presented no client certificate, or
	// its SPIFFE ID is not on the allow-list for the called service or scope.
	ErrClientIdentityDenied = errors.New("signing: client identity denied")
	// ErrKeyNotFound: no key with the requested id, or no ACTIVE key in the
	// scope.
	ErrKeyNotFound = errors.New("signing: key not found")
	// ErrScopeMismatch: the requested key exists but belongs to another scope.
	ErrScopeMismatch = errors.New("signing: key belongs to another scope")
	// ErrInvariant: the store holds a state that must not exist (say, two
	// ACTIVE keys in one scope). Never resolved by a silent pick.
	ErrInvariant = errors.New("signing: key store invariant violated")
	// ErrKeyRetired: the requested key is PREVIOUS or RETIRED and may not sign.
	ErrKeyRetired = errors.New("signing: key retired")
	// ErrRotationInProgress: the key is PENDING, or a rotation is already open
	// for the scope.
	ErrRotationInProgress = errors.New("signing: rotation in progress")
	// ErrProviderUnavailable: the key provider (HSM, KMS) cannot serve now.
	ErrProviderUnavailable = errors.New("signing: key provider unavailable")
	// ErrInvalidArgument: a malformed scope or key id, or a payload over the
	// size limit.
	ErrInvalidArgument = errors.New("signing: invalid argument")
	// ErrKeyActive: the operation would remove the ACTIVE key (Retire of the
	// ACTIVE key).
	ErrKeyActive = errors.New("signing: key is active")
	// ErrRotationNotReady: Commit before the PENDING key has been published
	// for the pre-publication window.
	ErrRotationNotReady = errors.New("signing: rotation not ready to commit")
	// ErrInternal: anything unclassified. Its details stay in the signer's log.
	ErrInternal = errors.New("signing: internal error")
)

// Class is what an error means to the caller and to the audit log.
type Class struct {
	Err     error // the sentinel; its text is the only message a caller sees
	Code    codes.Code
	Reason  string // audit reason
	WireTag signerv1.ErrorReason
}

// Table is the single mapping from sentinel to code and reason. A test proves
// every sentinel above is covered.
var Table = []Class{
	{ErrClientIdentityDenied, codes.PermissionDenied, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_CLIENT_IDENTITY_DENIED},
	{ErrKeyNotFound, codes.NotFound, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_KEY_NOT_FOUND},
	{ErrScopeMismatch, codes.PermissionDenied, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_SCOPE_MISMATCH},
	{ErrInvariant, codes.Internal, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INVARIANT},
	{ErrKeyRetired, codes.FailedPrecondition, audit.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_KEY_RETIRED},
	{ErrRotationInProgress, codes.FailedPrecondition, audit.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_ROTATION_IN_PROGRESS},
	{ErrProviderUnavailable, codes.Unavailable, audit.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_PROVIDER_UNAVAILABLE},
	{ErrKeyActive, codes.FailedPrecondition, audit.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_KEY_ACTIVE},
	{ErrRotationNotReady, codes.FailedPrecondition, audit.ReasonCaveatViolation, signerv1.ErrorReason_ERROR_REASON_ROTATION_NOT_READY},
	{ErrInvalidArgument, codes.InvalidArgument, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	// The audit entry for this outcome cannot be stored; the reason is what
	// a later reader would see if it were.
	{audit.ErrUnavailable, codes.Unavailable, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE},
	{ErrInternal, codes.Internal, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL},
}

// Sentinels lists every sentinel this package declares, for the completeness
// test.
var Sentinels = []error{
	ErrClientIdentityDenied, ErrKeyNotFound, ErrScopeMismatch, ErrInvariant,
	ErrKeyRetired, ErrRotationInProgress, ErrProviderUnavailable,
	ErrInvalidArgument, ErrKeyActive, ErrRotationNotReady, ErrInternal,
}

var (
	classCanceled = Class{context.Canceled, codes.Canceled, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL}
	classDeadline = Class{context.DeadlineExceeded, codes.DeadlineExceeded, audit.ReasonInsufficientRelation, signerv1.ErrorReason_ERROR_REASON_INTERNAL}
	classInternal = Table[len(Table)-1]
)

// Classify finds err's class. nil is granted (Class with codes.OK). An error
// matching no sentinel is unclassified: Internal, insufficient_relation, and
// the caller sees only ErrInternal's text.
func Classify(err error) Class {
	if err == nil {
		return Class{Code: codes.OK, Reason: audit.ReasonGranted}
	}
	for _, c := range Table {
		if errors.Is(err, c.Err) {
			return c
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return classCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return classDeadline
	}
	return classInternal
}
