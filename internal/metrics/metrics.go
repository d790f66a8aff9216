// Package metrics holds the Prometheus metrics of the signer and the sidecar.
// Labels take only bounded values: gRPC method names from a fixed list
// (anything else is "other"), status code names, admission outcomes,
// provider names, key states, and at most MaxScopeLabels scopes. Never a
// payload, a peer's free-form input or key material.
package metrics

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/internal/keyprovider"

	"github.com/plexsphere/signer/internal/store"
)

// MaxScopeLabels bounds the scope label of the key-state gauge; further
// scopes are summed under scope="_other".
const MaxScopeLabels = 100

// latency buckets from 50 µs to ~1.6 s.
var buckets = prometheus.ExponentialBuckets(50e-6, 2, 16)

// Registry is one binary's metrics.
type Registry struct {
	reg     *prometheus.Registry
	methods map[string]bool
}

func newRegistry(methods []string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), methods: map[string]bool{}}
	for _, m := range methods {
		r.methods[m] = true
	}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Handler serves /metrics.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{})
}

// method bounds a method label to the known set.
func (r *Registry) method(m string) string {
	if r.methods[m] {
		return m
	}
	return "other"
}

// Signer are the signer's metrics.
type Signer struct {
	*Registry
	rpcs        *prometheus.CounterVec
	rpcDuration *prometheus.HistogramVec
	batchSize   prometheus.Histogram
	commit      prometheus.Histogram
	commitFails prometheus.Counter
	signLatency *prometheus.HistogramVec
	signErrors  *prometheus.CounterVec
	admissions  *prometheus.CounterVec
}

// NewSigner registers the signer's metrics. keys lists keys for the
// key-state gauge; svid returns the current SVID for its expiry.
func NewSigner(methods []string, keys func(context.Context) ([]store.Key, error), svid x509svid.Source) *Signer {
	s := &Signer{Registry: newRegistry(methods)}
	s.rpcs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_rpcs_total",
		Help: "RPCs by method and gRPC status code."}, []string{"method", "code"})
	s.rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plexsphere_signer_rpc_duration_seconds",
		Help: "RPC latency including the audit commit.", Buckets: buckets}, []string{"method"})
	s.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "plexsphere_signer_audit_batch_entries",
		Help: "Audit entries per group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	s.commit = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "plexsphere_signer_audit_commit_duration_seconds",
		Help: "Audit group-commit latency.", Buckets: buckets})
	s.commitFails = prometheus.NewCounter(prometheus.CounterOpts{Name: "plexsphere_signer_audit_commit_failures_total",
		Help: "Audit commits that failed (their RPCs failed Unavailable)."})
	s.signLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plexsphere_signer_provider_sign_duration_seconds",
		Help: "Key provider signing latency.", Buckets: buckets}, []string{"provider"})
	s.signErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_provider_sign_errors_total",
		Help: "Key provider signing failures."}, []string{"provider"})
	s.admissions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_signer_admissions_total",
		Help: "Admission decisions by service and outcome."}, []string{"service", "outcome"})
	s.reg.MustRegister(s.rpcs, s.rpcDuration, s.batchSize, s.commit, s.commitFails, s.signLatency, s.signErrors, s.admissions,
		&keyStates{list: keys}, &svidExpiry{name: "plexsphere_signer_svid_expiry_timestamp_seconds", src: svid})
	return s
}

