package integration

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/internal/testing/witnesstest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The attacks on the store's memory of history, against the real signer
// (mTLS, its audit log, its checkpoint file) and real witnesses
// (omniwitness, C2SP tlog-witness), on bbolt and on Postgres. Each succeeded
// on main 977b8d3: the signer signed on.

// backend is one store kind as the attacks need it: a store to serve from,
// a backup taken now, and the backup restored.
type backend struct {
	name string
	// open is a fresh store (and, for bbolt, its file's handle).
	open func(t *testing.T) (store.Store, *bolt.DB, string)
	// backup keeps the store as it is; restore returns it to that (the
	// serving signer stopped), as an operator restoring a backup would.
	backup  func(t *testing.T, env *signertest.Env) (restore func(t *testing.T) store.Store)
	ownerDB func(t *testing.T) string // Postgres: the owner's DSN
}

func backends(t *testing.T) []backend {
	srv := pgtest.Require(t)
	var pgDB pgtest.DB
	return []backend{
		{
			name: "bbolt",
			open: func(t *testing.T) (store.Store, *bolt.DB, string) {
				path := filepath.Join(t.TempDir(), "signer.db")
				db, err := bolt.Open(path, 0o600, bbolt.Options())
				if err != nil {
					t.Fatal(err)
				}
				s, err := bbolt.FromDB(db)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s, db, path
			},
			backup: func(t *testing.T, env *signertest.Env) func(t *testing.T) store.Store {
				copyPath := filepath.Join(t.TempDir(), "backup.db")
				if err := env.Bolt.View(func(tx *bolt.Tx) error { return tx.CopyFile(copyPath, 0o600) }); err != nil {
					t.Fatal(err)
				}
				return func(t *testing.T) store.Store {
					env.Store.Close()
					s, err := bbolt.Open(copyPath)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					return s
				}
			},
		},
		{
			name: "postgres",
			open: func(t *testing.T) (store.Store, *bolt.DB, string) {
				st, db := srv.Open(t)
				pgDB = db
				return st, nil, ""
			},
			backup: func(t *testing.T, env *signertest.Env) func(t *testing.T) store.Store {
				dsn := pgDB.AdminDSN
				size := query(t, dsn, `SELECT coalesce(max(seq), 0) FROM audit_entries`, pgx.RowTo[int64])[0]
				return func(t *testing.T) store.Store {
					// A dump restored: every row written after it gone.
					ownerExec(t, dsn,
						fmt.Sprintf(`DELETE FROM audit_entries WHERE seq > %d`, size),
						fmt.Sprintf(`DELETE FROM audit_nodes WHERE (idx + 1) << level > %d`, size),
						fmt.Sprintf(`DELETE FROM audit_seals WHERE size > %d`, size),
						fmt.Sprintf(`DELETE FROM audit_checkpoints WHERE size > %d`, size),
						fmt.Sprintf(`DELETE FROM audit_witnessed WHERE size > %d`, size))
					st, err := postgres.Open(context.Background(), postgres.Config{DSN: pgDB.AppDSN, MaxConns: 4})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { st.Close() })
					return st
				}
			},
			ownerDB: func(*testing.T) string { return pgDB.AdminDSN },
		},
	}
}

// signerFor starts a signer on b's store with a real witness, the ops
// listener and its log captured.
func signerFor(t *testing.T, b backend, logs *testenv.SyncBuffer, opts ...signertest.Option) *signertest.Env {
	st, db, path := b.open(t)
	base := []signertest.Option{signertest.WithStore(st), signertest.WithWitnesses("w1.example"), signertest.WithOps(),
		signertest.WithLogger(slog.New(slog.NewJSONHandler(logs, nil)))}
	env := signertest.Start(t, append(base, opts...)...)
	env.Bolt = db // Start opened no store: the file's handle is this test's
	_ = path
	return env
}

func coreOf(t *testing.T, env *signertest.Env) signerv1.SignerServiceClient {
	return signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
}

func refusedBroken(t *testing.T, what string, env *signertest.Env) {
	t.Helper()
	_, err := coreOf(t, env).Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("after")})
	if status.Code(err) != codes.Unavailable || wireReason(err) != "ERROR_REASON_AUDIT_LOG_BROKEN" {
		t.Fatalf("%s: Sign = %v, want Unavailable / AUDIT_LOG_BROKEN", what, err)
	}
	waitReady(t, env.OpsAddr, http.StatusServiceUnavailable)
	if m := scrape(t, env.OpsAddr); !strings.Contains(m, "plexsphere_signer_audit_log_broken 1") {
		t.Fatalf("%s: the broken-log metric is not 1", what)
	}
}

