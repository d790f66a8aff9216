// Package metrics holds what the signer's and the sidecar's Prometheus
// metrics share (a registry with bounded method labels, the SVID expiry
// gauge) and the sidecar's metrics. The signer's own metrics live with the
// signer (internal/server), so the sidecar links no server-side code.
// Labels take only bounded values: gRPC method names from a fixed list
// (anything else is "other"), status code names, outcomes. Never a
// payload, a peer's free-form input or key material.
package metrics

import (
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/plexsphere/signer/internal/version"
)

// latency buckets from 50 µs to ~1.6 s.
var buckets = prometheus.ExponentialBuckets(50e-6, 2, 16)

// Registry is one binary's metrics.
type Registry struct {
	reg     *prometheus.Registry
	methods map[string]bool
}

// NewRegistry returns a registry with the Go and process collectors, whose
// method labels are bounded to methods.
func NewRegistry(methods []string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), methods: map[string]bool{}}
	for _, m := range methods {
		r.methods[m] = true
	}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	return r
}

// buildInfo is the plexsphere_build_info gauge (always 1): which build
// answers, joinable to any other series by instance; fips is off, on or
// only and fips_module the Go Cryptographic Module (version.Info).
func buildInfo() prometheus.Collector {
	v := version.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "plexsphere_build_info",
		Help: "Always 1; the labels say which build of the binary is running.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "goversion": v.GoVersion,
			"fips": v.FIPS, "fips_module": v.FIPSModule}})
	g.Set(1)
	return g
}

// Handler serves /metrics.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{})
}

// MustRegister registers collectors.
func (r *Registry) MustRegister(cs ...prometheus.Collector) { r.reg.MustRegister(cs...) }

// Buckets are the latency buckets every histogram uses: 50 µs to ~1.6 s.
var Buckets = buckets

// Method bounds a method label to the known set ("other" otherwise).
func (r *Registry) Method(m string) string { return r.method(m) }

// method bounds a method label to the known set.
func (r *Registry) method(m string) string {
	if r.methods[m] {
		return m
	}
	return "other"
}

// SVIDExpiry reports the current SVID's NotAfter under name.
func SVIDExpiry(name string, src x509svid.Source) prometheus.Collector {
	return &svidExpiry{name: name, src: src}
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
	refused  *prometheus.CounterVec
	// series holds each method's children of calls and duration once
	// used: looking them up by label values hashed the labels on every
	// call, a few per cent of the sidecar's CPU. Built for every name
	// method returns, read-only after NewSidecar.
	series map[string]*callSeries
}

// callSeries are one method's series, each made on first use (so /metrics
// shows only what happened, as the vectors alone did).
type callSeries struct {
	duration atomic.Pointer[prometheus.Observer]
	codes    [maxCode + 1]atomic.Pointer[prometheus.Counter]
}

// maxCode is the highest gRPC status code (Unauthenticated); a higher one
// goes through the vector.
const maxCode = codes.Unauthenticated

// SidecarRefusals are the reasons the sidecar refuses or closes a core
// connection (the label's whole set, so every series exists from the start).
var SidecarRefusals = []string{"uid", "no_peer_cred", "max_connections", "preface", "protocol", "slow_reader"}

// NewSidecar registers the sidecar's metrics; ready reports the upstream.
func NewSidecar(methods []string, ready func() bool, svid x509svid.Source) *Sidecar {
	s := &Sidecar{Registry: NewRegistry(methods), series: map[string]*callSeries{"other": {}}}
	for _, m := range methods {
		s.series[m] = &callSeries{}
	}
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
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plexsphere_sidecar_connections_refused_total",
		Help: "Core connections the sidecar refused or closed, by reason."}, []string{"reason"})
	for _, r := range SidecarRefusals {
		s.refused.WithLabelValues(r)
	}
	s.reg.MustRegister(s.calls, s.duration, s.refused, up, &svidExpiry{name: "plexsphere_sidecar_svid_expiry_timestamp_seconds", src: svid})
	return s
}

// ObserveRefused counts a refused or closed core connection.
func (s *Sidecar) ObserveRefused(reason string) {
	if !slices.Contains(SidecarRefusals, reason) {
		reason = "protocol"
	}
	s.refused.WithLabelValues(reason).Inc()
}

// ObserveCall is the sidecar's call observer.
func (s *Sidecar) ObserveCall(method string, code codes.Code, took time.Duration) {
	m := s.method(method)
	cs := s.series[m]
	if code > maxCode {
		s.calls.WithLabelValues(m, code.String()).Inc()
	} else {
		child(&cs.codes[code], func() prometheus.Counter { return s.calls.WithLabelValues(m, code.String()) }).Inc()
	}
	child(&cs.duration, func() prometheus.Observer { return s.duration.WithLabelValues(m) }).Observe(took.Seconds())
}

// child returns the series p holds, made by mk on first use; racing first
// uses get the same child from the vector.
func child[T any](p *atomic.Pointer[T], mk func() T) T {
	if c := p.Load(); c != nil {
		return *c
	}
	c := mk()
	p.Store(&c)
	return c
}
