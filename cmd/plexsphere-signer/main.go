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
	"syscall"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/server"
)

func main() {
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