// A backup restored behind what the signer anchored (issue 21, 1): the
// restarted signer refuses every RPC and names the sizes, and signs no
// second checkpoint at a size its witness cosigned (no equivocation). The
// same store restored on purpose, as a new epoch, serves again, its first
// entry recording what the restore lost.
func TestRestoredBackupIsRefusedUnlessItIsAnEpoch(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			var logs testenv.SyncBuffer
			env := signerFor(t, b, &logs)
			signN(t, env, 10)
			if _, err := env.Log.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			restore := b.backup(t, env)
			backupSize := env.Log.Latest().Size
			signN(t, env, 10)
			anchored, err := env.Log.Checkpoint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if w := env.Log.Witnessed(); w.Size != anchored.Size {
				t.Fatalf("witnessed %d, checkpoint %d", w.Size, anchored.Size)
			}
			env.Stop()
			restored := restore(t)

			back := env.Restart(t, signertest.WithStore(restored))
			err = back.Log.Broken()
			if !errors.Is(err, signerr.ErrAuditLogBroken) || !strings.Contains(err.Error(), fmt.Sprint(anchored.Size)) {
				t.Fatalf("the restarted signer over the restored store: %v, want broken naming size %d", err, anchored.Size)
			}
			refusedBroken(t, "restored store", back)
			notes, err := restored.Checkpoints(ctx, backupSize, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range notes {
				if cp, _ := auditlog.NewVerifier(env.CheckpointKey); cp != nil {
					if c, err := cp.Open(n); err == nil && c.Size >= backupSize {
						t.Fatalf("the restored signer signed a checkpoint at size %d", c.Size)
					}
				}
			}
			// Without the checkpoint file, the witness alone catches it.
			noFile := back.Restart(t, signertest.WithCheckpointLog(filepath.Join(t.TempDir(), "new.jsonl")),
				signertest.WithConfig(func(c *config.Signer) { c.CheckpointLogInit = true }))
			if err := noFile.Log.Broken(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("witness w1.example cosigned size %d", anchored.Size)) {
				t.Fatalf("the witness alone: %v", err)
			}

			// The restore done on purpose: epoch 2, with a reason, the
			// witness told of the new origin.
			v, _ := auditlog.NewVerifier(env.CheckpointKey)
			env.Witnesses[0].AddLogs(t, witnesstest.Log{Origin: auditlog.EpochOrigin(v.Origin(), 2), VKey: v.EpochVerifierKey(2)})
			epoch := noFile.Restart(t, signertest.WithCheckpointLog(env.Config.CheckpointLog), signertest.WithConfig(func(c *config.Signer) {
				c.AuditEpoch, c.AuditEpochReason, c.CheckpointLogInit = 2, "restored the backup of the disk that failed", false
			}))
			if err := epoch.Log.Broken(); err != nil {
				t.Fatalf("epoch 2: %v", err)
			}
			signN(t, epoch, 3)
			cp, err := epoch.Log.Checkpoint(ctx)
			if err != nil || cp.Epoch != 2 || epoch.Log.Witnessed().Size != cp.Size {
				t.Fatalf("epoch 2 checkpoint %+v (witnessed %d): %v", cp, epoch.Log.Witnessed().Size, err)
			}
			es, err := store.ListAudit(ctx, restored, store.AuditQuery{Relation: auditlog.RelationLog})
			if err != nil || len(es) != 1 {
				t.Fatalf("log records: %v %v", es, err)
			}
			r, err := auditlog.ParseRecord(es[0])
			rec, ok := r.(*auditlog.EpochRecord)
			if err != nil || !ok || rec.RestoredSize != es[0].Seq-1 {
				t.Fatalf("epoch record %+v: %v", r, err)
			}
			prev, err := v.OpenWitnessed([]byte(rec.PreviousCheckpoint), env.WitnessPolicy)
			if err != nil || prev.Size != anchored.Size {
				t.Fatalf("the record's previous checkpoint: %d, %v; want the witnessed %d", prev.Size, err, anchored.Size)
			}
			t.Logf("refused: %v; epoch 2 began at entry %d recording size %d lost back to %d", err, es[0].Seq, prev.Size, rec.RestoredSize)
		})
	}
}

