// Package pgtest runs a real Postgres for tests: one container per test
// package (testcontainers-go, the image scripts/build-postgres-image.sh builds
// locally), migrated once into a template database, and a fresh database
// cloned from it for every test.
//
// With no Docker engine or no image, tests skip with a message naming what
// is missing, except under CI=true, where they fail: a skipped contract test
// is a failed one.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/testenv"

	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/plexsphere/signer/internal/store/postgres"
)

// Image is the locally built Postgres image.
const Image = "plexsphere/postgres-test:15"

// AppRole is the service role, with the grants postgres.RuntimeGrants
// lists; PruneRole the prune role, with postgres.PruneGrants besides.
const (
	AppRole       = "plexsphere_signer"
	AppPassword   = "signer-app-password"
	PruneRole     = "plexsphere_signer_prune"
	PrunePassword = "signer-prune-password"
)

const (
	superuser = "postgres"
	password  = "postgres-test-password"
	template  = "signer_template"
)

// Server is a running Postgres container.
type Server struct {
	Container *tcpostgres.PostgresContainer
	host      string
	port      string

	once    sync.Once
	tmplErr error
	n       atomic.Int64
}

// Option adjusts the container.
type Option func(*options)

type options struct {
	fixedPort bool
	fsync     bool
	preload   string
}

// FixedPort publishes 5432 on a host port chosen once, so the DSN stays valid
// across Stop and Start (fault tests).
func FixedPort() Option { return func(o *options) { o.fixedPort = true } }

// Fsync runs Postgres with fsync on (benchmarks); tests default to off.
func Fsync() Option { return func(o *options) { o.fsync = true } }

// Preload loads a server library at start (shared_preload_libraries), e.g.
// pg_stat_statements for a profiled benchmark.
func Preload(lib string) Option { return func(o *options) { o.preload = lib } }

// No registry is reachable, so testcontainers' reaper image cannot be
// pulled; containers are removed by Close instead. Set before testcontainers
// reads its configuration.
// Published ports are reached on loopback: testcontainers would otherwise
// guess the default gateway when it believes it runs in a container, as it
// does on these machines. Both can be overridden from the environment.
func init() {
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	if os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
}

// Unavailable explains why no container can run, or is "" when one can.
func Unavailable(ctx context.Context) string {
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return "no Docker engine reachable: " + err.Error()
	}
	defer p.Close()
	if err := p.Health(ctx); err != nil {
		return "no Docker engine reachable: " + err.Error()
	}
	if _, err := p.Client().ImageInspect(ctx, Image); err != nil {
		return "image " + Image + " is missing: build it with scripts/build-postgres-image.sh"
	}
	return ""
}

// Start runs a container. Callers usually go through Main.
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	cmd := []string{"postgres", "-c", "fsync=off", "-c", "max_connections=200"}
	if o.fsync {
		cmd = []string{"postgres", "-c", "max_connections=200"}
	}
	if o.preload != "" {
		cmd = append(cmd, "-c", "shared_preload_libraries="+o.preload)
	}
	custom := []testcontainers.ContainerCustomizer{
		tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername(superuser), tcpostgres.WithPassword(password),
		testcontainers.WithCmd(cmd...),
		// The image has no shell tools for a port probe from inside; the log
		// line plus a real connection (below) is the readiness check.
		testcontainers.WithWaitStrategy(
			wait.ForLog("database system is ready to accept connections").WithStartupTimeout(60 * time.Second)),
	}
	if o.fsync {
		// The container's own filesystem is fuse-overlayfs on these
		// machines: every WAL flush would cross a FUSE daemon. A volume is a
		// directory on the host's disk, where the bbolt benchmarks write
		// too, so the two stores are measured on the same fsync. It goes
		// with the container (removed with its volumes).
		custom = append(custom, testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeVolume, Target: "/var/lib/postgresql"})
		}))
	}
	if o.fixedPort {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		custom = append(custom, testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{network.MustParsePort("5432/tcp"): {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: port}}}
		}))
	}
	c, err := tcpostgres.Run(ctx, Image, custom...)
	if err != nil {
		if c != nil {
			testcontainers.TerminateContainer(c)
		}
		return nil, fmt.Errorf("pgtest: start %s: %w", Image, err)
	}
	host, err := c.Host(ctx)
	if err != nil {
		return nil, err
	}
	mapped, err := c.MappedPort(ctx, "5432/tcp")
	if err != nil {
		return nil, err
	}
	s := &Server{Container: c, host: host, port: mapped.Port()}
	if err := s.WaitReady(ctx, 30*time.Second); err != nil {
		testcontainers.TerminateContainer(c)
		return nil, err
	}
	return s, nil
}

