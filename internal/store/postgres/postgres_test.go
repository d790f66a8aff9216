package postgres_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/pgtest"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The same suite the bbolt store passes, as the service role.
func TestConformance(t *testing.T) {
	srv := pgtest.Require(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		st, _ := srv.Open(t)
		return st
	})
}

// The service role may read and extend the audit log, never rewrite it; and
// even the owner is stopped by the append-only trigger.
func TestAuditLogIsAppendOnly(t *testing.T) {
	srv := pgtest.Require(t)
	st, db := srv.Open(t)
	ctx := context.Background()
	e := audit.Entry{ID: audit.NewID(), Subject: audit.SubjectSigner, Relation: "sign", Object: "signing-key:s:k",
		Reason: audit.ReasonGranted, CaveatContext: []string{}, Timestamp: time.Now()}
	if err := st.AppendAudit(ctx, []audit.Entry{e}); err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{db.AppDSN, db.AdminDSN} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{
			"UPDATE audit_entries SET reason = 'granted' WHERE seq = 1",
			"DELETE FROM audit_entries WHERE seq = 1",
			"TRUNCATE audit_entries",
		} {
			if _, err := conn.Exec(ctx, q); err == nil || !strings.Contains(err.Error(), "42501") {
				t.Errorf("%s as %s: %v, want insufficient_privilege", q, conn.Config().User, err)
			}
		}
		conn.Close(ctx)
	}
	got, err := st.ListAudit(ctx, store.AuditQuery{})
	if err != nil || len(got) != 1 {
		t.Fatalf("audit log after the attempts: %v %v", got, err)
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
	if _, err := conn.Exec(ctx, `DROP TABLE audit_head, audit_entries, signing_keys, goose_db_version; DROP FUNCTION audit_entries_append_only()`); err != nil {
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
		if !errors.Is(err, audit.ErrUnavailable) {
			t.Errorf("SQLSTATE %s: %v", code, err)
		}
	}
	if err := postgres.ClassifyForTest(&pgconn.PgError{Code: "42601", Message: "syntax"}); errors.Is(err, audit.ErrUnavailable) {
		t.Errorf("a syntax error is not an outage: %v", err)
	}
}
