// Package postgres is the store for several signer replicas sharing one
// database: key metadata and lifecycle (with the one-ACTIVE-key and
// one-open-rotation rules as partial unique indexes), and the append-only
// audit log with its Merkle tree, extended by the group-commit writer in one
// statement per batch. Migrations are embedded and applied under an advisory lock;
// key changes are announced with NOTIFY so replicas drop stale caches at once.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// channel carries the scope of every key change.
const channel = "plexsphere_signer_keys"

// Config opens a Store.
type Config struct {
	DSN      string
	MaxConns int32
	// Migrate applies the embedded migrations at open, as the DSN's role,
	// which then owns the schema. Production runs migrations as a separate
	// owner role (Migrate with a runtime role) and leaves this off.
	Migrate bool
	Log     *slog.Logger
}

// Store is a store.Store in Postgres.
type Store struct {
	pool *pgxpool.Pool
	conn *pgx.ConnConfig // for the LISTEN connection
	log  *slog.Logger
}

var _ store.Store = (*Store)(nil)

// Open connects, checks the connection and, if asked, migrates. Errors never
// repeat the DSN, which may hold a password.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, errors.New("postgres: the DSN does not parse (its text is withheld: it may hold a password)")
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	pc.AfterConnect = pinSynchronousCommit
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect to %s/%s as %s: %w", pc.ConnConfig.Host, pc.ConnConfig.Database, pc.ConnConfig.User, redact(err))
	}
	s := &Store{pool: pool, conn: pc.ConnConfig.Copy(), log: cfg.Log}
	if err := s.warnUnsafeServer(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if cfg.Migrate {
		if err := s.Migrate(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// ErrSynchronousCommitOff is returned for a session whose
// synchronous_commit is off.
var ErrSynchronousCommitOff = errors.New("postgres: synchronous_commit is off for the signer's sessions, so the audit log's commits would be answered before they are durable: set it to on (e.g. ALTER ROLE <role> IN DATABASE <db> RESET synchronous_commit, and the same for ALTER DATABASE and the server's postgresql.conf)")

// pinSynchronousCommit refuses a new session whose synchronous_commit is
// off, and pins the value it found for the session's life. Every
// durability wait of the store is a commit at that setting (the one-
// statement append, the flush after an asynchronous commit, SyncAudit
// before a checkpoint): at off they would return before the WAL is
// flushed, and the signer would answer signatures a Postgres crash can
// take back. A role's, a database's or the server's default applies when
// a session starts, and the server's default also when its configuration
// is reloaded: set as the session's own value, a later reload cannot turn
// it off under an open connection. The operator's stronger levels
// (remote_write, remote_apply) are kept, local and on accepted.
func pinSynchronousCommit(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, `SELECT set_config('synchronous_commit', current_setting('synchronous_commit'), false)`).Scan(&level); err != nil {
		return err
	}
	if level == "off" {
		return ErrSynchronousCommitOff
	}
	return nil
}

// warnUnsafeServer logs, once per Open, a server configuration under which
// a crash of Postgres's host (not of Postgres alone) can lose commits the
// signer has answered: fsync off (the WAL never reaches the disk for
// certain) or full_page_writes off (a torn page can leave the database
// unrecoverable). They are server-wide settings the signer cannot pin
// for its sessions as it pins synchronous_commit, and they do not stop
// it from working, so the signer warns and serves: the operator decides.
func (s *Store) warnUnsafeServer(ctx context.Context) error {
	var fsync, fpw string
	if err := s.pool.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('full_page_writes')`).Scan(&fsync, &fpw); err != nil {
		return fmt.Errorf("postgres: read the server's fsync setting: %w", classify(err))
	}
	for _, msg := range unsafeServer(fsync, fpw) {
		s.log.Warn(msg)
	}
	return nil
}

// unsafeServer says what is unsafe in the server's fsync and
// full_page_writes, one message each, naming the setting and the fix.
func unsafeServer(fsync, fullPageWrites string) []string {
	var out []string
	for _, c := range []struct{ name, value, risk string }{
		{"fsync", fsync, "lose audit entries whose signatures were already answered"},
		{"full_page_writes", fullPageWrites, "leave the audit log's pages torn and the database unrecoverable"},
	} {
		if c.value != "on" {
			out = append(out, fmt.Sprintf("postgres: the server runs with %s=%s: a crash of its host can %s; set %s = on in postgresql.conf (ALTER SYSTEM SET %s = on; SELECT pg_reload_conf())", c.name, c.value, c.risk, c.name, c.name))
		}
	}
	return out
}

// ErrNotMigrated is returned by Open when the database has no schema (or
// the role cannot see it).
var ErrNotMigrated = errors.New("postgres: the signer's tables are missing or not visible to this role")

// Schema reports ErrNotMigrated unless the tables exist and the role may
// read them.
func (s *Store) Schema(ctx context.Context) error {
	var ok bool
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass('audit_log_key') IS NOT NULL AND has_table_privilege('audit_log_key', 'SELECT')`).Scan(&ok); err != nil {
		return classify(err)
	}
	if !ok {
		return ErrNotMigrated
	}
	return nil
}

// redact drops pgx's connection detail, which can echo connection
// parameters, keeping the cause.
func redact(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return errors.Unwrap(ce)
	}
	return err
}

