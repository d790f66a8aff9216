package signing

import (
	"crypto/fips140"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signvariant"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A refused variant is FailedPrecondition, caveat_violation, with the
// variant in the ErrorInfo metadata and the reason in the message.
func TestVariantRefusalStatus(t *testing.T) {
	err := &signerr.VariantError{Variant: "ed25519ph", Why: `scope "docs" does not allow it (SIGNER_SCOPE_SIGN_VARIANTS / --scope-sign-variant)`}
	if c := Classify(err); c.Code != codes.FailedPrecondition || c.Reason != auditlog.ReasonCaveatViolation {
		t.Fatalf("Classify = %v/%s", c.Code, c.Reason)
	}
	st := status.Convert(Status(err))
	if st.Code() != codes.FailedPrecondition || st.Message() != err.Error() {
		t.Fatalf("status %v %q", st.Code(), st.Message())
	}
	info, ok := st.Details()[0].(*errdetails.ErrorInfo)
	if !ok || info.Reason != signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED.String() || info.Metadata["variant"] != "ed25519ph" {
		t.Fatalf("details %v", st.Details())
	}
}

// The Sign path's policy: pure Ed25519 always; a variant only where the
// scope allows it; Ed25519ctx never in FIPS 140-3 mode, even where allowed
// (the FIPS half runs in a child with GODEBUG=fips140=on).
func TestVariantPolicy(t *testing.T) {
	s := NewService(nil, nil, 0, Variants{"payments": {signvariant.Ed25519ph: true, signvariant.Ed25519ctx: true}})
	fips := os.Getenv("FIPS_CHILD") != ""
	if fips != fips140.Enabled() {
		t.Fatalf("FIPS mode %v in a child %v", fips140.Enabled(), fips)
	}
	for _, tc := range []struct {
		scope   string
		v       signvariant.Variant
		refused bool
		why     string
	}{
		{"payments", signvariant.Ed25519, false, ""},
		{"docs", signvariant.Ed25519, false, ""},
		{"payments", signvariant.Ed25519ph, false, ""},
		{"payments", signvariant.Ed25519ctx, fips, "FIPS 140-3"},
		{"docs", signvariant.Ed25519ph, true, "SIGNER_SCOPE_SIGN_VARIANTS"},
		{"docs", signvariant.Ed25519ctx, true, map[bool]string{false: "SIGNER_SCOPE_SIGN_VARIANTS", true: "FIPS 140-3"}[fips]},
	} {
		err := s.allow(tc.scope, tc.v)
		var ve *signerr.VariantError
		if tc.refused != (err != nil) || err != nil && (!errors.As(err, &ve) || !strings.Contains(err.Error(), tc.why)) {
			t.Errorf("%s %v (FIPS %v): %v, want refused %v naming %q", tc.scope, tc.v, fips, err, tc.refused, tc.why)
		}
	}
	if fips {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestVariantPolicy$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "FIPS_CHILD=1", "GODEBUG=fips140=on")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "--- PASS: TestVariantPolicy") {
		t.Fatalf("FIPS child: %v\n%s", err, out)
	}
}

// Whatever variant number a Sign carries, its middleware entry records it
// in a leaf that encodes (an entry that did not would fail the RPC with no
// middleware entry at all): a number past a byte is not recorded as the
// variant it is modulo 256.
func TestDescribeVariantNumbers(t *testing.T) {
	for n, want := range map[int32]string{0: "", 1: "ed25519ph", 2: "ed25519ctx", 3: "variant(3)", 255: "variant(255)",
		256: "variant(invalid)", 257: "variant(invalid)", -1: "variant(invalid)", -2147483648: "variant(invalid)"} {
		d := describe(&signerv1.SignRequest{Scope: "s", Payload: []byte("m"), Variant: signerv1.SignVariant(n)}, nil, signerr.ErrInvalidArgument)
		if d.variant != want {
			t.Errorf("variant %d recorded as %q, want %q", n, d.variant, want)
		}
		e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign, "/plexsphere.signer.v1.SignerService/Sign", time.Now())
		e.SignVariant, e.ContextSHA256, e.PayloadSHA256 = d.variant, d.context, d.payload
		leaf, err := auditlog.AppendLeaf(nil, &e)
		if err != nil {
			t.Fatalf("variant %d: %v", n, err)
		}
		if got, err := auditlog.ParseLeaf(leaf); err != nil || got.SignVariant != want {
			t.Fatalf("variant %d: leaf reads %q, %v", n, got.SignVariant, err)
		}
	}
}
