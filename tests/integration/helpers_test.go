package integration

import (
	"github.com/plexsphere/signer/client/auditlog"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// query runs one SQL statement on dsn and scans every row.
func query[T any](t *testing.T, dsn, sql string, scan func(pgx.CollectableRow) (T, error), args ...any) []T {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sqlEntries reads the audit entries after seq with SQL, as an auditor with
// read access to the database would, and decodes each stored leaf.
func sqlEntries(t *testing.T, dsn string, after int64) []auditlog.Entry {
	t.Helper()
	return query(t, dsn, `SELECT seq, leaf FROM audit_entries WHERE seq > $1 ORDER BY seq`,
		func(r pgx.CollectableRow) (auditlog.Entry, error) {
			var seq int64
			var leaf []byte
			if err := r.Scan(&seq, &leaf); err != nil {
				return auditlog.Entry{}, err
			}
			e, err := auditlog.ParseLeaf(leaf)
			e.Seq = uint64(seq)
			return e, err
		}, after)
}

func sigSHA(sig []byte) string {
	s := sha256.Sum256(sig)
	return hex.EncodeToString(s[:])
}

// load keeps workers signing distinct payloads (Ed25519 is deterministic)
// until stopped, and counts what came back.
type load struct {
	mu       sync.Mutex
	returned map[string]int // signature digest → times returned
	failures map[codes.Code]int
	n        atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(c signerv1.SignerServiceClient, scope string, workers int) *load {
	l := &load{returned: map[string]int{}, failures: map[codes.Code]int{}, stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := c.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: fmt.Appendf(nil, "load %d", l.n.Add(1))})
				cancel()
				l.mu.Lock()
				if err != nil {
					l.failures[status.Code(err)]++
				} else {
					l.returned[sigSHA(resp.Signature)]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// counts are the signatures returned and the calls failed so far.
func (l *load) counts() (ok, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.returned {
		ok += v
	}
	for _, v := range l.failures {
		failed += v
	}
	return ok, failed
}

// waitFor polls cond, bounded.
func (l *load) waitFor(t *testing.T, what string, cond func(ok, failed int) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(l.counts()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 30s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// end stops the workers and checks the invariants every fault test shares:
// the only failures are Unavailable, and each returned signature was
// returned once and has exactly one granted audit row. granted, called once
// the load has stopped, maps a signature digest to its granted rows.
func (l *load) end(t *testing.T, grantedRows func() map[string]int) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	granted := grantedRows()
	for code, k := range l.failures {
		if code != codes.Unavailable {
			t.Errorf("%d failures with %v, want only Unavailable", k, code)
		}
	}
	for s, k := range l.returned {
		if k != 1 || granted[s] != 1 {
			t.Fatalf("signature %s… returned %d times with %d granted rows", s[:12], k, granted[s])
		}
	}
}
