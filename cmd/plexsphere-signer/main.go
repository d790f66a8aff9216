// Command plexsphere-signer is the signing service: the only process that can
// reach key material. See internal/server for what it assembles.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/server"
)

// gcPercent replaces Go's default of 100 unless GOGC is set: the signer's
// live heap is small (keys, caches, the writer's queue), so collecting four
// times less often costs a few MiB of heap and saves signer CPU per Sign
// (measured in docs/performance.md).
const gcPercent = 400

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
		fmt.Fprintln(os.Stderr, "plexsphere-signer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var cfg config.Signer
	if err := config.Load("plexsphere-signer", "SIGNER_", &cfg, args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := config.Logger(os.Stderr, cfg.LogLevel)
	if cfg.Maintenance() {
		return server.Maintain(ctx, cfg, log)
	}
	return server.Run(ctx, cfg, log)
}
