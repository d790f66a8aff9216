// Command plexsphere-sidecar runs the sidecar proxy (package sidecar) beside a
// core container: configuration, identity and the ops listener are wired
// here, the proxy lives in the package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/metrics"
	"github.com/plexsphere/signer/internal/ops"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "plexsphere-sidecar:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var cfg config.Sidecar
	if err := config.Load("plexsphere-sidecar", "SIDECAR_", &cfg, args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := config.Logger(os.Stderr, cfg.LogLevel)
	src, err := identity.Open(ctx, identity.Config{WorkloadAPIAddr: cfg.WorkloadAPIAddr, CertFile: cfg.SVIDCertFile,
		KeyFile: cfg.SVIDKeyFile, BundleFile: cfg.TrustBundleFile, Reload: cfg.IdentityReload}, log)
	if err != nil {
		return fmt.Errorf("%s: %w", config.IdentitySettings(&cfg, cfg.WorkloadAPIAddr), err)
	}
	defer src.Close()
	var addrs []sidecar.Addr
	for _, l := range cfg.Listen {
		a, _ := sidecar.ParseListen(l) // validated
		addrs = append(addrs, a)
	}
	mode, _ := cfg.Mode()
	var p *sidecar.Proxy
	forwarded := []string{signerv1.SignerService_Sign_FullMethodName, signerv1.SignerService_PublicKey_FullMethodName}
	m := metrics.NewSidecar(forwarded, func() bool { return p.Ready(ctx) == nil }, src)
	p, err = sidecar.New(sidecar.Config{
		Listen: addrs, SocketMode: os.FileMode(mode), AllowUIDs: cfg.AllowUIDs,
		Upstream: cfg.Upstream, SignerID: spiffeid.RequireFromString(cfg.SignerSPIFFEID),
		Identity: src, MaxMessageBytes: cfg.MaxMessageBytes, MaxConnections: cfg.MaxConnections, MaxConcurrentStreams: cfg.MaxConcurrentStreams, Log: log, Observe: m.ObserveCall,
	})
	if err != nil {
		return err
	}
	ls, err := p.Listen()
	if err != nil {
		return config.Errorf(&cfg, "Listen", "%v", err)
	}
	if cfg.OpsListen != "" {
		ol, err := net.Listen("tcp", cfg.OpsListen)
		if err != nil {
			return config.Errorf(&cfg, "OpsListen", "%v", err)
		}
		srv := ops.Server(p.Health(), p.Ready, m.Handler())
		go srv.Serve(ol)
		defer srv.Close()
	}
	return p.Serve(ctx, ls, cfg.ShutdownTimeout)
}
