package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/internal/testing/pgtest"
)

// Store bytes per Sign: how much the audit log (both entries of a call,
// their share of the Merkle tree nodes and of the indexes) grows the store.

// boltUsed is the size of the bbolt file's allocated pages: the high-water
// page id of its newest valid meta page times the page size. The file itself
// grows in steps of up to 1 GiB (bbolt preallocates), which would hide the
// growth of a short run; the high-water mark moves page by page.
func boltUsed(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Page 0 holds the first meta page; its page size locates page 1.
	const (
		hdr      = 16 // page header: id, flags, count, overflow
		magic    = 0xED0CDAED
		sumStart = hdr
		sumEnd   = hdr + 56 // the checksum covers the meta up to itself
	)
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil {
		return 0, err
	}
	pageSize := int64(binary.LittleEndian.Uint32(head[hdr+8:]))
	if pageSize < 512 || pageSize > 1<<16 {
		return 0, fmt.Errorf("%s: page size %d: not a bbolt file", path, pageSize)
	}
	var best, bestTx uint64
	found := false
	for i := range int64(2) {
		m := make([]byte, hdr+64)
		if _, err := f.ReadAt(m, i*pageSize); err != nil {
			return 0, err
		}
		if binary.LittleEndian.Uint32(m[hdr:]) != magic {
			continue
		}
		h := fnv.New64a()
		h.Write(m[sumStart:sumEnd])
		if h.Sum64() != binary.LittleEndian.Uint64(m[sumEnd:]) {
			continue // being written: the other meta page is the valid one
		}
		pgid, txid := binary.LittleEndian.Uint64(m[hdr+40:]), binary.LittleEndian.Uint64(m[hdr+48:])
		if !found || txid > bestTx {
			best, bestTx, found = pgid, txid, true
		}
	}
	if !found {
		return 0, fmt.Errorf("%s: no valid meta page", path)
	}
	return float64(best * uint64(pageSize)), nil
}

func boltMeter(path string) meter {
	return meter{unit: "store-bytes/op", read: func() (float64, error) { return boltUsed(path) }}
}

// auditTables are the tables a Sign grows on Postgres (checkpoints are
// signed on a timer, not per call, and are left out).
const auditTables = `pg_total_relation_size('audit_entries') + pg_total_relation_size('audit_nodes')`

// pgMeters are the Postgres figures read around a run over the connection
// conn (the database the signer uses, as its owner): the audit tables' size
// with their indexes, the WAL written by the whole server, and the CPU of
// every process of its container.
// pgQuery reads one number: the value of the SQL expression q over c.
func pgQuery(c *pgx.Conn, q string) func() (float64, error) {
	return func() (float64, error) {
		var v float64
		err := c.QueryRow(context.Background(), `SELECT (`+q+`)::float8`).Scan(&v)
		return v, err
	}
}

func pgMeters(conn *pgx.Conn, srv *pgtest.Server) []meter {
	return []meter{
		{unit: "store-bytes/op", read: pgQuery(conn, auditTables)},
		{unit: "pg-wal-bytes/op", read: pgQuery(conn, `pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')`)},
		{unit: "postgres-cpu-µs/op", read: func() (float64, error) { return containerCPU(srv.Container.GetContainerID()) }},
	}
}

// containerCPU is the CPU time in µs of every process a container ran
// (exited Postgres backends included), from its cgroup: cgroup v1 cpuacct,
// or v2 cpu.stat; failing both, the sum over the processes `docker top`
// lists now (which misses exited backends).
func containerCPU(id string) (float64, error) {
	for _, p := range []string{
		"/sys/fs/cgroup/cpuacct/docker/" + id + "/cpuacct.usage",
		"/sys/fs/cgroup/cpu,cpuacct/docker/" + id + "/cpuacct.usage",
		"/sys/fs/cgroup/cpuacct/system.slice/docker-" + id + ".scope/cpuacct.usage",
	} {
		if raw, err := os.ReadFile(p); err == nil {
			ns, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
			return ns / 1e3, err
		}
	}
	for _, p := range []string{
		"/sys/fs/cgroup/system.slice/docker-" + id + ".scope/cpu.stat",
		"/sys/fs/cgroup/docker/" + id + "/cpu.stat",
	} {
		if raw, err := os.ReadFile(p); err == nil {
			for _, line := range strings.Split(string(raw), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					return strconv.ParseFloat(v, 64)
				}
			}
		}
	}
	out, err := exec.Command("docker", "top", id, "-eo", "pid").Output()
	if err != nil {
		return 0, fmt.Errorf("no cgroup CPU account for container %s, and docker top: %w", id, err)
	}
	var sum float64
	var errs []error
	for _, f := range strings.Fields(string(out))[1:] {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		us, err := procCPU(pid)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		sum += us
	}
	return sum, errors.Join(errs...)
}

