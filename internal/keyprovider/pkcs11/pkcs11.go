//go:build cgo && pkcs11

package pkcs11

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
)

// Ed25519 in PKCS#11 3.0; miekg/pkcs11 predates these constants.
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// ed25519Params is CKA_EC_PARAMS for Ed25519: the DER OID 1.3.101.112.
var ed25519Params = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}

// Provider signs inside a PKCS#11 token through a pool of sessions. A
// failure that looks like the token or library going away drops the whole
// connection; the next call (or Health) reconnects, at most once a second,
// so the provider recovers without a restart when the token returns.
type Provider struct {
	cfg Config
	log *slog.Logger

	conn    atomic.Pointer[conn]
	mu      sync.Mutex // serialises reconnects
	lastTry time.Time
	lastErr error
	module  *module
}

// module is a loaded PKCS#11 library. C_Initialize and C_Finalize act on
// the whole process, so providers sharing a library share one module and
// only the last one out finalises it.
type module struct {
	*p11.Ctx
	path  string
	users int
	ready bool // initialised
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

func loadModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.users++
		return m, nil
	}
	c := p11.New(path)
	if c == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s: %w", path, ErrModule)
	}
	m := &module{Ctx: c, path: path, users: 1}
	modules[path] = m
	return m, nil
}

// reinitialise finalises and initialises the library again, which is what
// makes a library notice a token that went away and came back; with other
// users of the library it only makes sure it is initialised.
func (m *module) reinitialise() error {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.ready && m.users == 1 {
		m.Finalize()
		m.ready = false
	}
	if !m.ready {
		if err := m.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return err
		}
		m.ready = true
	}
	return nil
}

func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.users--; m.users > 0 {
		return
	}
	if m.ready {
		m.Finalize()
	}
	m.Destroy()
	delete(modules, m.path)
}

// conn is one initialised, logged-in connection to the token.
type conn struct {
	slot     uint
	sessions chan p11.SessionHandle
	all      []p11.SessionHandle
	objects  sync.Map // CKA_ID (string) → private key ObjectHandle
	broken   atomic.Bool

	// Callers using the connection, counted so that a reconnect closes the
	// sessions only once every caller has given its session back: closing
	// a session under a caller would fail its call, or worse, let the
	// library hand the handle to a new session mid-operation.
	mu      sync.Mutex
	users   int
	closing bool
	drained chan struct{}
}

// drainTimeout bounds how long a reconnect waits for callers still inside a
// PKCS#11 call (which cannot be interrupted) before it closes their
// sessions anyway: a hung token must not block recovery forever.
var drainTimeout = 10 * time.Second

// testHookDraining, if set, is called when a drain starts waiting for users.
var testHookDraining func()

// acquire registers a user; it fails once the connection is being closed.
func (c *conn) acquire() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.users++
	return true
}

func (c *conn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.users--
	if c.closing && c.users == 0 && c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
}

