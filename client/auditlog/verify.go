package auditlog

import (
	"bytes"
	"errors"
	"fmt"

	tlog "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Checkpoint is a signed statement of the log's size and root hash, in the
// C2SP tlog-checkpoint format (origin line, size, base64 root) wrapped in a
// C2SP signed note.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   []byte
	Note   []byte // the signed note, as served and stored
}

// ErrCheckpoint is returned for a checkpoint that does not parse or whose
// signature is not the log's.
var ErrCheckpoint = errors.New("auditlog: checkpoint not signed by this log's key")

// ErrProof is returned for a proof that does not verify.
var ErrProof = errors.New("auditlog: proof does not verify")

// Verifier checks one log's checkpoints and proofs.
type Verifier struct {
	v note.Verifier
}

// NewVerifier parses the log's verifier key ("<origin>+<hash>+<base64
// key>", golang.org/x/mod/sumdb/note's format). Its name is the log's
// origin.
func NewVerifier(vkey string) (*Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("auditlog: checkpoint verifier key: %w", err)
	}
	return &Verifier{v: v}, nil
}

// Origin is the log's origin line.
func (v *Verifier) Origin() string { return v.v.Name() }

// KeyHash is the key hash the log's signature lines carry.
func (v *Verifier) KeyHash() uint32 { return v.v.KeyHash() }

// Open verifies a signed checkpoint and parses it. A note signed by any
// other key, naming another origin, or altered in any byte is refused
// (ErrCheckpoint). Cosignatures by other keys (witnesses) are allowed.
func (v *Verifier) Open(signed []byte) (Checkpoint, error) {
	cp, _, _, err := tlog.ParseCheckpoint(signed, v.v.Name(), v.v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	return Checkpoint{Origin: cp.Origin, Size: cp.Size, Root: cp.Hash, Note: bytes.Clone(signed)}, nil
}

// VerifyInclusion checks that leaf sits at index (its seq - 1) in the tree
// the checkpoint signs.
func VerifyInclusion(cp Checkpoint, index uint64, leaf []byte, p [][]byte) error {
	h := LeafHash(leaf)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, h[:], p, cp.Root); err != nil {
		return fmt.Errorf("%w: entry %d in checkpoint of size %d: %v", ErrProof, index+1, cp.Size, err)
	}
	return nil
}

// VerifyConsistency checks that the tree of older is a prefix of the tree of
// newer: the log only grew between them.
func VerifyConsistency(older, newer Checkpoint, p [][]byte) error {
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, older.Size, newer.Size, p, older.Root, newer.Root); err != nil {
		return fmt.Errorf("%w: from size %d to %d: %v", ErrProof, older.Size, newer.Size, err)
	}
	return nil
}
