package server

import (
	"context"
	"crypto/ed25519"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/metrics"
	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/store"
)

// maxScopeLabels bounds the scope label of the key-state gauge; further
// scopes are summed under scope="_other".
const maxScopeLabels = 100

// signerMetrics are the signer's Prometheus metrics (docs/operations.md).
type signerMetrics struct {
	*metrics.Registry
	rpcs        *prometheus.CounterVec
	rpcDuration *prometheus.HistogramVec
	admissions  *prometheus.CounterVec
	batchSize   prometheus.Histogram
	commit      prometheus.Histogram
	commitFails prometheus.Counter
	commits     *prometheus.CounterVec
	signLatency *prometheus.HistogramVec
	signErrors  *prometheus.CounterVec
	logBroken   prometheus.Gauge
	logSize     prometheus.Gauge
	// the log's anchor (docs/audit.md)
	logUnanchored   prometheus.Gauge
	witnessedSize   prometheus.Gauge
	anchoredAt      prometheus.Gauge
	witnessRequests *prometheus.CounterVec
	connsRefused    *prometheus.CounterVec
	dependencyUp    *prometheus.GaugeVec
	jwks            *prometheus.CounterVec
	// handshakeFailures counts failed TLS handshakes on the gRPC port by
	// cause (identity.HandshakeCauses, bounded).
	handshakeFailures *prometheus.CounterVec
}

func newSignerMetrics(methods []string, keys func(context.Context) ([]store.Key, error), svid x509svid.Source) *signerMetrics {
	m := &signerMetrics{Registry: metrics.NewRegistry(methods)}
	m.rpcs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_rpcs_total",
		Help: "RPCs by method and gRPC status code."}, []string{"method", "code"})
	m.rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plexsphere_signer_rpc_duration_seconds",
		Help: "RPC latency including the audit commit.", Buckets: metrics.Buckets}, []string{"method"})
	m.admissions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_admissions_total",
		Help: "Admission decisions by service and outcome."}, []string{"service", "outcome"})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "plexsphere_signer_audit_batch_entries",
		Help: "Audit entries per group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	m.commit = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "plexsphere_signer_audit_commit_duration_seconds",
		Help: "Audit group-commit latency.", Buckets: metrics.Buckets})
	m.commitFails = prometheus.NewCounter(prometheus.CounterOpts{Name: "plexsphere_signer_audit_commit_failures_total",
		Help: "Audit commits that failed (their RPCs failed Unavailable)."})
	m.commits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_audit_commits_total",
		Help: "Audit group commits by path: fast (onto the head this replica knew, one round trip), catchup (another replica had appended: caught up with the entries the failed attempt returned and tried again) or locked (under the log's lock, after the attempts kept losing)."}, []string{"path"})
	m.signLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plexsphere_signer_provider_sign_duration_seconds",
		Help: "Key provider signing latency.", Buckets: metrics.Buckets}, []string{"provider"})
	m.signErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_provider_sign_errors_total",
		Help: "Key provider signing failures."}, []string{"provider"})
	m.logBroken = prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_signer_audit_log_broken",
		Help: "1 while the stored audit log does not match its last signed checkpoint (the signer refuses every RPC)."})
	m.logSize = prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_signer_audit_checkpoint_size",
		Help: "Size of the newest signed audit checkpoint."})
	m.logUnanchored = prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_signer_audit_log_unanchored",
		Help: "1 while the audit log has not been checked whole and anchored (witnessed, written to the checkpoint file) for longer than SIGNER_AUDIT_MAX_UNANCHORED (the signer refuses every RPC)."})
	m.witnessedSize = prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_signer_audit_witnessed_size",
		Help: "Size of the newest audit checkpoint the witness policy's quorum cosigned."})
	m.anchoredAt = prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_signer_audit_anchored_timestamp_seconds",
		Help: "When the audit log was last checked whole and anchored (Unix time); time() minus it is the anchor's age."})
	m.witnessRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_witness_requests_total",
		Help: "Checkpoints pushed to witnesses (C2SP tlog-witness) by witness and outcome: cosigned, conflict (it holds a newer checkpoint), fork (it holds another tree), error."}, []string{"witness", "outcome"})
	m.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_connections_refused_total",
		Help: "Connections refused or closed by flood control, by reason."}, []string{"reason"})
	m.dependencyUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "plexsphere_signer_dependency_up",
		Help: "1 while the dependency answered the last health check (every 5 s): store (ping) or provider (health)."}, []string{"dependency"})
	m.jwks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_jwks_requests_total",
		Help: "Requests to the JWKS endpoint by HTTP status code."}, []string{"code"})
	m.handshakeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_tls_handshake_failures_total",
		Help: "Failed TLS handshakes on the gRPC port by reason (wrong_id, unknown_ca, foreign_trust_domain, expired, not_svid, bad_certificate, rejected_by_peer, not_tls, protocol, timeout, closed, other)."}, []string{"reason"})
	m.MustRegister(m.handshakeFailures, m.rpcs, m.rpcDuration, m.admissions, m.batchSize, m.commit, m.commitFails, m.commits, m.signLatency, m.signErrors,
		m.logBroken, m.logSize, m.logUnanchored, m.witnessedSize, m.anchoredAt, m.witnessRequests, m.connsRefused, m.dependencyUp, m.jwks,
		&keyStates{list: keys}, metrics.SVIDExpiry("plexsphere_signer_svid_expiry_timestamp_seconds", svid))
	// Failure counters start at 0 for every label value known up front, so
	// that increase() and rate() see the first failure (a series born at 1
	// has no increase) and the alerts on them fire at once.
	for _, reason := range refusedReasons {
		m.connsRefused.WithLabelValues(reason)
	}
	for _, cause := range identity.HandshakeCauses {
		m.handshakeFailures.WithLabelValues(cause)
	}
	for _, path := range []audit.CommitPath{audit.PathFast, audit.PathCatchUp, audit.PathLocked} {
		m.commits.WithLabelValues(string(path))
	}
	return m
}

