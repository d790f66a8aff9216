package integration

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// replicas starts n signers on one database, sharing a CA and a KEK as a
// Deployment's replicas do.
func replicas(t *testing.T, srv *pgtest.Server, dsn string, n int, opts ...signertest.Option) []*signertest.Env {
	t.Helper()
	ca := signertest.NewCA(t)
	provider := signertest.NewLocalProvider(t)
	anchor := t.TempDir() // the replicas' shared checkpoint directory
	var envs []*signertest.Env
	for range n {
		st, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn, MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		envs = append(envs, signertest.Start(t, append([]signertest.Option{signertest.WithStore(st), signertest.WithCA(ca), signertest.WithProvider(provider),
			signertest.WithCheckpointLog(anchor)}, opts...)...))
	}
	return envs
}

type signedRow struct {
	seq    int64
	id     string
	sigSHA string
}

func grantedSignRows(t *testing.T, dsn string) []signedRow {
	var out []signedRow
	for _, e := range sqlEntries(t, dsn, 0) {
		if e.Relation == "sign" && e.Reason == "granted" {
			out = append(out, signedRow{seq: int64(e.Seq), id: e.RequestID.String(), sigSHA: hex.EncodeToString(e.SignatureSHA256)})
		}
	}
	return out
}

func allSeqs(t *testing.T, dsn string) []int64 {
	return query(t, dsn, `SELECT seq FROM audit_entries ORDER BY seq`, pgx.RowTo[int64])
}

// N goroutines × M signs spread over two signers on one database: exactly
// N×M granted sign rows, no duplicates, no gaps in the chain's seqs, and
// every returned signature matched to its own row.
func TestTwoReplicasAuditEverySignOnce(t *testing.T) {
	srv := pgtest.Require(t)
	db := srv.NewDatabase(t)
	envs := replicas(t, srv, db.AppDSN, 2)
	const N, M = 8, 40
	clients := make([]signerv1.SignerServiceClient, len(envs))
	for i, e := range envs {
		clients[i] = signerv1.NewSignerServiceClient(e.Dial(t, e.Issue(t, signertest.CoreID)))
	}
	sigs := make(chan string, N*M)
	errs := make(chan error, N*M)
	var wg sync.WaitGroup
	for g := range N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range M {
				c := clients[(g+i)%len(clients)]
				resp, err := c.Sign(context.Background(), &signerv1.SignRequest{Scope: signertest.Scope, Payload: fmt.Appendf(nil, "%d/%d", g, i)})
				if err != nil {
					errs <- err
					continue
				}
				sigs <- sigSHA(resp.Signature)
			}
		}()
	}
	wg.Wait()
	close(sigs)
	close(errs)
	for err := range errs {
		t.Fatalf("sign: %v", err)
	}
	rows := grantedSignRows(t, db.AdminDSN)
	if len(rows) != N*M {
		t.Fatalf("%d granted sign rows, want %d", len(rows), N*M)
	}
	bySig := map[string]int{}
	ids := map[string]bool{}
	for _, r := range rows {
		bySig[r.sigSHA]++
		if ids[r.id] {
			t.Fatalf("duplicate entry id %s", r.id)
		}
		ids[r.id] = true
	}
	for s := range sigs {
		if bySig[s] != 1 {
			t.Fatalf("returned signature %s… has %d rows, want 1", s[:12], bySig[s])
		}
		delete(bySig, s)
	}
	if len(bySig) != 0 {
		t.Fatalf("%d rows match no returned signature", len(bySig))
	}
	for i, s := range allSeqs(t, db.AdminDSN) {
		if s != int64(i+1) {
			t.Fatalf("seq %d at position %d: the chain has a gap", s, i)
		}
	}
	// The replicas took turns: commits found the other's entries and caught
	// up (the paths BenchmarkR_Replicas prices).
	caught := 0.0
	for _, e := range envs {
		caught += metricValue(t, e.Metrics, `plexsphere_signer_audit_commits_total{path="catchup"}`)
		caught += metricValue(t, e.Metrics, `plexsphere_signer_audit_commits_total{path="locked"}`)
	}
	if caught == 0 {
		t.Fatal("no commit caught up: the replicas never appended between each other's commits")
	}
	// One chain across both replicas.
	verify, err := signerv1.NewAuditServiceClient(envs[1].Dial(t, envs[1].Issue(t, signertest.OperatorID))).Verify(context.Background(), &signerv1.VerifyAuditRequest{})
	if err != nil || !verify.Ok {
		t.Fatalf("chain verify: %v %v", verify, err)
	}
}

// A key activated through one replica is used by the other without a
// restart (the store's change notice drops its cached ACTIVE key).
func TestKeyActivatedOnOneReplicaUsedByTheOther(t *testing.T) {
	srv := pgtest.Require(t)
	db := srv.NewDatabase(t)
	clock := signertest.NewClock(time.Now())
	envs := replicas(t, srv, db.AppDSN, 2, signertest.WithClock(clock),
		signertest.WithConfig(func(c *config.Signer) { c.KeyCacheTTL = time.Hour; c.PrePublish = time.Hour }))
	a, b := envs[0], envs[1]
	ctx := context.Background()
	bSign := signerv1.NewSignerServiceClient(b.Dial(t, b.Issue(t, signertest.CoreID)))
	first, err := bSign.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("before")})
	if err != nil {
		t.Fatal(err)
	}
	op := signerv1.NewRotationServiceClient(a.Dial(t, a.Issue(t, signertest.OperatorID)))
	opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: signertest.Scope})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: signertest.Scope, KeyId: opened.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
	// B's cache would hold the old key for an hour; the notice must beat it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := bSign.Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope, Payload: []byte("after")})
		if err != nil {
			t.Fatal(err)
		}
		if resp.KeyId == opened.Key.KeyId {
			break
		}
		if resp.KeyId != first.KeyId || time.Now().After(deadline) {
			t.Fatalf("replica B signs with %s, want %s", resp.KeyId, opened.Key.KeyId)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Postgres stopped mid-load: every Sign fails Unavailable with no
// signature; when it returns, signing resumes without a restart. Throughout,
// every returned signature has exactly one granted row.
func TestPostgresOutage(t *testing.T) {
	pgtest.Require(t)
	ctx := context.Background()
	srv, err := pgtest.Start(ctx, pgtest.FixedPort())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	db := srv.NewDatabase(t)
	env := replicas(t, srv, db.AppDSN, 1)[0]
	l := startLoad(signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID))), signertest.Scope, 4)
	l.waitFor(t, "signing", func(ok, _ int) bool { return ok >= 50 })
	timeout := 5 * time.Second
	if err := srv.Container.Stop(ctx, &timeout); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "failures while Postgres is down", func(_, failed int) bool { return failed >= 20 })
	if err := srv.Container.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	okBefore, _ := l.counts()
	l.waitFor(t, "recovery", func(ok, _ int) bool { return ok >= okBefore+50 })
	l.end(t, func() map[string]int {
		granted := map[string]int{}
		for _, r := range grantedSignRows(t, db.AdminDSN) {
			granted[r.sigSHA]++
		}
		return granted
	})
	t.Logf("outage: %d signatures returned, failures by code %v", len(l.returned), l.failures)
}

func ed25519Verify(pub, msg, sig []byte) bool { return ed25519.Verify(pub, msg, sig) }

// metricValue is the value of the sample whose line starts with series on
// a signer's /metrics.
func metricValue(t *testing.T, h http.Handler, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s on /metrics", series)
	return 0
}