// RuntimeGrants are what the serving signer's role needs: it may read and
// extend the audit log, never rewrite it (no UPDATE, DELETE, TRUNCATE, no
// ownership). Migrate applies them to the runtime role.
var RuntimeGrants = []string{
	"GRANT USAGE ON SCHEMA public TO %s",
	// Key state moves only as the lifecycle allows (a trigger refuses the
	// rest, for every role): the columns a transition changes, nothing else.
	// Earlier versions granted UPDATE on the whole table: take it back.
	"REVOKE ALL ON signing_keys FROM %s",
	"GRANT SELECT, INSERT ON signing_keys TO %s",
	"GRANT UPDATE (state, activated_at, deactivated_at, retired_at, handle) ON signing_keys TO %s",
	"GRANT SELECT, INSERT ON audit_entries, audit_nodes, audit_checkpoints, audit_log_key, audit_seals, audit_witnessed TO %s",
	"GRANT SELECT ON audit_pruned, goose_db_version TO %s",
}

// PruneGrants are what a prune role needs beyond RuntimeGrants (it appends
// the prune's record like a serving signer): the one function that deletes,
// under a mark whose record is in the log. It holds no DELETE privilege and
// no ownership, so a prune job never needs the owner's credentials.
var PruneGrants = []string{
	"GRANT EXECUTE ON FUNCTION audit_prune(bigint, bigint) TO %s",
}

// Roles are the roles --migrate-only grants to; an empty one is skipped.
type Roles struct {
	Runtime string // the serving signer's
	Prune   string // --prune-audit-upto's, if not the owner's
}

// MigrateAndGrant applies the embedded migrations as the store's role (the
// owner) and grants each role what it needs, nothing more.
func (s *Store) MigrateAndGrant(ctx context.Context, roles Roles) error {
	if err := s.Migrate(ctx); err != nil {
		return err
	}
	grant := func(role string, grants ...[]string) error {
		if role == "" {
			return nil
		}
		id := pgx.Identifier{role}.Sanitize()
		for _, gs := range grants {
			for _, g := range gs {
				if _, err := s.pool.Exec(ctx, fmt.Sprintf(g, id)); err != nil {
					return fmt.Errorf("postgres: grant to %s: %w", role, redact(err))
				}
			}
		}
		return nil
	}
	if err := grant(roles.Runtime, RuntimeGrants); err != nil {
		return err
	}
	return grant(roles.Prune, RuntimeGrants, PruneGrants)
}

