package keyring

import (
	"strings"
	"sync"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/store"
)

// History is what the audit log says of each key's lifecycle: the furthest
// state its granted rotation entries took it to (bootstrap and Commit:
// ACTIVE, and the key ACTIVE before in the scope PREVIOUS; Retire and
// Abort: RETIRED). The log is sealed, checkpointed and witnessed, so a key
// the log retired stays retired whatever its record in the store says: the
// keyring refuses a record behind its key's history (Options.Floor). The
// audit Log feeds it every entry it replays (the start-up sweep, before any
// RPC) and checks (LogConfig.OnEntry). Entries pruned from the store are
// beyond it; their keys' material was destroyed when they retired.
type History struct {
	mu     sync.RWMutex
	floor  map[string]store.State // key id → furthest state in the log
	active map[string]string      // scope → the key its last commit activated
}

// maxHistory bounds the keys remembered (a key is about 60 bytes here);
// past it, new keys are not tracked and rely on the other guards.
const maxHistory = 1 << 20

// NewHistory is an empty history.
func NewHistory() *History {
	return &History{floor: map[string]store.State{}, active: map[string]string{}}
}

// The methods whose granted entries move a key, and where to.
var historyMoves = map[string]store.State{
	"bootstrap": store.Active,
	"/plexsphere.signer.v1.RotationService/Commit": store.Active,
	"auto-rotate/commit":                           store.Active,
	"/plexsphere.signer.v1.RotationService/Retire": store.Retired,
	"/plexsphere.signer.v1.RotationService/Abort":  store.Retired,
	"auto-rotate/retire":                           store.Retired,
}

// Observe takes one entry of the log, in log order.
func (h *History) Observe(_ uint64, leaf []byte) {
	// Most entries are Signs: look no further than the subject and
	// relation tags of the canonical leaf (the signer's own subject, then
	// relation "rotate") before decoding.
	if len(leaf) < 19 || leaf[17] != 1 || leaf[18] != 4 {
		return
	}
	e, err := auditlog.ParseLeaf(leaf)
	if err != nil || e.Relation != auditlog.RelationRotate || e.Reason != auditlog.ReasonGranted {
		return
	}
	to, ok := historyMoves[e.Method]
	if !ok {
		return
	}
	rest, ok := strings.CutPrefix(e.Object, "signing-key:")
	if !ok {
		return
	}
	scope, id, ok := strings.Cut(rest, ":")
	if !ok || id == "-" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.raise(id, to)
	if to == store.Active {
		if prev := h.active[scope]; prev != "" && prev != id {
			h.raise(prev, store.Previous)
		}
		if len(h.active) < maxHistory {
			h.active[scope] = id
		}
	}
}

func (h *History) raise(id string, to store.State) {
	if cur, ok := h.floor[id]; ok && cur >= to || !ok && len(h.floor) >= maxHistory {
		return
	}
	h.floor[id] = to
}

// Floor is the furthest state the log took key id to (0: none known).
func (h *History) Floor(id string) store.State {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.floor[id]
}