// WaitReady waits until the server accepts a connection (after Start, or
// after the container was restarted).
func (s *Server) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, s.AdminDSN("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres not accepting connections: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// Close removes the container.
func (s *Server) Close() error { return testcontainers.TerminateContainer(s.Container) }

// DSN is a connection string for db as user.
func (s *Server) DSN(db, user, pass string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, pass, net.JoinHostPort(s.host, s.port), db)
}

// AdminDSN connects as the superuser.
func (s *Server) AdminDSN(db string) string { return s.DSN(db, superuser, password) }

func (s *Server) exec(ctx context.Context, db string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, s.AdminDSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func (s *Server) makeTemplate(ctx context.Context) error {
	if err := s.exec(ctx, "postgres",
		"CREATE DATABASE "+template,
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", AppRole, AppPassword),
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", PruneRole, PrunePassword)); err != nil {
		return err
	}
	// As plexsphere-signer --migrate-only does: the owner migrates and
	// grants the service and prune roles what they need, nothing more.
	st, err := postgres.Open(ctx, postgres.Config{DSN: s.AdminDSN(template)})
	if err != nil {
		return err
	}
	defer st.Close()
	return st.MigrateAndGrant(ctx, postgres.Roles{Runtime: AppRole, Prune: PruneRole})
}

// DB is a fresh, migrated database.
type DB struct {
	Name     string
	AdminDSN string // the owner: may migrate
	AppDSN   string // the service role: no UPDATE/DELETE on the audit log
	PruneDSN string // the prune role: deletes only through audit_prune
}

// NewDatabase clones the migrated template for one test and drops it after.
func (s *Server) NewDatabase(t testing.TB) DB {
	t.Helper()
	ctx := context.Background()
	s.once.Do(func() { s.tmplErr = s.makeTemplate(ctx) })
	if s.tmplErr != nil {
		t.Fatalf("pgtest: template: %v", s.tmplErr)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	if err := s.exec(ctx, "postgres", "CREATE DATABASE "+name+" TEMPLATE "+template); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { s.exec(context.Background(), "postgres", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return DB{Name: name, AdminDSN: s.AdminDSN(name), AppDSN: s.DSN(name, AppRole, AppPassword), PruneDSN: s.DSN(name, PruneRole, PrunePassword)}
}

// Open opens the store for a fresh database as the service role.
func (s *Server) Open(t testing.TB) (*postgres.Store, DB) {
	t.Helper()
	db := s.NewDatabase(t)
	st, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AppDSN, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, db
}

// shared is the package's container, started by Main.
var (
	shared     *Server
	sharedSkip string
)

// Main is TestMain for packages that need Postgres: it starts the container
// (or records why it cannot), runs the tests and removes it.
func Main(m interface{ Run() int }) int {
	ctx := context.Background()
	if why := Unavailable(ctx); why != "" {
		sharedSkip = why
	} else {
		s, err := Start(ctx)
		if err != nil {
			sharedSkip = err.Error()
		} else {
			shared = s
			defer s.Close()
		}
	}
	return m.Run()
}

// Require returns the package's server, or skips the test saying what is
// missing (fails instead under CI=true).
func Require(t testing.TB) *Server {
	t.Helper()
	if shared != nil {
		return shared
	}
	why := sharedSkip
	if why == "" {
		why = "pgtest.Main was not called from TestMain"
	}
	testenv.Require(t, "Postgres", why)
	return nil
}
