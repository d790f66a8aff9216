package signing

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The table must cover every sentinel exactly once, and every wire reason the
// proto declares must be reachable, so a new sentinel cannot ship unmapped.
func TestTableCoversEverySentinel(t *testing.T) {
	seen := map[error]int{}
	for _, c := range Table {
		seen[c.Err]++
	}
	for _, s := range signerr.Sentinels {
		if seen[s] != 1 {
			t.Errorf("%v appears %d times in Table, want 1", s, seen[s])
		}
	}
	if len(Table) != len(signerr.Sentinels) {
		t.Errorf("Table has %d rows, want %d (one per sentinel)", len(Table), len(signerr.Sentinels))
	}
	tags := map[signerv1.ErrorReason]bool{classUnknownMethod.WireTag: true}
	for _, c := range Table {
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
		{nil, codes.OK, auditlog.ReasonGranted},
		{signerr.ErrClientIdentityDenied, codes.PermissionDenied, auditlog.ReasonInsufficientRelation},
		{signerr.ErrKeyNotFound, codes.NotFound, auditlog.ReasonInsufficientRelation},
		{signerr.ErrScopeMismatch, codes.PermissionDenied, auditlog.ReasonInsufficientRelation},
		{signerr.ErrInvariant, codes.Internal, auditlog.ReasonInsufficientRelation},
		{signerr.ErrKeyRetired, codes.FailedPrecondition, auditlog.ReasonCaveatViolation},
		{signerr.ErrRotationInProgress, codes.FailedPrecondition, auditlog.ReasonCaveatViolation},
		{signerr.ErrProviderUnavailable, codes.Unavailable, auditlog.ReasonCaveatViolation},
		// Not in the contract's list: a refused sign variant is a state-time
		// refusal (configuration, FIPS mode, provider) like a retired key.
		{&signerr.VariantError{Variant: "ed25519ph", Why: "x"}, codes.FailedPrecondition, auditlog.ReasonCaveatViolation},
		{errors.New("something unforeseen"), codes.Internal, auditlog.ReasonInsufficientRelation},
		{fmt.Errorf("store: %w", signerr.ErrStoreUnavailable), codes.Unavailable, auditlog.ReasonInsufficientRelation},
		{fmt.Errorf("writer: %w", signerr.ErrAuditUnavailable), codes.Unavailable, auditlog.ReasonInsufficientRelation},
		{fmt.Errorf("x: %w", errUnknownMethod), codes.Unimplemented, auditlog.ReasonInsufficientRelation},
		{context.DeadlineExceeded, codes.DeadlineExceeded, auditlog.ReasonInsufficientRelation},
		{context.Canceled, codes.Canceled, auditlog.ReasonInsufficientRelation},
	} {
		c := Classify(tc.err)
		if c.Code != tc.code || c.Reason != tc.reason {
			t.Errorf("Classify(%v) = %v/%s, want %v/%s", tc.err, c.Code, c.Reason, tc.code, tc.reason)
		}
	}
}

// A caller sees the sentinel's text and the wire reason, never wrapped
// internal detail; an invalid argument says which rule, never the input.
func TestStatus(t *testing.T) {
	st := status.Convert(Status(fmt.Errorf("postgres: password=hunter2 host=db: %w", signerr.ErrStoreUnavailable)))
	if st.Code() != codes.Unavailable || st.Message() != signerr.ErrStoreUnavailable.Error() {
		t.Fatalf("status = %v %q", st.Code(), st.Message())
	}
	if info := errorInfo(t, st); info.Reason != "ERROR_REASON_STORE_UNAVAILABLE" || info.Domain != Domain {
		t.Fatalf("ErrorInfo = %+v", info)
	}
	st = status.Convert(Status(fmt.Errorf("sign %q: %w", "secret-scope!", signerr.Invalid("scope", "must be short"))))
	if st.Code() != codes.InvalidArgument || st.Message() != "signing: invalid argument: scope: must be short" {
		t.Fatalf("status = %v %q", st.Code(), st.Message())
	}
	if info := errorInfo(t, st); info.Metadata["field"] != "scope" || info.Metadata["rule"] != "must be short" {
		t.Fatalf("ErrorInfo = %+v", info)
	}
	var br *errdetails.BadRequest
	for _, d := range st.Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if br == nil || len(br.FieldViolations) != 1 || br.FieldViolations[0].Field != "scope" || br.FieldViolations[0].Description != "must be short" {
		t.Fatalf("BadRequest = %+v", br)
	}
}

// A step refused inside its window says which step and until when, in the
// message and the ErrorInfo; the code and wire reason stay those of
// ErrRotationNotReady.
func TestStatusNotReadySaysWhen(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC)
	st := status.Convert(Status(fmt.Errorf("store: key %q: %w", "k1", &signerr.NotReadyError{Step: "retire", ReadyAt: at})))
	if st.Code() != codes.FailedPrecondition || st.Message() != "signing: rotation step not ready: not ready to retire until 2026-11-30T12:00:00.123456Z" {
		t.Fatalf("status = %v %q", st.Code(), st.Message())
	}
	info := errorInfo(t, st)
	if info.Reason != "ERROR_REASON_ROTATION_NOT_READY" || info.Metadata["step"] != "retire" || info.Metadata["ready_at"] != "2026-11-30T12:00:00.123456Z" {
		t.Fatalf("ErrorInfo = %+v", info)
	}
	if !errors.Is(&signerr.NotReadyError{}, signerr.ErrRotationNotReady) {
		t.Fatal("NotReadyError does not match its sentinel")
	}
}

// An audit entry the log does not hold keeps the sentinel's code, message
// and reason; the log's size and prune mark are in the ErrorInfo only.
func TestStatusMissingEntrySaysWhy(t *testing.T) {
	for _, tc := range []struct {
		err  *signerr.MissingError
		want map[string]string
	}{
		{&signerr.MissingError{What: "entry 99", Size: 40}, map[string]string{"log_size": "40"}},
		{&signerr.MissingError{What: "entry 3", Size: 40, PrunedUpTo: 16}, map[string]string{"log_size": "40", "pruned_up_to": "16"}},
		{&signerr.MissingError{What: "request x"}, map[string]string{}},
	} {
		st := status.Convert(Status(fmt.Errorf("audit: %w", tc.err)))
		if st.Code() != codes.NotFound || st.Message() != signerr.ErrEntryNotFound.Error() {
			t.Fatalf("%v: status = %v %q", tc.err, st.Code(), st.Message())
		}
		info := errorInfo(t, st)
		if info.Reason != "ERROR_REASON_ENTRY_NOT_FOUND" || fmt.Sprint(info.Metadata) != fmt.Sprint(tc.want) {
			t.Fatalf("%v: ErrorInfo = %+v, want metadata %v", tc.err, info, tc.want)
		}
	}
}

func errorInfo(t *testing.T, st *status.Status) *errdetails.ErrorInfo {
	t.Helper()
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	t.Fatal("no ErrorInfo")
	return nil
}
