package bbolt_test

import (
	"encoding/binary"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
)

// tamper edits the bbolt file directly, as anyone who can write it could.
type tamper struct {
	s  *bbolt.Store
	db *bolt.DB
}

func be(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func (x tamper) update(t testing.TB, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := x.db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func (x tamper) PutLeaf(t testing.TB, seq uint64, leaf []byte) {
	x.update(t, func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit")).Put(be(seq), leaf) })
}

func (x tamper) DeleteLeaves(t testing.TB, from, to uint64) {
	x.update(t, func(tx *bolt.Tx) error {
		for seq := from; seq <= to; seq++ {
			if err := tx.Bucket([]byte("audit")).Delete(be(seq)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (x tamper) SetSize(t testing.TB, size uint64) {
	x.update(t, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("audit_size"), be(size)) })
}

// nodeKey is the file format's: the seq of the leaf that completes the node,
// then its level.
func nodeKey(level uint8, index uint64) []byte { return append(be((index+1)<<level), level) }

func (x tamper) PutNode(t testing.TB, level uint8, index uint64, hash []byte) {
	x.update(t, func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit")).Put(nodeKey(level, index), hash) })
}

func (x tamper) DeleteCheckpoints(t testing.TB, above uint64) {
	x.update(t, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit_checkpoints"))
		var keys [][]byte
		b.ForEach(func(k, _ []byte) error {
			if binary.BigEndian.Uint64(k) > above {
				keys = append(keys, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

func (x tamper) Wipe(t testing.TB) {
	x.update(t, func(tx *bolt.Tx) error {
		for _, name := range []string{"audit", "audit_checkpoints"} {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return err
			}
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("audit_size"), be(0))
	})
}

func (x tamper) Pruner(testing.TB) store.Pruner { return x.s }

func beUint(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// Rollback is what restoring a copy of the file taken at size gives.
func (x tamper) Rollback(t testing.TB, size uint64) {
	x.update(t, func(tx *bolt.Tx) error {
		var keys [][]byte
		ab := tx.Bucket([]byte("audit"))
		c := ab.Cursor()
		for k, _ := c.Seek(be(size + 1)); k != nil; k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := ab.Delete(k); err != nil {
				return err
			}
		}
		for _, name := range []string{"audit_checkpoints", "audit_witnessed"} {
			b := tx.Bucket([]byte(name))
			var keys [][]byte
			b.ForEach(func(k, _ []byte) error {
				if binary.BigEndian.Uint64(k) > size {
					keys = append(keys, append([]byte(nil), k...))
				}
				return nil
			})
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("audit_size"), be(size))
	})
}

func (x tamper) AppendRaw(t testing.TB, leaf []byte) {
	x.update(t, func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		n := beUint(meta.Get([]byte("audit_size"))) + 1
		if err := tx.Bucket([]byte("audit")).Put(be(n), leaf); err != nil {
			return err
		}
		return meta.Put([]byte("audit_size"), be(n))
	})
}

func (x tamper) PutCheckpointAt(t testing.TB, size uint64, note []byte) {
	x.update(t, func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit_checkpoints")).Put(be(size), note) })
}

func (x tamper) ForgePruneMark(t testing.TB, upto, record uint64) {
	x.update(t, func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		if err := meta.Put([]byte("audit_pruned_record"), be(record)); err != nil {
			return err
		}
		return meta.Put([]byte("audit_pruned"), be(upto))
	})
}
