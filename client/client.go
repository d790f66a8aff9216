package client

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/signvariant"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// DefaultCacheTTL is how long published keys are trusted before a refresh.
const DefaultCacheTTL = 5 * time.Minute

// Client signs through the local sidecar and verifies with cached public
// keys. It is safe for concurrent use.
type Client struct {
	cc    *grpc.ClientConn
	rpc   signerv1.SignerServiceClient
	cache *cache
}

type options struct {
	ttl        time.Duration
	minRefresh time.Duration
	maxStale   time.Duration
	maxScopes  int
	now        func() time.Time
	dial       []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithCacheTTL sets how long fetched public keys are used before a refresh
// (an unknown key id triggers one sooner, see WithMinRefresh).
func WithCacheTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithMinRefresh sets the least time between two fetches of one scope's
// keys (default DefaultMinRefresh): an unknown key id refreshes the scope
// at once unless it was fetched more recently than this, and a key id the
// last fetch did not have is answered ErrKeyNotFound from memory until the
// next fetch. Unknown ids chosen by whoever hands the core a signature thus
// cannot turn Verify calls into signer round trips. Keep it below the
// signer's pre-publication window: a new key is then always in a fetch
// made within the interval before it can sign.
func WithMinRefresh(d time.Duration) Option { return func(o *options) { o.minRefresh = d } }

// WithMaxStale sets how old fetched keys may get while refreshes fail
// (default DefaultMaxStale, never less than the TTL); past it Verify
// reports the outage instead of trusting keys that may have been retired.
func WithMaxStale(d time.Duration) Option { return func(o *options) { o.maxStale = d } }

// WithMaxScopes bounds how many scopes' keys are cached (default
// DefaultMaxScopes).
func WithMaxScopes(n int) Option { return func(o *options) { o.maxScopes = n } }

// WithDialOptions adds gRPC dial options (interceptors, stats handlers).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// WithClock replaces time.Now for the cache (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Dial connects to the sidecar at target: "unix:///path/to.sock" or a
// loopback "127.0.0.1:port" / "[::1]:port" / "localhost:port". Any other
// target is refused: the core reaches the signer only through its sidecar.
// The connection is made lazily; ctx bounds nothing but validation today and
// is kept for symmetry with future eager dialing.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	if err := checkLocal(target); err != nil {
		return nil, err
	}
	o := options{ttl: DefaultCacheTTL, minRefresh: DefaultMinRefresh, maxStale: DefaultMaxStale, maxScopes: DefaultMaxScopes, now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	dial := append([]grpc.DialOption{
		// local credentials refuse, at handshake, any peer that is not a Unix
		// socket or loopback: a second guard behind checkLocal.
		grpc.WithTransportCredentials(local.NewCredentials()),
	}, o.dial...)
	cc, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", target, err)
	}
	c := &Client{cc: cc, rpc: signerv1.NewSignerServiceClient(cc)}
	c.cache = newCache(cacheConfig{ttl: o.ttl, minRefresh: o.minRefresh, maxStale: o.maxStale, maxScopes: o.maxScopes, now: o.now}, c.fetch)
	return c, nil
}

func checkLocal(target string) error {
	if path, ok := strings.CutPrefix(target, "unix://"); ok && path != "" {
		return nil
	}
	if path, ok := strings.CutPrefix(target, "unix:"); ok && path != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(target, "passthrough:///"))
	if err == nil {
		if host == "localhost" {
			return nil
		}
		if ip, perr := netip.ParseAddr(host); perr == nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("client: target %q is not local: use unix:///path or a loopback host:port (the sidecar's address): %w", target, ErrInvalidArgument)
}

// Close releases the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Signature is a signature and the key that made it.
type Signature struct {
	Bytes []byte
	KeyID string
	// RequestID names the call in the signer's audit log: `signerctl audit
	// prove <RequestID>` proves its entries are in the log.
	RequestID string
}

// Sign signs payload with the scope's ACTIVE key (pure Ed25519).
func (c *Client) Sign(ctx context.Context, scope string, payload []byte) (Signature, error) {
	return c.sign(ctx, scope, payload, nil, nil)
}

// SignWith signs with the scope's ACTIVE key in the RFC 8032 variant opts
// selects, as crypto/ed25519's PrivateKey.Sign does:
//
//   - opts nil, or HashFunc() 0 without a context: pure Ed25519 over message;
//   - HashFunc() crypto.SHA512 (crypto.SHA512 itself, or *ed25519.Options
//     with Hash crypto.SHA512 and an optional Context): Ed25519ph, message
//     being the 64-byte SHA-512 digest of the signed data;
//   - *ed25519.Options with Hash 0 and a Context: Ed25519ctx over message.
//
// Any other hash, a context over 255 bytes or a digest of another length
// is ErrInvalidArgument. Ed25519ph and Ed25519ctx must be allowed for the
// scope on the signer (SIGNER_SCOPE_SIGN_VARIANTS), else the call fails
// with ErrVariantNotAllowed. Verify the result with ed25519.VerifyWithOptions
// and the same options.
func (c *Client) SignWith(ctx context.Context, scope string, message []byte, opts crypto.SignerOpts) (Signature, error) {
	return c.sign(ctx, scope, message, nil, opts)
}

