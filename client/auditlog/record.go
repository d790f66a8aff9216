package auditlog

import (
	"encoding/json"
	"fmt"
)

// The log's own records are entries with relation "log" whose Detail is a
// JSON object, written by the signer (and sealed like every commit) so
// that the acts that change what the log holds are in the log itself,
// under its checkpoints and its witnesses' cosignatures.

// EpochRecord starts a log epoch (MethodEpoch): the log continues from a
// restored store under a new origin, and says what it lost. Its entry is
// the first of the epoch; the epoch's checkpoints sign the whole tree,
// restored entries included.
type EpochRecord struct {
	Epoch       int    `json:"epoch"`
	Origin      string `json:"origin"`
	VerifierKey string `json:"verifier_key"`
	// PreviousOrigin is the epoch before; PreviousCheckpoint the newest of
	// its checkpoints the signer could find (cosigned if it could), which
	// may be larger than the restored log: the entries beyond
	// RestoredSize in it are the ones the restore lost.
	PreviousOrigin     string `json:"previous_origin"`
	PreviousCheckpoint string `json:"previous_checkpoint,omitempty"`
	// RestoredSize and RestoredRoot are the log the epoch starts from: the
	// size and root of the tree before this entry.
	RestoredSize uint64 `json:"restored_size"`
	RestoredRoot []byte `json:"restored_root"`
	// Reason is the operator's (SIGNER_AUDIT_EPOCH_REASON).
	Reason string `json:"reason"`
}

// PruneRecord announces a prune (MethodPrune) before any entry is deleted:
// entries up to UpTo are exported (the export file's SHA-256 and the
// checkpoint it is sealed with) and will be removed from the store. The
// store's prune mark must name this record; a mark without one, or one
// that disagrees with it, is the log broken.
type PruneRecord struct {
	UpTo uint64 `json:"upto"`
	// RootAtUpTo is the root of the tree of the first UpTo entries: the
	// stored tree nodes that stay must rebuild it.
	RootAtUpTo        []byte   `json:"root_at_upto"`
	ExportSHA256      []byte   `json:"export_sha256"`
	ExportFrom        uint64   `json:"export_from"`
	ExportTo          uint64   `json:"export_to"`
	ExportCheckpoint  string   `json:"export_checkpoint"`
	ExportConsistency [][]byte `json:"export_consistency,omitempty"`
	Reason            string   `json:"reason,omitempty"`
}

// ParseRecord decodes the detail of a log record: *EpochRecord or
// *PruneRecord, by the entry's method.
func ParseRecord(e Entry) (any, error) {
	if e.Relation != RelationLog {
		return nil, fmt.Errorf("auditlog: entry is not a log record (relation %q)", e.Relation)
	}
	var r any
	switch e.Method {
	case MethodEpoch:
		r = &EpochRecord{}
	case MethodPrune:
		r = &PruneRecord{}
	default:
		return nil, fmt.Errorf("auditlog: unknown log record %q", e.Method)
	}
	if err := json.Unmarshal(e.Detail, r); err != nil {
		return nil, fmt.Errorf("auditlog: log record %s: %w", e.Method, err)
	}
	return r, nil
}
