package bbolt_test

import (
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/storetest"
)

// openStore opens a store in a fresh file, closed when the test ends, with
// the bbolt handle under it (to edit the file as its writer could).
func openStore(t testing.TB) (*bbolt.Store, *bolt.DB) {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "signer.db"))
}

// openAt opens the store in path (closing it twice is harmless).
func openAt(t testing.TB, path string) (*bbolt.Store, *bolt.DB) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, bbolt.Options())
	if err != nil {
		t.Fatal(err)
	}
	s, err := bbolt.FromDB(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Tamper) {
		s, db := openStore(t)
		return s, tamper{s, db}
	})
}

func TestSecondProcessIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signer.db")
	s, err := bbolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = bbolt.Open(path)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}
