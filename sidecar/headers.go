package sidecar

import (
	"errors"
	"fmt"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock decodes one connection's header blocks (a HEADERS frame and
// its CONTINUATIONs) into a field list it reuses. x/net's MetaHeadersFrame
// does the same with about six allocations a block; at three blocks a
// call they were most of the sidecar's garbage. The framer still checks
// the frames' order (a CONTINUATION follows its HEADERS on the same
// stream); this checks what the block holds, as MetaHeadersFrame did: its
// decoded size, field names and values, pseudo-headers before the regular
// ones, and the pseudo-headers themselves (known, once each, of one side).
type headerBlock struct {
	dec    *hpack.Decoder
	max    uint32 // the decoded header list's bound (maxHeaderList)
	fields []hpack.HeaderField
	size   uint32 // decoded so far
	raw    int    // encoded bytes and frames taken so far
	bad    error
	// regular: a regular field was seen, so no pseudo-header may follow.
	regular bool
	// pseudos: the pseudo-headers seen (pseudoBits), each allowed once.
	pseudos uint8
	// The block in progress: its stream and whether it ends the stream.
	id  uint32
	end bool
}

func newHeaderBlock(max uint32) *headerBlock {
	h := &headerBlock{max: max}
	h.dec = hpack.NewDecoder(4096, h.emit)
	h.dec.SetMaxStringLength(int(max))
	return h
}

func (h *headerBlock) emit(f hpack.HeaderField) {
	if h.bad != nil {
		return
	}
	if h.size += f.Size(); h.size > h.max {
		h.bad = errHeaderListTooLarge
		return
	}
	switch {
	case !httpguts.ValidHeaderFieldValue(f.Value):
		h.bad = fmt.Errorf("invalid value in header field %q", f.Name)
	case f.IsPseudo() && h.regular:
		h.bad = fmt.Errorf("pseudo-header %q after a regular header field", f.Name)
	case f.IsPseudo():
		h.bad = h.pseudo1(f.Name)
	case !f.IsPseudo() && !validFieldName(f.Name):
		h.bad = fmt.Errorf("invalid header field name %q", f.Name)
	}
	h.regular = h.regular || !f.IsPseudo()
	h.fields = append(h.fields, f)
}

// pseudoBits are the pseudo-headers HTTP/2 defines; any other is malformed
// (RFC 9113 8.3), as is one that appears twice, or a response's beside a
// request's. x/net's MetaHeadersFrame refused the same (checkPseudos).
var pseudoBits = map[string]uint8{":method": 1, ":path": 2, ":scheme": 4, ":authority": 8, ":protocol": 16, ":status": statusBit}

// statusBit is the response's one pseudo-header; every other bit is a
// request's.
const statusBit = 32

// pseudo1 records pseudo-header name, or says why the block is malformed.
func (h *headerBlock) pseudo1(name string) error {
	bit := pseudoBits[name]
	switch {
	case bit == 0:
		return fmt.Errorf("unknown pseudo-header %q", name)
	case h.pseudos&bit != 0:
		return fmt.Errorf("pseudo-header %q twice", name)
	}
	h.pseudos |= bit
	if h.pseudos&statusBit != 0 && h.pseudos&^statusBit != 0 {
		return fmt.Errorf("pseudo-header %q beside those of the other side", name)
	}
	return nil
}

// validFieldName: a token in lower case, as HTTP/2 requires.
func validFieldName(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return false
		}
	}
	return true
}

var errHeaderListTooLarge = errors.New("header list too large")

// add takes a HEADERS or CONTINUATION frame; done reports that the block
// is complete (its fields are then in h.fields, valid until the next
// block starts). An error ends the connection: the decoder's state can no
// longer be trusted.
func (h *headerBlock) add(f http2.Frame) (done bool, err error) {
	var frag []byte
	var ended bool
	switch f := f.(type) {
	case *http2.HeadersFrame:
		clear(h.fields)
		h.fields, h.size, h.raw, h.bad, h.regular, h.pseudos = h.fields[:0], 0, 0, nil, false, 0
		h.id, h.end = f.StreamID, f.StreamEnded()
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	case *http2.ContinuationFrame:
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	}
	// Encoded bytes (and empty CONTINUATIONs) that decode to little are
	// bounded too: a block may take twice the decoded bound, no more.
	if h.raw += len(frag) + 9; h.raw > 2*int(h.max) {
		return false, errHeaderListTooLarge
	}
	if _, err := h.dec.Write(frag); err != nil {
		return false, fmt.Errorf("hpack: %w", err)
	}
	if h.bad != nil {
		return false, h.bad
	}
	if !ended {
		return false, nil
	}
	if err := h.dec.Close(); err != nil {
		return false, fmt.Errorf("hpack: %w", err)
	}
	return true, nil
}

// keptFields is the field list's capacity kept between blocks (a call's
// request or answer has about eight); a larger list is let go.
const keptFields = 32

// drop lets go of the block's fields once its reader has taken what it
// keeps: an idle connection must not hold its last block (up to
// maxHeaderList decoded, outside the request budget) until its next one.
func (h *headerBlock) drop() {
	clear(h.fields)
	if cap(h.fields) > keptFields {
		h.fields = nil
	}
	h.fields = h.fields[:0]
}

// pseudo returns the value of pseudo-header name (":path", say).
func (h *headerBlock) pseudo(name string) string {
	for _, f := range h.fields {
		if !f.IsPseudo() {
			break
		}
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}
