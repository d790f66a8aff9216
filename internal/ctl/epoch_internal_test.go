package ctl

import (
	"strings"
	"testing"

	"github.com/plexsphere/signer/client/auditlog"
)

// The decision behind audit verify --checkpoint across epochs, over
// several restores (TestVerifyAcrossEpochs runs one real restore): a saved
// checkpoint survives if no restore since its epoch went below its size;
// the first that did is the one reported; a missing or inconsistent record
// is no decision at all.
func TestRestoreVerdict(t *testing.T) {
	rec := func(epoch int, restored uint64) epochRecord {
		return epochRecord{Seq: restored + 1, EpochRecord: auditlog.EpochRecord{Epoch: epoch, RestoredSize: restored}}
	}
	for _, tc := range []struct {
		name        string
		epoch       int
		size        uint64
		latest      int
		recs        []epochRecord
		since, lost int    // epochs: how many since, which lost it (0: none)
		err         string // else
	}{
		{"kept by one", 1, 10, 2, []epochRecord{rec(2, 15)}, 1, 0, ""},
		{"kept at the restored size", 1, 15, 2, []epochRecord{rec(2, 15)}, 1, 0, ""},
		{"lost by one", 1, 16, 2, []epochRecord{rec(2, 15)}, 1, 2, ""},
		{"kept by two", 1, 10, 3, []epochRecord{rec(2, 15), rec(3, 20)}, 2, 0, ""},
		{"lost by the second", 1, 10, 3, []epochRecord{rec(2, 15), rec(3, 8)}, 2, 3, ""},
		{"lost by the first of two", 1, 10, 3, []epochRecord{rec(2, 5), rec(3, 30)}, 2, 2, ""},
		{"only the epochs since its own", 2, 18, 3, []epochRecord{rec(2, 5), rec(3, 20)}, 1, 0, ""},
		{"a record missing", 1, 10, 3, []epochRecord{rec(2, 15)}, 0, 0, "the record that began epoch 3 is not in the store"},
		{"two records of one epoch", 1, 10, 2, []epochRecord{rec(2, 15), rec(2, 16)}, 0, 0, "two records begin epoch 2"},
		{"a record not at its epoch's start", 1, 10, 2, []epochRecord{{Seq: 40, EpochRecord: auditlog.EpochRecord{Epoch: 2, RestoredSize: 15}}}, 0, 0, "is entry 40 but says the epoch began after size 15"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			since, lost, err := restoreVerdict(auditlog.Checkpoint{Epoch: tc.epoch, Size: tc.size}, tc.latest, tc.recs)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(since) != tc.since || (lost == nil) != (tc.lost == 0) || lost != nil && lost.Epoch != tc.lost {
				t.Fatalf("since %d, lost %+v, err %v; want since %d, lost epoch %d", len(since), lost, err, tc.since, tc.lost)
			}
		})
	}
}
