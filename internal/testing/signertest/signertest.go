// Package signertest starts a real signer for tests: a throwaway SPIFFE PKI
// written to files, a bbolt store in a temp dir (or a given store), the local
// provider, and the full gRPC server with mTLS on a loopback port. Nothing is
// mocked; tests talk to it over real sockets.
package signertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/witnesstest"
)

// Trust domain and identities of the test PKI.
const (
	TrustDomain = "example.org"
	SignerID    = "spiffe://example.org/ns/plexsphere/sa/plexsphere-signer"
	CoreID      = "spiffe://example.org/ns/plexsphere/sa/plexsphere-core"
	OperatorID  = "spiffe://example.org/ns/plexsphere/sa/signer-operator"
	AuditorID   = "spiffe://example.org/ns/security/sa/auditor"
	Scope       = "payments"
)

// Clock is a settable clock shared by the signer and the test.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Env is a running signer.
type Env struct {
	CA       *devpki.CA
	Dir      string
	Addr     string
	Config   config.Signer
	Store    store.Store
	Provider keyprovider.Provider
	Clock    *Clock
	Metrics  http.Handler // the signer's /metrics
	OpsAddr  string       // the ops listener, with WithOps
	// JWKSURL is the JWKS endpoint's base URL (https://127.0.0.1:port),
	// with WithJWKS; it is also the configured issuer URL. JWKSRoots
	// trusts its certificate.
	JWKSURL   string
	JWKSRoots *x509.CertPool
	// CheckpointKey is the audit log's verifier key, as an operator pins it.
	CheckpointKey string
	// Log is the signer's audit log (tests force checks and sweeps).
	Log *audit.Log
	// Bolt is the bbolt handle under Store when Start opened the store
	// (nil for a given store): tests edit the file as its writer could.
	Bolt *bolt.DB
	// Witnesses cosign the log's checkpoints, with WithWitnesses;
	// WitnessPolicy is their policy (all of them).
	Witnesses     []*witnesstest.Witness
	WitnessPolicy *auditlog.WitnessPolicy

	t        testing.TB
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

// Option adjusts the signer before it starts.
type Option func(*options)

type options struct {
	cfg      func(*config.Signer)
	store    store.Store
	provider keyprovider.Provider
	clock    *Clock
	ca       *devpki.CA
	lis      net.Listener
	identity identity.Source
	log      *slog.Logger
	ops      bool
	jwks     bool
	noMerkle bool
	base     *config.Signer
	bolt     *bolt.DB

	checkpointLog string
	// witnesses to start (names), or already running (from Restart)
	witnessNames []string
	witnesses    []*witnesstest.Witness
}

// WithWitnesses runs real C2SP witnesses (witnesstest: omniwitness) named
// names, configured with the log before the signer starts (its checkpoint
// key is created first), and has the signer's checkpoints cosigned by all
// of them (SIGNER_WITNESS_POLICY_FILE).
func WithWitnesses(names ...string) Option { return func(o *options) { o.witnessNames = names } }

// WithJWKS starts the JWKS endpoint on a loopback port, with a server
// certificate for 127.0.0.1 (Env.JWKSRoots) and the issuer URL set.
func WithJWKS() Option { return func(o *options) { o.jwks = true } }

// WithOps starts the ops listener (health, metrics) on a loopback port.
func WithOps() Option { return func(o *options) { o.ops = true } }

// WithLogger sends the signer's log to l instead of the test log.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIdentity serves with src (a SPIRE Workload API source, say) instead
// of the SVID files of the test PKI.
func WithIdentity(src identity.Source) Option { return func(o *options) { o.identity = src } }

// WithListener serves on l (so a test can hand out the address before the
// signer starts).
func WithListener(l net.Listener) Option { return func(o *options) { o.lis = l } }

// WithConfig edits the configuration (allow-lists, limits, windows).
func WithConfig(f func(*config.Signer)) Option { return func(o *options) { o.cfg = f } }

// WithCheckpointLog anchors the log in path (SIGNER_CHECKPOINT_LOG)
// instead of a file in the signer's own temp dir: a directory (t.TempDir())
// shared by replicas of one store, or by a signer and its restart.
func WithCheckpointLog(path string) Option {
	return func(o *options) { o.checkpointLog = path }
}

// WithStore serves from s instead of a fresh bbolt file.
func WithStore(s store.Store) Option { return func(o *options) { o.store = s } }

// WithProvider signs with p instead of a fresh local provider.
func WithProvider(p keyprovider.Provider) Option { return func(o *options) { o.provider = p } }

// WithClock uses c as the signer's clock.
func WithClock(c *Clock) Option { return func(o *options) { o.clock = c } }

// WithCA issues the signer's SVID from ca (to share a PKI between signers).
func WithCA(ca *devpki.CA) Option { return func(o *options) { o.ca = ca } }

// NewCA makes a CA for the test trust domain.
func NewCA(t testing.TB) *devpki.CA {
	ca, err := devpki.NewCA(TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Start runs a signer until the test ends. By default CoreID may sign,
// OperatorID may rotate, and Scope is bootstrapped.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	o := options{}
	for _, f := range opts {
		f(&o)
	}
	if o.ca == nil {
		o.ca = NewCA(t)
	}
	if o.clock == nil {
		o.clock = NewClock(time.Now())
	}
	dir := t.TempDir()
	svid, err := o.ca.Issue(SignerID)
	if err != nil {
		t.Fatal(err)
	}
	files, err := o.ca.WriteFiles(dir, "signer", svid)
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(dir, "kek")
	os.WriteFile(kekFile, []byte(fmtHex(kek)), 0o600)

	cfg := Config(dir, files)
	cfg.LocalKEKFile, cfg.AuditorAllowSPIFFEIDs, cfg.BootstrapScopes = kekFile, []string{AuditorID}, []string{Scope}
	if o.base != nil {
		cfg = *o.base
	}
	if o.checkpointLog != "" {
		cfg.CheckpointLog = o.checkpointLog
	}
	var jwksLis net.Listener
	var jwksRoots *x509.CertPool
	if o.jwks {
		if jwksLis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		var certFile, keyFile string
		jwksRoots, certFile, keyFile = serverCert(t, dir)
		cfg.JWKSListen, cfg.JWKSCertFile, cfg.JWKSKeyFile = jwksLis.Addr().String(), certFile, keyFile
		cfg.JWKSIssuerURL, cfg.JWKSRate = "https://"+jwksLis.Addr().String(), 1000
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("signertest config: %v", err)
	}
	env := &Env{CA: o.ca, Dir: dir, Config: cfg, Clock: o.clock, t: t, done: make(chan error, 1)}
	if jwksLis != nil {
		env.JWKSURL, env.JWKSRoots = "https://"+jwksLis.Addr().String(), jwksRoots
	}
	if o.store == nil {
		db, err := bolt.Open(cfg.BboltPath, 0o600, bbolt.Options())
		if err != nil {
			t.Fatal(err)
		}
		s, err := bbolt.FromDB(db)
		if err != nil {
			t.Fatal(err)
		}
		o.store, o.bolt = s, db
		t.Cleanup(func() { s.Close() })
	}
	env.Bolt = o.bolt
	if o.provider == nil {
		p, err := local.New(kek)
		if err != nil {
			t.Fatal(err)
		}
		o.provider = p
	}
	env.Store, env.Provider = o.store, o.provider
	if len(o.witnessNames) > 0 {
		o.witnesses = startWitnesses(t, o.store, o.provider, &cfg, dir, o.witnessNames)
		env.Config = cfg
	}
	if len(o.witnesses) > 0 {
		p, err := os.ReadFile(cfg.WitnessPolicyFile)
		if err != nil {
			t.Fatal(err)
		}
		if env.WitnessPolicy, err = auditlog.ParseWitnessPolicy(p); err != nil {
			t.Fatal(err)
		}
		env.Witnesses = o.witnesses
	}
	ctx, cancel := context.WithCancel(context.Background())
	env.cancel = cancel
	if o.log == nil {
		o.log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	sopts := server.Options{Log: o.log, Clock: o.clock.Now, Store: o.store, Provider: o.provider, Identity: o.identity}
	if o.noMerkle {
		sopts = withoutMerkle(sopts)
	}
	srv, err := server.New(ctx, cfg, sopts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	env.Metrics = srv.Metrics()
	env.CheckpointKey, env.Log = srv.CheckpointVerifierKey(), srv.AuditLog()
	lis := o.lis
	if lis == nil {
		if lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			t.Fatal(err)
		}
	}
	env.Addr = lis.Addr().String()
	var opsLis net.Listener
	if o.ops {
		if opsLis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		env.OpsAddr = opsLis.Addr().String()
	}
	if jwksLis != nil {
		if err := srv.ListenJWKS(jwksLis); err != nil {
			t.Fatal(err)
		}
	}
	go func() { env.done <- srv.Serve(ctx, lis, opsLis) }()
	t.Cleanup(env.Stop)
	return env
}

// startWitnesses creates the checkpoint key (as the signer's first start
// would), starts a witness per name that knows the log, and writes their
// policy (all of them) into cfg.
func startWitnesses(t testing.TB, st store.Store, p keyprovider.Provider, cfg *config.Signer, dir string, names []string) []*witnesstest.Witness {
	t.Helper()
	_, rec, err := server.LogKey(context.Background(), st, p, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	origin := cfg.AuditOrigin
	if origin == "" {
		origin = TrustDomain + "/plexsphere-signer"
	}
	vkey, err := note.NewEd25519VerifierKey(origin, rec.Public)
	if err != nil {
		t.Fatal(err)
	}
	var ws []*witnesstest.Witness
	var policy strings.Builder
	for _, name := range names {
		w := witnesstest.Start(t, name, witnesstest.Log{Origin: origin, VKey: vkey})
		ws = append(ws, w)
		policy.WriteString(w.PolicyLine() + "\n")
	}
	fmt.Fprintf(&policy, "group every-witness all %s\nquorum every-witness\n", strings.Join(names, " "))
	cfg.WitnessPolicyFile = filepath.Join(dir, "witnesses.policy")
	if err := os.WriteFile(cfg.WitnessPolicyFile, []byte(policy.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return ws
}

// Restart stops the signer and starts another with the same store,
// provider, PKI, configuration (checkpoint file, witness policy) and
// witnesses, then opts: a restart with nothing in memory.
func (e *Env) Restart(t testing.TB, opts ...Option) *Env {
	t.Helper()
	e.Stop()
	cfg := e.Config
	base := []Option{WithStore(e.Store), WithProvider(e.Provider), WithCA(e.CA), WithClock(e.Clock),
		func(o *options) { o.base, o.witnesses, o.bolt, o.ops = &cfg, e.Witnesses, e.Bolt, e.OpsAddr != "" }}
	return Start(t, append(base, opts...)...)
}

// Config is the settings of a test signer in dir with the SVID files f: a
// bbolt store and a checkpoint file in dir, the local provider (its KEK
// not set), CoreID and OperatorID on their lists, and every setting a
// production signer must have.
func Config(dir string, f devpki.Files) config.Signer {
	return config.Signer{
		Listen: "127.0.0.1:0", AllowSPIFFEIDs: []string{CoreID}, RotationAllowSPIFFEIDs: []string{OperatorID},
		Identity: config.Identity{SVIDCertFile: f.Cert, SVIDKeyFile: f.Key, TrustBundleFile: f.Bundle},
		Store:    "bbolt", BboltPath: filepath.Join(dir, "signer.db"), PostgresMaxConns: 4, AuditMaxBatch: 256,
		Provider: "local", PKCS11Sessions: 1, MaxPayloadBytes: 64 << 10, KeyCacheTTL: time.Second,
		PrePublish: time.Minute, VerifyOnly: time.Hour, ShutdownTimeout: 5 * time.Second, LogLevel: "info",
		MaxConnectionAge: 10 * time.Minute, CheckpointInterval: 10 * time.Second,
		MaxConnections: 4096, ConnectionRate: 1000, MaxConcurrentStreams: 256, DenialRate: 1000, DenialsPerConnection: 1000,
		MaxConnectionsPerSource: 4096, ConnectionTimeout: 5 * time.Second, MaxPendingDenials: 5000, DenialMaxWait: 5 * time.Second,
		DeniedConnectionRate: 1000,
		// Anchored by a checkpoint file, as production requires; tests add
		// witnesses (witnesstest) where they are the subject.
		CheckpointLog: filepath.Join(dir, "checkpoints.jsonl"), AuditAnchorRequired: true, AuditMaxUnanchored: time.Minute,
		WitnessTimeout: 5 * time.Second, AuditEpoch: 1,
	}
}

// Stop shuts the signer down gracefully and waits (idempotent).
func (e *Env) Stop() {
	e.stopOnce.Do(func() {
		e.cancel()
		if err := <-e.done; err != nil {
			e.t.Errorf("signer: %v", err)
		}
	})
}

// serverCert writes a self-signed server certificate for 127.0.0.1 and
// localhost into dir.
func serverCert(t testing.TB, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "jwks.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "jwks.crt"), filepath.Join(dir, "jwks.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return roots, certFile, keyFile
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func fmtHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// Issue mints an SVID for id from the signer's CA.
func (e *Env) Issue(t testing.TB, id string, opts ...devpki.Option) *devpki.SVID {
	t.Helper()
	s, err := e.CA.Issue(id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// StaticSource serves one SVID (possibly expired or foreign, on purpose) and
// the bundle of ca.
type StaticSource struct {
	SVID   *x509svid.SVID
	Bundle *x509bundle.Bundle
}

func (s StaticSource) GetX509SVID() (*x509svid.SVID, error) { return s.SVID, nil }
func (s StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.Bundle.GetX509BundleForTrustDomain(td)
}
func (s StaticSource) Close() error { return nil }

// Source returns a static identity source for svid (nil: no certificate)
// trusting the signer's CA.
func (e *Env) Source(svid *devpki.SVID) StaticSource {
	src := StaticSource{Bundle: x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(TrustDomain), []*x509.Certificate{e.CA.Cert})}
	if svid != nil {
		src.SVID = &x509svid.SVID{ID: spiffeid.RequireFromString(svid.ID), Certificates: []*x509.Certificate{svid.Cert}, PrivateKey: svid.Key}
	}
	return src
}

// ClientTLS is a TLS config presenting svid (none if nil) and accepting only
// the signer's SPIFFE ID.
func (e *Env) ClientTLS(svid *devpki.SVID) *tls.Config {
	src := e.Source(svid)
	authorize := tlsconfig.AuthorizeID(spiffeid.RequireFromString(SignerID))
	var c *tls.Config
	if svid == nil {
		c = tlsconfig.TLSClientConfig(src, authorize)
	} else {
		c = tlsconfig.MTLSClientConfig(src, src, authorize)
	}
	return c
}

// Dial connects to the signer over mTLS as svid (nil: no client
// certificate).
func (e *Env) Dial(t testing.TB, svid *devpki.SVID) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(e.ClientTLS(svid))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Audit returns every committed audit entry.
func (e *Env) Audit(t testing.TB) []auditlog.Entry {
	t.Helper()
	entries, err := store.ListAudit(context.Background(), e.Store, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// AuditAfter returns entries committed after seq.
func (e *Env) AuditAfter(t testing.TB, seq uint64) []auditlog.Entry {
	t.Helper()
	entries, err := store.ListAudit(context.Background(), e.Store, store.AuditQuery{AfterSeq: seq})
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// LastSeq is the seq of the newest entry (0 if none).
func (e *Env) LastSeq(t testing.TB) uint64 {
	all := e.Audit(t)
	if len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Seq
}

// OpenBolt opens a fresh bbolt store closed when the test ends.
func OpenBolt(t testing.TB) *bbolt.Store {
	s, _ := OpenBoltDB(t)
	return s
}

// OpenBoltDB is OpenBolt that also hands out the bbolt handle under the
// store, so a test can edit the file as anyone who can write it could.
func OpenBoltDB(t testing.TB) (*bbolt.Store, *bolt.DB) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "signer.db"), 0o600, bbolt.Options())
	if err != nil {
		t.Fatal(err)
	}
	s, err := bbolt.FromDB(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, db
}

// NewLocalProvider returns a local provider with a random KEK.
func NewLocalProvider(t testing.TB) *local.Provider {
	kek := make([]byte, 32)
	rand.Read(kek)
	p, err := local.New(kek)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
