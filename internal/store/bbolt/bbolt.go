// Package bbolt is the embedded store: one file, one process. It is the
// default for `make run` and single-replica deployments; several replicas
// need the postgres store.
package bbolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

var (
	bucketKeys        = []byte("keys")              // key id → JSON Key
	bucketScopes      = []byte("scopes")            // scope → bucket of key id → nil
	bucketAudit       = []byte("audit")             // big-endian seq → canonical leaf; seq + level byte → tree node (nodeKey)
	bucketOldNodes    = []byte("audit_nodes")       // where files written before nodeKey kept the nodes (moved at Open)
	bucketCheckpoints = []byte("audit_checkpoints") // big-endian size → signed note
	bucketWitnessed   = []byte("audit_witnessed")   // big-endian size → note cosigned by the witness quorum
	bucketMeta        = []byte("meta")
	metaSize          = []byte("audit_size")          // big-endian count of entries ever appended
	metaPruned        = []byte("audit_pruned")        // big-endian seq up to which entries were pruned
	metaPruneRecord   = []byte("audit_pruned_record") // big-endian seq of the log record the prune mark names
	metaSealed        = []byte("audit_sealed")        // present once a commit was stored with a seal
	metaLogKey        = []byte("log_key")             // JSON Key of the checkpoint key
)

// Store is a store.Store in a bbolt file.
type Store struct {
	db *bolt.DB
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the database at path. A second process opening the
// same file fails after a second instead of waiting forever.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, Options())
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("bbolt: open %s: locked by another process (bbolt serves one replica; use the postgres store for several)", path)
		}
		// bolt's error is an *fs.PathError naming the path already.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("bbolt: %w", err)
		}
		return nil, fmt.Errorf("bbolt: open %s: %w", path, err)
	}
	s, err := FromDB(db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bbolt: init %s: %w", path, err)
	}
	return s, nil
}

// Options are the bbolt options the store opens its file with: a second
// process waits a second, not forever; the freelist is a map and not
// synced (it is rebuilt at open).
func Options() *bolt.Options {
	return &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true}
}

// FromDB serves a store from db, an open bbolt database (Open's file, or a
// test's that keeps the handle to edit the file as its writer could); it
// creates the buckets and carries older layouts over. Close closes db.
func FromDB(db *bolt.DB) (*Store, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKeys, bucketScopes, bucketAudit, bucketCheckpoints, bucketWitnessed, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return moveOldNodes(tx)
	})
	if err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

func (s *Store) Close() error { return s.db.Close() }

func (s *Store) Ping(context.Context) error {
	return s.db.View(func(*bolt.Tx) error { return nil })
}

type keyJSON struct {
	ID            string    `json:"id"`
	Scope         string    `json:"scope"`
	State         string    `json:"state"`
	Public        []byte    `json:"public"`
	Provider      string    `json:"provider"`
	Handle        []byte    `json:"handle"`
	CreatedAt     time.Time `json:"created_at"`
	ActivatedAt   time.Time `json:"activated_at,omitzero"`
	DeactivatedAt time.Time `json:"deactivated_at,omitzero"`
	RetiredAt     time.Time `json:"retired_at,omitzero"`
}

func encodeKey(k store.Key) ([]byte, error) {
	return json.Marshal(keyJSON{k.ID, k.Scope, k.State.String(), k.Public, k.Provider, k.Handle, k.CreatedAt, k.ActivatedAt, k.DeactivatedAt, k.RetiredAt})
}

// decoded memoises decodeKey by the record's exact bytes: a replica
// re-reads a scope's records every key-cache TTL (SIGNER_KEY_CACHE_TTL), and
// with thousands of hot scopes the JSON decoding of unchanged records was
// the cost of those reloads (docs/performance.md, "Many scopes"). The bytes
// are still read from the file in the caller's transaction every time: a
// record changed on disk has other bytes and is decoded afresh. Decoding is
// a pure function of the bytes, so one memo serves every Store.
var decoded = struct {
	sync.Mutex
	m map[string]store.Key
}{m: map[string]store.Key{}}

// maxDecoded bounds the memo (about 400 bytes per entry); it is emptied
// when full.
const maxDecoded = 16384

