package integration

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/postgres"
	"github.com/plexsphere/signer/internal/testing/pgtest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// countingPG is the real Postgres store (change notices included) with its
// key-list reads counted.
type countingPG struct {
	*postgres.Store
	keys atomic.Int64
}

func (c *countingPG) Keys(ctx context.Context, scope string) ([]store.Key, error) {
	c.keys.Add(1)
	return c.Store.Keys(ctx, scope)
}

// Anyone who can connect to the database can NOTIFY the signers' key-change
// channel. A flood of such notices must not turn into a reload per notice:
// with the signer's clock standing still, 200 notices for the scope, each
// followed by a PublicKey call, cost at most two reloads (the first notice,
// and the listener's own flush-all when it connects, if it lands in the
// loop); before, every notice dropped the cache and the next call went to
// the database (158 of 200 in one run).
func TestNotifyFloodDoesNotFlushCaches(t *testing.T) {
	srv := pgtest.Require(t)
	db := srv.NewDatabase(t)
	pg, err := postgres.Open(context.Background(), postgres.Config{DSN: db.AppDSN, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	st := &countingPG{Store: pg}
	env := signertest.Start(t, signertest.WithStore(st))
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	ctx := context.Background()
	// The attacker: the runtime role, which may NOTIFY like any role.
	conn, err := pgx.Connect(ctx, db.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope}); err != nil {
		t.Fatal(err)
	}
	before := st.keys.Load()
	for range 200 {
		if _, err := conn.Exec(ctx, `SELECT pg_notify('plexsphere_signer_keys', $1)`, signertest.Scope); err != nil {
			t.Fatal(err)
		}
		if _, err := core.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: signertest.Scope}); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.keys.Load() - before; n > 2 {
		t.Fatalf("200 notices caused %d reloads of the scope's keys, want at most 2", n)
	}
}
