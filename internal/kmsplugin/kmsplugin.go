package kmsplugin

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/common"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/handler"

	"github.com/plexsphere/signer/client"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// Settings the plugin reads from its environment: cosign passes it no flags.
const (
	// EnvSidecar is the sidecar the plugin dials, as a core's client would.
	EnvSidecar = "PLEXSPHERE_SIDECAR_ADDR"
	// DefaultSidecar is the sidecar's default listener (SIDECAR_LISTEN).
	DefaultSidecar = "unix:///run/plexsphere/signer.sock"
	// Scheme is the key reference's scheme: cosign runs sigstore-kms-<Scheme>.
	Scheme = "plexsphere"
)

// Algorithm names as sigstore spells them (signature.FormatSignatureAlgorithmFlag).
const (
	AlgorithmEd25519   = "ed25519"
	AlgorithmEd25519ph = "ed25519-ph"
)

// defaultTimeout bounds a call when sigstore passes no deadline.
const defaultTimeout = 30 * time.Second

// ErrNotSupported is returned for what the plugin refuses by design
// (creating keys, Ed25519 over a hash other than SHA-512, key versions).
var ErrNotSupported = errors.New("plexsphere: not supported")

// Main runs one plugin invocation (sigstore's cliplugin protocol v1) and
// returns the exit code. Errors go to stdout as the protocol's errorMessage,
// which sigstore shows its user; the exit code is for humans running the
// plugin by hand (sigstore ignores it).
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	pa, err := handler.GetPluginArgs(args)
	if err == nil && pa.MethodArgs == nil {
		err = errors.New("no method")
	}
	if err != nil {
		handler.WriteErrorResponse(stdout, fmt.Errorf("plexsphere: %w: this is a sigstore KMS plugin, run by cosign as --key %s://<scope>", err, Scheme))
		return 2
	}
	if len(args) > 1 && args[1] != common.ProtocolVersion {
		handler.WriteErrorResponse(stdout, fmt.Errorf("plexsphere: sigstore plugin protocol %q is not supported (this plugin speaks %q): use a cosign built with sigstore v1.9+", args[1], common.ProtocolVersion))
		return 2
	}
	var ref string
	var deadline *time.Time
	if pa.InitOptions != nil {
		ref, deadline = pa.InitOptions.KeyResourceID, pa.InitOptions.CtxDeadline
	}
	scope, err := ParseRef(ref)
	if err != nil {
		handler.WriteErrorResponse(stdout, err)
		return 2
	}
	if deadline != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, *deadline)
		defer cancel()
	}
	target := getenv(EnvSidecar)
	if target == "" {
		target = DefaultSidecar
	}
	c, err := client.Dial(ctx, target)
	if err != nil {
		handler.WriteErrorResponse(stdout, fmt.Errorf("plexsphere: %s=%q: %w", EnvSidecar, target, err))
		return 2
	}
	defer c.Close()
	sv := &SignerVerifier{ctx: ctx, c: c, scope: scope, target: target, log: stderr}
	resp, err := dispatch(stdout, stdin, pa, sv)
	if err != nil || resp.ErrorMessage != "" {
		return 1
	}
	return 0
}

// dispatch is handler.Dispatch answering malformed arguments with an error
// response: the handler dereferences option structs a sigstore client
// always sends, so a hand-written call without them would crash it.
func dispatch(stdout io.Writer, stdin io.Reader, pa *common.PluginArgs, sv *SignerVerifier) (resp *common.PluginResp, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("plexsphere: malformed arguments for method %q (%v): this plugin is run by cosign or the sigstore library", pa.MethodName, r)
			handler.WriteErrorResponse(stdout, err)
		}
	}()
	return handler.Dispatch(stdout, stdin, pa, sv)
}

// ParseRef returns the scope of a key reference: plexsphere://<scope>, or
// <scope> alone (sigstore hands the plugin the part after "://").
func ParseRef(ref string) (string, error) {
	scope := strings.TrimPrefix(ref, Scheme+"://")
	if scope == "" || strings.ContainsAny(scope, "/:?#") {
		return "", fmt.Errorf("plexsphere: key reference %q: want %s://<scope> (a scope is %s)", ref, Scheme, scopeRule)
	}
	return scope, nil
}

