package integration

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Ed25519ph and Ed25519ctx end to end, against a real signer over mTLS on
// a real Postgres: each allowed variant signs what crypto/ed25519 verifies
// in that variant (and in no other); each refusal has its code, its wire
// reason and exactly one middleware entry; every entry records the variant
// asked for, read back from the stored leaf with SQL.
func TestSignVariants(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	const other = "docs" // a scope that allows no variant
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithConfig(func(c *config.Signer) {
		c.BootstrapScopes = append(c.BootstrapScopes, other)
		c.ScopeSignVariants = []string{signertest.Scope + "=ed25519ph", signertest.Scope + "=ed25519ctx"}
	}))
	ctx := context.Background()
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	pk, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	pub := ed25519.PublicKey(pk.Keys[0].PublicKey)

	msg := []byte("settle invoice 42")
	digest := sha512.Sum512(msg)
	ph, ctxv := signerv1.SignVariant_SIGN_VARIANT_ED25519PH, signerv1.SignVariant_SIGN_VARIANT_ED25519CTX
	for _, tc := range []struct {
		name    string
		scope   string
		variant signerv1.SignVariant
		payload []byte
		context []byte
		code    codes.Code
		wire    signerv1.ErrorReason
		reason  string
		// opts verifies a granted signature (nil: pure); recorded is the
		// entry's SignVariant and version.
		opts     *ed25519.Options
		recorded string
		version  byte
	}{
		{name: "pure", scope: signertest.Scope, payload: msg, code: codes.OK, reason: "granted", version: 2},
		{name: "ed25519ph", scope: signertest.Scope, variant: ph, payload: digest[:], code: codes.OK, reason: "granted",
			opts: &ed25519.Options{Hash: crypto.SHA512}, recorded: "ed25519ph", version: 3},
		{name: "ed25519ph with context", scope: signertest.Scope, variant: ph, payload: digest[:], context: []byte("invoices/v1"), code: codes.OK, reason: "granted",
			opts: &ed25519.Options{Hash: crypto.SHA512, Context: "invoices/v1"}, recorded: "ed25519ph", version: 3},
		{name: "ed25519ctx", scope: signertest.Scope, variant: ctxv, payload: msg, context: []byte("invoices/v1"), code: codes.OK, reason: "granted",
			opts: &ed25519.Options{Context: "invoices/v1"}, recorded: "ed25519ctx", version: 3},

		{name: "ed25519ph with a 32-byte digest", scope: signertest.Scope, variant: ph, payload: make([]byte, 32),
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "ed25519ph", version: 3},
		{name: "ed25519ph with the message, not its digest", scope: signertest.Scope, variant: ph, payload: msg,
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "ed25519ph", version: 3},
		{name: "ed25519ctx without context", scope: signertest.Scope, variant: ctxv, payload: msg,
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "ed25519ctx", version: 3},
		{name: "context of 256 bytes", scope: signertest.Scope, variant: ctxv, payload: msg, context: make([]byte, 256),
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "ed25519ctx", version: 3},
		{name: "pure with a context", scope: signertest.Scope, payload: msg, context: []byte("x"),
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "ed25519", version: 3},
		{name: "unknown variant", scope: signertest.Scope, variant: 7, payload: msg,
			code: codes.InvalidArgument, wire: signerv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, reason: "insufficient_relation", recorded: "variant(7)", version: 3},

		{name: "ed25519ph not allowed for the scope", scope: other, variant: ph, payload: digest[:],
			code: codes.FailedPrecondition, wire: signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED, reason: "caveat_violation", recorded: "ed25519ph", version: 3},
		{name: "ed25519ctx not allowed for the scope", scope: other, variant: ctxv, payload: msg, context: []byte("c"),
			code: codes.FailedPrecondition, wire: signerv1.ErrorReason_ERROR_REASON_VARIANT_NOT_ALLOWED, reason: "caveat_violation", recorded: "ed25519ctx", version: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := maxSeq(t, db.AdminDSN)
			resp, err := core.Sign(ctx, &signerv1.SignRequest{Scope: tc.scope, Payload: tc.payload, Variant: tc.variant, Context: tc.context})
			if status.Code(err) != tc.code {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tc.code)
			}
			if err != nil {
				var info *errdetails.ErrorInfo
				for _, d := range status.Convert(err).Details() {
					if i, ok := d.(*errdetails.ErrorInfo); ok {
						info = i
					}
				}
				if info == nil || info.Reason != tc.wire.String() {
					t.Fatalf("error details %v, want reason %v", status.Convert(err).Details(), tc.wire)
				}
				if tc.code == codes.FailedPrecondition && (info.Metadata["variant"] != tc.recorded ||
					!strings.Contains(status.Convert(err).Message(), "SIGNER_SCOPE_SIGN_VARIANTS")) {
					t.Fatalf("refusal %q (metadata %v) does not name the variant and the setting", status.Convert(err).Message(), info.Metadata)
				}
			} else {
				if resp.Variant != tc.variant {
					t.Fatalf("response variant %v, want %v", resp.Variant, tc.variant)
				}
				if err := ed25519.VerifyWithOptions(pub, tc.payload, resp.Signature, orPure(tc.opts)); err != nil {
					t.Fatalf("signature does not verify in its variant: %v", err)
				}
				// In no other variant: a ph or ctx signature is not a pure
				// one (over the digest or the message), and a pure one is
				// neither ph nor ctx.
				for _, o := range []*ed25519.Options{{}, {Hash: crypto.SHA512}, {Context: "invoices/v1"}, {Hash: crypto.SHA512, Context: "invoices/v1"}} {
					if *o == *orPure(tc.opts) {
						continue
					}
					for _, m := range [][]byte{msg, digest[:]} {
						if o.Hash == crypto.SHA512 && len(m) != 64 {
							continue
						}
						if ed25519.VerifyWithOptions(pub, m, resp.Signature, o) == nil {
							t.Fatalf("signature verifies also with %+v over %d bytes", *o, len(m))
						}
					}
				}
			}

			var mw []auditlog.Entry
			for _, e := range sqlEntries(t, db.AdminDSN, before) {
				if e.Subject == auditlog.SubjectSigner {
					mw = append(mw, e)
				}
			}
			if len(mw) != 1 {
				t.Fatalf("%d middleware entries, want exactly 1: %+v", len(mw), mw)
			}
			e := mw[0]
			if e.Relation != "sign" || e.Reason != tc.reason || e.Code != tc.code.String() || !strings.HasPrefix(e.Object, "signing-key:"+tc.scope+":") {
				t.Fatalf("entry %+v, want relation sign, reason %s, code %v", e, tc.reason, tc.code)
			}
			if e.SignVariant != tc.recorded || e.Version != tc.version {
				t.Fatalf("entry records variant %q in leaf version %d, want %q in %d", e.SignVariant, e.Version, tc.recorded, tc.version)
			}
			var wantCtx []byte
			if len(tc.context) > 0 {
				s := sha256.Sum256(tc.context)
				wantCtx = s[:]
			}
			if string(e.ContextSHA256) != string(wantCtx) {
				t.Fatalf("context digest %x, want %x", e.ContextSHA256, wantCtx)
			}
			if p := sha256.Sum256(tc.payload); string(e.PayloadSHA256) != string(p[:]) {
				t.Fatal("payload digest not recorded")
			}
			if (err == nil) != (e.SignatureSHA256 != nil) {
				t.Fatalf("signature digest %x on an answer with error %v", e.SignatureSHA256, err)
			}
		})
	}
}

func orPure(o *ed25519.Options) *ed25519.Options {
	if o == nil {
		return &ed25519.Options{}
	}
	return o
}
