package bench

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// The scale benchmarks (make bench-scale) run only with BENCH_SCALE=1: they
// take minutes to set up (10,000 scopes, a pre-filled audit log of
// BENCH_SCALE_ROWS rows, 1,000 connections), which `make bench` must not.
// Each reports its rows as ratios to the small case measured in the same
// run; nothing asserts a time.

func requireScale(b *testing.B) {
	b.Helper()
	if os.Getenv("BENCH_SCALE") != "1" {
		b.Skip("scale benchmark: run with BENCH_SCALE=1 (make bench-scale)")
	}
}

// BenchmarkS_Scopes: Sign spread round-robin over N scopes (1, 1,000 and
// 10,000, each bootstrapped with its own ACTIVE key) on one signer process
// with durable bbolt. Every row reports x-1-scope: its throughput over the
// 1-scope row at the same in-flight count (target: within 10 %, 0.9..1.1).
// The 1-scope signer runs again last (scopes=1-after): the control that
// tells this machine's drift from the cost of many scopes.
func BenchmarkS_Scopes(b *testing.B) {
	requireScale(b)
	ca := signertest.NewCA(b)
	for i, n := range []int{1, 1000, 10000, 1} {
		name := fmt.Sprintf("scopes=%d", n)
		if i == 3 {
			name = "scopes=1-after"
		}
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("s%05d", i)
		}
		t0 := time.Now()
		sp := startSigner(b, ca, map[string]string{"SIGNER_BOOTSTRAP_SCOPES": strings.Join(names, ",")})
		startup := time.Since(t0)
		rpc := signerv1.NewSignerServiceClient(sp.Env.Dial(b, sp.Env.Issue(b, signertest.CoreID)))
		var next atomic.Uint64
		call := func(ctx context.Context) error {
			s := names[next.Add(1)%uint64(n)]
			_, err := rpc.Sign(ctx, &signerv1.SignRequest{Scope: s, Payload: payload})
			return err
		}
		if err := waitReady(call); err != nil {
			b.Fatal(err)
		}
		for _, inflight := range []int{1, 64} {
			run(b, name, inflight, call, func(b *testing.B, r result) {
				against(inflight, "scopes=1", "1-scope")(b, r)
				b.ReportMetric(startup.Seconds(), "signer-start-s")
			}, clientCPU("client"), sp.cpu(), boltMeter(sp.BoltPath), sp.profile())
		}
		sp.stop()
	}
}

// scaleRows is BENCH_SCALE_ROWS, the audit entries pre-filled before the
// large-log rows (default 10,000,000).
func scaleRows(b *testing.B) uint64 {
	v := os.Getenv("BENCH_SCALE_ROWS")
	if v == "" {
		return 10_000_000
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		b.Fatalf("BENCH_SCALE_ROWS=%q: want a positive count", v)
	}
	return n
}

