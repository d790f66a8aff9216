// Package store defines what the signer keeps: key metadata with lifecycle
// state, and the append-only audit log with its Merkle tree (package audit). Implementations live in
// subpackages (bbolt: embedded, single replica; postgres: shared by replicas)
// and are checked by one conformance suite (storetest).
//
// A store never holds a private key in clear: Key.Handle is whatever the key
// provider needs to find the key again (a sealed blob, an HSM object id).
package store

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/signerr"
)

// State is a key's lifecycle state. The numeric values match the wire enum.
type State int

const (
	Pending  State = 1 // published, not signing
	Active   State = 2 // the one signing key of its scope
	Previous State = 3 // published, verify-only
	Retired  State = 4 // unpublished, never signs
)

func (s State) String() string {
	switch s {
	case Pending:
		return "PENDING"
	case Active:
		return "ACTIVE"
	case Previous:
		return "PREVIOUS"
	case Retired:
		return "RETIRED"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ParseState is the inverse of String.
func ParseState(s string) (State, error) {
	for _, st := range []State{Pending, Active, Previous, Retired} {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("store: unknown key state %q", s)
}

// Published reports whether verifiers may see the key.
func (s State) Published() bool { return s == Pending || s == Active || s == Previous }

// Forward reports whether a key may go from state from to state to: the
// lifecycle only moves on (PENDING → ACTIVE → PREVIOUS → RETIRED, and
// PENDING → RETIRED); RETIRED is terminal. A record read in a state behind
// one already seen for the same key went back: a store writer's doing
// (the keyring refuses it; the Postgres schema refuses the update).
func Forward(from, to State) bool {
	switch from {
	case Pending:
		return to == Active || to == Retired
	case Active:
		return to == Previous
	case Previous:
		return to == Retired
	}
	return false
}

// Tombstone is the handle of a RETIRED key: the material is destroyed in
// the step that retires it (the local provider's sealed key lived only in
// the handle; the pkcs11 provider destroys the token's objects), so no
// later edit of the record brings the key back.
var Tombstone = []byte{}

// Destroyed reports whether k's material was destroyed (a retired key).
func Destroyed(k Key) bool { return len(k.Handle) == 0 }

// Key is a key's metadata. Times are UTC; a zero time means "not yet".
type Key struct {
	ID       string
	Scope    string
	State    State
	Public   ed25519.PublicKey
	Provider string // name of the provider that holds the private half
	Handle   []byte // provider-specific locator; never clear key material

	CreatedAt     time.Time
	ActivatedAt   time.Time
	DeactivatedAt time.Time // ACTIVE → PREVIOUS
	RetiredAt     time.Time
}

// AuditQuery filters ListAudit. Zero fields match everything.
type AuditQuery struct {
	AfterSeq     uint64
	Limit        int // 0 = no limit
	Subject      string
	Relation     string
	Reason       string
	ObjectPrefix string
}

// Match reports whether e passes q's filters (not AfterSeq/Limit).
func (q AuditQuery) Match(e auditlog.Entry) bool {
	return (q.Subject == "" || e.Subject == q.Subject) &&
		(q.Relation == "" || e.Relation == q.Relation) &&
		(q.Reason == "" || e.Reason == q.Reason) &&
		strings.HasPrefix(e.Object, q.ObjectPrefix)
}

// Store is the signer's persistence. Errors wrap signerr sentinels where the
// caller can act on them; an outage of the store wraps
// signerr.ErrStoreUnavailable.
type Store interface {
	// CreateKey inserts k, which must be PENDING (a rotation opens:
	// ErrRotationInProgress if the scope already has a PENDING key) or ACTIVE
	// (bootstrap: ErrInvariant if the scope already has an ACTIVE key).
	CreateKey(ctx context.Context, k Key) error
	// Key returns the key with id, or ErrKeyNotFound.
	Key(ctx context.Context, id string) (Key, error)
	// ActiveKey returns the scope's ACTIVE key: ErrKeyNotFound if none,
	// ErrInvariant if more than one.
	ActiveKey(ctx context.Context, scope string) (Key, error)
	// Keys lists a scope's keys in every state, oldest first; scope "" lists
	// all scopes, ordered by scope then age.
	Keys(ctx context.Context, scope string) ([]Key, error)
	// Transition applies op to key id of scope at time at, atomically with
	// any companion change (Commit demotes the current ACTIVE key). The
	// record is read and Apply's rule (state and windows w) decided inside
	// the transaction that writes the change, so a concurrent transition
	// cannot slip between the check and the write. It returns the changed
	// keys, the target first.
	Transition(ctx context.Context, op Op, scope, id string, at time.Time, w Windows) ([]Key, error)

	// The audit log: leaves, the stored tree nodes, checkpoints (package
	// audit). Nothing in it is ever updated; only an owner-run prune of
	// exported entries deletes.
	audit.Store
	// LogKey returns the audit checkpoint key's record (Scope is
	// LogKeyScope), or ErrKeyNotFound. CreateLogKey stores k unless a log key
	// exists, and returns the one stored (replicas race to create it).
	LogKey(ctx context.Context) (Key, error)
	CreateLogKey(ctx context.Context, k Key) (Key, error)

	// Ping reports whether the store can serve.
	Ping(ctx context.Context) error
	Close() error
}

// LogKeyScope is the scope recorded with the audit checkpoint key. It is not
// a valid scope name (names.CheckScope refuses '@'), so no request can reach
// it and it is never listed with the signing keys.
const LogKeyScope = "@audit-checkpoint"

// Pruner is a store that can drop entries already exported (see
// docs/audit.md). Pruning runs as the database owner (or its prune role),
// never from the serving signer.
type Pruner interface {
	// PruneAudit marks the entries up to upto pruned, naming the log
	// record (at seq record) that announced it, and deletes them with their
	// seals; tree nodes and checkpoints stay. A mark made before records
	// existed (upto is the current mark and names none) only gets the
	// record.
	PruneAudit(ctx context.Context, upto, record uint64) error
}

// CheckPrune is the rule for a prune up to seq upto: whole tiles (so the
// stored tree nodes still prove every later entry), beyond any earlier prune
// and within the log.
func CheckPrune(upto, pruned, size, record uint64) error {
	switch {
	case record <= upto || record > size:
		return fmt.Errorf("store: prune up to seq %d: its record must be an entry after it (seq %d; the log holds %d)", upto, record, size)
	case upto%audit.TileSize != 0:
		return fmt.Errorf("store: prune up to seq %d: must be a multiple of %d", upto, audit.TileSize)
	case upto <= pruned:
		return fmt.Errorf("store: prune up to seq %d: already pruned up to %d", upto, pruned)
	case upto > size:
		return fmt.Errorf("store: prune up to seq %d: the log holds %d entries", upto, size)
	}
	return nil
}

// ListAudit reads committed entries in Seq order from any store, decoded and
// filtered, at most q.Limit of them. A leaf that does not decode is an error
// naming its seq.
func ListAudit(ctx context.Context, s Store, q AuditQuery) ([]auditlog.Entry, error) {
	size, err := s.AuditSize(ctx)
	if err != nil {
		return nil, err
	}
	pruned, err := s.PrunedUpTo(ctx)
	if err != nil {
		return nil, err
	}
	var out []auditlog.Entry
	const page = 1024
	for from := max(q.AfterSeq, pruned); from < size; from += page {
		to := min(size, from+page)
		leaves, seqs, err := leavesAround(ctx, s, from, to)
		if err != nil {
			return nil, err
		}
		for i, leaf := range leaves {
			e, err := auditlog.ParseLeaf(leaf)
			if err != nil {
				return nil, fmt.Errorf("store: audit entry %d: %w: %w", seqs[i], err, audit.ErrTreeBroken)
			}
			e.Seq = seqs[i]
			if !q.Match(e) {
				continue
			}
			out = append(out, e)
			if q.Limit > 0 && len(out) >= q.Limit {
				return out, nil
			}
		}
	}
	return out, nil
}

// leavesAround reads leaves [from, to) with their seqs, stepping over
// missing ones: a reader of a damaged log sees what is there, and a
// verifier names the gap.
func leavesAround(ctx context.Context, s Store, from, to uint64) ([][]byte, []uint64, error) {
	leaves, err := s.Leaves(ctx, from, to)
	if err == nil {
		seqs := make([]uint64, len(leaves))
		for i := range seqs {
			seqs[i] = from + uint64(i) + 1
		}
		return leaves, seqs, nil
	}
	if !errors.Is(err, audit.ErrTreeBroken) {
		return nil, nil, err
	}
	leaves = leaves[:0]
	var seqs []uint64
	for seq := from + 1; seq <= to; seq++ {
		one, err := s.Leaves(ctx, seq-1, seq)
		if errors.Is(err, audit.ErrTreeBroken) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		leaves, seqs = append(leaves, one[0]), append(seqs, seq)
	}
	return leaves, seqs, nil
}

// Op is a lifecycle transition requested by RotationService.
type Op int

const (
	OpCommit Op = iota + 1 // PENDING → ACTIVE (and ACTIVE → PREVIOUS)
	OpAbort                // PENDING → RETIRED
	OpRetire               // PREVIOUS → RETIRED
)

func (o Op) String() string {
	return map[Op]string{OpCommit: "commit", OpAbort: "abort", OpRetire: "retire"}[o]
}

// Windows are the lifecycle's waiting times, which make rotation safe by
// construction.
type Windows struct {
	// PrePublish: Commit refuses until the PENDING key has been published
	// this long, so verifiers' caches learn it before it signs.
	PrePublish time.Duration
	// VerifyOnly: Retire refuses until the key has been PREVIOUS this long,
	// so signatures it made keep verifying.
	VerifyOnly time.Duration
}

// Apply is the lifecycle rule for one key, shared by every store so that the
// rules live in one place: k must be the record as read inside the
// transaction that will write the result. It returns k after op, or the
// sentinel that refuses it (ErrRotationNotReady while a window of w runs).
func Apply(op Op, k Key, scope string, at time.Time, w Windows) (Key, error) {
	if k.Scope != scope {
		return k, fmt.Errorf("store: %s key %q: %w", op, k.ID, signerr.ErrScopeMismatch)
	}
	at = at.UTC()
	refuse := func() (Key, error) {
		return k, fmt.Errorf("store: %s key %q in state %s: %w", op, k.ID, k.State, StateError(k.State))
	}
	notYet := func(what string, when time.Time) (Key, error) {
		return k, fmt.Errorf("store: key %q is %s at %s: %w", k.ID, what, when.UTC().Format(time.RFC3339),
			&signerr.NotReadyError{Step: op.String(), ReadyAt: when.UTC()})
	}
	switch op {
	case OpCommit:
		if k.State != Pending {
			return refuse()
		}
		if ready := k.CreatedAt.Add(w.PrePublish); at.Before(ready) {
			return notYet("committable", ready)
		}
		k.State, k.ActivatedAt = Active, at
	case OpAbort:
		if k.State != Pending {
			return refuse()
		}
		k.State, k.RetiredAt, k.Handle = Retired, at, Tombstone
	case OpRetire:
		if k.State != Previous {
			return refuse()
		}
		if ready := k.DeactivatedAt.Add(w.VerifyOnly); at.Before(ready) {
			return notYet("retirable", ready)
		}
		k.State, k.RetiredAt, k.Handle = Retired, at, Tombstone
	default:
		return k, fmt.Errorf("store: unknown op %d: %w", op, signerr.ErrInvalidArgument)
	}
	return k, nil
}

// Demote is the companion of a Commit: the scope's ACTIVE key becomes
// PREVIOUS.
func Demote(k Key, at time.Time) Key {
	k.State, k.DeactivatedAt = Previous, at.UTC()
	return k
}

// StateError is the sentinel that explains why a key in state s cannot do
// what was asked of a key in another state: sign, or move on.
func StateError(s State) error {
	switch s {
	case Pending:
		return signerr.ErrRotationInProgress
	case Active:
		return signerr.ErrKeyActive
	case Previous, Retired:
		return signerr.ErrKeyRetired
	}
	return signerr.ErrInvariant
}
