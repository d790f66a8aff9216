// Package server assembles plexsphere-signer from its configuration: identity,
// store, key provider, the group-commit audit writer, the gRPC server with its
// interceptors, and the plain-HTTP ops listener (health, metrics).
package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/jwks"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/ops"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/store"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// envelope is what a request may carry beyond its payload (scope, key id,
// framing). Messages up to payload limit + envelope reach the handler, which
// refuses an oversized payload as InvalidArgument, audited; anything larger
// is refused by gRPC itself (ResourceExhausted) before it is read.
const envelope = 256 << 10

// autoRotateEvery is how often due automatic rotation steps are taken; the
// windows are hours, so a minute's lateness is immaterial.
const autoRotateEvery = 30 * time.Second

// Options replace what New would open from the configuration; tests use them.
type Options struct {
	Log      *slog.Logger
	Clock    func() time.Time
	Store    store.Store
	Provider keyprovider.Provider
	Identity identity.Source
	// skipMerkle stores audit entries without the Merkle tree and without
	// checkpoints: the benchmarks price the tree with it in the same run
	// (docs/performance.md). Only a build for benchmarks can set it
	// (WithoutMerkle, build tag bench): a signer so built cannot prove its
	// log.
	skipMerkle bool
}

// Signer is an assembled signer.
type Signer struct {
	cfg        config.Signer
	log        *slog.Logger
	store      store.Store
	provider   keyprovider.Provider
	ident      identity.Source
	writer     *audit.Writer
	auditLog   *audit.Log
	vkey       string
	skipMerkle bool
	keys       *keyring.Keyring
	history    *keyring.History // what the audit log says of each key
	life       *keyring.Lifecycle
	auto       *keyring.AutoRotator // nil without schedules
	// bootstrapLater: the scopes could not be bootstrapped at start-up (the
	// audit log refused entries); Serve retries until it can.
	bootstrapLater bool
	metrics        *signerMetrics
	guard          *guard
	grpc           *grpc.Server
	health         *health.Server
	jwks           http.Handler          // nil without SIGNER_JWKS_LISTEN
	jwksCert       *jwks.Certificate     // its server certificate
	jwksLis        net.Listener          // set by ListenJWKS
	ready          atomic.Pointer[error] // the last readiness check, refreshed in the background
	owned          []func() error        // closed in reverse order
}

// streamWorkers is the signer's gRPC stream worker pool; calls beyond it
// get their own goroutine as before.
const streamWorkers = 128

