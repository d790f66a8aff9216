package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"strings"

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
	// Epoch is the log epoch the origin names: 1 for the log's own origin,
	// n for "<origin>/epoch-<n>", the log started again after a restore
	// (docs/audit.md, "Restore").
	Epoch int
	Size  uint64
	Root  []byte
	Note  []byte // the signed note, as served and stored
}

// ErrCheckpoint is returned for a checkpoint that does not parse or whose
// signature is not the log's.
var ErrCheckpoint = errors.New("auditlog: checkpoint not signed by this log's key")

// ErrNotWitnessed is returned for a checkpoint whose cosignatures do not
// satisfy the witness policy.
var ErrNotWitnessed = errors.New("auditlog: checkpoint not cosigned by the witness policy's quorum")

// ErrProof is returned for a proof that does not verify.
var ErrProof = errors.New("auditlog: proof does not verify")

// Verifier checks one log's checkpoints and proofs: those of its origin and
// of its later epochs, which the same key signs under the epoch's origin.
type Verifier struct {
	origin string
	pub    ed25519.PublicKey
	v      note.Verifier // epoch 1's
}

// NewVerifier parses the log's verifier key ("<origin>+<hash>+<base64
// key>", golang.org/x/mod/sumdb/note's format, an Ed25519 key). Its name is
// the log's origin.
func NewVerifier(vkey string) (*Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("auditlog: checkpoint verifier key: %w", err)
	}
	_, b64, _ := strings.Cut(vkey[len(v.Name())+1:], "+")
	pub, err := decodeEd25519(b64)
	if err != nil {
		return nil, fmt.Errorf("auditlog: checkpoint verifier key: %w", err)
	}
	return &Verifier{origin: v.Name(), pub: pub, v: v}, nil
}

// Origin is the log's origin line (epoch 1).
func (v *Verifier) Origin() string { return v.origin }

// KeyHash is the key hash the log's signature lines carry in epoch 1.
func (v *Verifier) KeyHash() uint32 { return v.v.KeyHash() }

// EpochOrigin is the origin of epoch n: the log's origin for 1, else
// "<origin>/epoch-<n>".
func EpochOrigin(origin string, n int) string {
	if n <= 1 {
		return origin
	}
	return origin + "/epoch-" + strconv.Itoa(n)
}

// EpochOf is the epoch an origin names for a log whose epoch-1 origin is
// base, or 0 if it names none of its epochs.
func EpochOf(base, origin string) int {
	if origin == base {
		return 1
	}
	s, ok := strings.CutPrefix(origin, base+"/epoch-")
	if !ok || s == "" || s[0] == '0' {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 2 || strconv.Itoa(n) != s {
		return 0
	}
	return n
}

// EpochVerifierKey is the verifier key of epoch n: the same public key
// under the epoch's origin (C2SP tlog-checkpoint: the key name matches the
// origin). Witnesses are configured with it for each epoch.
func (v *Verifier) EpochVerifierKey(n int) string {
	vkey, err := note.NewEd25519VerifierKey(EpochOrigin(v.origin, n), v.pub)
	if err != nil {
		panic("auditlog: epoch verifier key: " + err.Error()) // the origin was valid as a key name
	}
	return vkey
}

// epochVerifier returns the note verifier for the epoch an origin names.
func (v *Verifier) epochVerifier(origin string) (note.Verifier, int, error) {
	n := EpochOf(v.origin, origin)
	if n == 0 {
		return nil, 0, fmt.Errorf("%w: origin %q is not this log's (%q or one of its epochs)", ErrCheckpoint, origin, v.origin)
	}
	if n == 1 {
		return v.v, 1, nil
	}
	nv, err := note.NewVerifier(v.EpochVerifierKey(n))
	return nv, n, err
}

// Open verifies a signed checkpoint and parses it. A note signed by any
// other key, naming another origin, altered in any byte, or carrying a
// signature line under a known key that does not verify (C2SP signed-note)
// is refused (ErrCheckpoint). Cosignatures by other keys (witnesses) are
// allowed and not checked: OpenWitnessed checks them.
func (v *Verifier) Open(signed []byte) (Checkpoint, error) {
	return v.open(signed, nil)
}

// OpenWitnessed is Open that also requires the cosignatures of the policy's
// quorum (ErrNotWitnessed); every signature line under a key the policy
// knows must verify.
func (v *Verifier) OpenWitnessed(signed []byte, p *WitnessPolicy) (Checkpoint, error) {
	if p == nil {
		return Checkpoint{}, fmt.Errorf("%w: no witness policy", ErrNotWitnessed)
	}
	cp, err := v.open(signed, p.verifiers)
	if err != nil {
		return cp, err
	}
	if !p.group.Satisfied(signed) {
		return Checkpoint{}, fmt.Errorf("%w: size %d (cosigned by %s)", ErrNotWitnessed, cp.Size, strings.Join(orNone(p.Cosigners(signed)), ", "))
	}
	return cp, nil
}

func (v *Verifier) open(signed []byte, others []note.Verifier) (Checkpoint, error) {
	origin, _, _ := strings.Cut(string(signed), "\n")
	lv, epoch, err := v.epochVerifier(origin)
	if err != nil {
		return Checkpoint{}, err
	}
	known := append([]note.Verifier{lv}, others...)
	if err := strict(signed, note.VerifierList(known...)); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	cp, _, _, err := tlog.ParseCheckpoint(signed, origin, lv, others...)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	return Checkpoint{Origin: cp.Origin, Epoch: epoch, Size: cp.Size, Root: cp.Hash, Note: bytes.Clone(signed)}, nil
}

// strict refuses a note with any signature line, under a key in known, that
// does not verify. note.Open verifies only the first line of each key and
// skips the rest; each line is opened on its own here, so a second line
// under the log's name and key hash with a garbage signature is refused
// instead of ignored.
func strict(msg []byte, known note.Verifiers) error {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return errors.New("malformed note")
	}
	text, sigs := msg[:i+2], msg[i+2:]
	for len(sigs) > 0 {
		j := bytes.IndexByte(sigs, '\n')
		if j < 0 {
			return errors.New("malformed note")
		}
		_, err := note.Open(append(bytes.Clone(text), sigs[:j+1]...), known)
		var invalid *note.InvalidSignatureError
		if errors.As(err, &invalid) {
			return err
		}
		sigs = sigs[j+1:]
	}
	return nil
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
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
