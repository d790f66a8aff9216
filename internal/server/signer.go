// Package server assembles plexsphere-signer from its configuration: identity,
// store, key provider, the group-commit audit writer, the gRPC server with its
// interceptors, and the plain-HTTP ops listener (health, metrics).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/metrics"
	"github.com/plexsphere/signer/internal/ops"
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
}

// Signer is an assembled signer.
type Signer struct {
	cfg      config.Signer
	log      *slog.Logger
	store    store.Store
	provider keyprovider.Provider
	ident    identity.Source
	writer   *audit.Writer
	keys     *signing.Keyring
	rotation *signing.Rotation
	auto     *signing.AutoRotator // nil without schedules
	metrics  *metrics.Signer
	grpc     *grpc.Server
	health   *health.Server
	owned    []func() error // closed in reverse order
}

// New opens everything cfg names (unless opts supplies it) and bootstraps
// the configured scopes. cfg must have passed Validate.
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

	if s.ident = opts.Identity; s.ident == nil {
		if s.ident, err = identity.Open(ctx, identity.Config{WorkloadAPIAddr: cfg.WorkloadAPIAddr, CertFile: cfg.SVIDCertFile,
			KeyFile: cfg.SVIDKeyFile, BundleFile: cfg.TrustBundleFile, Reload: cfg.IdentityReload}, s.log); err != nil {
			return nil, fmt.Errorf("%s: %w", config.IdentitySettings(&cfg, cfg.WorkloadAPIAddr), err)
		}
		s.owned = append(s.owned, s.ident.Close)
	}
	if s.store = opts.Store; s.store == nil {
		if s.store, err = openStore(ctx, &cfg, s.log); err != nil {
			return nil, err
		}
		s.owned = append(s.owned, s.store.Close)
	}
	if s.provider = opts.Provider; s.provider == nil {
		if s.provider, err = openProvider(&cfg, s.log); err != nil {
			return nil, err
		}
		s.owned = append(s.owned, s.provider.Close)
	}
	s.metrics = metrics.NewSigner(methods(), func(ctx context.Context) ([]store.Key, error) { return s.store.Keys(ctx, "") }, s.ident)
	s.provider = s.metrics.Provider(s.provider)
	s.writer = audit.NewWriter(s.store, audit.WriterOptions{MaxBatch: cfg.AuditMaxBatch, Observe: s.metrics.ObserveBatch})
	s.owned = append(s.owned, func() error { s.writer.Close(); return nil })

	s.keys = signing.NewKeyring(s.store, s.provider, cfg.KeyCacheTTL, clock)
	s.rotation = signing.NewRotation(s.store, s.provider, s.keys,
		signing.Windows{PrePublish: cfg.PrePublish, VerifyOnly: cfg.VerifyOnly}, clock)
	for _, scope := range cfg.BootstrapScopes {
		k, created, err := s.rotation.Bootstrap(ctx, scope, s.writer)
		if err != nil {
			return nil, fmt.Errorf("bootstrap scope %q: %w", scope, err)
		}
		if created {
			s.log.Info("bootstrapped scope", "scope", scope, "key_id", k.ID)
		}
	}

	if len(cfg.AllowSPIFFEIDs) == 0 {
		s.log.Warn("no SPIFFE ID may call SignerService: the allow-list is empty, every Sign is denied",
			"setting", config.Name(&cfg, "AllowSPIFFEIDs"))
	}
	grants, err := cfg.Grants()
	if err != nil {
		return nil, config.Errorf(&cfg, "ScopeGrants", "%v", err)
	}
	autos, err := cfg.AutoRotations()
	if err != nil {
		return nil, config.Errorf(&cfg, "AutoRotate", "%v", err)
	}
	var schedules []signing.Schedule
	for _, a := range autos {
		schedules = append(schedules, signing.Schedule(a))
	}
	if len(schedules) > 0 {
		s.auto = signing.NewAutoRotator(s.rotation, s.writer, schedules, s.log)
	}
	operators := peeridentity.NewAllowList(cfg.RotationAllowSPIFFEIDs...)
	admission := peeridentity.Config{
		Lists: map[string]peeridentity.AllowList{
			signerv1.SignerService_ServiceDesc.ServiceName:   peeridentity.NewAllowList(cfg.AllowSPIFFEIDs...),
			signerv1.RotationService_ServiceDesc.ServiceName: operators,
			signerv1.AuditService_ServiceDesc.ServiceName:    operators,
		},
		Grants:         grants,
		GrantedService: signerv1.SignerService_ServiceDesc.ServiceName,
		Sink:           s.writer,
		Clock:          clock,
		Log:            s.log,
		Observe:        s.metrics.ObserveAdmission,
	}
	// No reflection service is registered: the wire schema is the committed
	// .proto, and a peer cannot enumerate methods.
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(identity.ServerTLS(s.ident))),
		grpc.ChainUnaryInterceptor(
			s.metrics.UnaryInterceptor(),
			peeridentity.UnaryInterceptor(admission),
			signing.AuditInterceptor(s.writer, clock, s.log),
		),
		grpc.ChainStreamInterceptor(peeridentity.StreamInterceptor(admission)),
		grpc.MaxRecvMsgSize(cfg.MaxPayloadBytes+envelope),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Connections end (gracefully: GOAWAY, in-flight calls finish) so that
		// clients re-handshake with their rotated SVIDs and re-resolve the
		// signer's replicas.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: cfg.MaxConnectionAge, MaxConnectionAgeGrace: 30 * time.Second}),
	)
	signerv1.RegisterSignerServiceServer(s.grpc, signing.NewService(s.keys, cfg.MaxPayloadBytes))
	signerv1.RegisterRotationServiceServer(s.grpc, s.rotation)
	signerv1.RegisterAuditServiceServer(s.grpc, signing.NewAuditReader(s.store))

	s.health = health.NewServer()
	s.setServing(false)
	return s, nil
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

