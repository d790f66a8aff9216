package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The same suite the bbolt store passes, as the service role; the attacker
// is the database owner editing the tables with triggers off.
func TestConformance(t *testing.T) {
	srv := pgtest.Require(t)
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Tamper) {
		st, db := srv.Open(t)
		return st, tamper{dsn: db.AdminDSN, pruneDSN: db.PruneDSN}
	})
}

// tamper writes as the owner (dsn); it prunes as the prune role.
type tamper struct{ dsn, pruneDSN string }

func (x tamper) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, x.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// A superuser can switch the append-only triggers off for its session.
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (x tamper) PutLeaf(t testing.TB, seq uint64, leaf []byte) {
	x.exec(t, `UPDATE audit_entries SET leaf = $2 WHERE seq = $1`, int64(seq), leaf)
}

func (x tamper) DeleteLeaves(t testing.TB, from, to uint64) {
	x.exec(t, `DELETE FROM audit_entries WHERE seq BETWEEN $1 AND $2`, int64(from), int64(to))
}

// SetSize: Postgres derives the size from the rows; deleting is rewinding.
func (x tamper) SetSize(testing.TB, uint64) {}

func (x tamper) PutNode(t testing.TB, level uint8, index uint64, hash []byte) {
	x.exec(t, `INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3) ON CONFLICT (level, idx) DO UPDATE SET hash = EXCLUDED.hash`,
		int16(level), int64(index), hash)
}

func (x tamper) DeleteCheckpoints(t testing.TB, above uint64) {
	x.exec(t, `DELETE FROM audit_checkpoints WHERE size > $1`, int64(above))
}

func (x tamper) Pruner(t testing.TB) store.Pruner {
	pr, err := postgres.Open(context.Background(), postgres.Config{DSN: x.pruneDSN, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close() })
	return pr
}

// Rollback is what restoring a dump taken at size gives.
func (x tamper) Rollback(t testing.TB, size uint64) {
	x.exec(t, `DELETE FROM audit_entries WHERE seq > $1;`, int64(size))
	x.exec(t, `DELETE FROM audit_nodes WHERE (idx + 1) << level > $1`, int64(size))
	x.exec(t, `DELETE FROM audit_seals WHERE size > $1`, int64(size))
	x.exec(t, `DELETE FROM audit_checkpoints WHERE size > $1`, int64(size))
	x.exec(t, `DELETE FROM audit_witnessed WHERE size > $1`, int64(size))
}

func (x tamper) AppendRaw(t testing.TB, leaf []byte) {
	x.exec(t, `INSERT INTO audit_entries (seq, leaf) SELECT coalesce(max(seq), 0) + 1, $1 FROM audit_entries`, leaf)
}

func (x tamper) PutCheckpointAt(t testing.TB, size uint64, note []byte) {
	x.exec(t, `INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2)`, int64(size), note)
}

func (x tamper) ForgePruneMark(t testing.TB, upto, record uint64) {
	var r any
	if record > 0 {
		r = int64(record)
	}
	x.exec(t, `INSERT INTO audit_pruned (upto, record_seq) VALUES ($1, $2) ON CONFLICT (upto) DO UPDATE SET record_seq = EXCLUDED.record_seq`, int64(upto), r)
}

func (x tamper) Wipe(t testing.TB) {
	x.exec(t, `DELETE FROM audit_entries; DELETE FROM audit_nodes; DELETE FROM audit_checkpoints; DELETE FROM audit_seals; DELETE FROM audit_witnessed; DELETE FROM audit_pruned`)
}