// The checkpoint key deleted from the store (issue 21, 4): the signer never
// makes a new one for a log that holds entries; a pinned key that is not
// the store's stops start-up naming the setting.
func TestLostCheckpointKeyIsNeverReplaced(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			var logs testenv.SyncBuffer
			env := signerFor(t, b, &logs)
			signN(t, env, 3)
			env.Stop()
			cfg := env.Config
			other := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
			cfg.CheckpointVerifierKey = mustVKey(t, other)
			_, err := server.New(context.Background(), cfg, server.Options{Store: env.Store, Provider: env.Provider})
			if err == nil || !strings.Contains(err.Error(), "--checkpoint-verifier-key / SIGNER_CHECKPOINT_VERIFIER_KEY") {
				t.Fatalf("another pinned key: %v", err)
			}
			if b.ownerDB != nil {
				ownerExec(t, b.ownerDB(t), `DELETE FROM audit_log_key`)
			} else if err := env.Bolt.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("log_key")) }); err != nil {
				t.Fatal(err)
			}
			_, err = server.New(context.Background(), env.Config, server.Options{Store: env.Store, Provider: env.Provider})
			if err == nil || !strings.Contains(err.Error(), "no checkpoint key record") {
				t.Fatalf("the key record deleted: %v, want start-up refused", err)
			}
		})
	}
}

func mustVKey(t *testing.T, pub ed25519.PublicKey) string {
	k, err := note.NewEd25519VerifierKey(signertest.TrustDomain+"/plexsphere-signer", pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A RETIRED key brought back by a store writer (issue 22, 2): set back to
// ACTIVE with its sealed handle restored from before its retirement, the
// new key demoted. No Sign is made with it and it is not published: the
// running signer read it RETIRED, and a restarted one finds its retirement
// in the audit log. On Postgres the owner must switch the schema's triggers
// off to make the edit at all (TestKeyStateOnlyMovesOn).
func TestRetiredKeyNeverSignsAgain(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			clock := signertest.NewClock(time.Now())
			var logs testenv.SyncBuffer
			env := signerFor(t, b, &logs, signertest.WithClock(clock))
			op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
			before, err := op.ListKeys(ctx, &signerv1.ListKeysRequest{Scope: signertest.Scope})
			if err != nil {
				t.Fatal(err)
			}
			old := before.Keys[0]
			oldRec, err := env.Store.Key(ctx, old.KeyId)
			if err != nil {
				t.Fatal(err)
			}
			opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
			if err != nil {
				t.Fatal(err)
			}
			clock.Advance(2 * time.Minute)
			if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: opened.Key.KeyId}); err != nil {
				t.Fatal(err)
			}
			clock.Advance(2 * time.Hour)
			if _, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: signertest.Scope, KeyId: old.KeyId}); err != nil {
				t.Fatal(err)
			}
			if r, _ := env.Store.Key(ctx, old.KeyId); !store.Destroyed(r) {
				t.Fatal("the retired key's handle is still in the store")
			}
			if _, err := env.Log.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}

			bringBack := func() {
				if b.ownerDB != nil {
					ownerExec(t, b.ownerDB(t),
						fmt.Sprintf(`UPDATE signing_keys SET state = 'PREVIOUS' WHERE id = '%s'`, opened.Key.KeyId),
						fmt.Sprintf(`UPDATE signing_keys SET state = 'ACTIVE', handle = '\x%x' WHERE id = '%s'`, oldRec.Handle, old.KeyId))
					return
				}
				if err := env.Bolt.Update(func(tx *bolt.Tx) error {
					return editKeys(tx, map[string]func(map[string]any){
						opened.Key.KeyId: func(r map[string]any) { r["state"] = "PREVIOUS" },
						old.KeyId:        func(r map[string]any) { r["state"], r["handle"] = "ACTIVE", oldRec.Handle },
					})
				}); err != nil {
					t.Fatal(err)
				}
			}
			check := func(what string, env *signertest.Env) {
				t.Helper()
				core := coreOf(t, env)
				r, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("m")})
				if err == nil && r.KeyId == old.KeyId {
					t.Fatalf("%s: the retired key signed again", what)
				}
				if status.Code(err) != codes.Internal || wireReason(err) != "ERROR_REASON_INVARIANT" {
					t.Fatalf("%s: Sign = %v, want Internal / INVARIANT", what, err)
				}
				if pk, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope}); err == nil {
					for _, k := range pk.Keys {
						if k.KeyId == old.KeyId {
							t.Fatalf("%s: the retired key is published again", what)
						}
					}
				}
			}
			bringBack()
			clock.Advance(2 * time.Second) // past the key-cache TTL
			check("the running signer", env)
			restarted := env.Restart(t)
			check("a restarted signer", restarted)
			if !strings.Contains(logs.String(), "the audit log took it to RETIRED") {
				t.Fatalf("no log line says why:\n%s", logs.String())
			}
		})
	}
}