// New opens everything cfg names (unless opts supplies it), checks the audit
// log against its last checkpoint and bootstraps the configured scopes. cfg
// must have passed Validate.
func New(ctx context.Context, cfg config.Signer, opts Options) (_ *Signer, err error) {
	s := &Signer{cfg: cfg, log: opts.Log}
	if s.log == nil {
		s.log = slog.Default()
	}
	clock := opts.Clock
	if clock == nil {
		clock = time.Now
	}
	defer func() {
		if err != nil {
			s.closeOwned()
		}
	}()
	notChecked := errors.New("not checked yet")
	s.ready.Store(&notChecked)

	// Everything that can be checked without the store is checked before
	// it is opened: a mistake found later would leave a store created or a
	// scope bootstrapped behind a signer that never served.
	if err := preflight(&cfg); err != nil {
		return nil, err
	}
	if cfg.JWKSListen != "" {
		if s.jwksCert, err = jwks.LoadCertificate(cfg.JWKSCertFile, cfg.JWKSKeyFile, 5*time.Second, s.log); err != nil {
			return nil, config.Errorf(&cfg, "JWKSCertFile", "%v (%s)", err, config.Name(&cfg, "JWKSKeyFile"))
		}
	}
	if s.ident = opts.Identity; s.ident == nil {
		if s.ident, err = identity.OpenAs(ctx, cfg.Identity, config.Name(&cfg, "WorkloadAPIAddr"), s.log); err != nil {
			return nil, cfg.Identity.Error(&cfg, err)
		}
		s.owned = append(s.owned, s.ident.Close)
	}
	if err := s.checkIdentity(); err != nil {
		return nil, err
	}
	if s.provider = opts.Provider; s.provider == nil {
		if s.provider, err = openProvider(&cfg, s.log); err != nil {
			return nil, err
		}
		s.owned = append(s.owned, s.provider.Close)
	}
	if s.store = opts.Store; s.store == nil {
		if s.store, err = openStore(ctx, &cfg, s.log); err != nil {
			return nil, err
		}
		s.owned = append(s.owned, s.store.Close)
	}
	s.metrics = newSignerMetrics(methods(), func(ctx context.Context) ([]store.Key, error) { return s.store.Keys(ctx, "") }, s.ident)
	// The checkpoint key is loaded before the provider is wrapped: the
	// provider metrics count the signatures callers ask for.
	untimed := s.provider
	s.provider = s.metrics.timed(s.provider)
	s.skipMerkle = opts.skipMerkle
	if err := s.openLog(ctx, untimed, clock); err != nil {
		return nil, err
	}
	if err := s.canary(ctx, untimed); err != nil {
		return nil, err
	}

	s.keys = keyring.NewWith(s.store, s.provider, cfg.KeyCacheTTL, clock, keyring.Options{Floor: s.history.Floor})
	s.life = keyring.NewLifecycle(s.store, s.provider, s.keys,
		keyring.Windows{PrePublish: cfg.PrePublish, VerifyOnly: cfg.VerifyOnly}, clock)
	if broken := s.auditLog.Broken(); broken != nil {
		s.log.Error("scopes not bootstrapped yet: the audit log refuses entries; retrying in the background", "err", broken)
		s.bootstrapLater = true
	} else if err := s.bootstrap(ctx); err != nil {
		return nil, err
	}

	if len(cfg.AllowSPIFFEIDs) == 0 {
		s.log.Warn("no SPIFFE ID may call SignerService: the allow-list is empty, every Sign is denied",
			"setting", config.Name(&cfg, "AllowSPIFFEIDs"))
	}
	grants, err := cfg.Grants()
	if err != nil {
		return nil, config.Errorf(&cfg, "ScopeGrants", "%v", err)
	}
	variants, err := cfg.SignVariants()
	if err != nil {
		return nil, config.Errorf(&cfg, "ScopeSignVariants", "%v", err)
	}
	autos, err := cfg.AutoRotations()
	if err != nil {
		return nil, config.Errorf(&cfg, "AutoRotate", "%v", err)
	}
	var schedules []keyring.Schedule
	for _, a := range autos {
		schedules = append(schedules, keyring.Schedule(a))
	}
	if len(schedules) > 0 {
		s.auto = keyring.NewAutoRotator(s.life, s.writer, schedules, signing.Outcome, s.log)
	}

	signerSvc := signerv1.SignerService_ServiceDesc.ServiceName
	lists := map[string]peeridentity.AllowList{
		signerSvc: peeridentity.NewAllowList(cfg.AllowSPIFFEIDs...),
		signerv1.RotationService_ServiceDesc.ServiceName: peeridentity.NewAllowList(cfg.RotationAllowSPIFFEIDs...),
		signerv1.AuditService_ServiceDesc.ServiceName:    peeridentity.NewAllowList(append(cfg.RotationAllowSPIFFEIDs, cfg.AuditorAllowSPIFFEIDs...)...),
	}
	authorize := peeridentity.WithScopeGrants(peeridentity.AuthorizeByService(lists), signerSvc, grants)
	// A call whose peer is not admitted to the method's service at all will
	// be denied whatever it asks (no request is needed to tell: a scope
	// grant narrows an admitted peer only).
	foresee := func(ctx context.Context, method string) bool {
		return peeridentity.Admit(peeridentity.PeerOf(ctx), time.Now(), method, nil, authorize) != peeridentity.OutcomeGranted
	}
	s.guard = newGuard(guardLimits{MaxConns: cfg.MaxConnections, MaxConnsPerSource: cfg.MaxConnectionsPerSource,
		ConnRatePerSource: float64(cfg.ConnectionRate), ConnBurstPerSource: 10 * cfg.ConnectionRate,
		DenialRate: float64(cfg.DenialRate), DenialBurst: cfg.DenialRate, DenialsPerConn: cfg.DenialsPerConnection,
		MaxPendingDenials: cfg.MaxPendingDenials, DenialMaxWait: cfg.DenialMaxWait, DeniedConnRate: float64(cfg.DeniedConnectionRate)},
		foresee, func(reason string) { s.metrics.connsRefused.WithLabelValues(reason).Inc() })
	s.metrics.pendingDenials(s.guard)
	auditor := &signing.Auditor{
		Authorize: authorize,
		Writer:    s.writer,
		Clock:     clock,
		Log:       s.log,
		Denials:   s.guard,
		Observe:   s.metrics.observeRPC,
	}
	// No reflection service is registered: the wire schema is the committed
	// .proto, and every path, unknown ones included, goes through admission
	// and audit first.
	s.grpc = grpc.NewServer(
		grpc.Creds(newObservedCreds(credentials.NewTLS(identity.ServerTLS(s.ident)), &s.cfg, s.log,
			func(cause string) { s.metrics.handshakeFailures.WithLabelValues(cause).Inc() }, s.guard.handshook)),
		// The debug summary is outside admission, so denied calls get one.
		grpc.ChainUnaryInterceptor(debugRPC(s.log), auditor.Unary()),
		grpc.UnknownServiceHandler(auditor.UnknownMethod),
		// Flood control in the transport: a call refused here never
		// becomes an RPC (no interceptor, no handler, nothing to audit).
		grpc.InTapHandle(s.guard.tap),
		// The TLS handshake and the HTTP/2 preface must be done in this
		// time (grpc's default is 120 s): an idle connection does not hold
		// one of SIGNER_MAX_CONNECTIONS.
		grpc.ConnectionTimeout(cfg.ConnectionTimeout),
		grpc.MaxRecvMsgSize(cfg.MaxPayloadBytes+envelope),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxConcurrentStreams)),
		// A pool of stream workers instead of a new goroutine (and a fresh,
		// growing stack) per call; its price is measured in
		// docs/performance.md (signer CPU per Sign at 64 in flight).
		grpc.NumStreamWorkers(streamWorkers),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Connections end (gracefully: GOAWAY, in-flight calls finish) so that
		// clients re-handshake with their rotated SVIDs and re-resolve the
		// signer's replicas.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: cfg.MaxConnectionAge, MaxConnectionAgeGrace: 30 * time.Second}),
	)
	reader, err := signing.NewAuditReader(s.store, s.auditLog, s.vkey)
	if err != nil {
		return nil, err
	}
	signerv1.RegisterSignerServiceServer(s.grpc, signing.NewService(s.keys, reader, cfg.MaxPayloadBytes, variants))
	rotation := signing.NewRotation(s.life)
	rotation.Log = s.log
	signerv1.RegisterRotationServiceServer(s.grpc, rotation)
	signerv1.RegisterAuditServiceServer(s.grpc, reader)

	if cfg.JWKSListen != "" {
		s.jwks = jwks.Handler(jwks.Config{Keys: s.keys.Published, CacheTTL: cfg.KeyCacheTTL,
			MaxAge: jwks.MaxAge(cfg.PrePublish, cfg.KeyCacheTTL), Issuer: cfg.JWKSIssuerURL,
			Rate: float64(cfg.JWKSRate), Clock: clock, Log: s.log, Observe: s.metrics.observeJWKS})
	}

	s.health = health.NewServer()
	s.setServing(false)
	return s, nil
}

