package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/internal/testing/signertest"
)

// BenchmarkR_Replicas: 1, 2 and 3 signer replicas (each its own process)
// on one Postgres database (fsync on), one plexsphere-sidecar spreading the
// calls over them (SIDECAR_UPSTREAM a list), serial and 64 in flight. Twice:
// with each replica under a CPU quota of its own (a cgroup v1 CFS quota of
// BENCH_REPLICA_CPU cores, default 0.25), as replicas on separate machines
// would be, and unconstrained on this machine. Beside signs/s and x-one (the
// ratio to one replica in the same mode and run): the replicas' CPU per
// Sign together, Postgres's CPU and WAL bytes per Sign, and how the
// replicas' commits went (commits per Sign, and those that found another
// replica's entries first and caught up) beside Postgres's transactions
// and tuples read per Sign (pg_stat_database).
//
// BENCH_SIGNER_BEFORE, set to a plexsphere-signer binary (built from an
// earlier commit), adds the same rows for it, named before/...: a
// change to the append path measured against its predecessor in one run.
func BenchmarkR_Replicas(b *testing.B) {
	requireScale(b)
	if pg == nil {
		b.Skip("no Postgres container (see the message above)")
	}
	quota := 0.25
	if v := os.Getenv("BENCH_REPLICA_CPU"); v != "" {
		var err error
		if quota, err = strconv.ParseFloat(v, 64); err != nil || quota <= 0 {
			b.Fatalf("BENCH_REPLICA_CPU=%q: want a number of cores above 0", v)
		}
	}
	builds := []struct{ name, bin string }{{"", ""}}
	if before := os.Getenv("BENCH_SIGNER_BEFORE"); before != "" {
		builds = append(builds, struct{ name, bin string }{"before/", before})
	}
	for _, build := range builds {
		for _, mode := range []struct {
			name  string
			quota float64
		}{{fmt.Sprintf("quota=%g", quota), quota}, {"unconstrained", 0}} {
			for _, n := range []int{1, 2, 3} {
				replicaRows(b, build.name+mode.name, build.bin, mode.quota, n)
			}
		}
	}
}

// replicaRows runs n replicas (the signer binary bin, or this checkout's)
// on a fresh database, one sidecar in front, and measures them serial and
// at 64 in flight, each replica limited to quota cores (0: no limit).
func replicaRows(b *testing.B, prefix, bin string, quota float64, n int) {
	db := pg.NewDatabase(b)
	ca := signertest.NewCA(b)
	kek := randHex(32)
	// The replicas' shared checkpoint directory, as the chart mounts one
	// claim in every replica.
	anchor := b.TempDir()
	var replicas []*signerProc
	var addrs []string
	for i := range n {
		// One at a time: the first bootstraps the scope and the checkpoint
		// key, the others find them.
		sp := startSignerBin(b, bin, ca, map[string]string{
			"SIGNER_STORE":              "postgres",
			"SIGNER_POSTGRES_DSN":       db.AppDSN,
			"SIGNER_POSTGRES_MAX_CONNS": "8",
			"SIGNER_LOCAL_KEK":          kek,
			"SIGNER_CHECKPOINT_LOG":     anchor,
		})
		if quota > 0 {
			limitCPU(b, fmt.Sprintf("r%d", i), sp.proc, quota)
		}
		replicas, addrs = append(replicas, sp), append(addrs, sp.Env.Addr)
	}
	sock, scp := startSidecarProcess(b, replicas[0].Env, "SIDECAR_UPSTREAM="+strings.Join(addrs, ","))
	side := unixCall(b, sock)
	if err := waitReady(side); err != nil {
		b.Fatal(err)
	}
	conn := adminConn(b, db.AdminDSN)
	// With BENCH_PROFILE_DIR, the first replica's and the sidecar's CPU
	// profiles of each row, and Postgres's statements.
	meters := []meter{clientCPU("client"), scp.cpu(), replicasCPU(replicas), replicas[0].profile(), scp.profile(), pgStatements(b, conn)}
	meters = append(meters, pgMeters(conn, pg)...)
	meters = append(meters, commitMeters(replicas)...)
	// Postgres's own count of transactions and of tuples it read, per op:
	// what its CPU per Sign is spent on.
	meters = append(meters,
		meter{unit: "pg-xacts/op", read: pgQuery(conn, `SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database WHERE datname = current_database()`)},
		meter{unit: "pg-tuples/op", read: pgQuery(conn, `SELECT sum(tup_returned + tup_fetched) FROM pg_stat_database WHERE datname = current_database()`)},
	)
	for _, inflight := range []int{1, 64} {
		name := fmt.Sprintf("%s/replicas=%d", prefix, n)
		run(b, name, inflight, side, func(b *testing.B, r result) {
			parent := b.Name()[:strings.Index(b.Name(), "/")]
			vs(b, r, fmt.Sprintf("%s/%s/replicas=1/inflight=%d", parent, prefix, inflight), "one")
		}, meters...)
	}
	scp.stop()
	for _, sp := range replicas {
		sp.stop()
	}
}