// editKeys applies edits to key records in a bbolt file.
func editKeys(tx *bolt.Tx, edits map[string]func(map[string]any)) error {
	b := tx.Bucket([]byte("keys"))
	for id, edit := range edits {
		var r map[string]any
		if err := json.Unmarshal(b.Get([]byte(id)), &r); err != nil {
			return err
		}
		edit(r)
		raw, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), raw); err != nil {
			return err
		}
	}
	return nil
}

// Checks that cannot run count (issue 22, 3): the owner revokes the runtime
// role's SELECT on the tree nodes. The signer goes on for its bound
// (SIGNER_AUDIT_MAX_UNANCHORED, 3 s here), then refuses every RPC and is
// not ready, naming the check's error; with the grant back it serves again
// on its own. Entries rewritten meanwhile (with their nodes) are refused by
// a restarted signer: they are not what the seal of their commit covers.
func TestChecksThatCannotRunCount(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	var logs testenv.SyncBuffer
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithOps(), signertest.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))),
		signertest.WithConfig(func(c *config.Signer) {
			c.CheckpointInterval, c.AuditMaxUnanchored, c.WitnessTimeout = time.Second, 3*time.Second, time.Second
		}))
	ctx := context.Background()
	signN(t, env, 5)
	ownerExec(t, db.AdminDSN, `REVOKE SELECT ON audit_nodes FROM `+pgtest.AppRole)
	core := coreOf(t, env)
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("x")}); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // pacing the Signs, not synchronising
	}
	if status.Code(err) != codes.Unavailable || wireReason(err) != "ERROR_REASON_AUDIT_LOG_UNANCHORED" {
		t.Fatalf("Sign while the checks cannot run: %v, want Unavailable / AUDIT_LOG_UNANCHORED", err)
	}
	waitReady(t, env.OpsAddr, http.StatusServiceUnavailable)
	if m := scrape(t, env.OpsAddr); !strings.Contains(m, "plexsphere_signer_audit_log_unanchored 1") {
		t.Fatal("the unanchored metric is not 1")
	}
	if !strings.Contains(logs.String(), "permission denied for table audit_nodes") {
		t.Fatalf("no log line names the check's error:\n%s", logs.String())
	}
	ownerExec(t, db.AdminDSN, `GRANT SELECT ON audit_nodes TO `+pgtest.AppRole)
	waitReady(t, env.OpsAddr, http.StatusOK)
	if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("x")}); err != nil {
		t.Fatalf("Sign once the check runs again: %v", err)
	}

	// The window since the last checkpoint, rewritten by the owner while
	// no check looks (a granted Sign turned into a refusal): the signer
	// never signs a checkpoint over it, neither now nor after a restart.
	env.Stop()
	env = signertest.Start(t, signertest.WithStore(st), signertest.WithCheckpointLog(env.Config.CheckpointLog),
		signertest.WithProvider(env.Provider), signertest.WithCA(env.CA))
	if _, err := env.Log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	last := env.Log.Latest().Size
	signN(t, env, 3)
	size := query(t, db.AdminDSN, `SELECT max(seq) FROM audit_entries`, pgx.RowTo[int64])[0]
	leaf := query(t, db.AdminDSN, `SELECT leaf FROM audit_entries WHERE seq = $1`, pgx.RowTo[[]byte], size)[0]
	e, err := auditlog.ParseLeaf(leaf)
	if err != nil {
		t.Fatal(err)
	}
	e.Reason, e.Code = auditlog.ReasonCaveatViolation, "FailedPrecondition"
	forged, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	ownerExec(t, db.AdminDSN, fmt.Sprintf(`UPDATE audit_entries SET leaf = '\\x%x' WHERE seq = %d`, forged, size))
	if err := env.Log.Check(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("the check over the rewritten window: %v", err)
	}
	restarted := env.Restart(t)
	if err := restarted.Log.Broken(); !errors.Is(err, signerr.ErrAuditLogBroken) {
		t.Fatalf("a restarted signer over the rewritten window: %v", err)
	}
	for _, l := range []*signertest.Env{env, restarted} {
		if got := l.Log.Latest(); got.Size >= uint64(size) && got.Size > last {
			t.Fatalf("a checkpoint of size %d was signed over the rewritten entry %d", got.Size, size)
		}
	}
}