func decodeKey(b []byte) (store.Key, error) {
	decoded.Lock()
	k, ok := decoded.m[string(b)]
	decoded.Unlock()
	if ok {
		// The slices go to callers: never let one share the memo's.
		k.Public, k.Handle = bytes.Clone(k.Public), bytes.Clone(k.Handle)
		return k, nil
	}
	k, err := decodeKeyJSON(b)
	if err != nil {
		return k, err
	}
	decoded.Lock()
	if len(decoded.m) >= maxDecoded {
		clear(decoded.m)
	}
	memo := k
	memo.Public, memo.Handle = bytes.Clone(k.Public), bytes.Clone(k.Handle)
	decoded.m[string(b)] = memo
	decoded.Unlock()
	return k, nil
}

func decodeKeyJSON(b []byte) (store.Key, error) {
	var j keyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return store.Key{}, fmt.Errorf("bbolt: decode key: %w", err)
	}
	st, err := store.ParseState(j.State)
	if err != nil {
		return store.Key{}, err
	}
	return store.Key{ID: j.ID, Scope: j.Scope, State: st, Public: j.Public, Provider: j.Provider, Handle: j.Handle,
		CreatedAt: j.CreatedAt, ActivatedAt: j.ActivatedAt, DeactivatedAt: j.DeactivatedAt, RetiredAt: j.RetiredAt}, nil
}

func getKey(tx *bolt.Tx, id string) (store.Key, error) {
	b := tx.Bucket(bucketKeys).Get([]byte(id))
	if b == nil {
		return store.Key{}, fmt.Errorf("bbolt: key %q: %w", id, signerr.ErrKeyNotFound)
	}
	return decodeKey(b)
}

func putKey(tx *bolt.Tx, k store.Key) error {
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketKeys).Put([]byte(k.ID), b); err != nil {
		return err
	}
	sb, err := tx.Bucket(bucketScopes).CreateBucketIfNotExists([]byte(k.Scope))
	if err != nil {
		return err
	}
	return sb.Put([]byte(k.ID), nil)
}

// scopeKeys returns the scope's keys oldest first.
func scopeKeys(tx *bolt.Tx, scope string) ([]store.Key, error) {
	sb := tx.Bucket(bucketScopes).Bucket([]byte(scope))
	if sb == nil {
		return nil, nil
	}
	var keys []store.Key
	err := sb.ForEach(func(id, _ []byte) error {
		k, err := getKey(tx, string(id))
		keys = append(keys, k)
		return err
	})
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].CreatedAt.Before(keys[j].CreatedAt) })
	return keys, err
}

func inState(keys []store.Key, st store.State) []store.Key {
	var out []store.Key
	for _, k := range keys {
		if k.State == st {
			out = append(out, k)
		}
	}
	return out
}

func (s *Store) CreateKey(_ context.Context, k store.Key) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketKeys).Get([]byte(k.ID)) != nil {
			return fmt.Errorf("bbolt: create key %q: id exists: %w", k.ID, signerr.ErrInvariant)
		}
		keys, err := scopeKeys(tx, k.Scope)
		if err != nil {
			return err
		}
		switch k.State {
		case store.Pending:
			if len(inState(keys, store.Pending)) > 0 {
				return fmt.Errorf("bbolt: open rotation in scope %q: %w", k.Scope, signerr.ErrRotationInProgress)
			}
		case store.Active:
			if len(inState(keys, store.Active)) > 0 {
				return fmt.Errorf("bbolt: scope %q already has an ACTIVE key: %w", k.Scope, signerr.ErrInvariant)
			}
		default:
			return fmt.Errorf("bbolt: create key in state %s: %w", k.State, signerr.ErrInvalidArgument)
		}
		return putKey(tx, k)
	})
}

func (s *Store) Key(_ context.Context, id string) (k store.Key, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		k, err = getKey(tx, id)
		return err
	})
	return k, err
}

func activeOf(tx *bolt.Tx, scope string) (store.Key, error) {
	keys, err := scopeKeys(tx, scope)
	if err != nil {
		return store.Key{}, err
	}
	switch act := inState(keys, store.Active); len(act) {
	case 0:
		return store.Key{}, fmt.Errorf("bbolt: no ACTIVE key in scope %q: %w", scope, signerr.ErrKeyNotFound)
	case 1:
		return act[0], nil
	default:
		return store.Key{}, fmt.Errorf("bbolt: %d ACTIVE keys in scope %q: %w", len(act), scope, signerr.ErrInvariant)
	}
}

