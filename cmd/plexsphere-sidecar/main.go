// Command plexsphere-sidecar runs the sidecar proxy (package sidecar) beside a
// core container: it reads the settings, opens the pod's SPIFFE identity and
// hands both to sidecar.Run, which holds the rest of the wiring.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
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
	src, err := identity.Open(ctx, cfg.Identity, log)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.Identity.Settings(&cfg), err)
	}
	defer src.Close()
	mode, _ := cfg.Mode() // validated
	err = sidecar.Run(ctx, sidecar.Config{
		Listen: cfg.ListenAddrs(), SocketMode: os.FileMode(mode), AllowUIDs: cfg.AllowUIDs,
		MaxConnections: cfg.MaxConnections, MaxConcurrentStreams: cfg.MaxConcurrentStreams,
		Upstream: cfg.Upstream, SignerID: spiffeid.RequireFromString(cfg.SignerSPIFFEID), // validated
		SVID: src, Bundle: src, MaxMessageBytes: cfg.MaxMessageBytes, Log: log,
		OpsListen: cfg.OpsListen, ShutdownTimeout: cfg.ShutdownTimeout,
	})
	switch {
	case errors.Is(err, sidecar.ErrListen):
		return config.Errorf(&cfg, "Listen", "%v", err)
	case errors.Is(err, sidecar.ErrUpstream):
		return config.Errorf(&cfg, "Upstream", "%v", err)
	case errors.Is(err, sidecar.ErrOpsListen):
		return config.Errorf(&cfg, "OpsListen", "%v", err)
	}
	return err
}