// pendingDenials exports the denied calls holding a turn at the denial
// rate (SIGNER_MAX_PENDING_DENIALS bounds them): a flood shows here before
// it shows in refused connections, and a queue that never drains would be
// a leak.
func (m *signerMetrics) pendingDenials(g *guard) {
	m.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plexsphere_signer_denials_pending",
		Help: "Denied calls waiting for their turn at the denial rate, or being audited."},
		func() float64 { return float64(g.pending.Load()) }))
}

// observeRPC is the Auditor's observer: every RPC, denied ones included.
func (m *signerMetrics) observeRPC(method, outcome string, code codes.Code, took time.Duration) {
	name := m.Method(method)
	m.rpcs.WithLabelValues(name, code.String()).Inc()
	m.rpcDuration.WithLabelValues(name).Observe(took.Seconds())
	svc := peeridentity.Service(name)
	if name == "other" {
		svc = "other"
	}
	m.admissions.WithLabelValues(svc, outcome).Inc()
}

// observeBatch is the audit writer's BatchObserver.
func (m *signerMetrics) observeBatch(size int, took time.Duration, path audit.CommitPath, err error) {
	m.batchSize.Observe(float64(size))
	m.commit.Observe(took.Seconds())
	m.commits.WithLabelValues(string(path)).Inc()
	if err != nil {
		m.commitFails.Inc()
	}
}

// observeLog is the audit log's observer.
func (m *signerMetrics) observeLog(st audit.Status) {
	m.logSize.Set(float64(st.Size))
	m.witnessedSize.Set(float64(st.WitnessedSize))
	if !st.AnchoredAt.IsZero() {
		m.anchoredAt.Set(float64(st.AnchoredAt.UnixNano()) / 1e9)
	}
	m.logBroken.Set(b2f(st.Broken != nil))
	m.logUnanchored.Set(b2f(st.Unanchored != nil))
}

// knownWitness starts a witness's counters at 0 for every outcome, so that
// increase() sees its first failure (a series born at 1 has no increase).
func (m *signerMetrics) knownWitness(name string) {
	for _, o := range []string{"cosigned", "conflict", "fork", "error"} {
		m.witnessRequests.WithLabelValues(name, o)
	}
}