// pgDiag are the Postgres figures that tell why a large log costs more (the
// BenchmarkS_AuditRows rows): shared-buffer misses per call in the signer's
// database, full-page images written to the WAL per call (the first change
// of a page after a checkpoint), checkpoints during the run, and the share
// of the run an autovacuum worker was busy on the database (sampled every
// 50 ms over a second connection).
func pgDiag(b *testing.B, conn *pgx.Conn) []meter {
	b.Helper()
	ctx := context.Background()
	sampler, err := pgx.Connect(ctx, conn.Config().ConnString())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sampler.Close(ctx) })
	checkpoints := pgQuery(conn, `SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter`)
	var cp0 float64
	var stop func() float64
	return []meter{
		{unit: "pg-blks-read/op", read: pgQuery(conn, `SELECT blks_read FROM pg_stat_database WHERE datname = current_database()`)},
		{unit: "pg-wal-fpi/op", read: pgQuery(conn, `SELECT wal_fpi FROM pg_stat_wal`)},
		{unit: "pg-checkpoints", peak: true,
			reset: func() { cp0, _ = checkpoints() },
			read: func() (float64, error) {
				n, err := checkpoints()
				return n - cp0, err
			}},
		{unit: "pg-autovacuum-busy", peak: true,
			reset: func() {
				done, result := make(chan struct{}), make(chan float64)
				go func() {
					busy, all := 0, 0
					tick := time.NewTicker(50 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-done:
							result <- float64(busy) / float64(max(all, 1))
							return
						case <-tick.C:
							var n int
							if sampler.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
								WHERE backend_type = 'autovacuum worker' AND datname = current_database()`).Scan(&n) == nil {
								all++
								if n > 0 {
									busy++
								}
							}
						}
					}
				}()
				stop = func() float64 { close(done); return <-result }
			},
			read: func() (float64, error) { return stop(), nil }},
	}
}

// pgStatements is Postgres's profile of a row, with BENCH_PROFILE_DIR (the
// bench's Postgres then preloads pg_stat_statements): the statements the
// row's database ran, by total execution time, with calls, time and rows
// per op, written beside the processes' CPU profiles as
// <row>.postgres-statements.txt. Execution time includes waits (a
// statement queued on the append lock shows its wait). conn must be an
// admin connection to the row's database.
func pgStatements(b *testing.B, conn *pgx.Conn) meter {
	if profileDir == "" {
		return meter{}
	}
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		b.Fatalf("pg_stat_statements: %v", err)
	}
	return meter{
		reset: func() {
			if _, err := conn.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
				b.Fatalf("pg_stat_statements_reset: %v", err)
			}
		},
		after: func(b *testing.B) {
			rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, rows, regexp_replace(query, '\s+', ' ', 'g')
				FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
				ORDER BY total_exec_time DESC LIMIT 20`)
			if err != nil {
				b.Fatalf("pg_stat_statements: %v", err)
			}
			defer rows.Close()
			var out strings.Builder
			fmt.Fprintf(&out, "%d ops\n%10s %12s %10s  %s\n", b.N, "calls/op", "exec-µs/op", "rows/op", "statement")
			for rows.Next() {
				var calls, nrows int64
				var ms float64
				var q string
				if err := rows.Scan(&calls, &ms, &nrows, &q); err != nil {
					b.Fatalf("pg_stat_statements: %v", err)
				}
				n := float64(b.N)
				fmt.Fprintf(&out, "%10.4f %12.2f %10.4f  %.160s\n", float64(calls)/n, ms*1e3/n, float64(nrows)/n, q)
			}
			if err := rows.Err(); err != nil {
				b.Fatalf("pg_stat_statements: %v", err)
			}
			name := filepath.Join(profileDir, strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())+".postgres-statements.txt")
			if err := os.WriteFile(name, []byte(out.String()), 0o644); err != nil {
				b.Fatal(err)
			}
		},
	}
}