// drain refuses new users and waits until the current ones are done, up to
// timeout. It reports whether they all finished.
func (c *conn) drain(timeout time.Duration) bool {
	c.mu.Lock()
	c.closing = true
	if c.users == 0 {
		c.mu.Unlock()
		return true
	}
	done := make(chan struct{})
	c.drained = done
	c.mu.Unlock()
	if testHookDraining != nil {
		testHookDraining()
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

var _ keyprovider.Provider = (*Provider)(nil)

// Open loads the module and connects. A token that cannot be reached now is
// not fatal: the provider reports unavailable until it can.
func Open(cfg Config) (keyprovider.Provider, error) {
	if cfg.Sessions <= 0 {
		cfg.Sessions = 8
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg, log: cfg.Log, module: m}
	if _, err := p.current(true); err != nil {
		p.log.Error("pkcs11 token unavailable at start-up; will retry", "module", cfg.Module, "token", cfg.TokenLabel, "err", err)
	}
	return p, nil
}

func (p *Provider) Name() string { return Name }

// unavailable wraps a PKCS#11 failure; the caller sees only the sentinel.
func unavailable(op string, err error) error {
	return fmt.Errorf("pkcs11: %s: %w: %w", op, err, signerr.ErrProviderUnavailable)
}

// current returns a working connection, reconnecting if the last one broke.
func (p *Provider) current(force bool) (*conn, error) {
	if c := p.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conn.Load(); c != nil && !c.broken.Load() {
		return c, nil
	}
	if !force && time.Since(p.lastTry) < time.Second {
		if p.lastErr == nil {
			return nil, fmt.Errorf("pkcs11: reconnecting: %w", signerr.ErrProviderUnavailable)
		}
		return nil, p.lastErr
	}
	p.lastTry = time.Now()
	c, err := p.connect()
	if err != nil {
		p.lastErr = err
		return nil, err
	}
	p.conn.Store(c)
	p.lastErr = nil
	p.log.Info("pkcs11 token connected", "token", p.cfg.TokenLabel, "sessions", p.cfg.Sessions)
	return c, nil
}

// connect (re)initialises the library, finds the token by label, opens the
// sessions and logs in.
func (p *Provider) connect() (*conn, error) {
	if old := p.conn.Swap(nil); old != nil {
		p.retire(old)
	}
	if err := p.module.reinitialise(); err != nil {
		return nil, unavailable("initialize", fmt.Errorf("%w: %w", ErrModule, err))
	}
	slots, err := p.module.GetSlotList(true)
	if err != nil {
		return nil, unavailable("slot list", err)
	}
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := p.module.GetTokenInfo(s)
		if err == nil && trimLabel(ti.Label) == p.cfg.TokenLabel {
			slot, found = s, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("pkcs11: no token labelled %q: %w: %w", p.cfg.TokenLabel, ErrNoToken, signerr.ErrProviderUnavailable)
	}
	pin, err := p.cfg.PIN()
	if err != nil {
		return nil, fmt.Errorf("pkcs11: read PIN: %v: %w: %w", err, ErrLogin, signerr.ErrProviderUnavailable)
	}
	c := &conn{slot: slot, sessions: make(chan p11.SessionHandle, p.cfg.Sessions)}
	for i := 0; i < p.cfg.Sessions; i++ {
		s, err := p.module.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			p.closeAll(c)
			return nil, unavailable("open session", err)
		}
		c.all = append(c.all, s)
		c.sessions <- s
	}
	if err := p.module.Login(c.all[0], p11.CKU_USER, pin); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		p.closeAll(c)
		return nil, unavailable("login", fmt.Errorf("%w: %w", ErrLogin, err))
	}
	return c, nil
}

// retire drains a connection's users and closes its sessions.
func (p *Provider) retire(c *conn) {
	if !c.drain(drainTimeout) {
		p.log.Warn("pkcs11: closing sessions still in use after the drain timeout", "timeout", drainTimeout)
	}
	p.closeAll(c)
}

func (p *Provider) closeAll(c *conn) {
	for _, s := range c.all {
		p.module.CloseSession(s)
	}
}

func trimLabel(l string) string {
	for len(l) > 0 && (l[len(l)-1] == ' ' || l[len(l)-1] == 0) {
		l = l[:len(l)-1]
	}
	return l
}