// scopeRule repeats internal/names.ScopeRule; the signer checks it too.
const scopeRule = "1-128 characters of [A-Za-z0-9._-], starting with a letter or digit"

// SignerVerifier is sigstore's kms.SignerVerifier for one scope, through a
// client. It is made for one plugin invocation: ctx bounds every call.
type SignerVerifier struct {
	ctx    context.Context
	c      *client.Client
	scope  string
	target string
	log    io.Writer
}

// NewSignerVerifier returns the plugin's implementation for scope over c;
// target names the sidecar in errors, log gets the request ids.
func NewSignerVerifier(ctx context.Context, c *client.Client, scope, target string, log io.Writer) *SignerVerifier {
	return &SignerVerifier{ctx: ctx, c: c, scope: scope, target: target, log: log}
}

// DefaultAlgorithm is Ed25519: every plexsphere key is one.
func (s *SignerVerifier) DefaultAlgorithm() string { return AlgorithmEd25519 }

// SupportedAlgorithms lists what SignMessage can produce (Ed25519ph only
// for a scope the signer allows it: SIGNER_SCOPE_SIGN_VARIANTS).
func (s *SignerVerifier) SupportedAlgorithms() []string {
	return []string{AlgorithmEd25519, AlgorithmEd25519ph}
}

// CreateKey refuses: keys are made by rotation in the signer, under its
// rotation allow-list and audit, never by a signing client.
func (s *SignerVerifier) CreateKey(context.Context, string) (crypto.PublicKey, error) {
	return nil, fmt.Errorf("%w: keys are created in the signer by rotation, not by cosign: an operator runs `signerctl rotate open --create %s` then `signerctl rotate commit %s <key-id>`; then export the public key with `cosign public-key --key %s://%s`",
		ErrNotSupported, s.scope, s.scope, Scheme, s.scope)
}

// CryptoSigner is not part of the plugin protocol (sigstore wraps the
// plugin itself); it is here to satisfy the interface.
func (s *SignerVerifier) CryptoSigner(context.Context, func(error)) (crypto.Signer, crypto.SignerOpts, error) {
	return nil, nil, fmt.Errorf("%w: CryptoSigner is not served over the plugin protocol", ErrNotSupported)
}

