package audit

import (
	"bytes"
	"crypto/ed25519"
	"fmt"

	tlog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
)

// NoteSigner signs checkpoints with the log's checkpoint key. The note's
// signer name is the log's origin, so the verifier key names the log.
type NoteSigner struct {
	origin string
	hash   uint32
	sign   func(msg []byte) ([]byte, error)
}

// NewNoteSigner wraps a signing function of the Ed25519 key pub (a
// key-provider key: the private half never passes through here) and
// returns it with the verifier key operators pin ("<origin>+<hash>+<base64
// key>", as golang.org/x/mod/sumdb/note).
func NewNoteSigner(origin string, pub ed25519.PublicKey, sign func(msg []byte) ([]byte, error)) (*NoteSigner, string, error) {
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return nil, "", fmt.Errorf("audit: checkpoint key for origin %q: %w", origin, err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, "", err
	}
	return &NoteSigner{origin: origin, hash: v.KeyHash(), sign: sign}, vkey, nil
}

func (s *NoteSigner) Name() string                    { return s.origin }
func (s *NoteSigner) KeyHash() uint32                 { return s.hash }
func (s *NoteSigner) Sign(msg []byte) ([]byte, error) { return s.sign(msg) }

// SignCheckpoint returns the signed note for size and root.
func SignCheckpoint(s *NoteSigner, size uint64, root []byte) (auditlog.Checkpoint, error) {
	body := tlog.Checkpoint{Origin: s.origin, Size: size, Hash: root}.Marshal()
	n, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		return auditlog.Checkpoint{}, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	return auditlog.Checkpoint{Origin: s.origin, Size: size, Root: bytes.Clone(root), Note: n}, nil
}
