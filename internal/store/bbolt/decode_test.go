package bbolt_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/store"
)

// Key records are decoded once per distinct bytes: a record edited in the
// file is read as edited at once, and what one caller does to the slices it
// got never reaches the next caller.
func TestKeyRecordsAreReadAsStored(t *testing.T) {
	s, db := openStore(t)
	ctx := context.Background()
	at := time.Unix(1700000000, 0).UTC()
	k := store.Key{ID: "k1", Scope: "payments", State: store.Active, Public: bytes.Repeat([]byte{7}, 32),
		Provider: "local", Handle: []byte("sealed"), CreatedAt: at, ActivatedAt: at}
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.ActiveKey(ctx, "payments")
	if err != nil || got.ID != "k1" {
		t.Fatalf("ActiveKey = %+v, %v", got, err)
	}
	got.Public[0], got.Handle[0] = 0, 0 // a careless caller
	again, err := s.ActiveKey(ctx, "payments")
	if err != nil || again.Public[0] != 7 || again.Handle[0] != 's' {
		t.Fatalf("a caller's write reached the next read: %+v, %v", again, err)
	}

	// A store writer retires the key in the file: the next read says so.
	tamper{s, db}.update(t, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("keys"))
		v := bytes.Replace(b.Get([]byte("k1")), []byte(`"ACTIVE"`), []byte(`"RETIRED"`), 1)
		return b.Put([]byte("k1"), v)
	})
	if k, err := s.ActiveKey(ctx, "payments"); err == nil {
		t.Fatalf("the retired record still read as ACTIVE: %+v", k)
	}
	keys, err := s.Keys(ctx, "payments")
	if err != nil || len(keys) != 1 || keys[0].State != store.Retired {
		t.Fatalf("Keys after the edit: %+v, %v", keys, err)
	}
}
