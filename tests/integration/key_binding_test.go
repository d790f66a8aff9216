package integration

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// keyRow is what an attacker with write access to the store edits: a key
// record's scope, state, handle and public key.
type keyRow struct {
	Scope, State   string
	Handle, Public []byte
}

// keyStore is a store the test can stop, tamper with as the attacker
// would (the bbolt file with the signer stopped; the Postgres rows as the
// database owner) and reopen.
type keyStore interface {
	open(t *testing.T) store.Store
	edit(t *testing.T, fn func(rows map[string]*keyRow))
}

type boltFile struct {
	path string
	st   *bbolt.Store
}

func (b *boltFile) open(t *testing.T) store.Store {
	st, err := bbolt.Open(b.path)
	if err != nil {
		t.Fatal(err)
	}
	b.st = st
	t.Cleanup(func() { st.Close() })
	return st
}

// edit rewrites the records in the file, the scope index included, with no
// signer holding it.
func (b *boltFile) edit(t *testing.T, fn func(map[string]*keyRow)) {
	t.Helper()
	b.st.Close()
	db, err := bolt.Open(b.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		keys, scopes := tx.Bucket([]byte("keys")), tx.Bucket([]byte("scopes"))
		recs := map[string]map[string]any{}
		rows := map[string]*keyRow{}
		if err := keys.ForEach(func(id, v []byte) error {
			var rec map[string]any
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			var r keyRow
			if err := json.Unmarshal(v, &struct {
				Scope  *string `json:"scope"`
				State  *string `json:"state"`
				Handle *[]byte `json:"handle"`
				Public *[]byte `json:"public"`
			}{&r.Scope, &r.State, &r.Handle, &r.Public}); err != nil {
				return err
			}
			recs[string(id)], rows[string(id)] = rec, &r
			return nil
		}); err != nil {
			return err
		}
		fn(rows)
		for id, r := range rows {
			old := recs[id]
			if err := scopes.Bucket([]byte(old["scope"].(string))).Delete([]byte(id)); err != nil {
				return err
			}
			old["scope"], old["state"], old["handle"], old["public"] = r.Scope, r.State, r.Handle, r.Public
			v, err := json.Marshal(old)
			if err != nil {
				return err
			}
			if err := keys.Put([]byte(id), v); err != nil {
				return err
			}
			sb, err := scopes.CreateBucketIfNotExists([]byte(r.Scope))
			if err != nil {
				return err
			}
			if err := sb.Put([]byte(id), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

type pgRows struct{ db pgtest.DB }

func (p pgRows) open(t *testing.T) store.Store {
	st, err := postgres.Open(context.Background(), postgres.Config{DSN: p.db.AppDSN, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// edit rewrites the rows as the owner with the schema's triggers off (they
// refuse a row changing scope or public key, for every role, since the
// key-state migration): the most powerful store writer. Every row first
// goes to a scratch scope so that swapped rows never meet the
// one-ACTIVE-key index halfway.
func (p pgRows) edit(t *testing.T, fn func(map[string]*keyRow)) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	rs, err := conn.Query(ctx, `SELECT id, scope, state, handle, public_key FROM signing_keys`)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]*keyRow{}
	for rs.Next() {
		var id string
		var r keyRow
		if err := rs.Scan(&id, &r.Scope, &r.State, &r.Handle, &r.Public); err != nil {
			t.Fatal(err)
		}
		rows[id] = &r
	}
	rs.Close()
	fn(rows)
	for id := range rows {
		if _, err := conn.Exec(ctx, `UPDATE signing_keys SET scope = 'scratch-' || id WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
	}
	for id, r := range rows {
		if _, err := conn.Exec(ctx, `UPDATE signing_keys SET scope = $2, state = $3, handle = $4, public_key = $5 WHERE id = $1`,
			id, r.Scope, r.State, r.Handle, r.Public); err != nil {
			t.Fatal(err)
		}
	}
}

// A key row moved to another scope or swapped with another row never signs:
// the sealed key (or the token object's label) binds scope, id and public
// key, so the signer refuses with ErrInvariant (Internal, reason INVARIANT)
// and audits the refusal insufficient_relation with the key id it found.
// Before, moving the payments key's row to billing made Sign(billing)
// return signatures that verify under the payments public key, and a
// swapped handle answered Unavailable, which clients retry forever.
func TestMovedOrSwappedKeyRowNeverSigns(t *testing.T) {
	stores := map[string]func(t *testing.T) keyStore{
		"bbolt": func(t *testing.T) keyStore { return &boltFile{path: filepath.Join(t.TempDir(), "signer.db")} },
		"postgres": func(t *testing.T) keyStore {
			return pgRows{db: pgtest.Require(t).NewDatabase(t)}
		},
	}
	attacks := []struct {
		name string
		// tamper edits the rows given the payments and billing key ids;
		// target is the (scope, key id) whose Sign must be refused.
		tamper func(rows map[string]*keyRow, pay, bill string)
		scope  string
		key    func(pay, bill string) string
	}{
		{"payments key moved to billing", func(rows map[string]*keyRow, pay, bill string) {
			rows[pay].Scope = "billing"
			rows[bill].State = "RETIRED"
		}, "billing", func(pay, _ string) string { return pay }},
		{"scopes swapped", func(rows map[string]*keyRow, pay, bill string) {
			rows[pay].Scope, rows[bill].Scope = "billing", "payments"
		}, "billing", func(pay, _ string) string { return pay }},
		{"billing's sealed key and public key swapped into the payments row", func(rows map[string]*keyRow, pay, bill string) {
			rows[pay].Handle, rows[pay].Public = rows[bill].Handle, rows[bill].Public
		}, "payments", func(pay, _ string) string { return pay }},
		{"billing's sealed key swapped into the payments row", func(rows map[string]*keyRow, pay, bill string) {
			rows[pay].Handle = rows[bill].Handle
		}, "payments", func(pay, _ string) string { return pay }},
	}
	for storeName, newStore := range stores {
		for _, at := range attacks {
			t.Run(storeName+"/"+at.name, func(t *testing.T) {
				ks := newStore(t)
				ca := signertest.NewCA(t)
				provider := signertest.NewLocalProvider(t)
				anchor := t.TempDir()
				start := func(scopes ...string) (*signertest.Env, signerv1.SignerServiceClient) {
					env := signertest.Start(t, signertest.WithStore(ks.open(t)), signertest.WithCA(ca), signertest.WithProvider(provider),
						signertest.WithCheckpointLog(anchor), signertest.WithConfig(func(c *config.Signer) { c.BootstrapScopes = scopes }))
					return env, signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
				}
				env, core := start("payments", "billing")
				ctx := context.Background()
				ids := map[string]string{}
				pubs := map[string]ed25519.PublicKey{}
				for _, s := range []string{"payments", "billing"} {
					r, err := core.Sign(ctx, &signerv1.SignRequest{Scope: s, Payload: []byte("before")})
					if err != nil {
						t.Fatal(err)
					}
					ids[s] = r.KeyId
					pk, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: s})
					if err != nil {
						t.Fatal(err)
					}
					pubs[s] = pk.Keys[0].PublicKey
				}
				env.Stop()
				pay, bill := ids["payments"], ids["billing"]
				ks.edit(t, func(rows map[string]*keyRow) { at.tamper(rows, pay, bill) })

				env, core = start()
				seq := env.LastSeq(t)
				resp, err := core.Sign(ctx, &signerv1.SignRequest{Scope: at.scope, Payload: []byte("attack")})
				if err == nil {
					for s, pub := range pubs {
						if ed25519.Verify(pub, []byte("attack"), resp.Signature) {
							t.Fatalf("Sign(%s) signed with the %s key after the row was tampered with", at.scope, s)
						}
					}
					t.Fatalf("Sign(%s) signed after the row was tampered with (key %s)", at.scope, resp.KeyId)
				}
				if resp != nil {
					t.Fatalf("a response came with the refusal: %v", resp)
				}
				if status.Code(err) != codes.Internal || wireReasonOf(err) != signerv1.ErrorReason_ERROR_REASON_INVARIANT.String() {
					t.Fatalf("Sign(%s): %v (reason %s), want Internal / INVARIANT", at.scope, err, wireReasonOf(err))
				}
				var mw []auditlog.Entry
				for _, e := range env.AuditAfter(t, seq) {
					if e.Relation == auditlog.RelationSign {
						mw = append(mw, e)
					}
				}
				want := auditlog.Object(at.scope, at.key(pay, bill))
				if len(mw) != 1 || mw[0].Reason != auditlog.ReasonInsufficientRelation || mw[0].Object != want || mw[0].Code != codes.Internal.String() {
					t.Fatalf("audit entries %+v, want one sign entry insufficient_relation on %s", mw, want)
				}
			})
		}
	}
}

func wireReasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			return i.Reason
		}
	}
	return ""
}

// A key row forged into the store is never published: an attacker who can
// write rows but holds no key puts their own public key into a PENDING row
// (or moves another scope's sealed key into this scope as PREVIOUS), hoping
// verifiers fetch it from PublicKey, the JWKS endpoint or signerctl jwks
// and then trust tokens the attacker signs. The signer vouches for every
// published key with the provider (the sealing binds id, scope and public
// key) and refuses the whole answer with ErrInvariant, audited, while
// signing with the untouched ACTIVE key goes on.
func TestForgedKeyRowNeverPublished(t *testing.T) {
	stores := map[string]func(t *testing.T) keyStore{
		"bbolt": func(t *testing.T) keyStore { return &boltFile{path: filepath.Join(t.TempDir(), "signer.db")} },
		"postgres": func(t *testing.T) keyStore {
			return pgRows{db: pgtest.Require(t).NewDatabase(t)}
		},
	}
	attackerPub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	attacks := map[string]func(rows map[string]*keyRow, pending, billing string){
		"attacker's public key in a PENDING row": func(rows map[string]*keyRow, pending, _ string) {
			rows[pending].Public = attackerPub
		},
		"billing's key moved into payments as PREVIOUS": func(rows map[string]*keyRow, pending, billing string) {
			rows[billing].Scope, rows[billing].State = "payments", "PREVIOUS"
			rows[pending].State = "RETIRED"
		},
	}
	for storeName, newStore := range stores {
		for name, tamper := range attacks {
			t.Run(storeName+"/"+name, func(t *testing.T) {
				ks := newStore(t)
				ca := signertest.NewCA(t)
				provider := signertest.NewLocalProvider(t)
				anchor := t.TempDir()
				start := func(scopes ...string) *signertest.Env {
					return signertest.Start(t, signertest.WithStore(ks.open(t)), signertest.WithCA(ca), signertest.WithProvider(provider),
						signertest.WithCheckpointLog(anchor), signertest.WithConfig(func(c *config.Signer) { c.BootstrapScopes = scopes }))
				}
				env := start("payments", "billing")
				ctx := context.Background()
				op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
				opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: "payments"})
				if err != nil {
					t.Fatal(err)
				}
				bill, err := op.ListKeys(ctx, &signerv1.ListKeysRequest{Scope: "billing"})
				if err != nil || len(bill.Keys) != 1 {
					t.Fatalf("billing keys: %v %v", bill, err)
				}
				env.Stop()
				ks.edit(t, func(rows map[string]*keyRow) { tamper(rows, opened.Key.KeyId, bill.Keys[0].KeyId) })

				env = start()
				core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
				op = signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
				seq := env.LastSeq(t)
				wantInvariant := func(what string, err error) {
					t.Helper()
					if status.Code(err) != codes.Internal || wireReasonOf(err) != signerv1.ErrorReason_ERROR_REASON_INVARIANT.String() {
						t.Fatalf("%s after the forgery: %v (reason %s), want Internal / INVARIANT", what, err, wireReasonOf(err))
					}
				}
				pk, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: "payments"})
				if pk != nil {
					t.Fatalf("PublicKey published %v", pk.Keys)
				}
				wantInvariant("PublicKey(payments)", err)
				_, err = op.ListKeys(ctx, &signerv1.ListKeysRequest{Scope: "payments"})
				wantInvariant("ListKeys(payments) (what signerctl jwks publishes)", err)
				var pubEntries []auditlog.Entry
				for _, e := range env.AuditAfter(t, seq) {
					if e.Relation == auditlog.RelationPublicKey {
						pubEntries = append(pubEntries, e)
					}
				}
				if len(pubEntries) != 1 || pubEntries[0].Reason != auditlog.ReasonInsufficientRelation || pubEntries[0].Code != codes.Internal.String() {
					t.Fatalf("PublicKey audit entries %+v, want one insufficient_relation / Internal", pubEntries)
				}
				// The ACTIVE key was not touched: signing goes on.
				if _, err := core.Sign(ctx, &signerv1.SignRequest{Scope: "payments", Payload: []byte("still fine")}); err != nil {
					t.Fatalf("Sign with the untouched ACTIVE key: %v", err)
				}
			})
		}
	}
}