// Migrate applies the embedded migrations, holding a Postgres advisory lock
// so replicas starting together migrate once.
func (s *Store) Migrate(ctx context.Context) error {
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	// Poll for the lock every second (goose's default is five), up to a minute.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 60))
	if err != nil {
		return err
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	for _, r := range res {
		s.log.Info("postgres migration applied", "version", r.Source.Version, "took", r.Duration)
	}
	return nil
}

func (s *Store) Close() error { s.pool.Close(); return nil }

func (s *Store) Ping(ctx context.Context) error { return classify(s.pool.Ping(ctx)) }

// Pool exposes the pool to tests and tools.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// classify maps database errors onto the signer's sentinels. A failure to
// talk to the database at all (no PgError) is the store being unavailable.
func classify(err error) error {
	if err == nil {
		return nil
	}
	// Already decided (a lifecycle refusal from store.Apply, say): keep it.
	for _, sentinel := range append(signerr.Sentinels, audit.ErrHeadMoved) {
		if errors.Is(err, sentinel) {
			return err
		}
	}
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return err
	case errors.As(err, &pe) && transient(pe.Code):
		return fmt.Errorf("postgres: %w: %s (%s)", signerr.ErrStoreUnavailable, pe.Message, pe.Code)
	case errors.As(err, &pe):
		if pe.Code == "23505" { // unique_violation
			switch pe.ConstraintName {
			case "signing_keys_one_pending":
				return fmt.Errorf("postgres: %w", signerr.ErrRotationInProgress)
			case "signing_keys_one_active", "signing_keys_pkey":
				return fmt.Errorf("postgres: %s: %w", pe.ConstraintName, signerr.ErrInvariant)
			case "audit_entries_pkey", "audit_nodes_pkey", "audit_seals_pkey":
				return fmt.Errorf("postgres: %s: %w", pe.ConstraintName, audit.ErrHeadMoved)
			}
		}
		return fmt.Errorf("postgres: %s (%s)", pe.Message, pe.Code)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("postgres: %w: %w", signerr.ErrStoreUnavailable, err)
	}
	return fmt.Errorf("postgres: %w: %v", signerr.ErrStoreUnavailable, redact(err))
}

// transient reports SQLSTATEs that mean "the database cannot serve right
// now" rather than "this request is wrong": connection exceptions (08),
// insufficient resources (53), operator intervention such as shutdown and
// start-up (57P01-57P03), and serialisation failures and deadlocks (40001,
// 40P01). Found by the fault matrix: a read during Postgres start-up
// answered 57P03, which must be Unavailable, not Internal.
func transient(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "40001", "40P01":
		return true
	}
	return false
}

const keyCols = `id, scope, state, public_key, provider, handle, created_at, activated_at, deactivated_at, retired_at`

func scanKey(row pgx.Row) (store.Key, error) {
	var k store.Key
	var state string
	var act, deact, ret *time.Time
	if err := row.Scan(&k.ID, &k.Scope, &state, &k.Public, &k.Provider, &k.Handle, &k.CreatedAt, &act, &deact, &ret); err != nil {
		return k, err
	}
	st, err := store.ParseState(state)
	if err != nil {
		return k, err
	}
	k.State = st
	k.CreatedAt = k.CreatedAt.UTC()
	for _, p := range []struct {
		src *time.Time
		dst *time.Time
	}{{act, &k.ActivatedAt}, {deact, &k.DeactivatedAt}, {ret, &k.RetiredAt}} {
		if p.src != nil {
			*p.dst = p.src.UTC()
		}
	}
	return k, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (s *Store) CreateKey(ctx context.Context, k store.Key) error {
	if k.State != store.Pending && k.State != store.Active {
		return fmt.Errorf("postgres: create key in state %s: %w", k.State, signerr.ErrInvalidArgument)
	}
	// One statement: the insert and the change notice commit together.
	_, err := s.pool.Exec(ctx, `WITH k AS (
		INSERT INTO signing_keys (`+keyCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING scope)
		SELECT pg_notify('`+channel+`', scope) FROM k`,
		k.ID, k.Scope, k.State.String(), []byte(k.Public), k.Provider, k.Handle, k.CreatedAt, nullTime(k.ActivatedAt), nullTime(k.DeactivatedAt), nullTime(k.RetiredAt))
	return classify(err)
}

func (s *Store) Key(ctx context.Context, id string) (store.Key, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return k, fmt.Errorf("postgres: key %q: %w", id, signerr.ErrKeyNotFound)
	}
	return k, classify(err)
}

func (s *Store) ActiveKey(ctx context.Context, scope string) (store.Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE scope = $1 AND state = 'ACTIVE' LIMIT 2`, scope)
	if err != nil {
		return store.Key{}, classify(err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Key, error) { return scanKey(r) })
	if err != nil {
		return store.Key{}, classify(err)
	}
	switch len(keys) {
	case 0:
		return store.Key{}, fmt.Errorf("postgres: no ACTIVE key in scope %q: %w", scope, signerr.ErrKeyNotFound)
	case 1:
		return keys[0], nil
	}
	return store.Key{}, fmt.Errorf("postgres: several ACTIVE keys in scope %q: %w", scope, signerr.ErrInvariant)
}