func (s *Store) ActiveKey(_ context.Context, scope string) (k store.Key, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		k, err = activeOf(tx, scope)
		return err
	})
	return k, err
}

func (s *Store) Keys(_ context.Context, scope string) (out []store.Key, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if scope != "" {
			out, err = scopeKeys(tx, scope)
			return err
		}
		return tx.Bucket(bucketScopes).ForEach(func(name, _ []byte) error {
			keys, err := scopeKeys(tx, string(name))
			out = append(out, keys...)
			return err
		})
	})
	return out, err
}

// Transition reads, decides and writes in one write transaction: bbolt
// has one writer at a time, so the rule sees the state it changes.
func (s *Store) Transition(_ context.Context, op store.Op, scope, id string, at time.Time, w store.Windows) (changed []store.Key, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		k, err := getKey(tx, id)
		if err != nil {
			return err
		}
		next, err := store.Apply(op, k, scope, at, w)
		if err != nil {
			return err
		}
		changed = []store.Key{next}
		if op == store.OpCommit {
			prev, err := activeOf(tx, scope)
			switch {
			case err == nil:
				prev = store.Demote(prev, at)
				if err := putKey(tx, prev); err != nil {
					return err
				}
				changed = append(changed, prev)
			case !errors.Is(err, signerr.ErrKeyNotFound):
				return err
			}
		}
		return putKey(tx, next)
	})
	return changed, err
}

func seqKey(seq uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return b[:]
}

// nodeKey places a tree node in the audit bucket right after the leaf that
// completed it (the last leaf it covers, seq (index+1)<<level), so a commit
// dirties one run of pages for leaves and nodes together: a separate node
// bucket cost a second set of page writes per commit (docs/performance.md).
// Leaves have 8-byte keys, nodes 9: seq, then the level.
func nodeKey(level uint8, index uint64) []byte {
	var b [9]byte
	binary.BigEndian.PutUint64(b[:8], (index+1)<<level)
	b[8] = level
	return b[:]
}

// sealLevel is the level byte of a seal's key: a commit's seal sits right
// after the nodes of the leaf it ends with (seq, then 0xff), beside them in
// the same pages.
const sealLevel = 0xff

func sealKey(size uint64) []byte {
	var b [9]byte
	binary.BigEndian.PutUint64(b[:8], size)
	b[8] = sealLevel
	return b[:]
}

// isLeafKey tells leaves from the nodes and seals stored between them.
func isLeafKey(k []byte) bool { return len(k) == 8 }

// moveOldNodes carries a file written with a separate node bucket over to
// nodeKey, in the transaction that opens it.
func moveOldNodes(tx *bolt.Tx) error {
	old := tx.Bucket(bucketOldNodes)
	if old == nil {
		return nil
	}
	ab := tx.Bucket(bucketAudit)
	err := old.ForEach(func(k, v []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("bbolt: %s: malformed node key %x", bucketOldNodes, k)
		}
		return ab.Put(nodeKey(k[0], binary.BigEndian.Uint64(k[1:])), v)
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketOldNodes)
}

func metaUint(tx *bolt.Tx, key []byte) uint64 {
	if v := tx.Bucket(bucketMeta).Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// AppendAudit commits the batch in one transaction: leaves, nodes, the
// request index and the new size.
func (s *Store) AppendAudit(_ context.Context, b *audit.Batch) error {
	return s.db.Update(func(tx *bolt.Tx) error { return appendTx(tx, b) })
}

// AppendAuditLocked builds and commits a batch in one write transaction
// (bbolt has one writer at a time: the lock is the transaction).
func (s *Store) AppendAuditLocked(ctx context.Context, after uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		h := audit.LockedHead{Size: metaUint(tx, metaSize), Reader: txReader{tx}}
		if h.Size > after && h.Size-after <= audit.MaxCatchUp {
			// None when some were pruned: the writer rebuilds from nodes.
			if leaves, err := (txReader{tx}).Leaves(ctx, after, h.Size); err == nil {
				h.Leaves = leaves
			}
		}
		b, err := build(h)
		if err != nil {
			return err
		}
		return appendTx(tx, b)
	})
}

