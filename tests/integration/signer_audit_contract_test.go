package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// row is an audit entry as the database holds it: its stored leaf, read
// with SQL and decoded with the public format (client/auditlog).
type row struct {
	seq                                       int64
	subject, relation, object, reason, method string
	caveats                                   []string
	ts                                        time.Time
}

// middlewareRows reads, with SQL, the middleware entries (Subject
// "service:signer") committed after seq.
func middlewareRows(t *testing.T, dsn string, after int64) []row {
	var out []row
	for _, e := range sqlEntries(t, dsn, after) {
		if e.Subject == "service:signer" {
			out = append(out, row{int64(e.Seq), e.Subject, e.Relation, e.Object, e.Reason, e.Method, e.CaveatContext, e.Timestamp})
		}
	}
	return out
}

func maxSeq(t *testing.T, dsn string) int64 {
	return query(t, dsn, `SELECT coalesce(max(seq), 0) FROM audit_entries`, pgx.RowTo[int64])[0]
}

// The specification's audit contract against a real Postgres: for a granted
// Sign, a caveat-violation Sign (retired key), a granted PublicKey and a
// rotation Open, exactly one middleware entry each, every field pinned, read
// back with SQL.
func TestSignerAuditContract(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	admitted := time.Date(2026, 11, 28, 13, 14, 15, 0, time.FixedZone("CET", 3600))
	clock := signertest.NewClock(admitted)
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithClock(clock),
		signertest.WithConfig(func(c *config.Signer) { c.PrePublish, c.VerifyOnly = time.Minute, time.Hour }))
	ctx := context.Background()
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))

	// Set the stage: rotate so the bootstrap key becomes PREVIOUS, then
	// RETIRED. The clock is moved for the windows and put back for the
	// contract calls, whose timestamps must equal the admission time.
	keys, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	retired := keys.Keys[0].KeyId
	opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: opened.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if _, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: signertest.Scope, KeyId: retired}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(-time.Hour - time.Minute)
	active := opened.Key.KeyId

	for _, tc := range []struct {
		name     string
		call     func() error
		code     codes.Code
		relation string
		object   string
		reason   string
		method   string
	}{
		{"granted Sign", func() error {
			_, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("contract")})
			return err
		}, codes.OK, "sign", "signing-key:payments:" + active, "granted", signerv1.SignerService_Sign_FullMethodName},
		{"caveat-violation Sign (retired key)", func() error {
			_, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("contract"), KeyId: &retired})
			return err
		}, codes.FailedPrecondition, "sign", "signing-key:payments:" + retired, "caveat_violation", signerv1.SignerService_Sign_FullMethodName},
		{"granted PublicKey", func() error {
			_, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope})
			return err
		}, codes.OK, "public_key", "signing-key:payments:" + active, "granted", signerv1.SignerService_PublicKey_FullMethodName},
		{"rotation Open", func() error {
			_, err := op.Open(ctx, &signerv1.OpenRequest{Scope: "contract"})
			return err
		}, codes.OK, "rotate", "", "granted", signerv1.RotationService_Open_FullMethodName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := maxSeq(t, db.AdminDSN)
			if err := tc.call(); status.Code(err) != tc.code {
				t.Fatalf("code = %v, want %v", status.Code(err), tc.code)
			}
			got := middlewareRows(t, db.AdminDSN, before)
			if len(got) != 1 {
				t.Fatalf("%d middleware entries, want exactly 1: %+v", len(got), got)
			}
			r := got[0]
			wantObject := tc.object
			if wantObject == "" { // Open's key id is minted by the call; pin the shape.
				wantObject = r.object
				if len(r.object) != len("signing-key:contract:")+24 || r.object[:len("signing-key:contract:")] != "signing-key:contract:" {
					t.Fatalf("object = %q", r.object)
				}
			}
			if r.subject != "service:signer" || r.relation != tc.relation || r.object != wantObject || r.reason != tc.reason || r.method != tc.method {
				t.Fatalf("entry = %+v, want subject service:signer relation %s object %s reason %s", r, tc.relation, wantObject, tc.reason)
			}
			if r.caveats == nil || len(r.caveats) != 0 {
				t.Fatalf("caveat_context = %#v, want an empty array", r.caveats)
			}
			if !r.ts.Equal(admitted) || r.ts.UTC().Format(time.RFC3339) != "2026-11-28T12:14:15Z" {
				t.Fatalf("ts = %v, want the injected admission time %v", r.ts, admitted.UTC())
			}
		})
	}
}