// BenchmarkS_AuditRows: direct Sign on a signer process with Postgres
// (fsync on), first on an empty log, then on a log pre-filled with
// BENCH_SCALE_ROWS entries. The large-log rows report x-empty (throughput
// over the empty log at the same in-flight count), how long the pre-fill
// took and its rate, how long the signer took to start on that log (it
// checks every stored entry against the tree before it serves) and how long
// until its start-up sweep had finished and it was idle. Then the empty log
// again (rows=0-after, its x-empty against the first): the control.
func BenchmarkS_AuditRows(b *testing.B) {
	requireScale(b)
	if pg == nil {
		b.Skip("no Postgres container (see the message above)")
	}
	rows := scaleRows(b)
	// The empty log is measured again after the large one, on a fresh
	// database: if it also runs slower, the machine changed (a noisy
	// neighbour, the page cache the fill left), not the cost of a large log.
	for i, fill := range []uint64{0, rows, 0} {
		name := fmt.Sprintf("rows=%d", fill)
		if i == 2 {
			name = "rows=0-after"
		}
		db := pg.NewDatabase(b)
		var fillTook time.Duration
		if fill > 0 {
			fillTook = prefill(b, db.AppDSN, fill)
		}
		t0 := time.Now()
		sp, conn := pgSigner(b, db, nil)
		startup := time.Since(t0)
		pgm := pgMeters(conn, pg)
		settle := waitIdle(b, time.Hour, sp.cpu(), pgm[2])
		call := directCall(b, sp.Env)
		if err := waitReady(call); err != nil {
			b.Fatal(err)
		}
		for _, inflight := range []int{1, 64} {
			run(b, name, inflight, call, func(b *testing.B, r result) {
				if i == 2 {
					against(inflight, "rows=0", "empty")(b, r)
				}
				if fill == 0 {
					return
				}
				against(inflight, "rows=0", "empty")(b, r)
				b.ReportMetric(fillTook.Seconds(), "prefill-s")
				b.ReportMetric(float64(fill)/fillTook.Seconds(), "prefill-rows/s")
				b.ReportMetric(startup.Seconds(), "signer-start-s")
				b.ReportMetric(settle.Seconds(), "signer-settle-s")
			}, append([]meter{clientCPU("client"), sp.cpu(), sp.profile()}, append(pgm, pgDiag(b, conn)...)...)...)
		}
		sp.stop()
	}
}