func isCode(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

// fatal reports errors after which the connection cannot be trusted.
func fatal(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return true
	}
	switch uint(e) {
	case p11.CKR_DEVICE_REMOVED, p11.CKR_DEVICE_ERROR, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_SESSION_HANDLE_INVALID,
		p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN, p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_GENERAL_ERROR,
		p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_DEVICE_MEMORY,
		// Handles cached on this connection no longer name objects: the
		// token changed under us (removed, replaced).
		p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// with runs fn on a pooled session, marking the connection broken on a
// fatal error.
func (p *Provider) with(ctx context.Context, op string, fn func(c *conn, s p11.SessionHandle) error) error {
	var c *conn
	for attempt := 0; ; attempt++ {
		var err error
		if c, err = p.current(false); err != nil {
			return err
		}
		if c.acquire() {
			break
		}
		// Being closed by a reconnect; the next current() waits for it.
		if attempt == 1 {
			return fmt.Errorf("pkcs11: reconnecting: %w", signerr.ErrProviderUnavailable)
		}
	}
	defer c.release()
	var s p11.SessionHandle
	select {
	case s = <-c.sessions:
	case <-ctx.Done():
		return ctx.Err()
	}
	err := fn(c, s)
	c.sessions <- s
	if err != nil {
		var ee *errKeyMissing
		var ve *signerr.VariantError
		if errors.As(err, &ee) || errors.As(err, &ve) {
			return err
		}
		if fatal(err) && c.broken.CompareAndSwap(false, true) {
			p.log.Error("pkcs11 connection lost; reconnecting on next use", "op", op, "err", err)
		}
		return unavailable(op, err)
	}
	return nil
}

type errKeyMissing struct{ id string }

func (e *errKeyMissing) Error() string {
	return fmt.Sprintf("pkcs11: no private key with CKA_ID %q on the token", e.id)
}
func (e *errKeyMissing) Unwrap() error { return signerr.ErrKeyNotFound }

// label binds a token object to its record: scope and key id. Load reads it
// back, and compares the token's public key with the record's, so a record
// moved to another scope or swapped with another is refused.
func label(ref keyprovider.KeyRef) string {
	return "plexsphere-signer:" + ref.Scope + ":" + ref.ID
}

// Generate makes an Ed25519 key pair inside the token; the private half is
// sensitive and never extractable. The handle is the objects' CKA_ID (the
// key id); their CKA_LABEL binds scope and id.
func (p *Provider) Generate(ctx context.Context, ref keyprovider.KeyRef) ([]byte, ed25519.PublicKey, error) {
	id := ref.ID
	if id == "" || ref.Scope == "" {
		return nil, nil, fmt.Errorf("pkcs11: generate: a key needs an id and a scope: %w", signerr.ErrInvariant)
	}
	ckaID := []byte(id)
	var pub ed25519.PublicKey
	err := p.with(ctx, "generate", func(c *conn, s p11.SessionHandle) error {
		pubT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, ckkECEdwards),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_VERIFY, true),
			p11.NewAttribute(p11.CKA_EC_PARAMS, ed25519Params),
			p11.NewAttribute(p11.CKA_ID, ckaID),
			p11.NewAttribute(p11.CKA_LABEL, label(ref)),
		}
		privT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, ckkECEdwards),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_ID, ckaID),
			p11.NewAttribute(p11.CKA_LABEL, label(ref)),
		}
		pubH, privH, err := p.module.GenerateKeyPair(s, []*p11.Mechanism{p11.NewMechanism(ckmECEdwardsKeyPairGen, nil)}, pubT, privT)
		if err != nil {
			return err
		}
		pub, err = p.readPublic(s, pubH)
		if err != nil {
			return err
		}
		c.objects.Store(id, privH)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return ckaID, pub, nil
}

// readPublic reads CKA_EC_POINT: a DER OCTET STRING (04 20 ‖ 32 bytes) on
// SoftHSM2, the raw 32 bytes on some tokens.
func (p *Provider) readPublic(s p11.SessionHandle, o p11.ObjectHandle) (ed25519.PublicKey, error) {
	attrs, err := p.module.GetAttributeValue(s, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, err
	}
	v := attrs[0].Value
	switch {
	case len(v) == 34 && v[0] == 0x04 && v[1] == 0x20:
		return ed25519.PublicKey(v[2:]), nil
	case len(v) == 32:
		return ed25519.PublicKey(v), nil
	}
	return nil, fmt.Errorf("pkcs11: unexpected CKA_EC_POINT of %d bytes", len(v))
}

func (p *Provider) find(s p11.SessionHandle, class uint, ckaID []byte) ([]p11.ObjectHandle, error) {
	if err := p.module.FindObjectsInit(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, class), p11.NewAttribute(p11.CKA_ID, ckaID),
	}); err != nil {
		return nil, err
	}
	objs, _, err := p.module.FindObjects(s, 2)
	if ferr := p.module.FindObjectsFinal(s); err == nil {
		err = ferr
	}
	return objs, err
}