func (s *Store) Keys(ctx context.Context, scope string) ([]store.Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE $1 = '' OR scope = $1 ORDER BY scope, created_at, id`, scope)
	if err != nil {
		return nil, classify(err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Key, error) { return scanKey(r) })
	return keys, classify(err)
}

// Transition locks the target row (FOR UPDATE) and, for a Commit, the
// scope's ACTIVE row, then decides with store.Apply on what it locked and
// writes in the same transaction: a concurrent transition of the same key
// waits for this one and then sees its result.
func (s *Store) Transition(ctx context.Context, op store.Op, scope, id string, at time.Time, w store.Windows) (changed []store.Key, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		k, err := scanKey(tx.QueryRow(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("postgres: key %q: %w", id, signerr.ErrKeyNotFound)
		}
		if err != nil {
			return err
		}
		next, err := store.Apply(op, k, scope, at, w)
		if err != nil {
			return err
		}
		changed = []store.Key{next}
		if op == store.OpCommit {
			// Demote first: the partial unique index admits one ACTIVE key.
			prev := store.Demote(store.Key{}, at)
			rows, err := tx.Query(ctx, `UPDATE signing_keys SET state = $2, deactivated_at = $3
				WHERE scope = $1 AND state = 'ACTIVE' RETURNING `+keyCols, scope, prev.State.String(), prev.DeactivatedAt)
			if err != nil {
				return err
			}
			demoted, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Key, error) { return scanKey(r) })
			if err != nil {
				return err
			}
			changed = append(changed, demoted...)
		}
		if _, err := tx.Exec(ctx, `UPDATE signing_keys SET state = $2, activated_at = $3, retired_at = $4, handle = $5 WHERE id = $1`,
			next.ID, next.State.String(), nullTime(next.ActivatedAt), nullTime(next.RetiredAt), next.Handle); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify('`+channel+`', $1)`, scope)
		return err
	})
	if err != nil {
		return nil, classify(err)
	}
	return changed, nil
}