// prefill appends n audit entries to the empty log of the database at dsn
// the way the signer does: the pairs of entries a granted Sign writes
// (admission and outcome, as internal/signing's middleware fills them),
// encoded and hashed by the submitting goroutines and committed by the
// audit package's own group-commit writer through the Postgres store's
// AppendAudit, large batches per transaction. The result is a valid log:
// the signer that starts on it replays every entry against the stored tree
// before it serves. It returns how long the fill took.
func prefill(b *testing.B, dsn string, n uint64) time.Duration {
	b.Helper()
	ctx := context.Background()
	st, err := postgres.Open(ctx, postgres.Config{DSN: dsn, MaxConns: 4})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	w := audit.NewWriter(st, audit.WriterOptions{MaxBatch: 16384, QueueSize: 65536, CommitTimeout: time.Minute})
	defer w.Close()
	const method = "/plexsphere.signer.v1.SignerService/Sign"
	object := auditlog.Object(scope, "k-prefill")
	pairs := n / 2
	workers := uint64(runtime.GOMAXPROCS(0))
	t0 := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Value
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last *audit.Pending
			for i := g; i < pairs; i += workers {
				at := time.Now()
				req := auditlog.NewRequestID()
				adm := auditlog.New(req, auditlog.SubjectPeer(signertest.CoreID), auditlog.RelationConnect, method, at)
				adm.Object, adm.Reason, adm.Code = auditlog.Object(scope, ""), auditlog.ReasonGranted, "OK"
				mw := auditlog.New(req, auditlog.SubjectSigner, auditlog.RelationSign, method, at)
				p, s := sha256.Sum256(payload), sha256.Sum256(req[:])
				mw.Object, mw.Reason, mw.Code = object, auditlog.ReasonGranted, "OK"
				mw.PayloadSHA256, mw.SignatureSHA256 = p[:], s[:]
				last = w.Submit(ctx, audit.LaneAdmitted, adm, mw)
				if i%65536 < workers { // bound what is queued: wait now and then
					if err := last.Wait(ctx); err != nil {
						failed.CompareAndSwap(nil, err)
						return
					}
				}
			}
			if last != nil {
				if err := last.Wait(ctx); err != nil {
					failed.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("prefill: %v", err)
	}
	took := time.Since(t0)
	size, err := st.AuditSize(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if size != pairs*2 {
		b.Fatalf("prefill: log holds %d entries, want %d", size, pairs*2)
	}
	b.Logf("prefill: %d entries in %s (%.0f/s)", size, took.Round(time.Millisecond), float64(size)/took.Seconds())
	return took
}

// BenchmarkS_Connections: one signer process (durable bbolt) holding 1,000
// mTLS client connections, each opened and used once before the runs, like
// 1,000 sidecars; and the same for the framework floor (cmd/floorsigner),
// first, so the signer's rows can say how much of their loss any gRPC
// server pays. Rows per seat: 1 connection at 64 in flight, the 1,000
// connections at 64 in flight (calls round-robin over them) and at 1,000 in
// flight (one call per connection). Any failed call fails the row, so a row
// that reports had no errors; the 1,000-connection rows report x-1-conn and
// p50-x-1-conn (median latency over the 1-connection row at 64 in flight)
// and the server's peak RSS, the signer's rows also x-floor (throughput over
// the floor's same row). The signer's per-source connection rate and
// per-source connection cap are raised to let one address open 1,000
// connections at once (they limit a single source, and here every sidecar
// shares 127.0.0.1), and its memory limit is
// the one it takes from the chart's default container limit.
func BenchmarkS_Connections(b *testing.B) {
	requireScale(b)
	ca := signertest.NewCA(b)
	for _, seat := range []string{"floor", "signer"} {
		b.Run(seat, func(b *testing.B) {
			var p *proc
			var env *signertest.Env
			if seat == "floor" {
				p, env = startFloorSigner(b, ca)
			} else {
				// GOMEMLIMIT: what the signer sets itself from the chart's
				// 256 MiB container limit (0.8 of it, cmd/plexsphere-signer).
				sp := startSigner(b, ca, map[string]string{"SIGNER_CONNECTION_RATE": "2000", "SIGNER_MAX_CONNECTIONS_PER_SOURCE": "4096", "GOMEMLIMIT": "204MiB"})
				p, env = sp.proc, sp.Env
			}
			connections(b, p, env)
		})
	}
}

func connections(b *testing.B, p *proc, env *signertest.Env) {
	tlsCfg := env.ClientTLS(env.Issue(b, signertest.CoreID))
	dial := func() signerv1.SignerServiceClient {
		cc, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cc.Close() })
		return signerv1.NewSignerServiceClient(cc)
	}
	sign := func(rpc signerv1.SignerServiceClient) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := rpc.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: payload})
			return err
		}
	}
	one := sign(dial())
	if err := waitReady(one); err != nil {
		b.Fatal(err)
	}
	const conns = 1000
	rpcs := make([]func(context.Context) error, conns)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range rpcs {
		rpcs[i] = sign(dial())
		wg.Add(1)
		go func() { // open every connection now, concurrently
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := rpcs[i](ctx); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d connections failed their first call", n, conns)
	}
	var next atomic.Uint64
	many := func(ctx context.Context) error { return rpcs[next.Add(1)%conns](ctx) }
	meters := append([]meter{clientCPU("client"), p.cpu(), p.rss(), p.profile()}, p.syscalls()...)
	seat := b.Name()                              // BenchmarkS_Connections/<seat>
	parent := seat[:strings.LastIndex(seat, "/")] // BenchmarkS_Connections
	vsFloor := func(b *testing.B, r result) {
		if strings.HasSuffix(seat, "/signer") {
			vs(b, r, parent+"/floor/"+strings.TrimPrefix(b.Name(), seat+"/"), "floor")
		}
	}
	run(b, "conns=1", 64, one, vsFloor, meters...)
	for _, inflight := range []int{64, conns} {
		run(b, fmt.Sprintf("conns=%d", conns), inflight, many, func(b *testing.B, r result) {
			vsFloor(b, r)
			base, ok := measured[seat+"/conns=1/inflight=64"]
			if !ok {
				return
			}
			b.ReportMetric(r.rate/base.rate, "x-1-conn")
			b.ReportMetric(float64(r.p50)/float64(base.p50), "p50-x-1-conn")
		}, meters...)
	}
}