// object returns the private key's handle on this connection.
func (p *Provider) object(c *conn, s p11.SessionHandle, id string) (p11.ObjectHandle, error) {
	if o, ok := c.objects.Load(id); ok {
		return o.(p11.ObjectHandle), nil
	}
	objs, err := p.find(s, p11.CKO_PRIVATE_KEY, []byte(id))
	if err != nil {
		return 0, err
	}
	if len(objs) != 1 {
		return 0, &errKeyMissing{id}
	}
	c.objects.Store(id, objs[0])
	return objs[0], nil
}

// Load finds the key in the token, reads its labels and public half from
// there and checks them against ref: the label must bind ref's scope and id,
// the token's public key must be ref.Public. A mismatch (the record moved or
// swapped in the store) is ErrInvariant.
func (p *Provider) Load(ctx context.Context, ref keyprovider.KeyRef, handle []byte) (keyprovider.Key, error) {
	id := ref.ID
	if string(handle) != id {
		return nil, fmt.Errorf("pkcs11: handle does not name key %q: %w", id, signerr.ErrInvariant)
	}
	var pub ed25519.PublicKey
	var labels [2]string
	err := p.with(ctx, "load", func(c *conn, s p11.SessionHandle) error {
		priv, err := p.object(c, s, id)
		if err != nil {
			return err
		}
		objs, err := p.find(s, p11.CKO_PUBLIC_KEY, handle)
		if err != nil {
			return err
		}
		if len(objs) != 1 {
			return &errKeyMissing{id}
		}
		for i, o := range []p11.ObjectHandle{priv, objs[0]} {
			attrs, err := p.module.GetAttributeValue(s, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)})
			if err != nil {
				return err
			}
			labels[i] = string(attrs[0].Value)
		}
		pub, err = p.readPublic(s, objs[0])
		return err
	})
	if err != nil {
		return nil, err
	}
	want := label(ref)
	switch {
	case labels[0] != want || labels[1] != want:
		return nil, fmt.Errorf("pkcs11: key %q: token objects are labelled %q, the record says %q: moved or swapped in the store: %w", id, labels[0], want, signerr.ErrInvariant)
	case !pub.Equal(ref.Public):
		return nil, fmt.Errorf("pkcs11: key %q: the token's public key is not the record's: %w", id, signerr.ErrInvariant)
	}
	return &key{p: p, id: id, pub: pub}, nil
}

// Destroy destroys the key's objects on the token (C_DestroyObject, both
// halves): a retired key never signs again, whatever a store writer does to
// its record. Objects labelled for another record are left alone
// (ErrInvariant); objects already gone are not an error.
func (p *Provider) Destroy(ctx context.Context, ref keyprovider.KeyRef, handle []byte) error {
	if string(handle) != ref.ID {
		return fmt.Errorf("pkcs11: handle does not name key %q: %w", ref.ID, signerr.ErrInvariant)
	}
	var mismatch bool
	err := p.with(ctx, "destroy", func(c *conn, s p11.SessionHandle) error {
		var objs []p11.ObjectHandle
		for _, class := range []uint{p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY} {
			found, err := p.find(s, class, handle)
			if err != nil {
				return err
			}
			objs = append(objs, found...)
		}
		for _, o := range objs {
			attrs, err := p.module.GetAttributeValue(s, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)})
			if err != nil {
				return err
			}
			if string(attrs[0].Value) != label(ref) {
				mismatch = true
				return nil
			}
		}
		c.objects.Delete(ref.ID)
		for _, o := range objs {
			if err := p.module.DestroyObject(s, o); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if mismatch {
		return fmt.Errorf("pkcs11: key %q: the token's objects are labelled for another record; not destroyed: %w", ref.ID, signerr.ErrInvariant)
	}
	return nil
}

// Health checks that the token answers, reconnecting if it went away.
func (p *Provider) Health(ctx context.Context) error {
	c, err := p.current(true)
	if err != nil {
		return err
	}
	if _, err := p.module.GetTokenInfo(c.slot); err != nil {
		c.broken.Store(true)
		return unavailable("token info", err)
	}
	return p.with(ctx, "session", func(_ *conn, s p11.SessionHandle) error {
		_, err := p.module.GetSessionInfo(s)
		return err
	})
}

// Close ends the sessions and finalises the library.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conn.Swap(nil); c != nil {
		p.retire(c)
	}
	p.module.release()
	return nil
}

