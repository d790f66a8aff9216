// Package store defines what the signer keeps: key metadata with lifecycle
// state, and the append-only, hash-chained audit log. Implementations live in
// subpackages (bbolt: embedded, single replica; postgres: shared by replicas)
// and are checked by one conformance suite (storetest).
//
// A store never holds a private key in clear: Key.Handle is whatever the key
// provider needs to find the key again (a sealed blob, an HSM object id).
package store

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

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
func (q AuditQuery) Match(e audit.Entry) bool {
	return (q.Subject == "" || e.Subject == q.Subject) &&
		(q.Relation == "" || e.Relation == q.Relation) &&
		(q.Reason == "" || e.Reason == q.Reason) &&
		(q.ObjectPrefix == "" || len(e.Object) >= len(q.ObjectPrefix) && e.Object[:len(q.ObjectPrefix)] == q.ObjectPrefix)
}

// Store is the signer's persistence. Errors wrap signerr sentinels where the
// caller can act on them; anything else is an outage of the store.
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
	// any companion change (Commit demotes the current ACTIVE key). It returns
	// the changed keys, the target first.
	Transition(ctx context.Context, op Op, scope, id string, at time.Time) ([]Key, error)

	audit.Appender
	// ListAudit returns committed entries in Seq order.
	ListAudit(ctx context.Context, q AuditQuery) ([]audit.Entry, error)

	// Ping reports whether the store can serve.
	Ping(ctx context.Context) error
	Close() error
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

// Apply is the lifecycle rule for one key, shared by every store so that the
// rules live in one place. It returns k after op, or the sentinel that
// refuses it.
func Apply(op Op, k Key, scope string, at time.Time) (Key, error) {
	if k.Scope != scope {
		return k, fmt.Errorf("store: %s key %q: %w", op, k.ID, signerr.ErrScopeMismatch)
	}
	at = at.UTC()
	refuse := func() (Key, error) {
		return k, fmt.Errorf("store: %s key %q in state %s: %w", op, k.ID, k.State, StateError(k.State))
	}
	switch op {
	case OpCommit:
		if k.State != Pending {
			return refuse()
		}
		k.State, k.ActivatedAt = Active, at
	case OpAbort:
		if k.State != Pending {
			return refuse()
		}
		k.State, k.RetiredAt = Retired, at
	case OpRetire:
		if k.State != Previous {
			return refuse()
		}
		k.State, k.RetiredAt = Retired, at
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
