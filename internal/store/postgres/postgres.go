// Package postgres is the store for several signer replicas sharing one
// database: key metadata and lifecycle (with the one-ACTIVE-key and
// one-open-rotation rules as partial unique indexes), and the hash-chained,
// append-only audit log, written by the group-commit writer one transaction
// per batch. Migrations are embedded and applied under an advisory lock;
// key changes are announced with NOTIFY so replicas drop stale caches at once.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
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
	// Migrate applies the embedded migrations at open. Turn it off when the
	// service's role may not run DDL (see docs/postgres.md).
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
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect to %s/%s as %s: %w", pc.ConnConfig.Host, pc.ConnConfig.Database, pc.ConnConfig.User, redact(err))
	}
	s := &Store{pool: pool, conn: pc.ConnConfig.Copy(), log: cfg.Log}
	if cfg.Migrate {
		if err := s.Migrate(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
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
	for _, sentinel := range signerr.Sentinels {
		if errors.Is(err, sentinel) {
			return err
		}
	}
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return err
	case errors.As(err, &pe) && transient(pe.Code):
		return fmt.Errorf("postgres: %w: %s (%s)", audit.ErrUnavailable, pe.Message, pe.Code)
	case errors.As(err, &pe):
		if pe.Code == "23505" { // unique_violation
			switch pe.ConstraintName {
			case "signing_keys_one_pending":
				return fmt.Errorf("postgres: %w", signerr.ErrRotationInProgress)
			case "signing_keys_one_active", "signing_keys_pkey":
				return fmt.Errorf("postgres: %s: %w", pe.ConstraintName, signerr.ErrInvariant)
			}
		}
		return fmt.Errorf("postgres: %s (%s)", pe.Message, pe.Code)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("postgres: %w: %w", audit.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %w: %v", audit.ErrUnavailable, redact(err))
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

func (s *Store) Transition(ctx context.Context, op store.Op, scope, id string, at time.Time) (changed []store.Key, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		k, err := scanKey(tx.QueryRow(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("postgres: key %q: %w", id, signerr.ErrKeyNotFound)
		}
		if err != nil {
			return err
		}
		next, err := store.Apply(op, k, scope, at)
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
		if _, err := tx.Exec(ctx, `UPDATE signing_keys SET state = $2, activated_at = $3, retired_at = $4 WHERE id = $1`,
			next.ID, next.State.String(), nullTime(next.ActivatedAt), nullTime(next.RetiredAt)); err != nil {
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

// AppendAudit commits the batch in one transaction. The row lock on
// audit_head serialises replicas, so the chain stays one chain; COPY makes
// a batch of hundreds cost about as much as one row.
func (s *Store) AppendAudit(ctx context.Context, batch []audit.Entry) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var seq int64
		var hash string
		if err := tx.QueryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE`).Scan(&seq, &hash); err != nil {
			return err
		}
		last, head := audit.Chain(batch, uint64(seq), hash)
		rows := make([][]any, len(batch))
		for i, e := range batch {
			rows[i] = []any{int64(e.Seq), e.ID, e.RequestID, e.Subject, e.Relation, e.Object, e.Reason, e.CaveatContext,
				e.Timestamp, e.Method, e.Code, e.PayloadSHA256, e.SignatureSHA256, e.PrevHash, e.Hash}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_entries"}, auditCols, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1`, int64(last), head)
		return err
	})
	return classify(err)
}

var auditCols = []string{"seq", "id", "request_id", "subject", "relation", "object", "reason", "caveat_context",
	"ts", "method", "code", "payload_sha256", "signature_sha256", "prev_hash", "hash"}

// likePrefix escapes a literal prefix for LIKE.
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}

func (s *Store) ListAudit(ctx context.Context, q store.AuditQuery) ([]audit.Entry, error) {
	var limit any // NULL: no limit
	if q.Limit > 0 {
		limit = q.Limit
	}
	rows, err := s.pool.Query(ctx, `SELECT `+strings.Join(auditCols, ", ")+` FROM audit_entries
		WHERE seq > $1 AND ($2 = '' OR subject = $2) AND ($3 = '' OR relation = $3) AND ($4 = '' OR reason = $4)
		  AND ($5 = '' OR object LIKE $6)
		ORDER BY seq LIMIT $7`,
		int64(q.AfterSeq), q.Subject, q.Relation, q.Reason, q.ObjectPrefix, likePrefix(q.ObjectPrefix), limit)
	if err != nil {
		return nil, classify(err)
	}
	entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (audit.Entry, error) {
		var e audit.Entry
		var seq int64
		err := r.Scan(&seq, &e.ID, &e.RequestID, &e.Subject, &e.Relation, &e.Object, &e.Reason, &e.CaveatContext,
			&e.Timestamp, &e.Method, &e.Code, &e.PayloadSHA256, &e.SignatureSHA256, &e.PrevHash, &e.Hash)
		e.Seq, e.Timestamp = uint64(seq), e.Timestamp.UTC()
		if e.CaveatContext == nil {
			e.CaveatContext = []string{}
		}
		return e, err
	})
	return entries, classify(err)
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