type key struct {
	p   *Provider
	id  string
	pub ed25519.PublicKey
}

func (k *key) ID() string               { return k.id }
func (k *key) Public() crypto.PublicKey { return k.pub }

func (k *key) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	o, err := keyprovider.SignerOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: %w", err)
	}
	return k.SignOptions(context.Background(), message, o)
}

// SignContext signs pure Ed25519 in the token with CKM_EDDSA.
func (k *key) SignContext(ctx context.Context, message []byte) ([]byte, error) {
	return k.SignOptions(ctx, message, nil)
}

// SignOptions signs in the token with CKM_EDDSA: without a parameter for
// pure Ed25519, with CK_EDDSA_PARAMS (phFlag, context) for Ed25519ph and
// Ed25519ctx. The context bounds the wait for a free session; a PKCS#11
// call itself cannot be interrupted.
//
// A token may accept CK_EDDSA_PARAMS and ignore them: SoftHSM2 2.6.1 signs
// pure Ed25519 over the digest or message whatever the parameter says. So
// every Ed25519ph or Ed25519ctx signature is verified here before it is
// returned, and one that does not verify in the requested scheme is
// refused (signerr.VariantError), never handed out as if it were one.
func (k *key) SignOptions(ctx context.Context, message []byte, opts *ed25519.Options) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	variant := ""
	var param []byte
	if opts != nil {
		switch {
		case opts.Hash == crypto.SHA512:
			variant = "ed25519ph"
			if len(message) != 64 {
				return nil, fmt.Errorf("pkcs11: Ed25519ph takes a 64-byte SHA-512 digest, not %d bytes: %w", len(message), signerr.ErrInvalidArgument)
			}
		case opts.Hash == 0 && opts.Context != "":
			variant = "ed25519ctx"
		case opts.Hash == 0:
		default:
			return nil, fmt.Errorf("pkcs11: hash %v: Ed25519 signs unhashed messages or SHA-512 digests: %w", opts.Hash, signerr.ErrInvalidArgument)
		}
		if len(opts.Context) > 255 {
			return nil, fmt.Errorf("pkcs11: context of %d bytes, at most 255: %w", len(opts.Context), signerr.ErrInvalidArgument)
		}
	}
	if variant != "" {
		var free func()
		param, free = eddsaParams(opts.Hash == crypto.SHA512, []byte(opts.Context))
		defer free()
	}
	var sig []byte
	err := k.p.with(ctx, "sign", func(c *conn, s p11.SessionHandle) error {
		o, err := k.p.object(c, s, k.id)
		if err != nil {
			return err
		}
		if err := k.p.module.SignInit(s, []*p11.Mechanism{p11.NewMechanism(ckmEdDSA, param)}, o); err != nil {
			var pe p11.Error
			if variant != "" && errors.As(err, &pe) && (pe == p11.CKR_MECHANISM_PARAM_INVALID || pe == p11.CKR_ARGUMENTS_BAD) {
				return &signerr.VariantError{Variant: variant, Why: "the PKCS#11 token refuses CK_EDDSA_PARAMS (" + pe.Error() + ")"}
			}
			return err
		}
		sig, err = k.p.module.Sign(s, message)
		return err
	})
	if err != nil || variant == "" {
		return sig, err
	}
	if ed25519.VerifyWithOptions(k.pub, message, sig, opts) != nil {
		return nil, &signerr.VariantError{Variant: variant, Why: "the PKCS#11 token does not sign it (it ignored CK_EDDSA_PARAMS; SoftHSM2 2.6.1 does): use pure Ed25519 or another token (docs/hsm.md)"}
	}
	return sig, nil
}