// The service role may read and extend the audit log, never rewrite it:
// each of these is refused, and even the owner is stopped by the
// append-only triggers.
func TestAuditLogIsAppendOnly(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	ctx := context.Background()
	w := audit.NewWriter(st, audit.WriterOptions{})
	e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, "sign", "/m", time.Now())
	if err := w.Write(ctx, e, e); err != nil {
		t.Fatal(err)
	}
	w.Close()
	app, err := pgx.Connect(ctx, db.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	for _, q := range []string{
		"UPDATE audit_entries SET leaf = '\\x00' WHERE seq = 1",
		"DELETE FROM audit_entries WHERE seq = 2",
		"TRUNCATE audit_entries",
		"DELETE FROM audit_nodes",
		"DELETE FROM audit_checkpoints",
		"UPDATE audit_log_key SET public_key = public_key",
		"ALTER TABLE audit_entries DISABLE TRIGGER ALL",
		"ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only",
		"DROP TRIGGER audit_entries_append_only ON audit_entries",
		"DELETE FROM audit_pruned",
		"INSERT INTO audit_pruned (upto) VALUES (16)",
		"INSERT INTO audit_pruned (upto, record_seq) VALUES (16, 2)",
		"SELECT audit_prune(16, 2)",
		"DELETE FROM audit_seals",
		"UPDATE audit_witnessed SET note = note",
		"SET session_replication_role = replica",
	} {
		if _, err := app.Exec(ctx, q); err == nil {
			t.Errorf("the service role may: %s", q)
		} else if !strings.Contains(err.Error(), "42501") {
			t.Errorf("%s: %v, want insufficient_privilege (42501)", q, err)
		}
	}
	// The prune role deletes only through audit_prune, which checks the
	// mark and its record like the triggers: with no prune record at seq 2
	// (and entries 1..16 not there to prune), it is refused too.
	pruner, err := pgx.Connect(ctx, db.PruneDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pruner.Close(ctx)
	for _, q := range []string{
		"UPDATE audit_entries SET leaf = '\\x00' WHERE seq = 1",
		"DELETE FROM audit_entries WHERE seq = 2",
		"TRUNCATE audit_entries",
		"DELETE FROM audit_seals",
		"DELETE FROM audit_pruned",
		"INSERT INTO audit_pruned (upto, record_seq) VALUES (16, 2)",
		"ALTER TABLE audit_entries DISABLE TRIGGER ALL",
		"SET session_replication_role = replica",
		"SELECT audit_prune(16, 2)",
		"SELECT audit_prune(9223372036854775807, 1)",
	} {
		if _, err := pruner.Exec(ctx, q); err == nil {
			t.Errorf("the prune role may: %s", q)
		} else if !strings.Contains(err.Error(), "42501") && !strings.Contains(err.Error(), "23514") {
			t.Errorf("prune role, %s: %v, want a refusal", q, err)
		}
	}
	owner, err := pgx.Connect(ctx, db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	for _, q := range []string{
		"UPDATE audit_entries SET leaf = '\\x00' WHERE seq = 1",
		"DELETE FROM audit_entries WHERE seq = 2",
		"TRUNCATE audit_entries",
		// No session setting opens the log any more (it did: the owner set
		// the prune bound to the largest bigint and deleted any entry).
		"BEGIN; SET LOCAL plexsphere_signer.prune_upto = '9223372036854775807'; DELETE FROM audit_entries WHERE seq = 2; COMMIT",
		"TRUNCATE audit_pruned",
	} {
		if _, err := owner.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "42501") {
			t.Errorf("%s as the owner: %v, want the append-only trigger's refusal", q, err)
		}
		owner.Exec(ctx, "ROLLBACK")
	}
	// A prune mark without its record, or beyond the log, or not a whole
	// tile; an entry that does not follow the log: refused for the owner
	// too (check_violation).
	for _, q := range []string{
		"INSERT INTO audit_pruned (upto) VALUES (16)",
		"INSERT INTO audit_pruned (upto, record_seq) VALUES (16, 99)",
		"INSERT INTO audit_pruned (upto, record_seq) VALUES (1, 2)",
		"INSERT INTO audit_entries (seq, leaf) VALUES (1000000000, '\\x01')",
		"INSERT INTO audit_entries (seq, leaf) VALUES (4, '\\x01')",
	} {
		if _, err := owner.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "23514") {
			t.Errorf("%s as the owner: %v, want the trigger's check_violation", q, err)
		}
	}
	got, err := store.ListAudit(ctx, st, store.AuditQuery{})
	if err != nil || len(got) != 2 {
		t.Fatalf("audit log after the attempts: %v %v", got, err)
	}
}

