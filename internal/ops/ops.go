// Package ops is the plain-HTTP operations listener shared by the signer and
// the sidecar: gRPC health (over h2c, for Kubernetes grpc probes), /healthz,
// /readyz and /metrics. It never serves the signing API.
package ops

import (
	"context"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Server returns the ops HTTP server. ready decides /readyz; metrics, if
// not nil, serves /metrics.
func Server(hs *health.Server, ready func(context.Context) error, metrics http.Handler) *http.Server {
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
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				g.ServeHTTP(w, r)
				return
			}
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		Protocols:         new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
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
