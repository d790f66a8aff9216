package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "plexsphere-bench-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		flag.Parse()
		if flag.Lookup("test.bench").Value.String() == "" {
			return m.Run() // the harness's own tests need no container
		}
		if why := pgtest.Unavailable(context.Background()); why == "" {
			// fsync on: the point is to price durability.
			opts := []pgtest.Option{pgtest.Fsync()}
			if profileDir != "" {
				opts = append(opts, pgtest.Preload("pg_stat_statements")) // pgStatements
			}
			s, err := pgtest.Start(context.Background(), opts...)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: postgres:", err)
			} else {
				pg = s
				defer s.Close()
			}
		} else {
			fmt.Fprintln(os.Stderr, "bench: postgres benchmarks skipped:", why)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// pgSigner runs plexsphere-signer (its own process) on a fresh database of
// the bench's Postgres (fsync on), connected as the runtime role, and opens
// an owner connection to read the database's figures.
func pgSigner(b *testing.B, db pgtest.DB, set map[string]string) (*signerProc, *pgx.Conn) {
	b.Helper()
	vars := map[string]string{
		"SIGNER_STORE":              "postgres",
		"SIGNER_POSTGRES_DSN":       db.AppDSN,
		"SIGNER_POSTGRES_MAX_CONNS": "8",
	}
	for k, v := range set {
		vars[k] = v
	}
	sp := startSigner(b, signertest.NewCA(b), vars)
	return sp, adminConn(b, db.AdminDSN)
}

// BenchmarkF_Postgres: the signer (its own process) on Postgres with fsync
// on: direct mTLS with the group-commit writer as configured (up to 256
// entries per transaction) and with one call's entries per transaction, and
// the full path through plexsphere-sidecar with group commit. Beside the
// client's, signer's and sidecar's CPU per call: the Postgres container's
// (every process of it), the audit tables' growth per call (store-bytes/op)
// and the WAL written per call. Ratios: x-floor against the framework floor
// and x-bbolt against the same path on durable bbolt, both measured earlier
// in the run (BenchmarkB_Direct, BenchmarkD_Sidecar).
func BenchmarkF_Postgres(b *testing.B) {
	if pg == nil {
		b.Skip("no Postgres container (see the message above)")
	}
	for _, tc := range []struct {
		name     string
		maxBatch int
	}{{"group-commit", 256}, {"one-call-per-commit", 1}} {
		sp, conn := pgSigner(b, pg.NewDatabase(b), map[string]string{"SIGNER_AUDIT_MAX_BATCH": strconv.Itoa(tc.maxBatch)})
		pgm := append(pgMeters(conn, pg), pgStatements(b, conn))
		direct := directCall(b, sp.Env)
		calls := []func(context.Context) error{direct}
		var side func(context.Context) error
		var scp *proc
		if tc.maxBatch > 1 {
			var sock string
			sock, scp = startSidecarProcess(b, sp.Env)
			side = unixCall(b, sock)
			calls = append(calls, side)
		}
		for _, c := range calls {
			if err := waitReady(c); err != nil {
				b.Fatal(err)
			}
		}
		for _, n := range []int{1, 64} {
			run(b, tc.name+"/direct", n, direct,
				against(n, "BenchmarkB_Direct/floor-signer", "floor", "BenchmarkB_Direct/signer", "bbolt"),
				append([]meter{clientCPU("client"), sp.cpu(), sp.profile()}, pgm...)...)
			if side != nil {
				run(b, tc.name+"/sidecar", n, side,
					against(n, "BenchmarkD_Sidecar/floor-relay", "floor", "BenchmarkD_Sidecar/sidecar", "bbolt"),
					append([]meter{clientCPU("client"), scp.cpu(), scp.rss(), sp.cpu(), sp.profile(), scp.profile()}, pgm...)...)
			}
		}
		sp.stop()
		if scp != nil {
			scp.stop()
		}
	}
}
