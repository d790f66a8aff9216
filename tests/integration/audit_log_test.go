package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A signature made through the sidecar is proved to be in the audit log by
// someone who holds only the log's checkpoint verifier key (pinned out of
// band) and uses only the public format package: no database, no trust in
// the signer.
func TestSignatureProvenInLogWithVerifierKeyOnly(t *testing.T) {
	srv := pgtest.Require(t)
	st, _ := srv.Open(t)
	env := signertest.Start(t, signertest.WithStore(st))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	core, err := client.Dial(context.Background(), sc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := []byte("an order to prove later")
	sig, err := core.Sign(ctx, signertest.Scope, payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig.RequestID) != 32 {
		t.Fatalf("the signature carries no request id: %+v", sig)
	}

	// The auditor asks the signer for the proof...
	auditor := signerv1.NewAuditServiceClient(env.Dial(t, env.Issue(t, signertest.AuditorID)))
	resp, err := auditor.ProveInclusion(ctx, &signerv1.ProveInclusionRequest{Entry: &signerv1.ProveInclusionRequest_RequestId{RequestId: sig.RequestID}})
	if err != nil {
		t.Fatal(err)
	}
	// ...and checks it with the public package and the pinned key alone.
	v, err := auditlog.NewVerifier(env.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := v.Open(resp.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Proofs) != 2 {
		t.Fatalf("%d proofs, want the admission and the middleware entry", len(resp.Proofs))
	}
	var signEntry *auditlog.Entry
	for _, p := range resp.Proofs {
		if err := auditlog.VerifyInclusion(cp, p.Entry.Seq-1, p.Entry.Leaf, p.Hashes); err != nil {
			t.Fatalf("entry %d: %v", p.Entry.Seq, err)
		}
		e, err := auditlog.ParseLeaf(p.Entry.Leaf)
		if err != nil || e.RequestID.String() != sig.RequestID {
			t.Fatalf("leaf %d: %v %v", p.Entry.Seq, e.RequestID, err)
		}
		if e.Subject == auditlog.SubjectSigner {
			signEntry = &e
		}
	}
	sum, psum := sha256.Sum256(sig.Bytes), sha256.Sum256(payload)
	if signEntry == nil || signEntry.Relation != auditlog.RelationSign || signEntry.Reason != auditlog.ReasonGranted ||
		!bytes.Equal(signEntry.SignatureSHA256, sum[:]) || !bytes.Equal(signEntry.PayloadSHA256, psum[:]) ||
		signEntry.Object != "signing-key:payments:"+sig.KeyID {
		t.Fatalf("the proved entry does not record this signature: %+v", signEntry)
	}
	// The same proof fails for anything else: another leaf, another key.
	p := resp.Proofs[1]
	forged := bytes.Clone(p.Entry.Leaf)
	forged[len(forged)-1] ^= 1
	if auditlog.VerifyInclusion(cp, p.Entry.Seq-1, forged, p.Hashes) == nil {
		t.Fatal("a changed leaf verified")
	}
	other := signertest.Start(t)
	if ov, err := auditlog.NewVerifier(other.CheckpointKey); err != nil {
		t.Fatal(err)
	} else if _, err := ov.Open(resp.Checkpoint); err == nil {
		t.Fatal("another signer's key verified this checkpoint")
	}
	t.Logf("request %s: entries %d and %d proved in the checkpoint of size %d", sig.RequestID, resp.Proofs[0].Entry.Seq, p.Entry.Seq, cp.Size)
}

// signerctl runs in-process as an operator with the checkpoint key pinned.
func signerctl(t *testing.T, env *signertest.Env, args ...string) (int, string) {
	t.Helper()
	svid := env.Issue(t, signertest.OperatorID)
	files, err := env.CA.WriteFiles(t.TempDir(), "op", svid)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := ctl.Main(context.Background(), append([]string{"--signer", env.Addr, "--signer-spiffe-id", signertest.SignerID,
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--trust-bundle", files.Bundle, "--checkpoint-key", env.CheckpointKey}, args...), &out, &errb)
	return code, out.String() + errb.String()
}

// ownerExec runs SQL as the database owner with the append-only triggers
// switched off: the attacker with the most power over the store.
func ownerExec(t *testing.T, dsn string, sqls ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range append([]string{`SET session_replication_role = replica`}, sqls...) {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func signN(t *testing.T, env *signertest.Env, n int) {
	t.Helper()
	c := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	for i := range n {
		if _, err := c.Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte{byte(i), 1}}); err != nil {
			t.Fatal(err)
		}
	}
}

// signerctl audit verify on the real Postgres store, against each attack
// the audit issue names. Exit 5 and the first bad seq (or range) each time.
func TestAuditVerifyOnPostgres(t *testing.T) {
	srv := pgtest.Require(t)
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, dsn string)
		want   string
	}{
		{"one entry's bytes changed", func(t *testing.T, dsn string) {
			e := sqlEntries(t, dsn, 4)[0] // seq 5, inside a whole tile
			e.Reason = auditlog.ReasonCaveatViolation
			leaf, _ := auditlog.AppendLeaf(nil, &e)
			ownerExec(t, dsn, `UPDATE audit_entries SET leaf = '\x`+hexOf(leaf)+`' WHERE seq = 5`)
		}, "do not hash to the root signed"},
		{"a middle entry deleted", func(t *testing.T, dsn string) {
			ownerExec(t, dsn, `DELETE FROM audit_entries WHERE seq = 7`)
		}, "entry 7 is missing"},
		{"the newest entries deleted", func(t *testing.T, dsn string) {
			ownerExec(t, dsn, `DELETE FROM audit_entries WHERE seq > (SELECT max(seq) - 3 FROM audit_entries)`)
		}, "the signer reports its audit log broken"},
		{"a checkpoint signed by another key", func(t *testing.T, dsn string) {
			other := signertest.Start(t)
			c := signerv1.NewAuditServiceClient(other.Dial(t, other.Issue(t, signertest.OperatorID)))
			r, err := c.Checkpoint(context.Background(), &signerv1.CheckpointRequest{})
			if err != nil {
				t.Fatal(err)
			}
			ownerExec(t, dsn, `INSERT INTO audit_checkpoints (size, note) VALUES (2, '\x`+hexOf(r.Checkpoint)+`') ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note`)
		}, "a stored checkpoint does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, db := srv.Open(t)
			env := signertest.Start(t, signertest.WithStore(st))
			signN(t, env, 30)
			if code, out := signerctl(t, env, "audit", "verify"); code != ctl.ExitOK || !strings.Contains(out, "audit log verified") {
				t.Fatalf("untouched: %d %s", code, out)
			}
			tc.attack(t, db.AdminDSN)
			code, out := signerctl(t, env, "audit", "verify")
			if code != ctl.ExitBroken || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want %d and %q:\n%s", code, ctl.ExitBroken, tc.want, out)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// The whole log rewritten and rehashed by someone with the owner's rights,
// checkpoints deleted, the signer restarted without a checkpoint file: the
// store is internally perfect and the signer accepts it. An auditor who
// saved a checkpoint earlier proves the log did not only grow.
func TestRewrittenLogCaughtBySavedCheckpoint(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	env := signertest.Start(t, signertest.WithStore(st))
	signN(t, env, 20)
	code, saved := signerctl(t, env, "audit", "checkpoint")
	if code != ctl.ExitOK {
		t.Fatal(saved)
	}
	file := filepath.Join(t.TempDir(), "checkpoint")
	if err := os.WriteFile(file, []byte(saved), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := signerctl(t, env, "audit", "verify", "--checkpoint", file); code != ctl.ExitOK {
		t.Fatalf("consistent log: %d %s", code, out)
	}
	env.Stop()

	ownerExec(t, db.AdminDSN, `DELETE FROM audit_entries`, `DELETE FROM audit_nodes`, `DELETE FROM audit_checkpoints`)
	forger, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AdminDSN})
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	w := audit.NewWriter(forger, audit.WriterOptions{})
	for i := range 60 {
		e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign, signerv1.SignerService_Sign_FullMethodName, time.Now())
		e.Reason, e.Code = auditlog.ReasonCaveatViolation, "FailedPrecondition"
		e.Object = auditlog.Object(signertest.Scope, "forged"+string(rune('a'+i%26)))
		if err := w.Write(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()

	// The restarted signer (its checkpoint file kept) refuses the forged
	// log, and an auditor's signerctl says so (exit 5): the forgery is
	// caught by the file and, without it, by the seals the forger could
	// not make.
	restarted := env.Restart(t)
	code, out := signerctl(t, restarted, "audit", "verify", "--checkpoint", file)
	if code != ctl.ExitBroken {
		t.Fatalf("exit %d, want the rewrite refused:\n%s", code, out)
	}
	if err := restarted.Log.Broken(); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("the restarted signer: %v, want the log broken", err)
	}
	noFile := restarted.Restart(t, signertest.WithCheckpointLog(filepath.Join(t.TempDir(), "other.jsonl")),
		signertest.WithConfig(func(c *config.Signer) { c.CheckpointLogInit = true }))
	if err := noFile.Log.Broken(); !errors.Is(err, signerr.ErrAuditLogBroken) || !strings.Contains(err.Error(), "seal") {
		t.Fatalf("a signer without the file (a new one started deliberately): %v, want the forgery refused by the seals", err)
	}
	t.Logf("refused: %v; %v", restarted.Log.Broken(), noFile.Log.Broken())
}

// A log cut short under a running signer: the signer refuses every RPC
// (Unavailable, AUDIT_LOG_BROKEN), reports not ready and says so in a
// metric; once the operator restores the entries, it serves again.
func TestTruncatedLogFailsClosed(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	var logs testenv.SyncBuffer
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithOps(),
		signertest.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	signN(t, env, 10)
	ctx := context.Background()
	if _, err := env.Log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The backup an operator would restore from.
	backup := query(t, db.AdminDSN, `SELECT seq, leaf FROM audit_entries WHERE seq > 15 ORDER BY seq`,
		func(r pgx.CollectableRow) ([2]any, error) {
			var seq int64
			var leaf []byte
			err := r.Scan(&seq, &leaf)
			return [2]any{seq, leaf}, err
		})
	ownerExec(t, db.AdminDSN, `DELETE FROM audit_entries WHERE seq > 15`)
	if err := env.Log.Check(ctx); err == nil {
		t.Fatal("the check passed a truncated log")
	}
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	_, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("x")})
	if status.Code(err) != codes.Unavailable || wireReason(err) != "ERROR_REASON_AUDIT_LOG_BROKEN" {
		t.Fatalf("Sign on a broken log: %v", err)
	}
	if !strings.Contains(logs.String(), "entries after seq 15 were removed") {
		t.Fatalf("no log line names the truncation:\n%s", logs.String())
	}
	waitReady(t, env.OpsAddr, http.StatusServiceUnavailable)
	if m := scrape(t, env.OpsAddr); !strings.Contains(m, "plexsphere_signer_audit_log_broken 1") {
		t.Fatal("the broken-log metric is not 1")
	}

	// The operator restores the entries from the backup.
	conn, err := pgx.Connect(ctx, db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, r := range backup {
		if _, err := conn.Exec(ctx, `INSERT INTO audit_entries (seq, leaf) VALUES ($1, $2)`, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	// The running signer still refuses: its writer saw entries it had
	// committed vanish, and only a restart (an operator's act, with the
	// store whole again) lifts that; the check never clears it.
	env.Log.Check(ctx)
	if err := env.Log.Broken(); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("after the restore, the running signer: %v, want it still refusing", err)
	}
	if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("x")}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Sign on the same signer after the restore: %v, want still Unavailable", err)
	}
	restarted := env.Restart(t)
	core = signerv1.NewSignerServiceClient(restarted.Dial(t, restarted.Issue(t, signertest.CoreID)))
	if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("x")}); err != nil {
		t.Fatalf("Sign after the restore and a restart: %v", err)
	}
	waitReady(t, restarted.OpsAddr, http.StatusOK)
}

func waitReady(t *testing.T, ops string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered %d", want)
		}
		time.Sleep(200 * time.Millisecond) // polling a probe, not synchronising
	}
}

