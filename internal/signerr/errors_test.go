package signerr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The table must cover every sentinel exactly once, and every wire reason the
// proto declares must be reachable, so a new sentinel cannot ship unmapped.
func TestTableCoversEverySentinel(t *testing.T) {
	seen := map[error]int{}
	for _, c := range signerr.Table {
		seen[c.Err]++
	}
	for _, s := range append(signerr.Sentinels, audit.ErrUnavailable) {
		if seen[s] != 1 {
			t.Errorf("%v appears %d times in Table, want 1", s, seen[s])
		}
	}
	if len(signerr.Table) != len(signerr.Sentinels)+1 {
		t.Errorf("Table has %d rows, want %d (one per sentinel plus audit.ErrUnavailable)", len(signerr.Table), len(signerr.Sentinels)+1)
	}
	tags := map[signerv1.ErrorReason]bool{}
	for _, c := range signerr.Table {
		if tags[c.WireTag] {
			t.Errorf("wire reason %v used twice", c.WireTag)
		}
		tags[c.WireTag] = true
	}
	for v, name := range signerv1.ErrorReason_name {
		if v != 0 && !tags[signerv1.ErrorReason(v)] {
			t.Errorf("wire reason %s is not produced by any class", name)
		}
	}
}

// The contract pins these pairs; see shared/seed/security-invariants.txt.
func TestClassifyContract(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{nil, codes.OK, audit.ReasonGranted},
		{signerr.ErrClientIdentityDenied, codes.PermissionDenied, audit.ReasonInsufficientRelation},
		{signerr.ErrKeyNotFound, codes.NotFound, audit.ReasonInsufficientRelation},
		{signerr.ErrScopeMismatch, codes.PermissionDenied, audit.ReasonInsufficientRelation},
		{signerr.ErrInvariant, codes.Internal, audit.ReasonInsufficientRelation},
		{signerr.ErrKeyRetired, codes.FailedPrecondition, audit.ReasonCaveatViolation},
		{signerr.ErrRotationInProgress, codes.FailedPrecondition, audit.ReasonCaveatViolation},
		{signerr.ErrProviderUnavailable, codes.Unavailable, audit.ReasonCaveatViolation},
		{signerr.ErrInvalidArgument, codes.InvalidArgument, audit.ReasonInsufficientRelation},
		{fmt.Errorf("store: %w", audit.ErrUnavailable), codes.Unavailable, audit.ReasonInsufficientRelation},
		{errors.New("disk on fire"), codes.Internal, audit.ReasonInsufficientRelation},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled, audit.ReasonInsufficientRelation},
	} {
		c := signerr.Classify(tc.err)
		if c.Code != tc.code || c.Reason != tc.reason {
			t.Errorf("Classify(%v) = (%v, %q), want (%v, %q)", tc.err, c.Code, c.Reason, tc.code, tc.reason)
		}
	}
}

func TestStatusHidesInternalText(t *testing.T) {
	err := signerr.Status(fmt.Errorf("pkcs11: C_Sign: CKR_DEVICE_ERROR slot 3 pin 1234: %w", signerr.ErrProviderUnavailable))
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || st.Message() != "signing: key provider unavailable" {
		t.Fatalf("status = %v %q", st.Code(), st.Message())
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.Reason != "ERROR_REASON_PROVIDER_UNAVAILABLE" || info.Domain != signerr.Domain {
		t.Fatalf("ErrorInfo = %v", info)
	}
	if got := status.Convert(signerr.Status(errors.New("secret dsn postgres://u:p@h"))).Message(); got != "signing: internal error" {
		t.Fatalf("unclassified message = %q", got)
	}
}

func TestDenialMessageIsPinned(t *testing.T) {
	st := status.Convert(signerr.Status(signerr.ErrClientIdentityDenied))
	if st.Code() != codes.PermissionDenied || st.Message() != "signing: client identity denied" {
		t.Fatalf("denial = %v %q", st.Code(), st.Message())
	}
}