func (c *Client) sign(ctx context.Context, scope string, payload []byte, keyID *string, opts crypto.SignerOpts) (Signature, error) {
	req := &signerv1.SignRequest{Scope: scope, Payload: payload, KeyId: keyID}
	if opts != nil {
		v, context, err := signvariant.Of(opts)
		if err != nil {
			return Signature{}, fmt.Errorf("client: %v: %w", err, ErrInvalidArgument)
		}
		if v == signvariant.Ed25519ph && len(payload) != sha512.Size {
			return Signature{}, fmt.Errorf("client: Ed25519ph signs the 64-byte SHA-512 digest of the message, not %d bytes: %w", len(payload), ErrInvalidArgument)
		}
		req.Variant, req.Context = signerv1.SignVariant(v), context
	}
	resp, err := c.rpc.Sign(ctx, req)
	if err != nil {
		return Signature{}, fromStatus(err)
	}
	if resp.GetVariant() != req.Variant {
		// A signer that predates variants ignores the field and signs
		// pure Ed25519: a signature in another scheme than asked for
		// is never returned as the one asked for.
		return Signature{}, fmt.Errorf("client: asked for %s, the signer answered %s (a signer without sign variants?): %w",
			req.Variant, resp.GetVariant(), ErrVariantNotAllowed)
	}
	return Signature{Bytes: resp.GetSignature(), KeyID: resp.GetKeyId(), RequestID: resp.GetRequestId()}, nil
}

// PublicKey is a published key.
type PublicKey struct {
	KeyID     string
	Key       ed25519.PublicKey
	State     signerv1.KeyState
	CreatedAt time.Time
	// ActivatedAt is zero for a key that has not signed yet.
	ActivatedAt time.Time
}

func (c *Client) fetch(ctx context.Context, scope string) ([]PublicKey, error) {
	resp, err := c.rpc.PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
	if err != nil {
		return nil, fromStatus(err)
	}
	keys := make([]PublicKey, 0, len(resp.GetKeys()))
	for _, k := range resp.GetKeys() {
		if len(k.GetPublicKey()) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("client: key %q has a %d-byte public key: %w", k.GetKeyId(), len(k.GetPublicKey()), ErrInternal)
		}
		pk := PublicKey{KeyID: k.GetKeyId(), Key: ed25519.PublicKey(k.GetPublicKey()), State: k.GetState(), CreatedAt: k.GetCreatedAt().AsTime()}
		if k.GetActivatedAt() != nil {
			pk.ActivatedAt = k.GetActivatedAt().AsTime()
		}
		keys = append(keys, pk)
	}
	return keys, nil
}

// PublicKeys returns the scope's published keys (PENDING, ACTIVE, PREVIOUS)
// from the cache, refreshing it when it is older than the TTL. If a refresh
// fails, the last keys fetched are returned while younger than the
// WithMaxStale bound.
func (c *Client) PublicKeys(ctx context.Context, scope string) ([]PublicKey, error) {
	return c.cache.keys(ctx, scope)
}

// Verify checks sig over payload against key keyID of scope. An unknown key
// id refreshes the scope's keys (one fetch in flight per scope, at most one
// per WithMinRefresh interval) before it is reported as ErrKeyNotFound. A
// mismatch is ErrInvalidSignature.
func (c *Client) Verify(ctx context.Context, scope, keyID string, payload, sig []byte) error {
	k, err := c.cache.key(ctx, scope, keyID)
	if err != nil {
		return err
	}
	if !ed25519.Verify(k.Key, payload, sig) {
		return ErrInvalidSignature
	}
	return nil
}

// errNoActive is returned when a scope has published keys but none ACTIVE
// (a scope whose first key is still PENDING).
var errNoActive = fmt.Errorf("client: the scope publishes keys but none is ACTIVE (a rotation opened on a new scope is not committed yet): %w", ErrKeyNotFound)

// active returns the scope's ACTIVE key, refreshing once if the cache has
// none.
func (c *Client) active(ctx context.Context, scope string) (PublicKey, error) {
	for attempt := 0; attempt < 2; attempt++ {
		keys, err := c.cache.keys(ctx, scope)
		if err != nil {
			return PublicKey{}, err
		}
		for _, k := range keys {
			if k.State == signerv1.KeyState_KEY_STATE_ACTIVE {
				return k, nil
			}
		}
		if attempt == 0 {
			c.cache.expire(scope)
		}
	}
	return PublicKey{}, errNoActive
}

// IsRetryable reports whether err is a transient condition worth retrying
// with backoff (the signer, its store or its HSM unreachable).
func IsRetryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrProviderUnavailable)
}

// Prove returns the proof that one of this pod's requests (a
// Signature.RequestID) is in the signer's audit log: one C2SP tlog-proof
// per entry of the request (its admission entry, then the entry that
// records the signature), each leading to the same checkpoint, cosigned by
// the log's witnesses when it has them. Anyone with the log's verifier key
// (and witness policy) checks them offline with
// auditlog.Verifier.VerifyProof; the proofs prove what the log recorded
// for the call (scope, key, outcome, the SHA-256 of payload and signature),
// never the payload itself. A request of another pod, or one not in the
// log, is ErrNotFound.
func (c *Client) Prove(ctx context.Context, requestID string) ([]auditlog.Proof, error) {
	resp, err := c.rpc.Prove(ctx, &signerv1.ProveRequest{RequestId: requestID})
	if err != nil {
		return nil, fromStatus(err)
	}
	var out []auditlog.Proof
	for _, p := range resp.GetProofs() {
		e := p.GetEntry()
		if e.GetSeq() == 0 {
			return nil, fmt.Errorf("client: a proof without its entry's position: %w", ErrInternal)
		}
		out = append(out, auditlog.Proof{Index: e.GetSeq() - 1, Leaf: e.GetLeaf(), Hashes: p.GetHashes(), Checkpoint: resp.GetCheckpoint()})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("client: request %s: no proof: %w", requestID, ErrNotFound)
	}
	return out, nil
}
