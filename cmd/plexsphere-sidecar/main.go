// Command plexsphere-sidecar runs the sidecar proxy (package sidecar) beside a
// core container: it reads the settings, opens the pod's SPIFFE identity and
// hands both to sidecar.Run, which holds the rest of the wiring.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/ops"
	"github.com/plexsphere/signer/internal/version"
	"github.com/plexsphere/signer/sidecar"
)

// gcPercent replaces Go's default of 100 unless GOGC is set. The sidecar
// allocates little per call (about 0.9 KiB), so collecting twice as often
// costs it little CPU, and halving the heap's headroom keeps it near the
// 20 MiB the chart is sized for with 128 core connections open and calls
// in flight (docs/performance.md, "The sidecar").
const gcPercent = 50

// procs replaces Go's GOMAXPROCS (the CPUs or the container's CPU limit,
// at least 2) unless GOMAXPROCS is set. One pod's calls need a fraction of
// a core (about 20 µs of CPU a call), and with one P a call's hand-offs
// between the sidecar's goroutines stay on one thread: with two, every
// hand-off wakes an idle thread that spins and sleeps again, which cost
// more CPU than the calls themselves (docs/performance.md, "One P").
const procs = 1

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(procs)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		config.Fatal(os.Stderr, prog, err)
		os.Exit(1)
	}
}

const prog = "plexsphere-sidecar"

// goRuntimeEnv refuses a GOGC or GOMAXPROCS that Go would ignore without
// a word: it would then run on its own defaults, not the sidecar's.
func goRuntimeEnv() error {
	if v := os.Getenv("GOGC"); v != "" && v != "off" {
		if _, err := strconv.Atoi(v); err != nil {
			return fmt.Errorf("GOGC=%q is not a whole number or off: Go would ignore it and collect at 100; set a number, or unset it for the sidecar's %d", v, gcPercent)
		}
	}
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 1 {
			return fmt.Errorf("GOMAXPROCS=%q is not a whole number above 0: Go would ignore it and use every CPU; set a number, or unset it for the sidecar's %d", v, procs)
		}
	}
	return nil
}

func run(ctx context.Context, args []string) error {
	if err := goRuntimeEnv(); err != nil {
		return err
	}
	var cfg config.Sidecar
	if err := config.Load(prog, "SIDECAR_", &cfg, args); err != nil {
		if errors.Is(err, config.ErrVersion) {
			fmt.Println(version.Get().String(prog))
			return nil
		}
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := config.Logger(os.Stderr, cfg.LogLevel)
	v := version.Get()
	log.Info(prog+" starting", "version", v.Version, "commit", v.Commit, "go", v.GoVersion, "fips", v.FIPS, "fips_module", v.FIPSModule)
	// The ops listener answers liveness while the SVID is awaited: a pod
	// waiting for its SPIRE registration is not restarted in a loop.
	var ep *ops.Endpoint
	if cfg.OpsListen != "" {
		l, err := net.Listen("tcp", cfg.OpsListen)
		if err != nil {
			return config.Errorf(&cfg, "OpsListen", "%v", err)
		}
		ep = ops.StartEndpoint(l)
	}
	src, err := identity.OpenAs(ctx, cfg.Identity, config.Name(&cfg, "WorkloadAPIAddr"), log)
	if err != nil {
		if ep != nil {
			ep.Close()
		}
		if errors.Is(err, identity.ErrNoSVID) && ctx.Err() != nil {
			log.Warn("stopped before an SVID arrived", "err", err.Error())
			return nil
		}
		return cfg.Identity.Error(&cfg, err)
	}
	defer src.Close()
	mode, _ := cfg.Mode() // validated
	err = sidecar.Run(ctx, sidecar.Config{
		Listen: cfg.ListenAddrs(), SocketMode: os.FileMode(mode), AllowUIDs: cfg.AllowUIDs,
		MaxConnections: cfg.MaxConnections, MaxConcurrentStreams: cfg.MaxConcurrentStreams,
		Upstream: cfg.Upstream, SignerID: spiffeid.RequireFromString(cfg.SignerSPIFFEID), // validated
		SVID: src, Bundle: src, MaxMessageBytes: cfg.MaxMessageBytes, Log: log,
		Ops: ep, ShutdownTimeout: cfg.ShutdownTimeout,
		Settings: sidecar.Settings{Upstream: config.Name(&cfg, "Upstream"), SignerID: config.Name(&cfg, "SignerSPIFFEID"),
			Identity: cfg.Identity.Settings(&cfg)},
	})
	switch {
	case errors.Is(err, sidecar.ErrListen):
		return config.Errorf(&cfg, "Listen", "%v", err)
	case errors.Is(err, sidecar.ErrUpstream):
		return config.Errorf(&cfg, "Upstream", "%v", err)
	}
	return err
}
