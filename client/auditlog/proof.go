package auditlog

import (
	"crypto/sha256"
	"fmt"

	fproof "github.com/transparency-dev/formats/proof"
)

// Proof is a C2SP tlog-proof (https://c2sp.org/tlog-proof): an entry's
// inclusion proof and the (cosigned) checkpoint it leads to, verifiable
// offline with the log's verifier key and a witness policy. The proof's
// extra data is the entry's leaf, so the proof shows what was logged: its
// hash is what the inclusion proof proves, so the extra data is
// authenticated by the proof itself.
type Proof struct {
	Index      uint64   // the entry's leaf index, its seq - 1
	Leaf       []byte   // the entry's canonical leaf (the proof's extra data)
	Hashes     [][]byte // the inclusion proof, from the leaf's sibling up
	Checkpoint []byte   // the signed note, with its cosignatures
}

// Marshal is the proof in the tlog-proof text format (formats/proof).
func (p Proof) Marshal() ([]byte, error) {
	tp := fproof.TLogProof{Index: p.Index, Checkpoint: p.Checkpoint, ExtraData: p.Leaf}
	for _, h := range p.Hashes {
		if len(h) != sha256.Size {
			return nil, fmt.Errorf("auditlog: proof hash of %d bytes", len(h))
		}
		tp.Hashes = append(tp.Hashes, [sha256.Size]byte(h))
	}
	return tp.Marshal(), nil
}

// ParseProof reads a tlog-proof.
func ParseProof(b []byte) (Proof, error) {
	var tp fproof.TLogProof
	if err := tp.Unmarshal(b); err != nil {
		return Proof{}, fmt.Errorf("%w: %v", ErrProof, err)
	}
	p := Proof{Index: tp.Index, Leaf: tp.ExtraData, Checkpoint: tp.Checkpoint}
	for _, h := range tp.Hashes {
		p.Hashes = append(p.Hashes, h[:])
	}
	return p, nil
}

// VerifyProof checks a tlog-proof offline: the checkpoint is the log's
// (and, with a policy, cosigned by its quorum), the leaf is a canonical
// entry, and it sits at the proof's index in the checkpoint's tree. It
// returns the entry (Seq set) and the checkpoint.
func (v *Verifier) VerifyProof(b []byte, policy *WitnessPolicy) (Entry, Checkpoint, error) {
	p, err := ParseProof(b)
	if err != nil {
		return Entry{}, Checkpoint{}, err
	}
	var cp Checkpoint
	if policy != nil {
		cp, err = v.OpenWitnessed(p.Checkpoint, policy)
	} else {
		cp, err = v.Open(p.Checkpoint)
	}
	if err != nil {
		return Entry{}, Checkpoint{}, err
	}
	if p.Leaf == nil {
		return Entry{}, cp, fmt.Errorf("%w: the proof carries no entry (extra data)", ErrProof)
	}
	e, err := ParseLeaf(p.Leaf)
	if err != nil {
		return Entry{}, cp, fmt.Errorf("%w: the proof's entry: %v", ErrProof, err)
	}
	if err := VerifyInclusion(cp, p.Index, p.Leaf, p.Hashes); err != nil {
		return Entry{}, cp, err
	}
	e.Seq = p.Index + 1
	return e, cp, nil
}