func scrape(t *testing.T, ops string) string {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

// Retention: an operator exports a sealed range, the prune role prunes it after
// the export verifies against the store byte for byte, and later entries
// still verify (from the export) and prove.
func TestExportThenPrune(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	env := signertest.Start(t, signertest.WithStore(st))
	signN(t, env, 40)
	dir := t.TempDir()
	export := filepath.Join(dir, "audit-1.jsonl")
	code, out := signerctl(t, env, "audit", "export", "--to", export)
	if code != ctl.ExitOK {
		t.Fatal(out)
	}
	raw, err := os.ReadFile(export)
	if err != nil {
		t.Fatal(err)
	}
	var h audit.ExportHeader
	if err := jsonFirstLine(raw, &h); err != nil || h.From != 1 || h.To%audit.TileSize != 0 || h.To < 64 {
		t.Fatalf("export header %+v: %v", h, err)
	}

	prune := func(file string) error {
		cfg := env.Config
		// As the prune role: it holds no DELETE, only audit_prune.
		cfg.Store, cfg.PostgresPruneDSN, cfg.PruneAuditUpTo, cfg.PruneAuditExport = "postgres", db.PruneDSN, int(h.To), file
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return server.Maintain(context.Background(), cfg, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	}
	// A forged export (one entry changed) is refused before anything is deleted.
	forged := filepath.Join(dir, "forged.jsonl")
	os.WriteFile(forged, bytes.Replace(raw, []byte(`"seq":2,"leaf":"A`), []byte(`"seq":2,"leaf":"B`), 1), 0o644)
	if err := prune(forged); err == nil || !strings.Contains(err.Error(), "does not verify") && !strings.Contains(err.Error(), "differs") {
		t.Fatalf("prune with a forged export: %v", err)
	}
	if err := prune(export); err != nil {
		t.Fatal(err)
	}
	if n := query(t, db.AdminDSN, `SELECT count(*) FROM audit_entries WHERE seq <= $1`, pgx.RowTo[int64], int64(h.To))[0]; n != 0 {
		t.Fatalf("%d pruned entries remain", n)
	}
	signN(t, env, 3)
	if code, out := signerctl(t, env, "audit", "verify"); code != ctl.ExitBroken || !strings.Contains(out, "--after") {
		t.Fatalf("verify without the export: %d %s", code, out)
	}
	if code, out := signerctl(t, env, "audit", "verify", "--after", export); code != ctl.ExitOK {
		t.Fatalf("verify from the export: %d %s", code, out)
	}
	if code, out := signerctl(t, env, "audit", "prove", "--seq", "90"); code != ctl.ExitOK || !strings.Contains(out, "verified: 1 entry in the checkpoint of size") {
		t.Fatalf("prove after the prune: %d %s", code, out)
	}
	if err := env.Log.Sweep(context.Background()); err != nil {
		t.Fatalf("the signer's sweep after a prune: %v", err)
	}
}

func jsonFirstLine(b []byte, v any) error {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return json.Unmarshal(line, v)
}

func wireReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			return i.Reason
		}
	}
	return ""
}