// check is the readiness rule: the store and the provider both answer.
func (s *Signer) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := s.provider.Health(ctx); err != nil {
		return fmt.Errorf("provider: %w", err)
	}
	return nil
}

func (s *Signer) watchHealth(ctx context.Context, every time.Duration) {
	var last error = errors.New("unchecked")
	for {
		err := s.check(ctx)
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
	defer s.closeOwned()
	hctx, stopHealth := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.watchHealth(hctx, 5*time.Second) }()
	// A store shared by replicas announces key changes: drop stale cache
	// entries at once instead of waiting out the TTL.
	if w, ok := s.store.(interface {
		WatchKeys(context.Context, func(string))
	}); ok {
		wg.Add(1)
		go func() { defer wg.Done(); w.WatchKeys(hctx, s.keys.Invalidate) }()
	}
	if s.auto != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.auto.Run(hctx, autoRotateEvery) }()
	}
	defer func() { stopHealth(); wg.Wait() }()

	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(lis) }()
	var opsSrv *http.Server
	if opsLis != nil {
		opsSrv = ops.Server(s.health, s.check, s.metrics.Handler())
		go func() { errc <- opsSrv.Serve(opsLis) }()
	}
	s.log.Info("signer serving", "addr", lis.Addr().String(), "store", s.cfg.Store, "provider", s.provider.Name())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
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
	if opsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		opsSrv.Shutdown(sctx)
		cancel()
	}
	s.log.Info("signer stopped")
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

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

// Run listens on the configured addresses and serves until ctx ends.
func Run(ctx context.Context, cfg config.Signer, log *slog.Logger) error {
	s, err := New(ctx, cfg, Options{Log: log})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.closeOwned()
		return config.Errorf(&cfg, "Listen", "%v", err)
	}
	var opsLis net.Listener
	if cfg.OpsListen != "" {
		if opsLis, err = net.Listen("tcp", cfg.OpsListen); err != nil {
			lis.Close()
			s.closeOwned()
			return config.Errorf(&cfg, "OpsListen", "%v", err)
		}
	}
	return s.Serve(ctx, lis, opsLis)
}