// Only the owner prunes: the serving role is refused, and nothing goes.
func TestRuntimeRoleCannotPrune(t *testing.T) {
	srv := pgtest.Require(t)
	st, _ := srv.Open(t)
	ctx := context.Background()
	w := audit.NewWriter(st, audit.WriterOptions{})
	for range 20 {
		if err := w.Write(ctx, auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, "sign", "/m", time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if err := st.PruneAudit(ctx, 16, 17); err == nil {
		t.Fatal("the serving role pruned the audit log")
	}
	if n, _ := st.PrunedUpTo(ctx); n != 0 {
		t.Fatalf("pruned up to %d", n)
	}
	if got, err := store.ListAudit(ctx, st, store.AuditQuery{}); err != nil || len(got) != 20 {
		t.Fatalf("entries after the refused prune: %d %v", len(got), err)
	}
}

// A key's state only moves on, for every role: the runtime role (which
// holds UPDATE on the lifecycle columns only) and the owner are refused a
// RETIRED key back, a demotion the lifecycle does not make, a new scope or
// public key, a handle kept at RETIRED, and a deletion.
func TestKeyStateOnlyMovesOn(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Microsecond)
	active := store.Key{ID: "k-active", Scope: "s", State: store.Active, Public: make([]byte, 32), Provider: "local", Handle: []byte("h1"), CreatedAt: at, ActivatedAt: at}
	pending := store.Key{ID: "k-pending", Scope: "s", State: store.Pending, Public: bytes.Repeat([]byte{1}, 32), Provider: "local", Handle: []byte("h2"), CreatedAt: at}
	for _, k := range []store.Key{active, pending} {
		if err := st.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Commit (k-pending ACTIVE, k-active PREVIOUS), then retire k-active:
	// the lifecycle's own moves pass the trigger.
	if _, err := st.Transition(ctx, store.OpCommit, "s", "k-pending", at, store.Windows{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Transition(ctx, store.OpRetire, "s", "k-active", at, store.Windows{}); err != nil {
		t.Fatal(err)
	}
	if k, _ := st.Key(ctx, "k-active"); k.State != store.Retired || !store.Destroyed(k) {
		t.Fatalf("retired key %+v: its handle is not destroyed", k)
	}
	for _, role := range []struct{ name, dsn string }{{"runtime", db.AppDSN}, {"prune", db.PruneDSN}, {"owner", db.AdminDSN}} {
		conn, err := pgx.Connect(ctx, role.dsn)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{
			"UPDATE signing_keys SET state = 'ACTIVE' WHERE id = 'k-active'",
			"UPDATE signing_keys SET state = 'PREVIOUS' WHERE id = 'k-active'",
			"UPDATE signing_keys SET handle = 'h1' WHERE id = 'k-active'",
			"UPDATE signing_keys SET state = 'PENDING' WHERE id = 'k-pending'",
			"UPDATE signing_keys SET scope = 'other' WHERE id = 'k-pending'",
			"UPDATE signing_keys SET public_key = decode(repeat('ab', 32), 'hex') WHERE id = 'k-pending'",
			"DELETE FROM signing_keys WHERE id = 'k-active'",
			"TRUNCATE signing_keys",
		} {
			if _, err := conn.Exec(ctx, q); err == nil {
				t.Errorf("%s may: %s", role.name, q)
			} else if !strings.Contains(err.Error(), "42501") && !strings.Contains(err.Error(), "23514") {
				t.Errorf("%s, %s: %v, want a refusal", role.name, q, err)
			}
		}
		conn.Close(ctx)
	}
	if k, _ := st.Key(ctx, "k-active"); k.State != store.Retired {
		t.Fatalf("k-active is %s after the attempts", k.State)
	}
}

// --migrate-only's path: the owner migrates a fresh database and grants the
// runtime role; the runtime role can then serve and owns nothing.
func TestMigrateAndGrant(t *testing.T) {
	srv := pgtest.Require(t)
	ctx := context.Background()
	db := srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
	app, err := postgres.Open(ctx, postgres.Config{DSN: db.AppDSN})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if err := app.Schema(ctx); !errors.Is(err, postgres.ErrNotMigrated) {
		t.Fatalf("Schema before migrating: %v, want ErrNotMigrated", err)
	}
	owner, err := postgres.Open(ctx, postgres.Config{DSN: db.AdminDSN})
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if err := owner.MigrateAndGrant(ctx, postgres.Roles{Runtime: pgtest.AppRole, Prune: pgtest.PruneRole}); err != nil {
		t.Fatal(err)
	}
	if err := app.Schema(ctx); err != nil {
		t.Fatalf("Schema after migrating: %v", err)
	}
	var owned int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1`, pgtest.AppRole).Scan(&owned); err != nil {
		t.Fatal(err)
	}
	if owned != 0 {
		t.Fatalf("the runtime role owns %d tables", owned)
	}
	w := audit.NewWriter(app, audit.WriterOptions{})
	defer w.Close()
	if err := w.Write(ctx, auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, "sign", "/m", time.Now())); err != nil {
		t.Fatalf("the runtime role cannot append: %v", err)
	}
}

// Replicas starting together migrate once, under the advisory lock.
func TestConcurrentMigrations(t *testing.T) {
	srv := pgtest.Require(t)
	ctx := context.Background()
	db := srv.NewDatabase(t)
	// A fresh database, emptied, so the migrations really run.
	conn, err := pgx.Connect(ctx, db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := postgres.Open(ctx, postgres.Config{DSN: db.AdminDSN, Migrate: true})
			if err == nil {
				st.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A key change on one store instance reaches another's watcher.
func TestWatchKeys(t *testing.T) {
	srv := pgtest.Require(t)
	a, db := srv.Open(t)
	b, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AppDSN})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan string, 8)
	go b.WatchKeys(ctx, func(scope string) { seen <- scope })
	if s := <-seen; s != "" {
		t.Fatalf("first notice %q, want the reset notice", s)
	}
	k := store.Key{ID: "k1", Scope: "payments", State: store.Pending, Public: make([]byte, 32), Provider: "local", Handle: []byte{1}, CreatedAt: time.Now()}
	if err := a.CreateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-seen:
		if s != "payments" {
			t.Fatalf("notice for %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notice of the new key")
	}
}

// The DSN never appears in an error, even when it does not parse.
func TestDSNNeverInErrors(t *testing.T) {
	for _, dsn := range []string{"postgres://user:s3cret-pw@", "host=127.0.0.1 port=1 user=u password=s3cret-pw dbname=x connect_timeout=1"} {
		_, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn})
		if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("Open error leaks the password: %v", err)
		}
	}
}

// Errors Postgres reports while shutting down or starting up are the store
// being unavailable (callers get Unavailable), not unclassified failures.
func TestShutdownErrorsAreUnavailable(t *testing.T) {
	for _, code := range []string{"57P01", "57P03", "08006", "53300", "40001"} {
		err := postgres.ClassifyForTest(&pgconn.PgError{Code: code, Message: "x"})
		if !errors.Is(err, signerr.ErrStoreUnavailable) {
			t.Errorf("SQLSTATE %s: %v", code, err)
		}
	}
	if err := postgres.ClassifyForTest(&pgconn.PgError{Code: "42601", Message: "syntax"}); errors.Is(err, signerr.ErrStoreUnavailable) {
		t.Errorf("a syntax error is not an outage: %v", err)
	}
}

// Every durability wait of the store is a commit at the session's
// synchronous_commit. A role or database set to off would have commits
// answered before the WAL is flushed: Open refuses it, a session opened
// after someone set it refuses to serve (the store fails closed, naming the
// setting), and the operator's levels other than off are kept.
func TestSynchronousCommitOffRefused(t *testing.T) {
	srv := pgtest.Require(t)
	db := srv.NewDatabase(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, db.AdminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	set := func(level string) {
		t.Helper()
		if _, err := admin.Exec(ctx, "ALTER ROLE "+pgtest.AppRole+" IN DATABASE "+db.Name+" SET synchronous_commit = "+level); err != nil {
			t.Fatal(err)
		}
	}
	defer admin.Exec(ctx, "ALTER ROLE "+pgtest.AppRole+" IN DATABASE "+db.Name+" RESET synchronous_commit")

	set("off")
	if st, err := postgres.Open(ctx, postgres.Config{DSN: db.AppDSN, MaxConns: 2}); err == nil {
		st.Close()
		t.Fatal("opened a store whose commits do not wait for the WAL (synchronous_commit off)")
	} else if !errors.Is(err, postgres.ErrSynchronousCommitOff) || !strings.Contains(err.Error(), "synchronous_commit") {
		t.Fatalf("Open: %v, want ErrSynchronousCommitOff naming the setting", err)
	}

	set("remote_apply")
	st, err := postgres.Open(ctx, postgres.Config{DSN: db.AppDSN, MaxConns: 2})
	if err != nil {
		t.Fatalf("synchronous_commit remote_apply: %v", err)
	}
	defer st.Close()
	var level string
	if err := st.Pool().QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&level); err != nil || level != "remote_apply" {
		t.Fatalf("the session's level: %q %v, want the operator's remote_apply", level, err)
	}

	// Turned off while the store is open: the sessions it opens from then
	// on refuse to serve.
	set("off")
	st.Pool().Reset()
	w := audit.NewWriter(st, audit.WriterOptions{})
	defer w.Close()
	err = w.Write(ctx, auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, "sign", "/m", time.Now()))
	if err == nil || !errors.Is(err, signerr.ErrAuditUnavailable) {
		t.Fatalf("an append over a session with synchronous_commit off: %v, want ErrAuditUnavailable", err)
	}
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM audit_entries`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("entries written over a session with synchronous_commit off: %d %v", n, err)
	}
}

// A server whose fsync is off (the test server's is) can lose answered
// entries when its host crashes: Open says so in one warning that names
// the setting and the fix, and still opens. full_page_writes is on there,
// so that warning must not appear.
func TestUnsafeServerWarned(t *testing.T) {
	srv := pgtest.Require(t)
	db := srv.NewDatabase(t)
	var logs bytes.Buffer
	st, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AppDSN, MaxConns: 2, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open on a server with fsync off: %v (it warns, it does not refuse)", err)
	}
	st.Close()
	got := logs.String()
	if strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "fsync=off") || !strings.Contains(got, "fsync = on") {
		t.Fatalf("want one warning naming fsync=off and the fix, got:\n%s", got)
	}
	if strings.Contains(got, "full_page_writes") {
		t.Fatalf("warned of full_page_writes, which is on:\n%s", got)
	}

	for _, c := range []struct {
		fsync, fpw string
		want       []string
	}{
		{"on", "on", nil},
		{"off", "on", []string{"fsync=off"}},
		{"on", "off", []string{"full_page_writes=off"}},
		{"off", "off", []string{"fsync=off", "full_page_writes=off"}},
	} {
		msgs := postgres.UnsafeServerForTest(c.fsync, c.fpw)
		if len(msgs) != len(c.want) {
			t.Fatalf("fsync=%s full_page_writes=%s: %q, want %d messages", c.fsync, c.fpw, msgs, len(c.want))
		}
		for i, w := range c.want {
			if !strings.Contains(msgs[i], w) || !strings.Contains(msgs[i], "postgresql.conf") {
				t.Fatalf("fsync=%s full_page_writes=%s: %q, want it to name %s and the fix", c.fsync, c.fpw, msgs[i], w)
			}
		}
	}
}
