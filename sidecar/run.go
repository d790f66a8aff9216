package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/plexsphere/signer/internal/metrics"
	"github.com/plexsphere/signer/internal/ops"
)

// ErrListen and ErrOpsListen wrap a failure to open a core-facing listener
// or the ops listener, so a binary can name the setting at fault.
var (
	ErrListen    = errors.New("sidecar: cannot listen")
	ErrOpsListen = errors.New("sidecar: cannot listen for ops")
)

// Run is a whole sidecar: the proxy on cfg.Listen, its metrics and health
// on cfg.OpsListen, until ctx ends; then it drains in-flight calls for up
// to cfg.ShutdownTimeout.
func Run(ctx context.Context, cfg Config) error {
	var p *Proxy
	m := metrics.NewSidecar(ForwardedMethods(), func() bool { return p.Ready(ctx) == nil }, cfg.SVID)
	observe := cfg.Observe
	debug := cfg.Log != nil && cfg.Log.Enabled(context.Background(), slog.LevelDebug)
	cfg.Observe = func(method string, code codes.Code, took time.Duration) {
		m.ObserveCall(method, code, took)
		if debug {
			cfg.Log.Debug("call", "method", method, "code", code.String(), "took", took)
		}
		if observe != nil {
			observe(method, code, took)
		}
	}
	refused := cfg.Refused
	cfg.Refused = func(reason string) {
		m.ObserveRefused(reason)
		if refused != nil {
			refused(reason)
		}
	}
	p, err := New(cfg)
	if err != nil {
		return err
	}
	ls, err := p.Listen()
	if err != nil {
		return err
	}
	if cfg.Ops != nil {
		cfg.Ops.Serve(p.Health(), p.Ready, m.Handler())
		defer cfg.Ops.Close()
	} else if cfg.OpsListen != "" {
		ol, err := net.Listen("tcp", cfg.OpsListen)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("%w on %s: %w", ErrOpsListen, cfg.OpsListen, err)
		}
		srv := ops.Server(p.Health(), p.Ready, m.Handler())
		go srv.Serve(ol)
		defer srv.Close()
	}
	grace := cfg.ShutdownTimeout
	if grace <= 0 {
		grace = 10 * time.Second
	}
	return p.Serve(ctx, ls, grace)
}
