package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/keyprovider/local"
	"github.com/plexsphere/signer/internal/keyprovider/pkcs11"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
)

// openStore is the one place a store implementation is chosen.
func openStore(ctx context.Context, cfg *config.Signer, log *slog.Logger) (store.Store, error) {
	switch cfg.Store {
	case "bbolt":
		st, err := bbolt.Open(cfg.BboltPath)
		if err != nil {
			return nil, config.Errorf(cfg, "BboltPath", "%v", err)
		}
		return st, nil
	case "postgres":
		return openPostgres(ctx, cfg, log)
	}
	return nil, config.Errorf(cfg, "Store", "%q is not a store", cfg.Store)
}

// openProvider is the one place a key provider is chosen.
func openProvider(cfg *config.Signer, log *slog.Logger) (keyprovider.Provider, error) {
	switch cfg.Provider {
	case "local":
		raw, err := config.ReadSecret(cfg.LocalKEK, cfg.LocalKEKFile)
		if err != nil {
			return nil, config.Errorf(cfg, kekField(cfg), "%v", err)
		}
		kek, err := local.ParseKEK(raw)
		if err != nil {
			return nil, config.Errorf(cfg, kekField(cfg), "%v", err)
		}
		return local.New(kek)
	case "pkcs11":
		return openPKCS11(cfg, log)
	}
	return nil, config.Errorf(cfg, "Provider", "%q is not a provider", cfg.Provider)
}

func openPostgres(ctx context.Context, cfg *config.Signer, log *slog.Logger) (store.Store, error) {
	dsnField := "PostgresDSNFile"
	if cfg.PostgresDSN != "" {
		dsnField = "PostgresDSN"
	}
	dsn, err := config.ReadSecret(cfg.PostgresDSN, cfg.PostgresDSNFile)
	if err != nil {
		return nil, config.Errorf(cfg, dsnField, "%v", err)
	}
	st, err := postgres.Open(ctx, postgres.Config{DSN: dsn, MaxConns: int32(cfg.PostgresMaxConns), Migrate: cfg.PostgresMigrate, Log: log})
	if err != nil {
		// pgx redacts the password from its errors; the DSN itself is
		// never printed.
		return nil, config.Errorf(cfg, dsnField, "%v", err)
	}
	if err := st.Schema(ctx); err != nil {
		st.Close()
		if errors.Is(err, postgres.ErrNotMigrated) {
			return nil, config.Errorf(cfg, dsnField, "%v: run `plexsphere-signer --migrate-only` as the schema owner first (%s, %s), or set %s in development",
				err, config.Name(cfg, "PostgresOwnerDSNFile"), config.Name(cfg, "PostgresRuntimeRole"), config.Name(cfg, "PostgresMigrate"))
		}
		return nil, err
	}
	return st, nil
}

func openPKCS11(cfg *config.Signer, log *slog.Logger) (keyprovider.Provider, error) {
	// Read at every (re)connection, so a corrected PIN file needs no restart.
	pin := func() (string, error) { return config.ReadSecret(cfg.PKCS11PIN, cfg.PKCS11PINFile) }
	if _, err := pin(); err != nil {
		return nil, config.Errorf(cfg, "PKCS11PINFile", "%v", err)
	}
	p, err := pkcs11.Open(pkcs11.Config{Module: cfg.PKCS11Module, TokenLabel: cfg.PKCS11TokenLabel, PIN: pin,
		Sessions: cfg.PKCS11Sessions, Log: log})
	if errors.Is(err, pkcs11.ErrNotBuilt) {
		return nil, config.Errorf(cfg, "Provider", "%v", err)
	}
	if err != nil {
		return nil, providerError(cfg, "the PKCS#11 module", err)
	}
	// A token that is missing or refuses the PIN now would make every Sign
	// fail Unavailable, which clients retry forever: refuse to start.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Health(ctx); err != nil {
		p.Close()
		return nil, providerError(cfg, "the token", err)
	}
	return p, nil
}

// providerError names the setting behind a provider failure at start-up:
// the KEK for the local provider; the module, token label or PIN for
// PKCS#11. Other errors pass unchanged.
func providerError(cfg *config.Signer, what string, err error) error {
	switch {
	case cfg.Provider == "local" && errors.Is(err, local.ErrNotApproved):
		// Not the KEK: the mode forbids the key's sealing (the error says
		// which mode and the fix).
		return fmt.Errorf("%s: %w", what, err)
	case cfg.Provider == "local" && errors.Is(err, signerr.ErrProviderUnavailable):
		return config.Errorf(cfg, kekField(cfg), "%s does not unseal with this key-encryption key: is it the KEK this store's keys were sealed with? %v",
			what, err)
	case cfg.Provider != "pkcs11":
		return err
	case errors.Is(err, pkcs11.ErrModule):
		return config.Errorf(cfg, "PKCS11Module", "%s: %v", what, err)
	case errors.Is(err, pkcs11.ErrNoToken):
		return config.Errorf(cfg, "PKCS11TokenLabel", "%s: %v", what, err)
	case errors.Is(err, pkcs11.ErrLogin):
		return config.Errorf(cfg, "PKCS11PINFile", "%s: %v (%s)", what, err, config.Name(cfg, "PKCS11PIN"))
	case errors.Is(err, signerr.ErrProviderUnavailable):
		return config.Errorf(cfg, "PKCS11TokenLabel", "%s cannot be used: %v (check %s, %s and %s)", what, err,
			config.Name(cfg, "PKCS11Module"), config.Name(cfg, "PKCS11TokenLabel"), config.Name(cfg, "PKCS11PINFile"))
	}
	return err
}

// kekField is the KEK setting in use (Validate allows exactly one): an
// error names the one the operator set.
func kekField(cfg *config.Signer) string {
	if cfg.LocalKEK != "" {
		return "LocalKEK"
	}
	return "LocalKEKFile"
}
