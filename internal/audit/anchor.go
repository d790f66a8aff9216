package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	tlog "github.com/transparency-dev/formats/log"

	"github.com/plexsphere/signer/client/auditlog"
)

// The checkpoint file is an anchor outside the store: every checkpoint the
// signer signs, and every one its witnesses cosign, is appended to it (one
// JSON line, fsynced) before the checkpoint counts. At start-up the signer
// trusts the largest checkpoint of its epoch in the file: a store that holds
// fewer entries, or another tree at that size, is broken. Kept on storage
// the database's writers cannot reach (its own volume, shipped off-box), it
// catches a restored backup or a truncated log without any witness.
//
// SIGNER_CHECKPOINT_LOG may name a directory shared by replicas: each
// writes "<hostname>.jsonl" in it and trusts the largest checkpoint of all
// the directory's files, so a replica that comes back under another name
// (a Deployment's pod) still finds what the others and its predecessors
// wrote.

// anchorFiles is where a replica writes its checkpoints and every file it
// reads them from: path itself, or for a directory its own file in it and
// every *.jsonl file there.
func anchorFiles(path string) (write string, read []string, err error) {
	fi, err := os.Stat(path)
	if err != nil || !fi.IsDir() {
		return path, []string{path}, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", nil, err
	}
	read, err = filepath.Glob(filepath.Join(path, "*.jsonl"))
	return filepath.Join(path, host+".jsonl"), read, err
}

// fileLine is one checkpoint in the checkpoint file.
type fileLine struct {
	Origin string    `json:"origin"`
	Size   uint64    `json:"size"`
	Root   []byte    `json:"root"`
	Note   string    `json:"note"`
	Time   time.Time `json:"time"`
}

func appendFile(path string, cp auditlog.Checkpoint, at time.Time) error {
	path, _, err := anchorFiles(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	line, err := json.Marshal(fileLine{Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Note: string(cp.Note), Time: at.UTC()})
	if err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fileAnchor is what the checkpoint file holds for one log.
type fileAnchor struct {
	exists bool
	lines  int
	// largest is the note of the largest checkpoint per epoch (not yet
	// verified: the caller verifies the one it trusts).
	largest map[int][]byte
	sizes   map[int]uint64
}

// readAnchor reads every complete line of the checkpoint file (or of every
// file of the directory). A line that does not parse is the anchor broken:
// an anchor that cannot be read proves nothing, and trusting only what
// parses would let a writer of the file hide its largest checkpoint. An
// incomplete last line (a write cut by a crash) is ignored. Sizes come from
// the signed note text, never from the line's other fields.
func readAnchor(path, origin string) (fileAnchor, error) {
	a := fileAnchor{largest: map[int][]byte{}, sizes: map[int]uint64{}}
	_, files, err := anchorFiles(path)
	if err != nil {
		return a, err
	}
	for _, f := range files {
		if err := a.read(f, origin); err != nil {
			return a, err
		}
	}
	return a, nil
}

func (a *fileAnchor) read(path, origin string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	a.exists = true
	r := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // an incomplete last line, if any
		}
		if err != nil {
			return err
		}
		a.lines++
		var fl fileLine
		if err := json.Unmarshal(line, &fl); err != nil {
			return broken("checkpoint file %s: line %d does not parse (%v): the file is the log's anchor; restore it from its off-box copy", path, n, err)
		}
		note := []byte(fl.Note)
		text, _, ok := bytes.Cut(note, []byte("\n\n"))
		var cp tlog.Checkpoint
		if !ok {
			return broken("checkpoint file %s: line %d holds no signed note", path, n)
		}
		if _, err := cp.Unmarshal(append(text, '\n')); err != nil {
			return broken("checkpoint file %s: line %d holds no checkpoint (%v)", path, n, err)
		}
		epoch := auditlog.EpochOf(origin, cp.Origin)
		if epoch == 0 {
			return broken("checkpoint file %s: line %d is a checkpoint of another log (%q)", path, n, cp.Origin)
		}
		if cur, ok := a.sizes[epoch]; !ok || cp.Size > cur || cp.Size == cur && len(note) > len(a.largest[epoch]) {
			// At equal sizes the longer note carries the cosignatures.
			a.sizes[epoch], a.largest[epoch] = cp.Size, note
		}
	}
	return nil
}

// CheckpointFile is the file this signer appends checkpoints to under
// SIGNER_CHECKPOINT_LOG: the path itself, or, for a directory (one claim
// shared by replicas), <hostname>.jsonl in it.
func CheckpointFile(path string) (string, error) {
	write, _, err := anchorFiles(path)
	return write, err
}

// CheckpointFileEmpty reports whether the checkpoint file (or every file of
// the directory) holds no complete line: SIGNER_CHECKPOINT_LOG_INIT starts
// only an empty one.
func CheckpointFileEmpty(path string) (bool, error) {
	_, files, err := anchorFiles(path)
	if err != nil {
		return false, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		if bytes.IndexByte(b, '\n') >= 0 {
			return false, nil
		}
	}
	return true, nil
}

// maxEpoch is the newest epoch the file holds a checkpoint of (0: none).
func (a fileAnchor) maxEpoch() int {
	m := 0
	for e := range a.sizes {
		m = max(m, e)
	}
	return m
}

// ReadCheckpointFile parses every line of a checkpoint file (for signerctl
// and witnesses).
func ReadCheckpointFile(r io.Reader) ([][]byte, error) {
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var fl fileLine
		if err := json.Unmarshal(sc.Bytes(), &fl); err != nil {
			return nil, fmt.Errorf("audit: checkpoint log line %d: %w", len(out)+1, err)
		}
		out = append(out, []byte(fl.Note))
	}
	return out, sc.Err()
}
