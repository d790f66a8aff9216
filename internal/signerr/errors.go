// Package signerr holds the signer's error sentinels: plain errors that
// stores, key providers and services return (wrapped with their operation)
// so that callers can decide with errors.Is.
//
// It is a leaf: it imports nothing of the project but the name rules, no
// gRPC and no protobuf, so storage and providers can use it without
// linking the wire. The mapping
// of each sentinel to a gRPC code, an audit reason and a wire reason lives
// with the gRPC layer (internal/signing/errors.go).
package signerr

import (
	"errors"
	"fmt"
	"time"

	"github.com/plexsphere/signer/internal/names"
)

var (
	// ErrClientIdentityDenied: the peer presented no client certificate, or
	// its SPIFFE ID is not on the allow-list for the called service or scope.
	ErrClientIdentityDenied = errors.New("signing: client identity denied")
	// ErrKeyNotFound: no key with the requested id, or no ACTIVE key in the
	// scope.
	ErrKeyNotFound = errors.New("signing: key not found")
	// ErrScopeMismatch: the requested key exists but belongs to another scope.
	ErrScopeMismatch = errors.New("signing: key belongs to another scope")
	// ErrInvariant: the store holds a state that must not exist (two ACTIVE
	// keys in one scope, a key record that does not match its sealed or HSM
	// form). Never resolved by a silent pick.
	ErrInvariant = errors.New("signing: key store invariant violated")
	// ErrKeyRetired: the requested key is PREVIOUS or RETIRED and may not sign.
	ErrKeyRetired = errors.New("signing: key retired")
	// ErrRotationInProgress: the key is PENDING, or a rotation is already open
	// for the scope.
	ErrRotationInProgress = errors.New("signing: rotation in progress")
	// ErrProviderUnavailable: the key provider (HSM, KMS) cannot serve now.
	ErrProviderUnavailable = errors.New("signing: key provider unavailable")
	// ErrStoreUnavailable: the key store cannot be read or written now (a
	// database outage). Distinct from ErrAuditUnavailable: no audit entry was
	// at stake.
	ErrStoreUnavailable = errors.New("signing: key store unavailable")
	// ErrAuditUnavailable: an audit entry could not be made durable, so the
	// RPC it records fails and releases nothing.
	ErrAuditUnavailable = errors.New("signing: audit log unavailable")
	// ErrAuditLogBroken: the stored audit log does not match the signer's
	// last signed checkpoint (entries removed or rewritten). The signer
	// refuses to serve until an operator acts (docs/audit.md).
	ErrAuditLogBroken = errors.New("signing: audit log does not match its checkpoint")
	// ErrAuditLogUnanchored: the audit log has not been checked and
	// anchored outside the store (cosigned by its witnesses, written to the
	// checkpoint file) for longer than the configured bound, because a
	// check cannot run or the witnesses do not answer. The signer refuses to
	// serve until a check succeeds again; no operator action is needed once
	// the cause is gone (docs/audit.md).
	ErrAuditLogUnanchored = errors.New("signing: audit log not anchored")
	// ErrEntryNotFound: no audit entry or checkpoint matches the request (a
	// request id not in the log, or not the caller's; a seq or size beyond
	// the log).
	ErrEntryNotFound = errors.New("signing: audit entry not found")
	// ErrInvalidArgument: a request breaks a rule (payload size, scope or
	// key id syntax). Invalid says which rule.
	ErrInvalidArgument = names.ErrInvalid
	// ErrKeyActive: the operation would remove the ACTIVE key (Retire of the
	// ACTIVE key).
	ErrKeyActive = errors.New("signing: key is active")
	// ErrRotationNotReady: Commit or Retire before its waiting window
	// (pre-publication, verify-only) has passed.
	ErrRotationNotReady = errors.New("signing: rotation step not ready")
	// ErrVariantNotAllowed: the Sign's variant (Ed25519ph, Ed25519ctx) may
	// not be used: its scope does not allow it (SIGNER_SCOPE_SIGN_VARIANTS),
	// the signer runs in FIPS 140-3 mode (Ed25519ctx is not approved), or
	// the key provider cannot make it. VariantError says which.
	ErrVariantNotAllowed = errors.New("signing: sign variant not allowed")
	// ErrInternal: anything unclassified. Its details stay in the signer's log.
	ErrInternal = errors.New("signing: internal error")
)

