package auditlog

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"time"

	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/formats/witness"
	"golang.org/x/mod/sumdb/note"
)

// WitnessPolicy says which witnesses must cosign a checkpoint before it
// counts: the sigsum policy text as transparency-dev/formats reads it
// (witness.ParsePolicy), with C2SP tlog-cosignature verifier keys:
//
//	witness w1 w1.example+4c9a6f5e+BKc... https://w1.example
//	witness w2 w2.example+17d3a55b+BPx... https://w2.example
//	group two-of-two all w1 w2
//	quorum two-of-two
//
// ("group <name> <k|any|all> <members...>"; "quorum none" asks for no
// cosignature). The signer pushes its checkpoints to every witness URL
// (C2SP tlog-witness, add-checkpoint); verifiers use the same file and
// ignore the URLs.
type WitnessPolicy struct {
	group     witness.Group
	verifiers []note.Verifier
	witnesses []Witness
}

// Witness is one witness of a policy.
type Witness struct {
	Name string // its key name, on its cosignature lines
	URL  string // its add-checkpoint endpoint
	Key  note.Verifier
}

// ParseWitnessPolicy parses a policy.
func ParseWitnessPolicy(text []byte) (*WitnessPolicy, error) {
	g, err := witness.ParsePolicy(text)
	if err != nil {
		return nil, fmt.Errorf("auditlog: witness policy: %w", err)
	}
	p := &WitnessPolicy{group: g}
	for url, v := range g.Endpoints() {
		p.verifiers = append(p.verifiers, v)
		p.witnesses = append(p.witnesses, Witness{Name: v.Name(), URL: url, Key: v})
	}
	sort.Slice(p.witnesses, func(i, j int) bool { return p.witnesses[i].Name < p.witnesses[j].Name })
	seen := map[string]bool{}
	for _, w := range p.witnesses {
		if seen[w.Name] {
			return nil, fmt.Errorf("auditlog: witness policy: two witnesses named %q", w.Name)
		}
		seen[w.Name] = true
	}
	if g.N > 0 && len(p.witnesses) == 0 {
		return nil, errors.New("auditlog: witness policy: a quorum but no witness")
	}
	return p, nil
}

// Witnesses are the policy's witnesses, by name.
func (p *WitnessPolicy) Witnesses() []Witness { return p.witnesses }

// Required reports whether the policy asks for any cosignature ("quorum
// none" does not).
func (p *WitnessPolicy) Required() bool { return p.group.N > 0 }

// Satisfied reports whether signed carries the cosignatures of a quorum.
// It does not check the log's own signature: Verifier.OpenWitnessed does.
func (p *WitnessPolicy) Satisfied(signed []byte) bool { return p.group.Satisfied(signed) }

// Cosigners names the policy's witnesses whose cosignatures on signed
// verify.
func (p *WitnessPolicy) Cosigners(signed []byte) []string {
	var out []string
	for _, w := range p.witnesses {
		if _, err := note.Open(signed, note.VerifierList(w.Key)); err == nil {
			out = append(out, w.Name)
		}
	}
	return out
}

// CosignedAt is the oldest time among the verified cosignatures on signed
// (each witness signs its own clock's time, C2SP tlog-cosignature): the
// latest time by which every one of them had seen the checkpoint. Zero if
// none verifies.
func (p *WitnessPolicy) CosignedAt(signed []byte) time.Time {
	var oldest time.Time
	for _, w := range p.witnesses {
		n, err := note.Open(signed, note.VerifierList(w.Key))
		if err != nil {
			continue
		}
		for _, s := range n.Sigs {
			t, err := fnote.CoSigV1Timestamp(s)
			if err == nil && (oldest.IsZero() || t.Before(oldest)) {
				oldest = t
			}
		}
	}
	return oldest
}

// decodeEd25519 reads the base64 part of an Ed25519 note verifier key: the
// algorithm byte (1) and the 32-byte key.
func decodeEd25519(b64 string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != 33 || b[0] != 1 {
		return nil, errors.New("not an Ed25519 note verifier key")
	}
	return b[1:], nil
}

// Cosign appends a witness's cosignature lines (as an add-checkpoint
// answer carries them) to a signed note, keeping only the lines that verify
// with a key of the policy; it returns the note and the names of the
// witnesses whose lines were added.
func (p *WitnessPolicy) Cosign(signed, lines []byte) ([]byte, []string) {
	i := bytes.LastIndex(signed, []byte("\n\n"))
	if i < 0 {
		return signed, nil
	}
	text := signed[:i+2]
	out := bytes.Clone(signed)
	var added []string
	for _, line := range bytes.SplitAfter(lines, []byte("\n")) {
		if len(line) == 0 || line[len(line)-1] != '\n' || bytes.Contains(out[i+2:], line) {
			continue
		}
		for _, w := range p.witnesses {
			if _, err := note.Open(append(bytes.Clone(text), line...), note.VerifierList(w.Key)); err == nil {
				out = append(out, line...)
				added = append(added, w.Name)
				break
			}
		}
	}
	return out, added
}
