// Package ops is the plain-HTTP operations listener shared by the signer and
// the sidecar: gRPC health (over h2c, for Kubernetes grpc probes), /healthz,
// /readyz and /metrics. It never serves the signing API.
package ops

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Timeouts bound what one client can hold on the ops listener.
type Timeouts struct {
	ReadHeader time.Duration // request line and headers
	Read       time.Duration // a whole request, body included
	Write      time.Duration // writing a response
	Idle       time.Duration // a keep-alive connection between requests
}

// DefaultTimeouts are generous for probes and scrapes and short for a
// client that trickles bytes or parks connections.
var DefaultTimeouts = Timeouts{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 30 * time.Second, Idle: 60 * time.Second}

// maxStreams bounds concurrent HTTP/2 streams (gRPC health calls) per
// connection.
const maxStreams = 16

// Server returns the ops HTTP server with DefaultTimeouts. ready decides
// /readyz; metrics, if not nil, serves /metrics.
func Server(hs *health.Server, ready func(context.Context) error, metrics http.Handler) *http.Server {
	return ServerWith(hs, ready, metrics, DefaultTimeouts)
}

// ServerWith is Server with explicit timeouts.
func ServerWith(hs *health.Server, ready func(context.Context) error, metrics http.Handler, t Timeouts) *http.Server {
	return httpServer(Handler(hs, ready, metrics), t)
}

// Handler serves gRPC health (h2c), /healthz, /readyz and, if metrics is
// not nil, /metrics. A gRPC health Watch is a long-lived stream: its own
// read and write deadlines are lifted (the connection's idle timeout and
// the stream cap still apply).
func Handler(hs *health.Server, ready func(context.Context) error, metrics http.Handler) http.Handler {
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			http.Error(w, "not ready\n", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			if r.URL.Path == "/grpc.health.v1.Health/Watch" {
				rc := http.NewResponseController(w)
				rc.SetReadDeadline(time.Time{})
				rc.SetWriteDeadline(time.Time{})
			}
			g.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func httpServer(h http.Handler, t Timeouts) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    16 << 10,
		Protocols:         new(http.Protocols),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// Endpoint is an ops listener that serves from the first moment of
// start-up: while the binary waits (for its SVID, its store) /healthz
// answers ok, so a liveness probe does not restart a pod that is only
// waiting, and /readyz, gRPC health and /metrics answer 503 / NOT_SERVING.
// Serve then hands the same listener to the binary's real handler.
type Endpoint struct {
	srv *http.Server
	h   atomic.Pointer[http.Handler]
	err chan error
}

// StartEndpoint serves the start-up answers on l until Serve.
func StartEndpoint(l net.Listener) *Endpoint {
	hs := health.NewServer()
	SetAll(hs, false)
	starting := Handler(hs, func(context.Context) error { return errStarting },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "starting\n", http.StatusServiceUnavailable)
		}))
	e := &Endpoint{err: make(chan error, 1)}
	e.h.Store(&starting)
	e.srv = httpServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*e.h.Load()).ServeHTTP(w, r) }), DefaultTimeouts)
	go func() { e.err <- e.srv.Serve(l) }()
	return e
}

var errStarting = errors.New("starting")

// Serve switches the endpoint to the binary's health, readiness and
// metrics.
func (e *Endpoint) Serve(hs *health.Server, ready func(context.Context) error, metrics http.Handler) {
	h := Handler(hs, ready, metrics)
	e.h.Store(&h)
}

// Err delivers the error the listener stopped with.
func (e *Endpoint) Err() <-chan error { return e.err }

// Close stops the endpoint, letting answers in progress finish for up to
// a second.
func (e *Endpoint) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
}

// SetAll sets the status of the server ("") and of each named service.
func SetAll(hs *health.Server, serving bool, services ...string) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	hs.SetServingStatus("", st)
	for _, s := range services {
		hs.SetServingStatus(s, st)
	}
}
