// Package names holds the syntax rules for scopes and key ids, and mints key
// ids. It is a leaf shared by the signer, its configuration and signerctl;
// it must never import the store, the wire or anything that holds keys.
package names

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
)

// ErrInvalid is the sentinel every rule error wraps; the signer's errors
// (internal/signerr) use it as ErrInvalidArgument, so names stays a leaf
// that even the sidecar may link.
var ErrInvalid = errors.New("signing: invalid argument")

// RuleError names the rule a request field broke, in words safe to show
// the caller: it never repeats the input.
type RuleError struct {
	Field string // the request field: "scope", "key_id", "payload"
	Rule  string // e.g. "must be 1-128 characters of [A-Za-z0-9._-], ..."
}

func (e *RuleError) Error() string { return ErrInvalid.Error() + ": " + e.Field + ": " + e.Rule }

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *RuleError) Unwrap() error { return ErrInvalid }

// Invalid returns a *RuleError.
func Invalid(field, rule string) error { return &RuleError{Field: field, Rule: rule} }

// Limits on names. Scopes and key ids appear in audit objects
// ("signing-key:<scope>:<key_id>"), metric labels and JWKS, so they are kept
// to a small, separator-free alphabet.
const (
	MaxScopeLen = 128
	MaxKeyIDLen = 64
)

// The rules as a caller is told them when a name breaks them.
var (
	ScopeRule = fmt.Sprintf("must be 1-%d characters of [A-Za-z0-9._-], starting with a letter or digit", MaxScopeLen)
	KeyIDRule = fmt.Sprintf("must be 1-%d characters of [A-Za-z0-9._-], starting with a letter or digit", MaxKeyIDLen)
)

func validName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// CheckScope accepts 1–128 characters of [A-Za-z0-9._-], starting with a
// letter or digit.
func CheckScope(scope string) error {
	if !validName(scope, MaxScopeLen) {
		return Invalid("scope", ScopeRule)
	}
	return nil
}

// CheckKeyID accepts 1–64 characters of [A-Za-z0-9._-], starting with a
// letter or digit.
func CheckKeyID(id string) error {
	if !validName(id, MaxKeyIDLen) {
		return Invalid("key_id", KeyIDRule)
	}
	return nil
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewKeyID returns a fresh random key id (24 characters, 120 bits).
func NewKeyID() string {
	var b [15]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("names: crypto/rand failed: " + err.Error())
	}
	return idEncoding.EncodeToString(b[:])
}