// Sentinels lists every sentinel this package declares, for the completeness
// test of the gRPC table.
var Sentinels = []error{
	ErrClientIdentityDenied, ErrKeyNotFound, ErrScopeMismatch, ErrInvariant,
	ErrKeyRetired, ErrRotationInProgress, ErrProviderUnavailable,
	ErrStoreUnavailable, ErrAuditUnavailable, ErrAuditLogBroken, ErrAuditLogUnanchored, ErrEntryNotFound,
	ErrInvalidArgument, ErrKeyActive, ErrRotationNotReady, ErrVariantNotAllowed, ErrInternal,
}

// VariantError is an ErrVariantNotAllowed that says why, in words safe to
// show the caller: the variant's name and the signer's own rule (a setting,
// FIPS mode, the provider), never request input.
type VariantError struct {
	Variant string // "ed25519ph", "ed25519ctx"
	Why     string // e.g. "scope \"payments\" does not allow it (SIGNER_SCOPE_SIGN_VARIANTS)"
}

func (e *VariantError) Error() string {
	return ErrVariantNotAllowed.Error() + ": " + e.Variant + ": " + e.Why
}

// Unwrap makes errors.Is(err, ErrVariantNotAllowed) hold.
func (e *VariantError) Unwrap() error { return ErrVariantNotAllowed }

// InvalidError is an ErrInvalidArgument that names the rule a request
// broke, in words safe to show the caller: it never repeats the input.
type InvalidError = names.RuleError

// Invalid returns an *InvalidError.
func Invalid(field, rule string) error { return names.Invalid(field, rule) }

// NotReadyError is an ErrRotationNotReady that says which step waits and
// until when, so an operator is told "not ready to retire until ..."
// instead of guessing which window runs. The time is the signer's own
// state, never request input.
type NotReadyError struct {
	Step    string    // "commit" or "retire"
	ReadyAt time.Time // when the window ends, UTC
}

func (e *NotReadyError) Error() string {
	return ErrRotationNotReady.Error() + ": not ready to " + e.Step + " until " + e.ReadyAt.UTC().Format(time.RFC3339Nano)
}

// Unwrap makes errors.Is(err, ErrRotationNotReady) hold.
func (e *NotReadyError) Unwrap() error { return ErrRotationNotReady }

// MissingError is ErrEntryNotFound for an entry or request the log does
// not hold, with what the log knows about why: its size when the entry is
// beyond it, the prune mark when entries were exported and pruned. The
// caller sees both (ErrorInfo metadata), never the store's text.
type MissingError struct {
	What       string // "entry 5", "request <id>"
	Size       uint64 // the log's size (its checkpoint's), 0 if not known
	PrunedUpTo uint64 // entries up to this seq were pruned, 0 if none
}

func (e *MissingError) Error() string {
	switch {
	case e.PrunedUpTo > 0:
		return fmt.Sprintf("%s: %v (entries up to %d were exported and pruned)", e.What, ErrEntryNotFound, e.PrunedUpTo)
	case e.Size > 0:
		return fmt.Sprintf("%s: %v (the log has %d entries)", e.What, ErrEntryNotFound, e.Size)
	}
	return fmt.Sprintf("%s: %v", e.What, ErrEntryNotFound)
}

// Unwrap makes errors.Is(err, ErrEntryNotFound) hold.
func (e *MissingError) Unwrap() error { return ErrEntryNotFound }
