package bench

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) {
	code := func() int {
		if why := pgtest.Unavailable(context.Background()); why == "" {
			// fsync on: the point is to price durability.
			s, err := pgtest.Start(context.Background(), pgtest.Fsync())
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

// BenchmarkF_Postgres: direct mTLS → signer with the Postgres store (fsync
// on), the group-commit writer as configured (up to 256 entries per
// transaction) against one call's entries per transaction.
func BenchmarkF_Postgres(b *testing.B) {
	if pg == nil {
		b.Skip("no Postgres container (see the message above)")
	}
	for _, tc := range []struct {
		name     string
		maxBatch int
	}{{"group-commit", 256}, {"one-call-per-commit", 1}} {
		db := pg.NewDatabase(b)
		st, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AppDSN, MaxConns: 8})
		if err != nil {
			b.Fatal(err)
		}
		env := signertest.Start(b, signertest.WithStore(st), signertest.WithConfig(func(c *config.Signer) { c.AuditMaxBatch = tc.maxBatch }))
		call := directCall(b, env)
		for _, n := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/inflight=%d", tc.name, n), func(b *testing.B) { drive(b, n, call) })
		}
		env.Stop()
		st.Close()
	}
}
