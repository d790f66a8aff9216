package bbolt_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/store/bbolt"
)

// fill commits n entries through a real writer (tree and all) and returns
// the root it computed.
func fill(t *testing.T, s *bbolt.Store, n int) []byte {
	t.Helper()
	ctx := context.Background()
	before, err := s.AuditSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := audit.NewWriter(s, audit.WriterOptions{})
	defer w.Close()
	var pend []*audit.Pending
	for i := range n {
		e := auditlog.New(auditlog.NewRequestID(), auditlog.SubjectSigner, auditlog.RelationSign, "/plexsphere.signer.v1.SignerService/Sign", time.Unix(int64(i), 0))
		pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, e))
	}
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	h := w.Head()
	if h.Size != before+uint64(n) {
		t.Fatalf("head %d after %d entries on %d", h.Size, n, before)
	}
	return h.Root
}

func rootFromStore(t *testing.T, s *bbolt.Store, size uint64) []byte {
	t.Helper()
	tr, err := audit.TreeAt(context.Background(), s, size)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Root()
}

// A file written when the nodes had a bucket of their own opens with the
// same tree: Open moves them beside their leaves and drops the old bucket.
func TestNodeBucketOfOlderFilesIsCarriedOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signer.db")
	s, db := openAt(t, path)
	const n = 300
	root := fill(t, s, n)
	moved := 0
	// Rewrite the file into the older layout: level byte + index → hash.
	tamper{s, db}.update(t, func(tx *bolt.Tx) error {
		ab := tx.Bucket([]byte("audit"))
		old, err := tx.CreateBucket([]byte("audit_nodes"))
		if err != nil {
			return err
		}
		var nodes [][2][]byte
		ab.ForEach(func(k, v []byte) error {
			if len(k) == 9 {
				nodes = append(nodes, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
			}
			return nil
		})
		for _, kv := range nodes {
			seq, level := kv[0][:8], kv[0][8]
			index := (beUint(seq) >> level) - 1
			if err := old.Put(append([]byte{level}, be(index)...), kv[1]); err != nil {
				return err
			}
			if err := ab.Delete(kv[0]); err != nil {
				return err
			}
			moved++
		}
		return nil
	})
	if moved < n/audit.TileSize {
		t.Fatalf("only %d stored nodes for %d entries", moved, n)
	}
	if _, err := audit.TreeAt(context.Background(), s, n); !errors.Is(err, audit.ErrTreeBroken) {
		t.Fatalf("the old layout read by the new code: %v (want the tree broken, so the test rewrote it)", err)
	}
	s.Close()

	s, db = openAt(t, path)
	if got := rootFromStore(t, s, n); !bytes.Equal(got, root) {
		t.Fatalf("root after the move %x, want %x", got, root)
	}
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("audit_nodes")) != nil {
			t.Error("the old node bucket is still there")
		}
		return nil
	})
	// And the log goes on from there.
	if got := fill(t, s, 20); len(got) != 32 {
		t.Fatal("no root after appending to the carried-over file")
	}
}

// Pruning many tiles deletes every leaf up to the mark and no node: the
// tree still rebuilds, later entries still read.
func TestPruneDeletesLeavesAndKeepsNodes(t *testing.T) {
	s, db := openStore(t)
	ctx := context.Background()
	const n, upto = 10_000, 9_200 // more leaves than one delete chunk
	root := fill(t, s, n)
	nodesBefore := countKeys(t, db, 9)
	if err := s.PruneAudit(ctx, upto, n); err != nil {
		t.Fatal(err)
	}
	if got := countKeys(t, db, 8); got != n-upto {
		t.Fatalf("%d leaves left, want %d", got, n-upto)
	}
	if got := countKeys(t, db, 9); got != nodesBefore {
		t.Fatalf("%d nodes left, want all %d", got, nodesBefore)
	}
	if got := rootFromStore(t, s, n); !bytes.Equal(got, root) {
		t.Fatalf("root after prune %x, want %x", got, root)
	}
	if _, err := s.Leaves(ctx, upto-1, upto); !errors.Is(err, audit.ErrPruned) {
		t.Fatalf("a pruned leaf: %v", err)
	}
	if ls, err := s.Leaves(ctx, upto, n); err != nil || len(ls) != n-upto {
		t.Fatalf("leaves after the mark: %d, %v", len(ls), err)
	}
}

func countKeys(t *testing.T, db *bolt.DB, length int) (n int) {
	t.Helper()
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("audit")).ForEach(func(k, _ []byte) error {
			if len(k) == length {
				n++
			}
			return nil
		})
	})
	return n
}