// replicasCPU is the CPU µs per op of all the replicas together.
func replicasCPU(ps []*signerProc) meter {
	return meter{unit: "signers-cpu-µs/op", read: func() (float64, error) {
		sum := 0.0
		for _, p := range ps {
			us, err := procCPU(p.pid)
			if err != nil {
				return 0, err
			}
			sum += us
		}
		return sum, nil
	}}
}

// commitMeters read the replicas' plexsphere_signer_audit_commits_total by
// path: commits per op, and per op those that found another replica's
// entries first and caught up (without the lock, or under it).
func commitMeters(ps []*signerProc) []meter {
	sum := func(path string) func() (float64, error) {
		return func() (float64, error) {
			total := 0.0
			for _, p := range ps {
				v, err := scrape(p.OpsAddr, "plexsphere_signer_audit_commits_total", path)
				if err != nil {
					return 0, err
				}
				total += v
			}
			return total, nil
		}
	}
	return []meter{
		{unit: "commits/op", read: sum("")},
		{unit: "catchup-commits/op", read: sum(`path="catchup"`)},
		{unit: "locked-commits/op", read: sum(`path="locked"`)},
	}
}

// scrape adds up the samples of metric on a process's /metrics whose
// labels contain label ("" for all).
func scrape(ops, metric, label string) (float64, error) {
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") || !strings.Contains(line, label) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %v", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// limitCPU puts p in a cgroup v1 CPU controller group of its own with a
// CFS quota of cores (per 100 ms period), removed when the benchmark ends.
// Go's runtime notices the limit and lowers GOMAXPROCS as in a container.
func limitCPU(b *testing.B, name string, p *proc, cores float64) {
	b.Helper()
	root := "/sys/fs/cgroup/cpu"
	if _, err := os.Stat(filepath.Join(root, "cpu.cfs_quota_us")); err != nil {
		b.Fatalf("a CPU quota needs the cgroup v1 cpu controller at %s (run as root): %v", root, err)
	}
	dir := filepath.Join(root, "plexsphere-bench", fmt.Sprintf("%s-%d", name, p.pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		p.stop() // a group with a process in it cannot be removed
		os.Remove(dir)
	})
	for _, w := range []struct{ file, value string }{
		{"cpu.cfs_period_us", "100000"},
		{"cpu.cfs_quota_us", strconv.Itoa(int(cores * 100000))},
		{"cgroup.procs", strconv.Itoa(p.pid)},
	} {
		if err := os.WriteFile(filepath.Join(dir, w.file), []byte(w.value), 0); err != nil {
			b.Fatalf("cgroup %s: %s: %v", dir, w.file, err)
		}
	}
}

// cpusetUsable says whether pinCPUs can work here: the cgroup v1 cpuset
// controller, writable (root).
func cpusetUsable() bool {
	_, err := os.Stat("/sys/fs/cgroup/cpuset/cpuset.cpus")
	return err == nil && os.Geteuid() == 0
}

// pinCPUs moves process pid (all its threads) into a cgroup v1 cpuset group
// of its own holding only cpus ("0", "1"), as a process on a machine of its
// own. The returned func moves it back to the root group and removes the
// group; it also runs when the benchmark ends.
func pinCPUs(b *testing.B, name string, pid int, cpus string) (undo func()) {
	b.Helper()
	root := "/sys/fs/cgroup/cpuset"
	dir := filepath.Join(root, "plexsphere-bench", fmt.Sprintf("%s-%d", name, pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	// A v1 cpuset group takes no process before it has CPUs and memory
	// nodes; its parent's may be empty too, so each level gets the root's.
	mems, err := os.ReadFile(filepath.Join(root, "cpuset.mems"))
	if err != nil {
		b.Fatal(err)
	}
	all, err := os.ReadFile(filepath.Join(root, "cpuset.cpus"))
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range []struct{ file, value string }{
		{filepath.Join(filepath.Dir(dir), "cpuset.cpus"), string(all)},
		{filepath.Join(filepath.Dir(dir), "cpuset.mems"), string(mems)},
		{filepath.Join(dir, "cpuset.cpus"), cpus},
		{filepath.Join(dir, "cpuset.mems"), string(mems)},
		{filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)},
	} {
		if err := os.WriteFile(w.file, []byte(w.value), 0); err != nil {
			b.Fatalf("cpuset %s: %v", w.file, err)
		}
	}
	var once sync.Once
	undo = func() {
		once.Do(func() {
			// A process that has exited is in no group: nothing to move.
			_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
			os.Remove(dir)
		})
	}
	b.Cleanup(undo)
	return undo
}

// adminConn is an owner connection to a bench database, to read its
// figures.
func adminConn(b *testing.B, dsn string) *pgx.Conn {
	b.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