func appendTx(tx *bolt.Tx, b *audit.Batch) error {
	size := metaUint(tx, metaSize)
	if size != b.Start-1 {
		return fmt.Errorf("bbolt: append at seq %d, log holds %d: %w", b.Start, size, audit.ErrHeadMoved)
	}
	ab := tx.Bucket(bucketAudit)
	// Keys only ever grow: pack leaves full instead of splitting in half.
	ab.FillPercent = 1.0
	for i, leaf := range b.Leaves {
		if err := ab.Put(seqKey(b.Start+uint64(i)), leaf); err != nil {
			return err
		}
	}
	for _, n := range b.Nodes {
		if err := ab.Put(nodeKey(n.Level, n.Index), n.Hash); err != nil {
			return err
		}
	}
	end := size + uint64(len(b.Leaves))
	meta := tx.Bucket(bucketMeta)
	if b.Seal != nil {
		if err := ab.Put(sealKey(end), b.Seal); err != nil {
			return err
		}
		if meta.Get(metaSealed) == nil {
			if err := meta.Put(metaSealed, []byte{1}); err != nil {
				return err
			}
		}
	}
	return meta.Put(metaSize, seqKey(end))
}

// Seals returns the seals of commits that ended at sizes in (after, upto].
func (s *Store) Seals(_ context.Context, after, upto uint64) (out []audit.StoredSeal, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && binary.BigEndian.Uint64(k[:8]) <= upto; k, v = c.Next() {
			if len(k) == 9 && k[8] == sealLevel {
				out = append(out, audit.StoredSeal{Size: binary.BigEndian.Uint64(k[:8]), MAC: bytes.Clone(v)})
			}
		}
		return nil
	})
	return out, err
}

// Sealed reports whether a commit was ever stored with a seal.
func (s *Store) Sealed(context.Context) (sealed bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		sealed = tx.Bucket(bucketMeta).Get(metaSealed) != nil
		return nil
	})
	return sealed, err
}

// SyncAudit has nothing to wait for: a bbolt commit is durable before
// anyone sees it.
func (s *Store) SyncAudit(context.Context) error { return nil }

func (s *Store) AuditSize(context.Context) (n uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = metaUint(tx, metaSize)
		return nil
	})
	return n, err
}

func (s *Store) PrunedUpTo(context.Context) (n uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = metaUint(tx, metaPruned)
		return nil
	})
	return n, err
}

// Leaves returns leaves [from, to). A gap is the tree broken; leaves at or
// below the prune mark are ErrPruned.
func (s *Store) Leaves(ctx context.Context, from, to uint64) (out [][]byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		out, err = txReader{tx}.Leaves(ctx, from, to)
		return err
	})
	return out, err
}

func (s *Store) Nodes(ctx context.Context, ids []audit.NodeID) (out [][]byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		out, err = txReader{tx}.Nodes(ctx, ids)
		return err
	})
	return out, err
}

// txReader reads the tree within one transaction.
type txReader struct{ tx *bolt.Tx }

func (r txReader) Leaves(_ context.Context, from, to uint64) (out [][]byte, err error) {
	tx := r.tx
	err = func() error {
		if from < metaUint(tx, metaPruned) {
			return fmt.Errorf("bbolt: entry %d: %w", from+1, audit.ErrPruned)
		}
		c := tx.Bucket(bucketAudit).Cursor()
		want := from + 1
		for k, v := c.Seek(seqKey(want)); k != nil && want <= to; k, v = c.Next() {
			if !isLeafKey(k) {
				continue
			}
			if got := binary.BigEndian.Uint64(k); got != want {
				return fmt.Errorf("bbolt: entry %d missing: %w", want, audit.ErrTreeBroken)
			}
			out = append(out, bytes.Clone(v))
			want++
		}
		if want <= to {
			return fmt.Errorf("bbolt: entry %d missing: %w", want, audit.ErrTreeBroken)
		}
		return nil
	}()
	return out, err
}

func (r txReader) Nodes(_ context.Context, ids []audit.NodeID) (out [][]byte, err error) {
	tx := r.tx
	err = func() error {
		nb := tx.Bucket(bucketAudit)
		for _, id := range ids {
			v := nb.Get(nodeKey(uint8(id.Level), id.Index))
			if len(v) != 32 {
				return fmt.Errorf("bbolt: tree node %d/%d missing: %w", id.Level, id.Index, audit.ErrTreeBroken)
			}
			out = append(out, bytes.Clone(v))
		}
		return nil
	}()
	return out, err
}