// bootstrap gives each configured scope its first key (audited).
func (s *Signer) bootstrap(ctx context.Context) error {
	for _, scope := range s.cfg.BootstrapScopes {
		k, created, err := s.life.Bootstrap(ctx, scope, s.writer)
		if err != nil {
			return fmt.Errorf("bootstrap scope %q: %w", scope, err)
		}
		if created {
			s.log.Info("bootstrapped scope", "scope", scope, "key_id", k.ID)
		}
	}
	return nil
}

// bootstrapWhenAnchored retries the bootstrap skipped at start-up once the
// audit log takes entries again.
func (s *Signer) bootstrapWhenAnchored(ctx context.Context, every time.Duration) {
	for {
		if s.auditLog.Broken() == nil {
			err := s.bootstrap(ctx)
			if err == nil {
				return
			}
			s.log.Warn("scopes not bootstrapped yet", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// ListenJWKS hands Serve the listener of the JWKS endpoint (configured with
// SIGNER_JWKS_LISTEN); call it before Serve. Without the setting it is an
// error.
func (s *Signer) ListenJWKS(l net.Listener) error {
	if s.jwks == nil {
		return config.Errorf(&s.cfg, "JWKSListen", "the JWKS endpoint is not configured")
	}
	s.jwksLis = l
	return nil
}

// openLog loads (or creates, on a first start) the checkpoint key, checks it
// against the pinned verifier key, derives the seal key, starts the writer,
// begins a new epoch if the configuration asks for one, and checks the
// stored log against its anchors (a full sweep, then a check that pushes
// to the witnesses) before anything is served. A broken or unanchored log
// does not stop start-up: the signer comes up not ready and refuses every
// RPC, so the operator can inspect it (docs/audit.md); a configuration that
// cannot work does.
func (s *Signer) openLog(ctx context.Context, p keyprovider.Provider, clock func() time.Time) error {
	cfg := &s.cfg
	key, rec, err := LogKey(ctx, s.store, p, clock)
	if err != nil {
		if errors.Is(err, signerr.ErrProviderUnavailable) {
			return providerError(cfg, "the audit checkpoint key", err)
		}
		return fmt.Errorf("audit checkpoint key: %w", err)
	}
	origin := cfg.AuditOrigin
	if origin == "" {
		svid, err := s.ident.GetX509SVID()
		if err != nil {
			return fmt.Errorf("audit origin: %w", err)
		}
		origin = svid.ID.TrustDomain().Name() + "/plexsphere-signer"
	}
	// A provider that hangs (an HSM gone quiet) must not hang the log's
	// checks: the checkpoint is signed again at the next interval.
	sign := func(msg []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return key.SignContext(ctx, msg)
	}
	vkey, err := note.NewEd25519VerifierKey(origin, rec.Public)
	if err != nil {
		return config.Errorf(cfg, "AuditOrigin", "%v", err)
	}
	if pinned := cfg.CheckpointVerifierKey; pinned != "" && pinned != vkey {
		return config.Errorf(cfg, "CheckpointVerifierKey", "the store's checkpoint key is %s, not the pinned %s: this is not the log you pinned (another store, another origin, or a key someone replaced); never start it with another key", vkey, pinned)
	}
	verifier, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return err
	}
	s.vkey = vkey
	var sealer *audit.Sealer
	if !s.skipMerkle {
		if sealer, err = audit.DeriveSealer(origin, sign); err != nil {
			return fmt.Errorf("audit seal key: %w", err)
		}
	}
	wo := audit.WriterOptions{MaxBatch: cfg.AuditMaxBatch, Observe: s.metrics.observeBatch, Sealer: sealer}
	if s.skipMerkle {
		wo = withoutTree(wo)
	}
	s.writer = audit.NewWriter(s.store, wo)
	s.owned = append(s.owned, func() error { s.writer.Close(); return nil })

	var witnesses *audit.Witnesses
	if cfg.WitnessPolicyFile != "" {
		text, err := os.ReadFile(cfg.WitnessPolicyFile)
		if err != nil {
			return config.Errorf(cfg, "WitnessPolicyFile", "%v", err)
		}
		policy, err := auditlog.ParseWitnessPolicy(text)
		if err != nil {
			return config.Errorf(cfg, "WitnessPolicyFile", "%v (docs/audit.md, Witnesses)", err)
		}
		witnesses = audit.NewWitnesses(policy, cfg.WitnessTimeout, s.metrics.observeWitness)
		for _, w := range policy.Witnesses() {
			s.metrics.knownWitness(w.Name)
		}
	}
	if cfg.CheckpointLogInit {
		empty, err := audit.CheckpointFileEmpty(cfg.CheckpointLog)
		if err != nil {
			return config.Errorf(cfg, "CheckpointLog", "%v", err)
		}
		if !empty {
			return config.Errorf(cfg, "CheckpointLogInit", "the checkpoint file %s already holds checkpoints: unset %s (it starts a file once, deliberately; left set, a lost file would start again unseen)", cfg.CheckpointLog, config.Name(cfg, "CheckpointLogInit"))
		}
	}
	epoch, begin, err := s.epoch(ctx, verifier)
	if err != nil {
		return err
	}
	signer, _, err := audit.NewNoteSigner(auditlog.EpochOrigin(origin, epoch), rec.Public, sign)
	if err != nil {
		return config.Errorf(cfg, "AuditOrigin", "%v", err)
	}
	s.history = keyring.NewHistory()
	s.auditLog = audit.NewLog(audit.LogConfig{Store: s.store, Writer: s.writer, Signer: signer, Verifier: verifier, Sealer: sealer,
		Witnesses: witnesses, File: cfg.CheckpointLog, InitFile: cfg.CheckpointLogInit, MaxUnanchored: cfg.AuditMaxUnanchored,
		Interval: cfg.CheckpointInterval, Log: s.log, Observe: s.observeLog, OnEntry: s.history.Observe})
	if s.skipMerkle {
		return nil
	}
	if begin {
		if _, err := s.auditLog.BeginEpoch(ctx, cfg.AuditEpochReason); err != nil {
			return config.Errorf(cfg, "AuditEpoch", "epoch %d could not begin: %v", epoch, err)
		}
	}
	s.auditLog.Start(ctx)
	if witnesses == nil || !witnesses.Policy().Required() {
		s.log.Warn("the audit log has no witnesses: only the checkpoint file anchors it outside the store; a writer of both the store and that file could roll it back unseen (docs/audit.md, Witnesses)",
			"checkpoint_file", cfg.CheckpointLog)
	}
	if cfg.CheckpointLog == "" && (witnesses == nil || !witnesses.Policy().Required()) {
		s.log.Error("the audit log has NO anchor outside the store (SIGNER_AUDIT_ANCHOR_REQUIRED=false): a store writer can roll it back or fork it unseen; development only")
	}
	if cfg.CheckpointVerifierKey == "" {
		s.log.Warn("the checkpoint verifier key is not pinned: pin it with SIGNER_CHECKPOINT_VERIFIER_KEY", "checkpoint_verifier_key", vkey)
	}
	st := s.auditLog.Status()
	s.log.Info("audit log", "origin", origin, "epoch", epoch, "checkpoint_verifier_key", vkey, "epoch_verifier_key", verifier.EpochVerifierKey(epoch),
		"size", st.Size, "witnessed_size", st.WitnessedSize)
	return nil
}

// epoch decides the epoch to serve: the one the store and the checkpoint
// file are in, or, when SIGNER_AUDIT_EPOCH is one more (with a reason), the
// next, which the caller begins.
func (s *Signer) epoch(ctx context.Context, v *auditlog.Verifier) (epoch int, begin bool, err error) {
	cfg := &s.cfg
	cur, err := audit.CurrentEpoch(ctx, s.store, v, cfg.CheckpointLog)
	if err != nil {
		if errors.Is(err, signerr.ErrAuditLogBroken) {
			// Served as the log broken (the Log finds the same at Start).
			s.log.Error("audit log epoch unknown", "err", err)
			return max(cfg.AuditEpoch, 1), false, nil
		}
		return 0, false, err
	}
	want := cfg.AuditEpoch
	switch {
	case cur == want || cur == 0 && want == 1:
		return want, false, nil
	case want == max(cur, 1)+1 || cur == 0:
		if cfg.AuditEpochReason == "" {
			return 0, false, config.Errorf(cfg, "AuditEpochReason", "%s is %d, one more than the log's epoch %d: say why a new epoch begins (it is recorded in the log)", config.Name(cfg, "AuditEpoch"), want, max(cur, 1))
		}
		return want, true, nil
	case want < cur:
		return 0, false, config.Errorf(cfg, "AuditEpoch", "%d, but the log is already in epoch %d: set it to %d", want, cur, cur)
	}
	return 0, false, config.Errorf(cfg, "AuditEpoch", "%d, but the log is in epoch %d: an epoch begins one at a time (set %d)", want, cur, cur+1)
}

// observeLog is told the audit log's status after every check: metrics,
// and readiness at once (not at the next health check).
func (s *Signer) observeLog(st audit.Status) {
	s.metrics.observeLog(st)
	if s.health != nil {
		s.setServing(*s.ready.Load() == nil && st.Broken == nil && st.Unanchored == nil)
	}
}

// LogKey returns the audit checkpoint key, creating it in the provider on
// the first start of an empty store, never while the store holds entries
// (a deleted key record is restored, never replaced: a new key would vouch
// for a history it never saw). Loading it at every start proves the
// provider holds the store's keys (the right KEK, the right token) before
// anything is served.
func LogKey(ctx context.Context, st store.Store, p keyprovider.Provider, clock func() time.Time) (keyprovider.Key, store.Key, error) {
	rec, err := st.LogKey(ctx)
	if errors.Is(err, signerr.ErrKeyNotFound) {
		size, serr := st.AuditSize(ctx)
		if serr != nil {
			return nil, store.Key{}, serr
		}
		if size > 0 {
			return nil, store.Key{}, fmt.Errorf("the store holds %d audit entries but no checkpoint key record: it was deleted; restore it from a backup (a new key is never created for an existing log): %w", size, signerr.ErrInvariant)
		}
		id := names.NewKeyID()
		handle, pub, gerr := p.Generate(ctx, keyprovider.KeyRef{ID: id, Scope: store.LogKeyScope})
		if gerr != nil {
			return nil, store.Key{}, gerr
		}
		// Another replica may win the race; its key is the one used.
		rec, err = st.CreateLogKey(ctx, store.Key{ID: id, Scope: store.LogKeyScope, State: store.Active, Public: pub,
			Provider: p.Name(), Handle: handle, CreatedAt: clock().UTC().Truncate(time.Microsecond)})
	}
	if err != nil {
		return nil, store.Key{}, err
	}
	if rec.Provider != p.Name() {
		return nil, store.Key{}, fmt.Errorf("the checkpoint key belongs to provider %q, this signer runs %q: %w", rec.Provider, p.Name(), signerr.ErrProviderUnavailable)
	}
	k, err := p.Load(ctx, keyprovider.KeyRef{ID: rec.ID, Scope: rec.Scope, Public: rec.Public}, rec.Handle)
	if errors.Is(err, local.ErrNotApproved) {
		// The provider's advice (rotate) does not apply to this key.
		return nil, store.Key{}, fmt.Errorf("%w; the checkpoint key is never replaced while the log holds entries, so this store runs with GODEBUG=fips140=on, not only", err)
	}
	if err != nil {
		return nil, store.Key{}, err
	}
	if pub, ok := k.Public().(ed25519.PublicKey); !ok || !pub.Equal(rec.Public) {
		return nil, store.Key{}, fmt.Errorf("the checkpoint key's public half does not match its record: %w", signerr.ErrInvariant)
	}
	return k, rec, nil
}

// canaryKeys bounds how many signing keys start-up unseals as a canary.
const canaryKeys = 256

// canary loads the ACTIVE signing keys (up to canaryKeys) through the
// provider before anything is served: a KEK or token that does not hold the
// store's signing keys (the checkpoint key alone proves only its own) stops
// start-up naming the setting, instead of a signer that reports ready and
// fails every Sign with Unavailable. A record that does not match its key
// (ErrInvariant: moved or swapped in the store), or a key missing from the
// token, is logged and left to be
// refused, audited, at every Sign of it; it does not stop the other scopes.
func (s *Signer) canary(ctx context.Context, p keyprovider.Provider) error {
	keys, err := s.store.Keys(ctx, "")
	if err != nil {
		return fmt.Errorf("start-up key check: %w", err)
	}
	checked := 0
	for _, k := range keys {
		if k.State != store.Active || k.Provider != p.Name() || checked == canaryKeys {
			continue
		}
		checked++
		key, err := p.Load(ctx, keyprovider.KeyRef{ID: k.ID, Scope: k.Scope, Public: k.Public}, k.Handle)
		switch {
		case err == nil:
			if r, ok := key.(keyprovider.Releaser); ok {
				r.Release()
			}
		case errors.Is(err, signerr.ErrProviderUnavailable):
			return providerError(&s.cfg, fmt.Sprintf("signing key %s of scope %q", k.ID, k.Scope), err)
		case errors.Is(err, signerr.ErrInvariant), errors.Is(err, signerr.ErrKeyNotFound):
			s.log.Error("signing key does not match its record or is missing; it will refuse to sign", "scope", k.Scope, "key_id", k.ID, "err", err)
		default:
			return fmt.Errorf("start-up key check: key %s: %w", k.ID, err)
		}
	}
	return nil
}

func (s *Signer) closeOwned() {
	for i := len(s.owned) - 1; i >= 0; i-- {
		if err := s.owned[i](); err != nil {
			s.log.Warn("close", "err", err)
		}
	}
	s.owned = nil
}

func (s *Signer) setServing(ok bool) {
	ops.SetAll(s.health, ok, signerv1.SignerService_ServiceDesc.ServiceName)
}

// check is the readiness rule: the store and the provider both answer and
// the audit log matches its checkpoint.
func (s *Signer) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// Both are asked every time, so the metrics tell which one is down.
	storeErr := s.store.Ping(ctx)
	providerErr := s.provider.Health(ctx)
	s.metrics.observeDependency("store", storeErr)
	s.metrics.observeDependency("provider", providerErr)
	if storeErr != nil {
		return fmt.Errorf("store: %w", storeErr)
	}
	if providerErr != nil {
		return fmt.Errorf("provider: %w", providerErr)
	}
	if err := s.auditLog.Broken(); err != nil {
		return err
	}
	return nil
}

// Ready answers readiness from the state the background check keeps (a
// probe never costs a database round trip) and the audit log's verdict,
// which is read live: a log found broken is not ready at once.
func (s *Signer) Ready(context.Context) error {
	if err := *s.ready.Load(); err != nil {
		return err
	}
	if s.auditLog != nil && !s.skipMerkle {
		return s.auditLog.Broken()
	}
	return nil
}

func (s *Signer) watchHealth(ctx context.Context, every time.Duration) {
	var last error = errors.New("unchecked")
	for {
		err := s.check(ctx)
		s.ready.Store(&err)
		if (err == nil) != (last == nil) {
			if err != nil {
				s.log.Error("not ready", "err", err)
			} else {
				s.log.Info("ready")
			}
		}
		s.setServing(err == nil)
		last = err
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// Serve serves gRPC on lis and, if ops is not nil, health and metrics on ops,
// until ctx ends; then it stops admitting, drains in-flight RPCs for up to
// the shutdown timeout, commits the queued audit entries and closes what New
// opened.
func (s *Signer) Serve(ctx context.Context, lis, opsLis net.Listener) error {
	var ep *ops.Endpoint
	if opsLis != nil {
		ep = ops.StartEndpoint(opsLis)
		ep.Serve(s.health, s.Ready, s.metrics.Handler())
	}
	return s.serve(ctx, lis, ep)
}

// serve is Serve with the ops endpoint already serving (Run opens it
// before New, so liveness answers while the signer starts).
func (s *Signer) serve(ctx context.Context, lis net.Listener, ep *ops.Endpoint) error {
	defer s.closeOwned()
	hctx, stopHealth := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.watchHealth(hctx, 5*time.Second) }()
	if !s.skipMerkle {
		wg.Add(1)
		go func() { defer wg.Done(); s.auditLog.Run(hctx) }()
	}
	// A store shared by replicas announces key changes: drop stale cache
	// entries soon (rate limited per scope, see Keyring.Notice) instead of
	// waiting out the TTL.
	if w, ok := s.store.(interface {
		WatchKeys(context.Context, func(string))
	}); ok {
		wg.Add(1)
		go func() { defer wg.Done(); w.WatchKeys(hctx, s.keys.Notice) }()
	}
	// Loaded keys nobody uses any more (retired elsewhere) leave memory.
	wg.Add(1)
	go func() { defer wg.Done(); s.keys.Run(hctx, time.Second) }()
	if s.auto != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.auto.Run(hctx, autoRotateEvery) }()
	}
	if s.bootstrapLater {
		wg.Add(1)
		go func() { defer wg.Done(); s.bootstrapWhenAnchored(hctx, s.cfg.CheckpointInterval) }()
	}
	defer func() { stopHealth(); wg.Wait() }()

	errc := make(chan error, 3)
	go func() { errc <- s.grpc.Serve(s.guard.listener(lis)) }()
	var opsErr <-chan error
	if ep != nil {
		opsErr = ep.Err()
	}
	var jwksSrv *http.Server
	if s.jwksLis != nil {
		jwksSrv = jwks.Server(s.jwks, s.jwksCert)
		go func() { errc <- jwksSrv.ServeTLS(s.jwksLis, "", "") }()
		s.log.Info("jwks endpoint serving", "addr", s.jwksLis.Addr().String())
	}
	s.log.Info("signer serving", "addr", lis.Addr().String(), "store", s.cfg.Store, "provider", s.provider.Name())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-opsErr:
	}
	s.setServing(false)
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("shutdown timeout: cancelling RPCs still in flight")
		s.grpc.Stop()
		<-stopped
	}
	if ep != nil {
		ep.Close()
	}
	if jwksSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		jwksSrv.Shutdown(sctx)
		cancel()
	}
	// Every answered RPC's entries are committed; the last check signs,
	// cosigns and files them, so a graceful stop leaves nothing outside a
	// checkpoint (docs/audit.md: what kill -9 leaves instead).
	stopHealth()
	wg.Wait()
	s.writer.Close()
	if !s.skipMerkle {
		fctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.WitnessTimeout+5*time.Second)
		s.auditLog.Final(fctx)
		cancel()
	}
	s.log.Info("signer stopped")
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// CheckpointVerifierKey is the audit log's verifier key.
func (s *Signer) CheckpointVerifierKey() string { return s.vkey }

