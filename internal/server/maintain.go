package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/store/bbolt"
	"github.com/plexsphere/signer/internal/store/postgres"
)

// Maintain runs the one-off store task cfg names (cfg.Maintenance()):
// --migrate-only applies the Postgres schema as its owner and grants the
// runtime and prune roles; --prune-audit-upto records a prune in the log
// and deletes exported audit entries after verifying the export holds them
// (with the signer's provider settings: the record is signed). Neither
// needs an identity.
func Maintain(ctx context.Context, cfg config.Signer, log *slog.Logger) error {
	if cfg.MigrateOnly {
		st, err := openMaintenance(ctx, &cfg, false, log)
		if err != nil {
			return err
		}
		defer st.Close()
		roles := postgres.Roles{Runtime: cfg.PostgresRuntimeRole, Prune: cfg.PostgresPruneRole}
		if err := st.(*postgres.Store).MigrateAndGrant(ctx, roles); err != nil {
			return err
		}
		log.Info("schema migrated", "runtime_role", roles.Runtime, "prune_role", roles.Prune)
	}
	if cfg.PruneAuditUpTo == 0 {
		return nil
	}
	// The prune role when there is one: a prune job need not hold the
	// owner's credentials, and its role can delete only through the
	// function that checks the prune's record.
	st, err := openMaintenance(ctx, &cfg, cfg.PostgresPruneDSN != "" || cfg.PostgresPruneDSNFile != "", log)
	if err != nil {
		return err
	}
	defer st.Close()
	return prune(ctx, &cfg, st, uint64(cfg.PruneAuditUpTo), log)
}

// openMaintenance opens the store for a one-off task: for Postgres as the
// owner or as the prune role, for bbolt the file (which the serving signer
// must not hold open).
func openMaintenance(ctx context.Context, cfg *config.Signer, asPruner bool, log *slog.Logger) (store.Store, error) {
	switch cfg.Store {
	case "bbolt":
		st, err := bbolt.Open(cfg.BboltPath)
		if err != nil {
			return nil, config.Errorf(cfg, "BboltPath", "%v", err)
		}
		return st, nil
	case "postgres":
		inline, path, file := cfg.PostgresOwnerDSN, cfg.PostgresOwnerDSNFile, "PostgresOwnerDSNFile"
		if asPruner {
			inline, path, file = cfg.PostgresPruneDSN, cfg.PostgresPruneDSNFile, "PostgresPruneDSNFile"
		}
		conn, err := config.ReadSecret(inline, path)
		if err != nil {
			return nil, config.Errorf(cfg, file, "%v", err)
		}
		st, err := postgres.Open(ctx, postgres.Config{DSN: conn, MaxConns: 2, Log: log})
		if err != nil {
			return nil, config.Errorf(cfg, file, "%v", err)
		}
		return st, nil
	}
	return nil, config.Errorf(cfg, "Store", "%q is not a store", cfg.Store)
}

// prune verifies the export (signed by this log's checkpoint key, covering
// exactly the entries after the last prune up to upto, each byte for byte
// what the store holds), checks the stored log whole, appends the prune's
// record to the log (sealed, checkpointed and, with witnesses, cosigned) and
// only then deletes the entries. It needs the checkpoint key: the provider
// settings of the signer (its KEK, or its token).
func prune(ctx context.Context, cfg *config.Signer, st store.Store, upto uint64, log *slog.Logger) error {
	pr, ok := st.(store.Pruner)
	if !ok {
		return config.Errorf(cfg, "Store", "the %s store cannot prune", cfg.Store)
	}
	p, err := openProvider(cfg, log)
	if err != nil {
		return err
	}
	defer p.Close()
	lg, err := maintenanceLog(ctx, cfg, st, p, log)
	if err != nil {
		return err
	}
	defer lg.writer.Close()
	pruned, err := st.PrunedUpTo(ctx)
	if err != nil {
		return err
	}
	f, err := os.Open(cfg.PruneAuditExport)
	if err != nil {
		return config.Errorf(cfg, "PruneAuditExport", "%v", err)
	}
	defer f.Close()
	sum := sha256.New()
	info, err := audit.VerifyExportAt(io.TeeReader(f, sum), lg.verifier, func(seq uint64, leaf []byte) error {
		stored, err := st.Leaves(ctx, seq-1, seq)
		if err != nil {
			return fmt.Errorf("entry %d: %w", seq, err)
		}
		if !bytes.Equal(stored[0], leaf) {
			return fmt.Errorf("%w: entry %d differs from the stored one", audit.ErrExport, seq)
		}
		return nil
	}, upto)
	if err != nil {
		return config.Errorf(cfg, "PruneAuditExport", "%v", err)
	}
	record := upto == pruned && upto > 0
	switch {
	case !record && info.Header.From != pruned+1:
		return config.Errorf(cfg, "PruneAuditExport", "the export starts at seq %d; the store holds entries from seq %d (export from there, chaining with --after the previous export)", info.Header.From, pruned+1)
	case info.Header.To < upto:
		return config.Errorf(cfg, "PruneAuditUpTo", "%d is beyond the export, which ends at seq %d", upto, info.Header.To)
	}
	if record {
		if seq, err := st.PruneRecord(ctx); err != nil {
			return err
		} else if seq != 0 {
			return config.Errorf(cfg, "PruneAuditUpTo", "entries up to seq %d are pruned already, and recorded (entry %d)", upto, seq)
		}
		log.Warn("the prune mark was made before prune records: recording it now; nothing is deleted", "upto", upto)
	}
	lg.Start(ctx)
	if err := lg.Broken(); err != nil && !record {
		return fmt.Errorf("the audit log does not check whole; nothing is pruned: %w", err)
	}
	rec := auditlog.PruneRecord{UpTo: upto, RootAtUpTo: info.RootAt, ExportSHA256: sum.Sum(nil), ExportFrom: info.Header.From,
		ExportTo: info.Header.To, ExportCheckpoint: string(info.Checkpoint.Note), Reason: "plexsphere-signer --prune-audit-upto"}
	seq, err := lg.RecordPrune(ctx, rec)
	if err != nil {
		return err
	}
	if err := lg.Check(ctx); err != nil {
		return fmt.Errorf("the prune record (entry %d) could not be checkpointed; nothing is deleted: %w", seq, err)
	}
	if st := lg.Status(); st.Problem != nil {
		return fmt.Errorf("the prune record is entry %d, but its checkpoint is not anchored (%v): nothing is deleted; run the prune again when the witnesses answer", seq, st.Problem)
	}
	if err := pr.PruneAudit(ctx, upto, seq); err != nil {
		return config.Errorf(cfg, "PruneAuditUpTo", "%v", err)
	}
	log.Info("audit entries pruned", "upto", upto, "record_seq", seq, "export", cfg.PruneAuditExport,
		"export_sha256", fmt.Sprintf("%x", rec.ExportSHA256), "checkpoint_size", lg.Latest().Size, "witnessed_size", lg.Witnessed().Size)
	return nil
}