// appendSQL extends the log in one statement: the leaves, the tree nodes
// they complete and the commit's seal, only if it gets the append lock at
// once and the log holds exactly $1-1 entries. Otherwise nothing is
// written, and the statement answers where the head went: the size and,
// if there are at most $7, the leaves after seq $1-1 (as seen when the
// statement started), for the writer to catch up with before it appends
// under the lock (MovedError). So every append of every replica is
// serialised by the one advisory lock: held here only while the statement
// runs; by AppendAuditLocked (which runs this statement under it) from
// its first round trip to its COMMIT, never across a WAL flush (see
// asyncCommit).
var appendSQL = `WITH h AS (
	SELECT pg_try_advisory_xact_lock(` + strconv.FormatInt(appendLock, 10) + `) AS locked,
	       greatest((SELECT coalesce(max(seq), 0) FROM audit_entries),
	                (SELECT coalesce(max(upto), 0) FROM audit_pruned)) AS size
), head AS (
	SELECT locked AND size = $1::bigint - 1 AS ok, size FROM h
), e AS (
	INSERT INTO audit_entries (seq, leaf)
	SELECT $1::bigint + t.o - 1, t.l FROM unnest($2::bytea[]) WITH ORDINALITY AS t(l, o), head WHERE head.ok
	RETURNING 1
), n AS (
	INSERT INTO audit_nodes (level, idx, hash)
	SELECT t.lv, t.ix, t.h FROM unnest($3::smallint[], $4::bigint[], $5::bytea[]) AS t(lv, ix, h), head WHERE head.ok
), s AS (
	INSERT INTO audit_seals (size, mac)
	SELECT $1::bigint + cardinality($2::bytea[]) - 1, $6::bytea FROM head WHERE head.ok AND $6::bytea IS NOT NULL
)
SELECT (SELECT count(*) FROM e), head.size,
	CASE WHEN NOT head.ok AND head.size - ($1::bigint - 1) BETWEEN 0 AND $7::bigint THEN
		(SELECT coalesce(array_agg(leaf ORDER BY seq), '{}') FROM audit_entries WHERE seq >= $1::bigint AND seq <= head.size) END
FROM head`

// AppendAudit commits the batch in one statement, one round trip and one
// transaction, which waits for its WAL flush itself: the cheapest commit
// for a writer alone on the log, whom no one waits for. While other
// replicas append, the writer takes AppendAuditLocked instead.
func (s *Store) AppendAudit(ctx context.Context, b *audit.Batch) error {
	var n, size int64
	var leaves [][]byte
	if err := s.pool.QueryRow(ctx, appendSQL, appendArgs(b)...).Scan(&n, &size, &leaves); err != nil {
		return classify(err)
	}
	return moved(b, n, size, leaves)
}

// moved is nil if appendSQL wrote b's n leaves, else where the head went.
func moved(b *audit.Batch, n, size int64, leaves [][]byte) error {
	if n != int64(len(b.Leaves)) {
		return fmt.Errorf("postgres: append at seq %d: %w", b.Start, &audit.MovedError{Size: uint64(size), Leaves: leaves})
	}
	return nil
}

// An append holds the log's lock until its transaction ends, and every
// replica's append queues on that lock. Were the commit to wait for its
// WAL flush while holding it, the log would take one flush per commit,
// one commit at a time, whichever replica made it: N replicas would split
// the same number of flushes per second N ways (the cause of two replicas
// signing less than one; docs/scaling.md). So under the lock
// (AppendAuditLocked, the path of replicas that share the log) the append
// commits without waiting for the flush
// (asyncCommit: visible at once, the lock released at once), and the store
// then waits for the flush outside the lock
// (flushSQL), where concurrent replicas' flushes merge into one fsync
// (Postgres's group commit). No answer leaves before the flush, so a
// signature never outlives its entry. A Postgres crash can lose the
// entries of commits whose flush had not returned: none of their
// signatures were answered, and since the WAL is written in order, a
// lost commit takes every later one with it, never leaving a gap. Readers
// that anchor the log (the check that signs checkpoints) flush first
// (SyncAudit), so no checkpoint covers an entry a crash could still take.
const asyncCommit = `SET LOCAL synchronous_commit TO off`

// flushSQL waits until the WAL is flushed past everything this session
// committed: a transactional logical message writes WAL, so its
// transaction's commit (at the session's synchronous_commit, on) waits for
// its flush, which covers every earlier WAL record. Any role may call it,
// at any wal_level from replica up.
const flushSQL = `SELECT pg_logical_emit_message(true, 'plexsphere-signer', 'flush')`

// SyncAudit waits until every entry committed so far is durable (see
// asyncCommit).
func (s *Store) SyncAudit(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, flushSQL)
	return classify(err)
}