func (s *Store) PutCheckpoint(_ context.Context, size uint64, note []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCheckpoints)
		if cb.Get(seqKey(size)) != nil {
			return nil
		}
		return cb.Put(seqKey(size), note)
	})
}

func (s *Store) PutWitnessed(_ context.Context, size uint64, note []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		wb := tx.Bucket(bucketWitnessed)
		if wb.Get(seqKey(size)) != nil {
			return nil
		}
		return wb.Put(seqKey(size), note)
	})
}

// Witnessed returns the note of the largest witnessed checkpoint at or
// below size.
func (s *Store) Witnessed(_ context.Context, atOrBelow uint64) (note []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketWitnessed).Cursor()
		k, v := c.Seek(seqKey(atOrBelow))
		switch {
		case k == nil:
			k, v = c.Last()
		case binary.BigEndian.Uint64(k) > atOrBelow:
			k, v = c.Prev()
		}
		if k != nil {
			note = bytes.Clone(v)
		}
		return nil
	})
	return note, err
}

func (s *Store) LatestCheckpoint(context.Context) (note []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if _, v := tx.Bucket(bucketCheckpoints).Cursor().Last(); v != nil {
			note = bytes.Clone(v)
		}
		return nil
	})
	return note, err
}

// Checkpoints returns the signed notes of sizes above after, oldest first,
// at most limit.
func (s *Store) Checkpoints(_ context.Context, after uint64, limit int) (out [][]byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCheckpoints).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			out = append(out, bytes.Clone(v))
		}
		return nil
	})
	return out, err
}

func (s *Store) LogKey(context.Context) (k store.Key, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(metaLogKey)
		if v == nil {
			return fmt.Errorf("bbolt: no audit checkpoint key: %w", signerr.ErrKeyNotFound)
		}
		k, err = decodeKey(v)
		return err
	})
	return k, err
}

func (s *Store) CreateLogKey(_ context.Context, k store.Key) (stored store.Key, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaLogKey); v != nil {
			stored, err = decodeKey(v)
			return err
		}
		b, err := encodeKey(k)
		if err != nil {
			return err
		}
		stored = k
		return meta.Put(metaLogKey, b)
	})
	return stored, err
}

// PruneAudit deletes the leaves and seals up to seq upto (whole tiles,
// already exported, announced by the log record at seq record); the tree
// nodes stay, so proofs for later entries still work. bbolt serves one
// process: run it with the signer stopped.
func (s *Store) PruneAudit(_ context.Context, upto, record uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		pruned, size := metaUint(tx, metaPruned), metaUint(tx, metaSize)
		if upto == pruned && upto > 0 && metaUint(tx, metaPruneRecord) == 0 {
			// A mark from before prune records: it gets its record.
			if record <= upto || record > size {
				return fmt.Errorf("bbolt: the record of the prune up to %d must be an entry after it (seq %d)", upto, record)
			}
			return meta.Put(metaPruneRecord, seqKey(record))
		}
		if err := store.CheckPrune(upto, pruned, size, record); err != nil {
			return err
		}
		ab := tx.Bucket(bucketAudit)
		// Deleting under a cursor moves it: collect a chunk of leaf and seal
		// keys, delete them, seek again past the nodes that stay.
		from := seqKey(pruned + 1)
		for {
			var keys [][]byte
			c := ab.Cursor()
			for k, _ := c.Seek(from); k != nil && binary.BigEndian.Uint64(k[:8]) <= upto && len(keys) < 4096; k, _ = c.Next() {
				if isLeafKey(k) || len(k) == 9 && k[8] == sealLevel {
					keys = append(keys, bytes.Clone(k))
				}
			}
			if len(keys) == 0 {
				break
			}
			for _, k := range keys {
				if err := ab.Delete(k); err != nil {
					return err
				}
			}
			from = seqKey(binary.BigEndian.Uint64(keys[len(keys)-1][:8]) + 1)
		}
		if err := meta.Put(metaPruneRecord, seqKey(record)); err != nil {
			return err
		}
		return meta.Put(metaPruned, seqKey(upto))
	})
}

// PruneRecord is the seq of the log record the prune mark names (0: none).
func (s *Store) PruneRecord(context.Context) (n uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = metaUint(tx, metaPruneRecord)
		return nil
	})
	return n, err
}
