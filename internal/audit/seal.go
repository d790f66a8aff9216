package audit

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// A seal authenticates one commit: an HMAC-SHA256, under a key only the
// signer's replicas can derive, of the log's size and root after the
// commit. The store keeps it beside the batch (Batch.Seal). The database's
// roles never hold the key: it is derived from a signature by the
// checkpoint key (in the key provider: sealed by the KEK, or inside the
// HSM), so an entry a store writer inserts, or alters, reaches no seal that
// verifies, and the check that runs before every checkpoint (Log.Check)
// refuses to sign it. A checkpoint covers every seal below its size: seals
// matter in the window after the newest checkpoint.
//
// Why an HMAC and not a signature per commit: the checkpoint key may sit in
// an HSM (≈ 200 µs a signature); the key derivation costs one signature per
// start, a seal about a microsecond. Verifiers outside the signer check the
// checkpoints instead, which the signer signs only after checking the seals.

// Sealer makes and checks seals.
type Sealer struct {
	key [32]byte
}

// sealKeyMessage is what the checkpoint key signs to derive the seal key.
// It can never be a checkpoint, cosignature or any note text the key signs
// otherwise: those end in a newline after a base64 root or a signature
// line; this line names itself.
const sealKeyMessage = "plexsphere-signer seal key v1 for log "

// DeriveSealer derives the seal key of the log origin (its epoch-1
// origin) from the checkpoint key's signature over a fixed message. Ed25519
// signatures are deterministic, so every replica derives the same key, and
// unpredictable without the private key.
func DeriveSealer(origin string, sign func(msg []byte) ([]byte, error)) (*Sealer, error) {
	sig, err := sign([]byte(sealKeyMessage + origin))
	if err != nil {
		return nil, fmt.Errorf("audit: derive the seal key: %w", err)
	}
	again, err := sign([]byte(sealKeyMessage + origin))
	if err != nil {
		return nil, fmt.Errorf("audit: derive the seal key: %w", err)
	}
	if !hmac.Equal(sig, again) {
		// A provider whose signatures are randomised would give each
		// replica, and each start, another key: every earlier seal would
		// fail. Refuse it here, where it is one clear error.
		return nil, errors.New("audit: derive the seal key: the checkpoint key's signatures are not deterministic (not Ed25519 as RFC 8032 defines it)")
	}
	k, err := hkdf.Key(sha256.New, sig, nil, "plexsphere-signer/seal/v1", 32)
	if err != nil {
		return nil, err
	}
	var s Sealer
	copy(s.key[:], k)
	return &s, nil
}

// NewSealer uses key as the seal key (tests).
func NewSealer(key [32]byte) *Sealer { return &Sealer{key: key} }

// SealSize is the length of a seal.
const SealSize = sha256.Size

// SealedRange is the seqs one commit wrote, Start..End. The seal binds the
// start too: a writer that reloaded the tree past entries a store writer
// inserted before its commit seals a range that does not start where the
// previous seal ended, so the inserted entries stay outside every seal.
type SealedRange struct{ Start, End uint64 }

// Seal is the seal of the commit r, after which the log's root is root.
func (s *Sealer) Seal(r SealedRange, root []byte) []byte {
	m := hmac.New(sha256.New, s.key[:])
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.Start)
	binary.BigEndian.PutUint64(b[8:], r.End)
	m.Write(b[:])
	m.Write(root)
	return m.Sum(nil)
}

// Check reports whether seal is the seal of the commit r with root.
func (s *Sealer) Check(r SealedRange, root, seal []byte) bool {
	if s == nil {
		return false
	}
	return hmac.Equal(s.Seal(r, root), seal)
}

// StoredSeal is a seal as a store keeps it, under the size its commit
// ended at (Batch.Start+len(Batch.Leaves)-1).
type StoredSeal struct {
	Size uint64
	MAC  []byte
}