// appendArgs are appendSQL's arguments for b.
func appendArgs(b *audit.Batch) []any {
	levels := make([]int16, len(b.Nodes))
	idx := make([]int64, len(b.Nodes))
	hs := make([][]byte, len(b.Nodes))
	for i, n := range b.Nodes {
		levels[i], idx[i], hs[i] = int16(n.Level), int64(n.Index), n.Hash
	}
	return []any{int64(b.Start), b.Leaves, levels, idx, hs, b.Seal, int64(audit.MaxCatchUp)}
}

const sizeSQL = `SELECT greatest((SELECT coalesce(max(seq), 0) FROM audit_entries), (SELECT coalesce(max(upto), 0) FROM audit_pruned))`

func (s *Store) AuditSize(ctx context.Context) (uint64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, sizeSQL).Scan(&n)
	return uint64(n), classify(err)
}

// appendLock is the advisory lock key every append holds.
const appendLock = 0x706c78_61756474 // "plx" "audt"

// headSQL reads the log's size and, if there are at most $2 of them, the
// leaves after seq $1 (fewer than the size says if some were pruned).
// Run after the lock is taken, in its own statement: a statement's snapshot
// is taken when it starts, so one that waited for the lock inside would not
// see the commit it waited for.
const headSQL = `WITH h AS (` + sizeSQL + ` AS size)
SELECT h.size, CASE WHEN h.size - $1::bigint BETWEEN 1 AND $2::bigint THEN
	(SELECT coalesce(array_agg(leaf ORDER BY seq), '{}') FROM audit_entries WHERE seq > $1::bigint AND seq <= h.size) END
FROM h`

// AppendAuditLocked builds and appends a batch under the append lock, in
// one transaction, in two round trips: BEGIN, the lock and the head
// (headSQL) pipelined; then the append (appendSQL, which takes the lock
// again: it is the session's already), COMMIT and the flush (see
// asyncCommit) pipelined. The size build sees cannot move before the
// commit.
func (s *Store) AppendAuditLocked(ctx context.Context, after uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(err)
	}
	// A connection left in a transaction (a failed round trip) is closed
	// by Release, not reused.
	defer c.Release()
	conn := c.Conn()
	var size int64
	var leaves [][]byte
	first := &pgx.Batch{}
	first.Queue(`BEGIN`)
	first.Queue(asyncCommit)
	first.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(appendLock))
	first.Queue(headSQL, int64(after), int64(audit.MaxCatchUp)).QueryRow(func(row pgx.Row) error { return row.Scan(&size, &leaves) })
	if err := conn.SendBatch(ctx, first).Close(); err != nil {
		return classify(err)
	}
	b, err := build(audit.LockedHead{Size: uint64(size), Leaves: leaves, Reader: reader{conn}})
	if err != nil {
		return classify(err)
	}
	var n int64
	second := &pgx.Batch{}
	second.Queue(appendSQL, appendArgs(b)...).QueryRow(func(row pgx.Row) error { return row.Scan(&n, nil, nil) })
	second.Queue(`COMMIT`)
	second.Queue(flushSQL)
	if err := conn.SendBatch(ctx, second).Close(); err != nil {
		return classify(err)
	}
	if n != int64(len(b.Leaves)) {
		return fmt.Errorf("postgres: append at seq %d under the lock: %w", b.Start, audit.ErrHeadMoved)
	}
	return nil
}