// UnaryInterceptor counts and times every RPC; install it first so denied
// calls are counted too.
func (s *Signer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		m := s.method(info.FullMethod)
		s.rpcs.WithLabelValues(m, status.Code(err).String()).Inc()
		s.rpcDuration.WithLabelValues(m).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// ObserveBatch is the audit writer's BatchObserver.
func (s *Signer) ObserveBatch(size int, took time.Duration, err error) {
	s.batchSize.Observe(float64(size))
	s.commit.Observe(took.Seconds())
	if err != nil {
		s.commitFails.Inc()
	}
}

// ObserveAdmission is the peeridentity observer.
func (s *Signer) ObserveAdmission(service, outcome string) {
	s.admissions.WithLabelValues(service, outcome).Inc()
}

// ObserveSign records one provider signature.
func (s *Signer) ObserveSign(provider string, took time.Duration, err error) {
	s.signLatency.WithLabelValues(provider).Observe(took.Seconds())
	if err != nil {
		s.signErrors.WithLabelValues(provider).Inc()
	}
}

// keyStates reports keys per scope and state at scrape time, from a
// snapshot at most 15 s old.
type keyStates struct {
	list func(context.Context) ([]store.Key, error)
	mu   sync.Mutex
	at   time.Time
	last map[[2]string]float64
}

var keysDesc = prometheus.NewDesc("plexsphere_signer_keys", "Keys by scope and lifecycle state (scopes beyond the first 100 summed under _other).", []string{"scope", "state"}, nil)

func (k *keyStates) Describe(ch chan<- *prometheus.Desc) { ch <- keysDesc }

func (k *keyStates) Collect(ch chan<- prometheus.Metric) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.at) > 15*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		keys, err := k.list(ctx)
		cancel()
		if err == nil {
			k.last, k.at = fold(keys), time.Now()
		}
	}
	for l, v := range k.last {
		ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, v, l[0], l[1])
	}
}

func fold(keys []store.Key) map[[2]string]float64 {
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
		keep[s] = i < MaxScopeLabels
	}
	out := map[[2]string]float64{}
	for _, k := range keys {
		scope := k.Scope
		if !keep[scope] {
			scope = "_other"
		}
		out[[2]string{scope, k.State.String()}]++
	}
	return out
}

// svidExpiry reports the current SVID's NotAfter.
type svidExpiry struct {
	name string
	src  x509svid.Source
}

func (e *svidExpiry) desc() *prometheus.Desc {
	return prometheus.NewDesc(e.name, "NotAfter of the current X.509-SVID, as a Unix time.", nil, nil)
}

func (e *svidExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- e.desc() }

func (e *svidExpiry) Collect(ch chan<- prometheus.Metric) {
	if e.src == nil {
		return
	}
	svid, err := e.src.GetX509SVID()
	if err != nil || svid == nil || len(svid.Certificates) == 0 {
		return
	}
	ch <- prometheus.MustNewConstMetric(e.desc(), prometheus.GaugeValue, float64(svid.Certificates[0].NotAfter.Unix()))
}

// Sidecar are the sidecar's metrics.
type Sidecar struct {
	*Registry
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewSidecar registers the sidecar's metrics; ready reports the upstream.
func NewSidecar(methods []string, ready func() bool, svid x509svid.Source) *Sidecar {
	s := &Sidecar{Registry: newRegistry(methods)}
	s.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_sidecar_calls_total",
		Help: "Calls from the core by method and gRPC status code (refused methods are method=\"other\")."}, []string{"method", "code"})
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plexsphere_sidecar_call_duration_seconds",
		Help: "Call latency through the sidecar, upstream included.", Buckets: buckets}, []string{"method"})
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plexsphere_sidecar_upstream_ready",
		Help: "1 while the mTLS connection to the signer is up."}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	})
	s.reg.MustRegister(s.calls, s.duration, up, &svidExpiry{name: "plexsphere_sidecar_svid_expiry_timestamp_seconds", src: svid})
	return s
}

// ObserveCall is the sidecar's call observer.
func (s *Sidecar) ObserveCall(method string, code codes.Code, took time.Duration) {
	m := s.method(method)
	s.calls.WithLabelValues(m, code.String()).Inc()
	s.duration.WithLabelValues(m).Observe(took.Seconds())
}

// Provider wraps p so every signature is timed and every failure counted.
func (s *Signer) Provider(p keyprovider.Provider) keyprovider.Provider { return &timedProvider{p, s} }

type timedProvider struct {
	keyprovider.Provider
	m *Signer
}

func (t *timedProvider) Load(ctx context.Context, id string, handle []byte) (keyprovider.Key, error) {
	k, err := t.Provider.Load(ctx, id, handle)
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
	k.p.m.ObserveSign(k.p.Name(), time.Since(start), err)
	return sig, err
}