// observeWitness counts one push to a witness.
func (m *signerMetrics) observeWitness(name, outcome string) {
	m.witnessRequests.WithLabelValues(name, outcome).Inc()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// observeDependency records a health check of the store or the provider.
func (m *signerMetrics) observeDependency(name string, err error) {
	v := 0.0
	if err == nil {
		v = 1
	}
	m.dependencyUp.WithLabelValues(name).Set(v)
}

// observeJWKS counts a JWKS answer; codes are the handler's few.
func (m *signerMetrics) observeJWKS(code int) { m.jwks.WithLabelValues(strconv.Itoa(code)).Inc() }

// timed wraps p so every signature is timed and every failure counted.
func (m *signerMetrics) timed(p keyprovider.Provider) keyprovider.Provider {
	m.signErrors.WithLabelValues(p.Name())
	return &timedProvider{p, m}
}

type timedProvider struct {
	keyprovider.Provider
	m *signerMetrics
}

func (t *timedProvider) Load(ctx context.Context, ref keyprovider.KeyRef, handle []byte) (keyprovider.Key, error) {
	k, err := t.Provider.Load(ctx, ref, handle)
	if err != nil {
		return nil, err
	}
	return &timedKey{k, t}, nil
}

type timedKey struct {
	keyprovider.Key
	p *timedProvider
}

func (k *timedKey) SignContext(ctx context.Context, msg []byte) ([]byte, error) {
	start := time.Now()
	sig, err := k.Key.SignContext(ctx, msg)
	k.observe(start, err)
	return sig, err
}

// SignOptions is timed like SignContext; each goes to the wrapped key's own
// method, so a provider's two paths stay distinct.
func (k *timedKey) SignOptions(ctx context.Context, msg []byte, opts *ed25519.Options) ([]byte, error) {
	start := time.Now()
	sig, err := k.Key.SignOptions(ctx, msg, opts)
	k.observe(start, err)
	return sig, err
}

func (k *timedKey) observe(start time.Time, err error) {
	k.p.m.signLatency.WithLabelValues(k.p.Name()).Observe(time.Since(start).Seconds())
	if err != nil {
		k.p.m.signErrors.WithLabelValues(k.p.Name()).Inc()
	}
}

// keyStates reports keys per scope and state at scrape time, from a
// snapshot at most 15 s old.
type keyStates struct {
	list  func(context.Context) ([]store.Key, error)
	mu    sync.Mutex
	at    time.Time
	last  map[[2]string]float64
	since map[[2]string]float64
}

var keysDesc = prometheus.NewDesc("plexsphere_signer_keys", "Keys by scope and lifecycle state (scopes beyond the first 100 summed under _other).", []string{"scope", "state"}, nil)

// sinceDesc lets alerts see a rotation that is overdue (an ACTIVE key older
// than the rotation period) or stuck (a PENDING key never committed).
var sinceDesc = prometheus.NewDesc("plexsphere_signer_key_state_since_timestamp_seconds",
	"Unix time the oldest key of the scope entered its state (PENDING: created, ACTIVE: activated, PREVIOUS: deactivated); RETIRED keys are not reported.",
	[]string{"scope", "state"}, nil)

func (k *keyStates) Describe(ch chan<- *prometheus.Desc) { ch <- keysDesc; ch <- sinceDesc }

func (k *keyStates) Collect(ch chan<- prometheus.Metric) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.at) > 15*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		keys, err := k.list(ctx)
		cancel()
		if err == nil {
			k.last, k.since, k.at = fold(keys), foldSince(keys), time.Now()
		}
	}
	for l, v := range k.last {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, v, l[0], l[1])
	}
	for l, v := range k.since {
		ch <- prometheus.MustNewConstMetric(sinceDesc, prometheus.GaugeValue, v, l[0], l[1])
	}
}

// foldSince is the oldest state-entry time per scope label and state.
func foldSince(keys []store.Key) map[[2]string]float64 {
	scope := scopeLabels(keys)
	out := map[[2]string]float64{}
	for _, k := range keys {
		var at time.Time
		switch k.State {
		case store.Pending:
			at = k.CreatedAt
		case store.Active:
			at = k.ActivatedAt
			if at.IsZero() { // a bootstrapped key was never PENDING
				at = k.CreatedAt
			}
		case store.Previous:
			at = k.DeactivatedAt
		default:
			continue
		}
		if at.IsZero() {
			continue
		}
		l := [2]string{scope(k.Scope), k.State.String()}
		if v, ok := out[l]; !ok || float64(at.Unix()) < v {
			out[l] = float64(at.Unix())
		}
	}
	return out
}

// scopeLabels maps a scope to its label: itself for the first
// maxScopeLabels scopes in name order, "_other" beyond.
func scopeLabels(keys []store.Key) func(string) string {
	scopes := map[string]bool{}
	for _, k := range keys {
		scopes[k.Scope] = true
	}
	names := make([]string, 0, len(scopes))
	for s := range scopes {
		names = append(names, s)
	}
	sort.Strings(names)
	keep := map[string]bool{}
	for i, s := range names {
		keep[s] = i < maxScopeLabels
	}
	return func(s string) string {
		if keep[s] {
			return s
		}
		return "_other"
	}
}

func fold(keys []store.Key) map[[2]string]float64 {
	scope := scopeLabels(keys)
	out := map[[2]string]float64{}
	for _, k := range keys {
		out[[2]string{scope(k.Scope), k.State.String()}]++
	}
	return out
}