func (s *Store) PrunedUpTo(ctx context.Context) (uint64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT coalesce(max(upto), 0) FROM audit_pruned`).Scan(&n)
	return uint64(n), classify(err)
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// reader reads the tree through a pool or within a transaction.
type reader struct{ q querier }

// Leaves returns leaves [from, to). A gap is the tree broken; leaves at or
// below the prune mark are ErrPruned.
func (s *Store) Leaves(ctx context.Context, from, to uint64) ([][]byte, error) {
	return reader{s.pool}.Leaves(ctx, from, to)
}

func (s *Store) Nodes(ctx context.Context, ids []audit.NodeID) ([][]byte, error) {
	return reader{s.pool}.Nodes(ctx, ids)
}

func (r reader) Leaves(ctx context.Context, from, to uint64) ([][]byte, error) {
	var pruned int64
	if err := r.q.QueryRow(ctx, `SELECT coalesce(max(upto), 0) FROM audit_pruned`).Scan(&pruned); err != nil {
		return nil, classify(err)
	}
	if from < uint64(pruned) {
		return nil, fmt.Errorf("postgres: entry %d: %w", from+1, audit.ErrPruned)
	}
	rows, err := r.q.Query(ctx, `SELECT seq, leaf FROM audit_entries WHERE seq > $1 AND seq <= $2 ORDER BY seq`, int64(from), int64(to))
	if err != nil {
		return nil, classify(err)
	}
	out := make([][]byte, 0, to-from)
	want := int64(from) + 1
	var seq int64
	var leaf []byte
	_, err = pgx.ForEachRow(rows, []any{&seq, &leaf}, func() error {
		if seq != want {
			return fmt.Errorf("postgres: entry %d missing: %w", want, audit.ErrTreeBroken)
		}
		out = append(out, leaf)
		want++
		return nil
	})
	if err != nil {
		return nil, classify(err)
	}
	if uint64(want) <= to {
		return nil, fmt.Errorf("postgres: entry %d missing: %w", want, audit.ErrTreeBroken)
	}
	return out, nil
}

func (r reader) Nodes(ctx context.Context, ids []audit.NodeID) ([][]byte, error) {
	levels := make([]int16, len(ids))
	idx := make([]int64, len(ids))
	for i, id := range ids {
		levels[i], idx[i] = int16(id.Level), int64(id.Index)
	}
	rows, err := r.q.Query(ctx, `SELECT t.o, n.hash FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS t(lv, ix, o)
		JOIN audit_nodes n ON n.level = t.lv AND n.idx = t.ix ORDER BY t.o`, levels, idx)
	if err != nil {
		return nil, classify(err)
	}
	out := make([][]byte, len(ids))
	var o int64
	var h []byte
	if _, err := pgx.ForEachRow(rows, []any{&o, &h}, func() error {
		out[o-1] = h
		return nil
	}); err != nil {
		return nil, classify(err)
	}
	for i, h := range out {
		if len(h) != 32 {
			return nil, fmt.Errorf("postgres: tree node %d/%d missing: %w", ids[i].Level, ids[i].Index, audit.ErrTreeBroken)
		}
	}
	return out, nil
}

func (s *Store) PutCheckpoint(ctx context.Context, size uint64, note []byte) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING`, int64(size), note)
	return classify(err)
}

// Seals returns the seals of commits that ended at sizes in (after, upto].
func (s *Store) Seals(ctx context.Context, after, upto uint64) ([]audit.StoredSeal, error) {
	rows, err := s.pool.Query(ctx, `SELECT size, mac FROM audit_seals WHERE size > $1 AND size <= $2 ORDER BY size`, int64(after), clampInt64(upto))
	if err != nil {
		return nil, classify(err)
	}
	seals, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (audit.StoredSeal, error) {
		var size int64
		var mac []byte
		err := r.Scan(&size, &mac)
		return audit.StoredSeal{Size: uint64(size), MAC: mac}, err
	})
	return seals, classify(err)
}

// Sealed reports whether a commit was ever stored with a seal.
func (s *Store) Sealed(ctx context.Context) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM audit_seals)`).Scan(&ok)
	return ok, classify(err)
}

func (s *Store) PutWitnessed(ctx context.Context, size uint64, note []byte) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_witnessed (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING`, int64(size), note)
	return classify(err)
}

// Witnessed returns the note of the largest witnessed checkpoint at or
// below size.
func (s *Store) Witnessed(ctx context.Context, atOrBelow uint64) ([]byte, error) {
	var note []byte
	err := s.pool.QueryRow(ctx, `SELECT note FROM audit_witnessed WHERE size <= $1 ORDER BY size DESC LIMIT 1`, clampInt64(atOrBelow)).Scan(&note)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return note, classify(err)
}

