// Package signvariant names the RFC 8032 signature schemes a Sign may use
// (pure Ed25519, Ed25519ph, Ed25519ctx) and holds the one FIPS 140-3 rule
// about them, so that configuration checks at start-up and the Sign path
// decide alike. It is a leaf: the standard library only.
package signvariant

import (
	"crypto"
	"crypto/ed25519"
	"crypto/fips140"
	"errors"
	"fmt"
)

// Variant is a signature scheme. Its values are the wire enum's
// (signerv1.SignVariant), so a conversion is a cast.
type Variant uint8

const (
	// Ed25519 is pure Ed25519 over the whole message: every scope may use it.
	Ed25519 Variant = 0
	// Ed25519ph is HashEdDSA with SHA-512: the signer is given the 64-byte
	// SHA-512 digest of the message.
	Ed25519ph Variant = 1
	// Ed25519ctx is Ed25519 with a non-empty context string.
	Ed25519ctx Variant = 2
)

// MaxContext is RFC 8032's bound on a context string, in bytes.
const MaxContext = 255

var names = [...]string{Ed25519: "ed25519", Ed25519ph: "ed25519ph", Ed25519ctx: "ed25519ctx"}

// Known reports whether v is one of the three variants.
func (v Variant) Known() bool { return int(v) < len(names) }

func (v Variant) String() string {
	if v.Known() {
		return names[v]
	}
	return fmt.Sprintf("variant(%d)", uint8(v))
}

// Parse reads a variant's name as String writes it.
func Parse(s string) (Variant, error) {
	for v, n := range names {
		if s == n {
			return Variant(v), nil
		}
	}
	return 0, fmt.Errorf("%q is not a sign variant (ed25519ph or ed25519ctx)", s)
}

// ErrNotApproved is returned by Approved for a variant the FIPS 140-3
// module does not approve.
var ErrNotApproved = errors.New("not approved in FIPS 140-3 mode")

// Approved is the FIPS rule, the one place it is decided: when Go's FIPS
// 140-3 module is enabled (GODEBUG=fips140=on or only, or a GOFIPS140
// build), Ed25519ctx is not an approved algorithm (FIPS 186-5 approves
// Ed25519 and HashEdDSA only), so the signer neither allows it in its
// configuration nor signs with it. Go itself refuses it only under
// fips140=only; "on" promises approved algorithms too.
func Approved(v Variant) error {
	if v == Ed25519ctx && fips140.Enabled() {
		return fmt.Errorf("%s is %w", v, ErrNotApproved)
	}
	return nil
}

// Options is the crypto/ed25519 options that sign in v with context; nil
// for pure Ed25519 without a context.
func Options(v Variant, context []byte) *ed25519.Options {
	switch v {
	case Ed25519ph:
		return &ed25519.Options{Hash: crypto.SHA512, Context: string(context)}
	case Ed25519ctx:
		return &ed25519.Options{Context: string(context)}
	}
	return nil
}

// Of is the variant crypto/ed25519 would sign in with opts (nil: pure).
// A hash other than SHA-512, or an unhashed context-less request that
// is not pure, is an error; callers refuse it as an invalid argument.
func Of(opts crypto.SignerOpts) (Variant, []byte, error) {
	if opts == nil {
		return Ed25519, nil, nil
	}
	var context string
	if o, ok := opts.(*ed25519.Options); ok {
		context = o.Context
	}
	if len(context) > MaxContext {
		return 0, nil, fmt.Errorf("context of %d bytes; RFC 8032 allows at most %d", len(context), MaxContext)
	}
	var c []byte
	if context != "" {
		c = []byte(context)
	}
	switch h := opts.HashFunc(); {
	case h == crypto.SHA512:
		return Ed25519ph, c, nil
	case h == 0 && context != "":
		return Ed25519ctx, c, nil
	case h == 0:
		return Ed25519, nil, nil
	default:
		return 0, nil, fmt.Errorf("hash %v: Ed25519 signs unhashed messages, or SHA-512 digests (Ed25519ph)", h)
	}
}
