package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
)

// Maintain runs the one-off store task cfg names (cfg.Maintenance()):
// --migrate-only applies the Postgres schema as its owner and grants the
// runtime role; --prune-audit-upto deletes exported audit entries after
// verifying the export holds them. Neither needs an identity or keys.
func Maintain(ctx context.Context, cfg config.Signer, log *slog.Logger) error {
	st, err := openOwner(ctx, &cfg, log)
	if err != nil {
		return err
	}
	defer st.Close()
	if cfg.MigrateOnly {
		pg := st.(*postgres.Store)
		if err := pg.MigrateAndGrant(ctx, cfg.PostgresRuntimeRole); err != nil {
			return err
		}
		log.Info("schema migrated", "runtime_role", cfg.PostgresRuntimeRole)
		if cfg.PruneAuditUpTo == 0 {
			return nil
		}
	}
	return prune(ctx, &cfg, st, uint64(cfg.PruneAuditUpTo), log)
}

// openOwner opens the store as its owner: the owner DSN for Postgres, the
// file for bbolt (which the serving signer must not hold open).
func openOwner(ctx context.Context, cfg *config.Signer, log *slog.Logger) (store.Store, error) {
	switch cfg.Store {
	case "bbolt":
		st, err := bbolt.Open(cfg.BboltPath)
		if err != nil {
			return nil, config.Errorf(cfg, "BboltPath", "%v", err)
		}
		return st, nil
	case "postgres":
		dsn, err := config.ReadSecret(cfg.PostgresOwnerDSN, cfg.PostgresOwnerDSNFile)
		if err != nil {
			return nil, config.Errorf(cfg, "PostgresOwnerDSNFile", "%v", err)
		}
		st, err := postgres.Open(ctx, postgres.Config{DSN: dsn, MaxConns: 2, Log: log})
		if err != nil {
			return nil, config.Errorf(cfg, "PostgresOwnerDSNFile", "%v", err)
		}
		return st, nil
	}
	return nil, config.Errorf(cfg, "Store", "%q is not a store", cfg.Store)
}

// prune verifies the export (signed by this log's checkpoint key, covering
// exactly the entries after the last prune up to upto, each byte for byte
// what the store holds) and only then deletes those entries.
func prune(ctx context.Context, cfg *config.Signer, st store.Store, upto uint64, log *slog.Logger) error {
	pr, ok := st.(store.Pruner)
	if !ok {
		return config.Errorf(cfg, "Store", "the %s store cannot prune", cfg.Store)
	}
	v, err := storedVerifier(ctx, st)
	if err != nil {
		return err
	}
	pruned, err := st.PrunedUpTo(ctx)
	if err != nil {
		return err
	}
	f, err := os.Open(cfg.PruneAuditExport)
	if err != nil {
		return config.Errorf(cfg, "PruneAuditExport", "%v", err)
	}
	defer f.Close()
	info, err := audit.VerifyExport(f, v, func(seq uint64, leaf []byte) error {
		stored, err := st.Leaves(ctx, seq-1, seq)
		if err != nil {
			return fmt.Errorf("entry %d: %w", seq, err)
		}
		if !bytes.Equal(stored[0], leaf) {
			return fmt.Errorf("%w: entry %d differs from the stored one", audit.ErrExport, seq)
		}
		return nil
	})
	if err != nil {
		return config.Errorf(cfg, "PruneAuditExport", "%v", err)
	}
	switch {
	case info.Header.From != pruned+1:
		return config.Errorf(cfg, "PruneAuditExport", "the export starts at seq %d; the store holds entries from seq %d (export from there, chaining with --after the previous export)", info.Header.From, pruned+1)
	case info.Header.To < upto:
		return config.Errorf(cfg, "PruneAuditUpTo", "%d is beyond the export, which ends at seq %d", upto, info.Header.To)
	}
	if err := pr.PruneAudit(ctx, upto); err != nil {
		return config.Errorf(cfg, "PruneAuditUpTo", "%v", err)
	}
	log.Info("audit entries pruned", "upto", upto, "export", cfg.PruneAuditExport, "checkpoint_size", info.Checkpoint.Size)
	return nil
}

// storedVerifier is the log's verifier as the store records it: the
// checkpoint key's public half and the origin of its newest checkpoint.
func storedVerifier(ctx context.Context, st store.Store) (*auditlog.Verifier, error) {
	rec, err := st.LogKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	latest, err := st.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	if latest == nil {
		return nil, errors.New("the store holds no signed checkpoint yet: nothing can be pruned")
	}
	origin, _, _ := strings.Cut(string(latest), "\n")
	vkey, err := note.NewEd25519VerifierKey(origin, rec.Public)
	if err != nil {
		return nil, err
	}
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	if _, err := v.Open(latest); err != nil {
		return nil, fmt.Errorf("the newest stored checkpoint: %w", err)
	}
	return v, nil
}
