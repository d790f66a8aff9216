// Command plexsphere-signer is the signing service: the only process that can
// reach key material. See internal/server for what it assembles.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/server"
	"github.com/plexsphere/signer/internal/version"
)

// gcPercent replaces Go's default of 100 unless GOGC is set: the signer's
// live heap is small (keys, caches, the writer's queue), so collecting four
// times less often costs a few MiB of heap and saves signer CPU per Sign
// (measured in docs/performance.md).
const gcPercent = 400

const prog = "plexsphere-signer"

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
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

// memoryLimitRatio is the share of the container's memory limit (its
// cgroup's) that the Go heap may grow to before the collector works
// harder than GOGC asks. GOGC 400 lets the heap grow to five times what is
// live; with a thousand sidecar connections (about 100 MiB of connection
// buffers) that overran the chart's 256 MiB limit (docs/performance.md).
const memoryLimitRatio = 0.8

// setMemoryLimit sets the Go memory limit from the container's (from)
// unless GOMEMLIMIT (or AUTOMEMLIMIT=off) is set; without a cgroup limit
// (make run) it does nothing.
func setMemoryLimit(log *slog.Logger, from memlimit.Provider) {
	n, err := memlimit.SetGoMemLimitWithOpts(memlimit.WithRatio(memoryLimitRatio), memlimit.WithProvider(from))
	switch {
	case err == nil && n > 0:
		log.Info("go memory limit", "bytes", n, "ratio_of_cgroup_limit", memoryLimitRatio)
	case err != nil && !errors.Is(err, memlimit.ErrNoLimit) && !errors.Is(err, memlimit.ErrNoCgroup):
		log.Warn("go memory limit not set", "err", err)
	}
}

func run(ctx context.Context, args []string) error {
	var cfg config.Signer
	if err := config.Load(prog, "SIGNER_", &cfg, args); err != nil {
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
	setMemoryLimit(log, memlimit.FromCgroup)
	if cfg.Maintenance() {
		return server.Maintain(ctx, cfg, log)
	}
	return server.Run(ctx, cfg, log)
}