// clampInt64 is n as a bigint, math.MaxInt64 for anything larger.
func clampInt64(n uint64) int64 { return int64(min(n, math.MaxInt64)) }

func (s *Store) LatestCheckpoint(ctx context.Context) ([]byte, error) {
	var note []byte
	err := s.pool.QueryRow(ctx, `SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1`).Scan(&note)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return note, classify(err)
}

// Checkpoints returns the signed notes of sizes above after, oldest first,
// at most limit.
func (s *Store) Checkpoints(ctx context.Context, after uint64, limit int) ([][]byte, error) {
	rows, err := s.pool.Query(ctx, `SELECT note FROM audit_checkpoints WHERE size > $1 ORDER BY size LIMIT $2`, int64(after), limit)
	if err != nil {
		return nil, classify(err)
	}
	notes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	return notes, classify(err)
}

const logKeyCols = `key_id, public_key, provider, handle, created_at`

func (s *Store) LogKey(ctx context.Context) (store.Key, error) {
	k := store.Key{Scope: store.LogKeyScope, State: store.Active}
	err := s.pool.QueryRow(ctx, `SELECT `+logKeyCols+` FROM audit_log_key WHERE id = 1`).Scan(&k.ID, &k.Public, &k.Provider, &k.Handle, &k.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return k, fmt.Errorf("postgres: no audit checkpoint key: %w", signerr.ErrKeyNotFound)
	}
	k.CreatedAt = k.CreatedAt.UTC()
	return k, classify(err)
}

func (s *Store) CreateLogKey(ctx context.Context, k store.Key) (store.Key, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO audit_log_key (id, `+logKeyCols+`) VALUES (1, $1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
		k.ID, []byte(k.Public), k.Provider, k.Handle, k.CreatedAt); err != nil {
		return store.Key{}, classify(err)
	}
	return s.LogKey(ctx)
}

// PruneAudit marks the entries up to seq upto pruned (whole tiles, already
// exported, announced by the log record at seq record) and deletes them and
// their seals, through audit_prune: the one path that deletes (a SECURITY
// DEFINER function the owner and the prune role may call; the triggers
// refuse any other delete, for every role). Tree nodes and checkpoints stay.
func (s *Store) PruneAudit(ctx context.Context, upto, record uint64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var pruned, size int64
		var named bool
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(upto), 0), greatest((SELECT coalesce(max(seq), 0) FROM audit_entries), coalesce(max(upto), 0)),
			coalesce(bool_and(record_seq IS NOT NULL), true) FROM audit_pruned`).Scan(&pruned, &size, &named); err != nil {
			return err
		}
		if !(upto == uint64(pruned) && upto > 0 && !named) {
			if err := store.CheckPrune(upto, uint64(pruned), uint64(size), record); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `SELECT audit_prune($1, $2)`, int64(upto), int64(record))
		return err
	})
	return classify(err)
}

// PruneRecord is the seq of the log record the newest prune mark names (0:
// none).
func (s *Store) PruneRecord(ctx context.Context) (uint64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT record_seq FROM audit_pruned ORDER BY upto DESC LIMIT 1), 0)`).Scan(&n)
	return uint64(n), classify(err)
}

// WatchKeys calls changed with the scope of every key change any replica
// commits, until ctx ends. After a lost connection it calls changed("")
// (everything may have changed) once it is listening again.
func (s *Store) WatchKeys(ctx context.Context, changed func(scope string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listen(ctx, changed)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("postgres key-change listener lost; caches fall back to their TTL until it returns", "err", redact(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listen(ctx context.Context, changed func(string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.conn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	changed("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		changed(n.Payload)
	}
}

// TryLock runs fn while holding the named session advisory lock, if no
// other replica holds it; it reports whether fn ran.
func (s *Store) TryLock(ctx context.Context, name string, fn func(context.Context) error) (bool, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, classify(err)
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, name).Scan(&got); err != nil {
		return false, classify(err)
	}
	if !got {
		return false, nil
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext($1))`, name)
	return true, fn(ctx)
}
