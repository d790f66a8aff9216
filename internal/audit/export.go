package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/transparency-dev/merkle/compact"

	"github.com/plexsphere/signer/client/auditlog"
)

// An export is a sealed range of the log: the entries From..To, the right
// edge of the tree before From (the previous export's end, none for the
// first), a checkpoint and the consistency proof from size To to it. Anyone
// with the verifier key can check that the entries are exactly the log's
// (VerifyExport); the prune refuses to delete entries that an export does
// not hold byte for byte. Exports chain: each starts where the previous
// ended.
//
// The file is JSON lines: a header, one line per entry, a trailer.

// ExportFormat names the file format in its header.
const ExportFormat = "plexsphere-signer/audit-export/v1"

// ExportHeader is an export's first line.
type ExportHeader struct {
	Format      string   `json:"format"`
	Origin      string   `json:"origin"`
	VerifierKey string   `json:"verifier_key"`
	From        uint64   `json:"from"` // first seq
	To          uint64   `json:"to"`   // last seq
	Start       [][]byte `json:"start"`
}

type exportLeaf struct {
	Seq  uint64 `json:"seq"`
	Leaf []byte `json:"leaf"`
}

// ExportTrailer is an export's last line.
type ExportTrailer struct {
	Checkpoint  string   `json:"checkpoint"`
	Consistency [][]byte `json:"consistency"`
}

// ExportWriter writes an export.
type ExportWriter struct {
	w    *bufio.Writer
	enc  *json.Encoder
	next uint64
	to   uint64
}

// NewExportWriter writes the header; start is the tree before From (nil for
// From == 1).
func NewExportWriter(w io.Writer, h ExportHeader) (*ExportWriter, error) {
	h.Format = ExportFormat
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(h); err != nil {
		return nil, err
	}
	return &ExportWriter{w: bw, enc: enc, next: h.From, to: h.To}, nil
}

// Add writes the next entry.
func (e *ExportWriter) Add(seq uint64, leaf []byte) error {
	if seq != e.next || seq > e.to {
		return fmt.Errorf("audit: export: entry %d out of order (want %d)", seq, e.next)
	}
	e.next++
	return e.enc.Encode(exportLeaf{Seq: seq, Leaf: leaf})
}

// Close writes the trailer.
func (e *ExportWriter) Close(t ExportTrailer) error {
	if e.next != e.to+1 {
		return fmt.Errorf("audit: export: %d entries missing", e.to+1-e.next)
	}
	if err := e.enc.Encode(t); err != nil {
		return err
	}
	return e.w.Flush()
}

// Edge returns the right edge of a tree as the hashes an export's Start
// holds.
func (t *Tree) Edge() [][]byte { return t.r.Hashes() }

// TreeFromEdge rebuilds a tree of size from its edge hashes.
func TreeFromEdge(size uint64, edge [][]byte) (*Tree, error) {
	if size == 0 {
		return NewTree(), nil
	}
	r, err := rangeFactory.NewRange(0, size, edge)
	if err != nil {
		return nil, fmt.Errorf("audit: tree edge at size %d: %w", size, err)
	}
	return &Tree{r: r}, nil
}

// ErrExport is returned for an export that does not verify.
var ErrExport = errors.New("audit: export does not verify")

// ExportInfo is what a verified export holds.
type ExportInfo struct {
	Header     ExportHeader
	Checkpoint auditlog.Checkpoint
	End        *Tree  // the tree after To
	RootAt     []byte // the root after the entry VerifyExportAt was asked for
}

// VerifyExport checks an export with the log's verifier: every entry in
// order and canonical, the tree they extend from Start, and the checkpoint's
// signature and consistency with that tree. each, if not nil, sees every
// entry (the prune compares them with the store).
func VerifyExport(r io.Reader, v *auditlog.Verifier, each func(seq uint64, leaf []byte) error) (ExportInfo, error) {
	return VerifyExportAt(r, v, each, 0)
}

// VerifyExportAt is VerifyExport that also records the tree's root after
// the entry with seq rootAt (ExportInfo.RootAt), computed from the export's
// entries themselves (a prune's record states it).
func VerifyExportAt(r io.Reader, v *auditlog.Verifier, each func(seq uint64, leaf []byte) error, rootAt uint64) (ExportInfo, error) {
	var info ExportInfo
	dec := json.NewDecoder(bufio.NewReader(r))
	if err := dec.Decode(&info.Header); err != nil {
		return info, fmt.Errorf("%w: header: %v", ErrExport, err)
	}
	h := info.Header
	switch {
	case h.Format != ExportFormat:
		return info, fmt.Errorf("%w: format %q, want %q", ErrExport, h.Format, ExportFormat)
	case h.Origin != v.Origin():
		return info, fmt.Errorf("%w: origin %q, this log is %q", ErrExport, h.Origin, v.Origin())
	case h.From == 0 || h.To < h.From:
		return info, fmt.Errorf("%w: range %d..%d", ErrExport, h.From, h.To)
	case len(h.Start) != compact.RangeSize(0, h.From-1):
		return info, fmt.Errorf("%w: %d start hashes for size %d", ErrExport, len(h.Start), h.From-1)
	}
	t, err := TreeFromEdge(h.From-1, h.Start)
	if err != nil {
		return info, fmt.Errorf("%w: %v", ErrExport, err)
	}
	for seq := h.From; seq <= h.To; seq++ {
		var l exportLeaf
		if err := dec.Decode(&l); err != nil {
			return info, fmt.Errorf("%w: entry %d: %v", ErrExport, seq, err)
		}
		if l.Seq != seq {
			return info, fmt.Errorf("%w: entry %d where %d belongs", ErrExport, l.Seq, seq)
		}
		if _, err := auditlog.ParseLeaf(l.Leaf); err != nil {
			return info, fmt.Errorf("%w: entry %d: %v", ErrExport, seq, err)
		}
		if each != nil {
			if err := each(seq, l.Leaf); err != nil {
				return info, err
			}
		}
		lh := auditlog.LeafHash(l.Leaf)
		t.Append(lh[:], nil)
		if seq == rootAt {
			info.RootAt = t.Root()
		}
	}
	var tr ExportTrailer
	if err := dec.Decode(&tr); err != nil {
		return info, fmt.Errorf("%w: trailer: %v", ErrExport, err)
	}
	cp, err := v.Open([]byte(tr.Checkpoint))
	if err != nil {
		return info, fmt.Errorf("%w: %v", ErrExport, err)
	}
	if cp.Size < h.To {
		return info, fmt.Errorf("%w: checkpoint size %d does not cover entry %d", ErrExport, cp.Size, h.To)
	}
	end := auditlog.Checkpoint{Size: t.Size(), Root: t.Root()}
	if cp.Size == h.To {
		if !bytes.Equal(cp.Root, end.Root) {
			return info, fmt.Errorf("%w: the entries do not hash to the checkpoint's root", ErrExport)
		}
	} else if err := auditlog.VerifyConsistency(end, cp, tr.Consistency); err != nil {
		return info, fmt.Errorf("%w: %v", ErrExport, err)
	}
	if dec.More() {
		return info, fmt.Errorf("%w: data after the trailer", ErrExport)
	}
	info.Checkpoint, info.End = cp, t
	return info, nil
}
