package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
)

// openStore is the one place a store implementation is chosen.
func openStore(ctx context.Context, cfg *config.Signer, log *slog.Logger) (store.Store, error) {
	switch cfg.Store {
	case "bbolt":
		return bbolt.Open(cfg.BboltPath)
	case "postgres":
		return openPostgres(ctx, cfg, log)
	}
	return nil, config.Errorf(cfg, "Store", "%q is not a store", cfg.Store)
}

// openProvider is the one place a key provider is chosen.
func openProvider(cfg *config.Signer) (keyprovider.Provider, error) {
	switch cfg.Provider {
	case "local":
		raw, err := config.ReadSecret(cfg.LocalKEK, cfg.LocalKEKFile)
		if err != nil {
			return nil, config.Errorf(cfg, "LocalKEKFile", "%v", err)
		}
		kek, err := local.ParseKEK(raw)
		if err != nil {
			return nil, config.Errorf(cfg, "LocalKEKFile", "%v (%s)", err, config.Name(cfg, "LocalKEK"))
		}
		return local.New(kek)
	case "pkcs11":
		return openPKCS11(cfg)
	}
	return nil, config.Errorf(cfg, "Provider", "%q is not a provider", cfg.Provider)
}

func openPostgres(ctx context.Context, cfg *config.Signer, log *slog.Logger) (store.Store, error) {
	dsn, err := config.ReadSecret(cfg.PostgresDSN, cfg.PostgresDSNFile)
	if err != nil {
		return nil, config.Errorf(cfg, "PostgresDSNFile", "%v", err)
	}
	return postgres.Open(ctx, postgres.Config{DSN: dsn, MaxConns: int32(cfg.PostgresMaxConns), Migrate: cfg.PostgresMigrate, Log: log})
}

func openPKCS11(*config.Signer) (keyprovider.Provider, error) {
	return nil, fmt.Errorf("the pkcs11 provider is not built yet")
}