// AuditLog is the signer's audit log (tests check and checkpoint it).
func (s *Signer) AuditLog() *audit.Log { return s.auditLog }

// methods are every method the signer serves, the metrics' label values.
func methods() []string {
	var out []string
	for _, sd := range []grpc.ServiceDesc{signerv1.SignerService_ServiceDesc, signerv1.RotationService_ServiceDesc, signerv1.AuditService_ServiceDesc} {
		for _, m := range sd.Methods {
			out = append(out, "/"+sd.ServiceName+"/"+m.MethodName)
		}
	}
	return out
}

// Metrics serves /metrics (tests read it without an ops listener).
func (s *Signer) Metrics() http.Handler { return s.metrics.Handler() }

// Run listens on the configured addresses and serves until ctx ends. Every
// listener is bound before anything else is opened (an address in use is
// found before the store is touched), and the ops listener answers
// liveness from then on, while the signer waits for its SVID or its store.
func Run(ctx context.Context, cfg config.Signer, log *slog.Logger) error {
	ls, err := bind(&cfg)
	if err != nil {
		return err
	}
	var ep *ops.Endpoint
	if ls.ops != nil {
		ep = ops.StartEndpoint(ls.ops)
	}
	s, err := New(ctx, cfg, Options{Log: log})
	if err != nil {
		ls.close()
		if ep != nil {
			ep.Close()
		}
		if errors.Is(err, identity.ErrNoSVID) && ctx.Err() != nil {
			// Stopped while waiting: not a failure of the signer's, and the
			// line says what it waited for (ErrNoSVID names the fix).
			log.Warn("stopped before an SVID arrived; nothing was opened", "err", err.Error())
			return nil
		}
		return err
	}
	if ls.jwks != nil {
		if err := s.ListenJWKS(ls.jwks); err != nil {
			ls.close()
			s.closeOwned()
			return err
		}
	}
	if ep != nil {
		ep.Serve(s.health, s.Ready, s.metrics.Handler())
	}
	return s.serve(ctx, ls.grpc, ep)
}

type listeners struct{ grpc, ops, jwks net.Listener }

func (l listeners) close() {
	for _, x := range []net.Listener{l.grpc, l.ops, l.jwks} {
		if x != nil {
			x.Close()
		}
	}
}

// bind opens the gRPC, ops and JWKS listeners, naming the setting of one
// that cannot be opened.
func bind(cfg *config.Signer) (listeners, error) {
	var ls listeners
	for _, b := range []struct {
		field, addr string
		to          *net.Listener
	}{{"Listen", cfg.Listen, &ls.grpc}, {"OpsListen", cfg.OpsListen, &ls.ops}, {"JWKSListen", cfg.JWKSListen, &ls.jwks}} {
		if b.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", b.addr)
		if err != nil {
			ls.close()
			return listeners{}, config.Errorf(cfg, b.field, "%v", err)
		}
		*b.to = l
	}
	return ls, nil
}