// maintenanceLog is the audit log as a one-off task (the prune) writes to
// it: the checkpoint key from the provider (never created), the origin and
// epoch of the store's newest checkpoint, the seal key, and the witnesses
// of SIGNER_WITNESS_POLICY_FILE; no checkpoint file (it is the serving
// signers').
type mlog struct {
	*audit.Log
	writer   *audit.Writer
	verifier *auditlog.Verifier
}

func maintenanceLog(ctx context.Context, cfg *config.Signer, st store.Store, p keyprovider.Provider, log *slog.Logger) (*mlog, error) {
	rec, err := st.LogKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	key, _, err := LogKey(ctx, st, p, time.Now)
	if err != nil {
		if errors.Is(err, signerr.ErrProviderUnavailable) {
			return nil, providerError(cfg, "the audit checkpoint key", err)
		}
		return nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	latest, err := st.LatestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	if latest == nil {
		return nil, errors.New("the store holds no signed checkpoint yet: nothing can be pruned")
	}
	line, _, _ := strings.Cut(string(latest), "\n")
	origin := line
	if cfg.AuditOrigin != "" {
		origin = cfg.AuditOrigin
	} else if i := strings.LastIndex(line, "/epoch-"); i > 0 && auditlog.EpochOf(line[:i], line) > 1 {
		origin = line[:i]
	}
	vkey, err := note.NewEd25519VerifierKey(origin, rec.Public)
	if err != nil {
		return nil, config.Errorf(cfg, "AuditOrigin", "%v", err)
	}
	if pinned := cfg.CheckpointVerifierKey; pinned != "" && pinned != vkey {
		return nil, config.Errorf(cfg, "CheckpointVerifierKey", "the store's checkpoint key is %s, not the pinned %s", vkey, pinned)
	}
	v, err := auditlog.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	if _, err := v.Open(latest); err != nil {
		return nil, fmt.Errorf("the newest stored checkpoint: %w", err)
	}
	sign := func(msg []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return key.SignContext(ctx, msg)
	}
	sealer, err := audit.DeriveSealer(origin, sign)
	if err != nil {
		return nil, err
	}
	epoch, err := audit.CurrentEpoch(ctx, st, v, "")
	if err != nil {
		return nil, err
	}
	signer, _, err := audit.NewNoteSigner(auditlog.EpochOrigin(origin, epoch), rec.Public, sign)
	if err != nil {
		return nil, err
	}
	var ws *audit.Witnesses
	if cfg.WitnessPolicyFile != "" {
		text, err := os.ReadFile(cfg.WitnessPolicyFile)
		if err != nil {
			return nil, config.Errorf(cfg, "WitnessPolicyFile", "%v", err)
		}
		policy, err := auditlog.ParseWitnessPolicy(text)
		if err != nil {
			return nil, config.Errorf(cfg, "WitnessPolicyFile", "%v", err)
		}
		ws = audit.NewWitnesses(policy, cfg.WitnessTimeout, nil)
	}
	w := audit.NewWriter(st, audit.WriterOptions{Sealer: sealer})
	lg := audit.NewLog(audit.LogConfig{Store: st, Writer: w, Signer: signer, Verifier: v, Sealer: sealer, Witnesses: ws,
		MaxUnanchored: cfg.AuditMaxUnanchored, Log: log})
	return &mlog{Log: lg, writer: w, verifier: v}, nil
}
