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
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
)

var (
	bucketKeys   = []byte("keys")   // key id → JSON Key
	bucketScopes = []byte("scopes") // scope → bucket of key id → nil
	bucketAudit  = []byte("audit")  // big-endian seq → JSON audit.Entry
	bucketMeta   = []byte("meta")
	metaHead     = []byte("audit_head") // seq (8 bytes) + hash (hex)
)

// Store is a store.Store in a bbolt file.
type Store struct {
	db *bolt.DB
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the database at path. A second process opening the
// same file fails after a second instead of waiting forever.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("bbolt: open %s: locked by another process (bbolt serves one replica; use the postgres store for several)", path)
		}
		return nil, fmt.Errorf("bbolt: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKeys, bucketScopes, bucketAudit, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bbolt: init %s: %w", path, err)
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

func decodeKey(b []byte) (store.Key, error) {
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

func (s *Store) Transition(_ context.Context, op store.Op, scope, id string, at time.Time) (changed []store.Key, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		k, err := getKey(tx, id)
		if err != nil {
			return err
		}
		next, err := store.Apply(op, k, scope, at)
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

// AppendAudit commits the batch in one transaction, chained to the log head.
func (s *Store) AppendAudit(_ context.Context, batch []audit.Entry) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var seq uint64
		var hash string
		if h := meta.Get(metaHead); len(h) >= 8 {
			seq, hash = binary.BigEndian.Uint64(h[:8]), string(h[8:])
		}
		seq, hash = audit.Chain(batch, seq, hash)
		ab := tx.Bucket(bucketAudit)
		// Keys only ever grow: pack leaves full instead of splitting in half.
		ab.FillPercent = 1.0
		for i := range batch {
			b, err := json.Marshal(&batch[i])
			if err != nil {
				return err
			}
			if err := ab.Put(seqKey(batch[i].Seq), b); err != nil {
				return err
			}
		}
		return meta.Put(metaHead, append(seqKey(seq), hash...))
	})
}

func (s *Store) ListAudit(_ context.Context, q store.AuditQuery) (out []audit.Entry, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(q.AfterSeq + 1)); k != nil; k, v = c.Next() {
			var e audit.Entry
			if err := json.NewDecoder(bytes.NewReader(v)).Decode(&e); err != nil {
				return fmt.Errorf("bbolt: decode audit entry %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !q.Match(e) {
				continue
			}
			out = append(out, e)
			if q.Limit > 0 && len(out) >= q.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// DB exposes the handle to tests that must tamper with the log.
func (s *Store) DB() *bolt.DB { return s.db }
