package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/config"
)

// SIGNER_CHECKPOINT_LOG is a file or a directory (one claim shared by the
// replicas, each appending to <hostname>.jsonl in it): preflight accepts
// both, and refuses a file whose directory is not one.
func TestPreflightCheckpointLog(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "kek")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"file", filepath.Join(dir, "checkpoints.jsonl"), ""},
		{"directory", dir, ""},
		{"file under a file", filepath.Join(notDir, "checkpoints.jsonl"), "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := preflight(&config.Signer{CheckpointLog: tc.path})
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "SIGNER_CHECKPOINT_LOG")) {
				t.Fatalf("preflight(%s): %v, want %q", tc.path, err, tc.want)
			}
		})
	}
}