// PublicKey returns the scope's ACTIVE key, or with a key version
// (options.WithKeyVersion) the published key of that id.
func (s *SignerVerifier) PublicKey(opts ...signature.PublicKeyOption) (crypto.PublicKey, error) {
	ctx, version := s.ctx, ""
	for _, o := range opts {
		o.ApplyContext(&ctx)
		o.ApplyKeyVersion(&version)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	k, err := s.key(ctx, version)
	if err != nil {
		return nil, err
	}
	return k.Key, nil
}

func (s *SignerVerifier) key(ctx context.Context, version string) (client.PublicKey, error) {
	keys, err := s.c.PublicKeys(ctx, s.scope)
	if err != nil {
		return client.PublicKey{}, s.explain("public key", err)
	}
	for _, k := range keys {
		if version == "" && k.State == signerv1.KeyState_KEY_STATE_ACTIVE || version != "" && k.KeyID == version {
			return k, nil
		}
	}
	if version != "" {
		return client.PublicKey{}, fmt.Errorf("plexsphere: scope %q publishes no key %q (`signerctl keys list --scope %s` lists them): %w", s.scope, version, s.scope, client.ErrKeyNotFound)
	}
	return client.PublicKey{}, fmt.Errorf("plexsphere: scope %q has no ACTIVE key yet (its first rotation is not committed: `signerctl rotate commit %s <key-id>`): %w", s.scope, s.scope, client.ErrKeyNotFound)
}

// mode is how a message is signed.
type mode int

const (
	pure mode = iota // Ed25519 over the whole message
	ph               // Ed25519ph over its SHA-512 digest
)

// input decides what is signed from sigstore's message options, following
// sigstore's own Ed25519 signers:
//   - no digest and no hash (cosign without a transparency log): pure
//     Ed25519 over the message;
//   - hash 0 given explicitly with a digest (crypto.Signer's convention,
//     used by sigstore's CryptoSigner wrapper): pure Ed25519 over the
//     "digest", which is the message;
//   - a 64-byte digest with no hash or SHA-512 (cosign with a transparency
//     log, sigstore's Ed25519ph signer): Ed25519ph over that digest;
//   - SHA-512 and no digest: Ed25519ph over the message's SHA-512.
//
// Any other hash is refused: Ed25519 prehashes with SHA-512 only. The hash
// sigstore passes at load time (kms.Get's hashFunc, SHA-256 from cosign)
// is for ECDSA and RSA keys and is ignored.
func input(message io.Reader, opts []signature.MessageOption) (mode, []byte, error) {
	var digest []byte
	var so crypto.SignerOpts
	for _, o := range opts {
		o.ApplyDigest(&digest)
		o.ApplyCryptoSignerOpts(&so)
	}
	hashGiven := so != nil
	var hash crypto.Hash
	if hashGiven {
		hash = so.HashFunc()
	}
	switch {
	case hashGiven && hash != 0 && hash != crypto.SHA512:
		return 0, nil, fmt.Errorf("%w: Ed25519 prehashes with SHA-512 only, not %v (Ed25519ph); without a hash it signs the whole message", ErrNotSupported, hash)
	case len(digest) > 0 && hashGiven && hash == 0:
		return pure, digest, nil
	case len(digest) > 0:
		if len(digest) != sha512.Size {
			return 0, nil, fmt.Errorf("%w: a %d-byte digest: Ed25519ph signs a 64-byte SHA-512 digest", ErrNotSupported, len(digest))
		}
		return ph, digest, nil
	}
	msg, err := io.ReadAll(message)
	if err != nil {
		return 0, nil, fmt.Errorf("plexsphere: read the message: %w", err)
	}
	if hash == crypto.SHA512 {
		d := sha512.Sum512(msg)
		return ph, d[:], nil
	}
	return pure, msg, nil
}

// readOptions reads what SignMessage and VerifySignature take from their
// options alike: the context, a key version and the message options.
func readOptions[O interface {
	signature.RPCOption
	signature.MessageOption
}](ctx context.Context, opts []O) (context.Context, string, []signature.MessageOption) {
	version := ""
	mopts := make([]signature.MessageOption, 0, len(opts))
	for _, o := range opts {
		o.ApplyContext(&ctx)
		o.ApplyKeyVersion(&version)
		mopts = append(mopts, o)
	}
	return ctx, version, mopts
}

// SignMessage signs with the scope's ACTIVE key and reports the key and the
// request id on stderr, so the signature's audit entries can be proved
// (signerctl audit prove <request-id>).
func (s *SignerVerifier) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	ctx, version, mopts := readOptions(s.ctx, opts)
	if version != "" {
		// The signer signs with the scope's ACTIVE key; a pinned version
		// could silently be another key after a rotation.
		return nil, fmt.Errorf("%w: signing with key version %q: the signer signs with scope %q's ACTIVE key (drop the key version)", ErrNotSupported, version, s.scope)
	}
	m, data, err := input(message, mopts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var sig client.Signature
	switch m {
	case pure:
		sig, err = s.c.Sign(ctx, s.scope, data)
	case ph:
		// The signer gets the 64-byte SHA-512 digest, never the message, so
		// a message of any size can be signed.
		sig, err = s.c.SignWith(ctx, s.scope, data, crypto.SHA512)
	}
	if err != nil {
		return nil, s.explainSign(err, len(data), m)
	}
	alg := "Ed25519"
	if m == ph {
		alg = "Ed25519ph"
	}
	fmt.Fprintf(s.log, "plexsphere: signed (%s) with scope %s key %s, request id %s (prove: signerctl audit prove %s)\n",
		alg, s.scope, sig.KeyID, sig.RequestID, sig.RequestID)
	return sig.Bytes, nil
}

// VerifySignature checks signature over the message (or digest, as
// SignMessage reads its options) against the scope's ACTIVE and PREVIOUS
// keys, or the key version given: a signature made before a rotation still
// verifies while its key is published.
func (s *SignerVerifier) VerifySignature(sig, message io.Reader, opts ...signature.VerifyOption) error {
	ctx, version, mopts := readOptions(s.ctx, opts)
	sigBytes, err := io.ReadAll(sig)
	if err != nil {
		return fmt.Errorf("plexsphere: read the signature: %w", err)
	}
	m, data, err := input(message, mopts)
	if err != nil {
		return err
	}
	// A whole message with no hash named may carry either scheme: cosign
	// v3.1.3 signs images Ed25519ph whatever its flags say but verifies
	// through a KMS key with the message alone. An Ed25519ph signature
	// over SHA-512(message) signs that message too (RFC 8032's dom2 prefix
	// keeps the two schemes apart), so either proves it.
	alsoPH := whole(mopts)
	var digest []byte
	if m == pure && alsoPH {
		d := sha512.Sum512(data)
		digest = d[:]
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	keys, err := s.c.PublicKeys(ctx, s.scope)
	if err != nil {
		return s.explain("verify", err)
	}
	var tried []string
	for _, k := range keys {
		if version != "" && k.KeyID != version || version == "" && k.State != signerv1.KeyState_KEY_STATE_ACTIVE && k.State != signerv1.KeyState_KEY_STATE_PREVIOUS {
			continue
		}
		tried = append(tried, k.KeyID)
		if verify(k.Key, m, data, sigBytes) || digest != nil && verify(k.Key, ph, digest, sigBytes) {
			return nil
		}
	}
	return fmt.Errorf("plexsphere: the signature does not verify with scope %q's keys %v: %w", s.scope, tried, client.ErrInvalidSignature)
}

// whole reports whether opts name neither a digest nor a hash: the
// message is all there is.
func whole(opts []signature.MessageOption) bool {
	var digest []byte
	var so crypto.SignerOpts
	for _, o := range opts {
		o.ApplyDigest(&digest)
		o.ApplyCryptoSignerOpts(&so)
	}
	return len(digest) == 0 && so == nil
}

func verify(pub ed25519.PublicKey, m mode, data, sig []byte) bool {
	if m == ph {
		return ed25519.VerifyWithOptions(pub, data, sig, &ed25519.Options{Hash: crypto.SHA512}) == nil
	}
	return ed25519.Verify(pub, data, sig)
}

// explain adds what the plugin's user can do to a client error.
func (s *SignerVerifier) explain(op string, err error) error {
	switch {
	case errors.Is(err, client.ErrKeyNotFound):
		return fmt.Errorf("plexsphere: %s: scope %q is unknown to the signer or has no key (an operator creates it: `signerctl rotate open --create %s`, then `signerctl rotate commit %s <key-id>`): %w", op, s.scope, s.scope, s.scope, err)
	case errors.Is(err, client.ErrClientIdentityDenied):
		return fmt.Errorf("plexsphere: %s: the signer refused this pod's identity (its SIGNER_ALLOW_SPIFFE_IDS): %w", op, err)
	case errors.Is(err, client.ErrVariantNotAllowed):
		return fmt.Errorf("plexsphere: %s: the signer refused Ed25519ph for scope %q (cosign signs a SHA-512 prehash for images and for blobs it uploads to a transparency log): an operator allows it with %s=ed25519ph in SIGNER_SCOPE_SIGN_VARIANTS: %w", op, s.scope, s.scope, err)
	case errors.Is(err, client.ErrUnavailable):
		return fmt.Errorf("plexsphere: %s: the sidecar at %s (%s) or the signer behind it is unreachable: %w", op, s.target, EnvSidecar, err)
	}
	return fmt.Errorf("plexsphere: %s for scope %q: %w", op, s.scope, err)
}

// explainSign names the payload limit when the signer refused the size.
func (s *SignerVerifier) explainSign(err error, n int, m mode) error {
	var ce *client.Error
	if m == pure && errors.As(err, &ce) && errors.Is(err, client.ErrInvalidArgument) && (ce.Field == "payload" || ce.Status.Code().String() == "ResourceExhausted") {
		rule := ce.Rule
		if rule == "" {
			rule = ce.Status.Message()
		}
		return fmt.Errorf("plexsphere: sign: the message is %d bytes and the signer's payload %s (SIGNER_MAX_PAYLOAD_BYTES, 64 KiB by default): pure Ed25519 sends the whole message; sign its SHA-512 digest instead (Ed25519ph: cosign does for images and with a transparency log; sigstore callers pass options.WithCryptoSignerOpts(crypto.SHA512)), or raise the signer's limit: %w", n, rule, err)
	}
	return s.explain("sign", err)
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultTimeout)
}