// Entries the signer never wrote (issue 22, 4): the runtime role INSERTs a
// fabricated entry after the newest one (the schema lets it append, in
// order: a row beyond the log or in a gap is refused outright). It reaches
// no seal, so no replica checkpoints it: the next check refuses the log.
func TestInsertedEntryIsNeverCheckpointed(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	env := signertest.Start(t, signertest.WithStore(st), signertest.WithOps())
	ctx := context.Background()
	signN(t, env, 4)
	if _, err := env.Log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign, signerv1.SignerService_Sign_FullMethodName, time.Now())
	e.Object, e.Reason, e.Code = auditlog.Object(signertest.Scope, "forged"), auditlog.ReasonGranted, "OK"
	leaf, err := auditlog.AppendLeaf(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	app, err := pgx.Connect(ctx, db.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, `INSERT INTO audit_entries (seq, leaf) VALUES (1000000, $1)`, leaf); err == nil || !strings.Contains(err.Error(), "23514") {
		t.Fatalf("a row far beyond the log: %v, want refused", err)
	}
	if _, err := app.Exec(ctx, `INSERT INTO audit_entries (seq, leaf) SELECT max(seq) + 1, $1 FROM audit_entries`, leaf); err != nil {
		t.Fatal(err)
	}
	before := env.Log.Latest()
	if err := env.Log.Check(ctx); !errors.Is(err, signerr.ErrAuditLogBroken) || !strings.Contains(err.Error(), "carry no seal") {
		t.Fatalf("the check over the inserted entry: %v", err)
	}
	if env.Log.Latest().Size != before.Size {
		t.Fatal("a checkpoint was signed over the inserted entry")
	}
	refusedBroken(t, "inserted entry", env)
}

// Proofs for whoever holds a request id (issue 21, 6): a core asks through
// its sidecar for the proof of its own request and gets C2SP tlog-proofs
// that anyone checks offline with the log's verifier key and the witness
// policy; another core's request id is not found.
func TestCoreProvesItsOwnRequest(t *testing.T) {
	env := signertest.Start(t, signertest.WithWitnesses("w1.example"), signertest.WithConfig(func(c *config.Signer) {
		c.AllowSPIFFEIDs = append(c.AllowSPIFFEIDs, "spiffe://example.org/ns/apps/sa/other-core")
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(id string) *client.Client {
		sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, id)))
		c, err := client.Dial(ctx, sc.Socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	core, other := dial(signertest.CoreID), dial("spiffe://example.org/ns/apps/sa/other-core")
	sig, err := core.Sign(ctx, signertest.Scope, []byte("an order"))
	if err != nil {
		t.Fatal(err)
	}
	proofs, err := core.Prove(ctx, sig.RequestID)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := auditlog.NewVerifier(env.CheckpointKey)
	var signed auditlog.Entry
	for _, p := range proofs {
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		e, cp, err := v.VerifyProof(b, env.WitnessPolicy)
		if err != nil {
			t.Fatalf("the tlog-proof does not verify offline: %v\n%s", err, b)
		}
		if e.Relation == auditlog.RelationSign {
			signed = e
		}
		if c := env.WitnessPolicy.Cosigners(cp.Note); len(c) != 1 {
			t.Fatalf("cosigners %v", c)
		}
	}
	if signed.Object != "signing-key:payments:"+sig.KeyID || signed.Reason != auditlog.ReasonGranted {
		t.Fatalf("the proved entry %+v is not this signature's", signed)
	}
	if _, err := other.Prove(ctx, sig.RequestID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("another core's request: %v, want ErrNotFound", err)
	}
	if _, err := core.Prove(ctx, auditlog.NewRequestID().String()); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("an unknown request: %v, want ErrNotFound", err)
	}
}

// AuditService.Verify is bounded (issue 22, 5): calls within a minute share
// one replay (the same checked_at), however many there are.
func TestVerifyIsShared(t *testing.T) {
	env := signertest.Start(t)
	signN(t, env, 5)
	a := signerv1.NewAuditServiceClient(env.Dial(t, env.Issue(t, signertest.AuditorID)))
	ctx := context.Background()
	first, err := a.Verify(ctx, &signerv1.VerifyAuditRequest{})
	if err != nil || !first.Ok {
		t.Fatalf("Verify: %+v %v", first, err)
	}
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			r, err := a.Verify(ctx, &signerv1.VerifyAuditRequest{})
			if err == nil && !r.CheckedAt.AsTime().Equal(first.CheckedAt.AsTime()) {
				err = fmt.Errorf("a replay at %v, not the shared one at %v", r.CheckedAt.AsTime(), first.CheckedAt.AsTime())
			}
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
