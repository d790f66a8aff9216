package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/signvariant"
)

// Signer is plexsphere-signer's configuration. Helm values map to these
// variables one to one.
type Signer struct {
	Listen    string `envconfig:"SIGNER_LISTEN" flag:"listen" default:":8443" desc:"mTLS gRPC listen address"`
	OpsListen string `envconfig:"SIGNER_OPS_LISTEN" flag:"ops-listen" default:":9090" desc:"plain HTTP address for /metrics and gRPC health (empty disables)"`

	// The JWKS endpoint: each scope's public keys over HTTPS for verifiers
	// outside the mesh (internal/jwks, docs/operations.md).
	JWKSListen    string `envconfig:"SIGNER_JWKS_LISTEN" flag:"jwks-listen" desc:"HTTPS address serving /scopes/<scope>/.well-known/jwks.json (empty disables; needs --jwks-cert and --jwks-key)"`
	JWKSCertFile  string `envconfig:"SIGNER_JWKS_CERT_FILE" flag:"jwks-cert" desc:"PEM certificate chain of the JWKS endpoint, one its verifiers trust (not the SVID); reloaded when it changes"`
	JWKSKeyFile   string `envconfig:"SIGNER_JWKS_KEY_FILE" flag:"jwks-key" desc:"PEM private key of the JWKS endpoint's certificate"`
	JWKSIssuerURL string `envconfig:"SIGNER_JWKS_ISSUER_URL" flag:"jwks-issuer-url" desc:"https URL the JWKS endpoint is reached at; set, each scope also serves OIDC discovery with the issuer <url>/scopes/<scope>"`
	JWKSRate      int    `envconfig:"SIGNER_JWKS_RATE" flag:"jwks-rate" default:"20" desc:"JWKS requests per second from one source address (bursts of twice that); more are answered 429"`

	AllowSPIFFEIDs         []string `envconfig:"SIGNER_ALLOW_SPIFFE_IDS" flag:"allow-spiffe-id" desc:"SPIFFE ID allowed to call SignerService; an empty list admits nobody"`
	RotationAllowSPIFFEIDs []string `envconfig:"SIGNER_ROTATION_ALLOW_SPIFFE_IDS" flag:"rotation-allow-spiffe-id" desc:"SPIFFE ID allowed to call RotationService and AuditService (operators)"`
	AuditorAllowSPIFFEIDs  []string `envconfig:"SIGNER_AUDITOR_ALLOW_SPIFFE_IDS" flag:"auditor-allow-spiffe-id" desc:"SPIFFE ID allowed to read and verify the audit log (AuditService only, read-only)"`
	ScopeGrants            []string `envconfig:"SIGNER_SCOPE_GRANTS" flag:"scope-grant" desc:"<spiffe-id>=<scope|*>: once any is set, each SignerService caller may use only its granted scopes"`
	ScopeSignVariants      []string `envconfig:"SIGNER_SCOPE_SIGN_VARIANTS" flag:"scope-sign-variant" desc:"<scope>=<ed25519ph|ed25519ctx>, e.g. payments=ed25519ph: let the scope sign in that RFC 8032 variant too (every scope signs pure Ed25519; ed25519ctx is refused in FIPS 140-3 mode)"`
	AutoRotate             []string `envconfig:"SIGNER_AUTO_ROTATE" flag:"auto-rotate" desc:"<scope>:<period>:<prepublish>:<verify-only>, e.g. payments:720h:1h:48h: rotate the scope automatically"`

	Identity `ignored:"true" prefix:"SIGNER_"`

	Store            string `envconfig:"SIGNER_STORE" flag:"store" default:"bbolt" desc:"key and audit store: bbolt (embedded, one replica) or postgres"`
	BboltPath        string `envconfig:"SIGNER_BBOLT_PATH" flag:"bbolt-path" default:"signer.db" desc:"bbolt database file"`
	PostgresDSN      string `envconfig:"SIGNER_POSTGRES_DSN" secret:"true" desc:"Postgres connection string (may hold a password: environment only)"`
	PostgresDSNFile  string `envconfig:"SIGNER_POSTGRES_DSN_FILE" flag:"postgres-dsn-file" desc:"file holding the Postgres connection string"`
	PostgresMaxConns int    `envconfig:"SIGNER_POSTGRES_MAX_CONNS" flag:"postgres-max-conns" default:"8" desc:"Postgres pool size"`
	PostgresMigrate  bool   `envconfig:"SIGNER_POSTGRES_MIGRATE" flag:"postgres-migrate" default:"false" desc:"apply the schema migrations at start-up as the serving role, which then owns the schema (development only; see docs/postgres.md)"`

	PostgresOwnerDSN     string `envconfig:"SIGNER_POSTGRES_OWNER_DSN" secret:"true" desc:"Postgres connection string of the schema owner, for --migrate-only (and --prune-audit-upto without a prune role; environment only)"`
	PostgresOwnerDSNFile string `envconfig:"SIGNER_POSTGRES_OWNER_DSN_FILE" flag:"postgres-owner-dsn-file" desc:"file holding the schema owner's connection string"`
	PostgresRuntimeRole  string `envconfig:"SIGNER_POSTGRES_RUNTIME_ROLE" flag:"postgres-runtime-role" desc:"role the serving signer connects as; --migrate-only grants it INSERT and SELECT on the audit tables and nothing more"`
	PostgresPruneRole    string `envconfig:"SIGNER_POSTGRES_PRUNE_ROLE" flag:"postgres-prune-role" desc:"role --prune-audit-upto may connect as; --migrate-only grants it the runtime role's rights and the audit_prune function, no DELETE"`
	PostgresPruneDSN     string `envconfig:"SIGNER_POSTGRES_PRUNE_DSN" secret:"true" desc:"Postgres connection string of the prune role, for --prune-audit-upto (environment only; default: the owner's)"`
	PostgresPruneDSNFile string `envconfig:"SIGNER_POSTGRES_PRUNE_DSN_FILE" flag:"postgres-prune-dsn-file" desc:"file holding the prune role's connection string"`
	MigrateOnly          bool   `envconfig:"SIGNER_MIGRATE_ONLY" flag:"migrate-only" desc:"apply the Postgres schema as the owner, grant the runtime role, and exit"`
	PruneAuditUpTo       int    `envconfig:"SIGNER_PRUNE_AUDIT_UPTO" flag:"prune-audit-upto" desc:"record a prune of the audit entries up to this seq in the log (signed, sealed, witnessed), then delete them, which the export file must hold, and exit (run as the owner with the signer's provider settings; bbolt: with the signer stopped)"`
	PruneAuditExport     string `envconfig:"SIGNER_PRUNE_AUDIT_EXPORT" flag:"prune-audit-export" desc:"file written by signerctl audit export covering the entries to prune; verified before anything is deleted"`

	AuditMaxBatch         int           `envconfig:"SIGNER_AUDIT_MAX_BATCH" flag:"audit-max-batch" default:"256" desc:"most audit entries committed in one transaction"`
	AuditOrigin           string        `envconfig:"SIGNER_AUDIT_ORIGIN" flag:"audit-origin" desc:"origin line of the audit log's checkpoints (default <trust domain>/plexsphere-signer); part of the log's identity: never change it"`
	CheckpointInterval    time.Duration `envconfig:"SIGNER_AUDIT_CHECKPOINT_INTERVAL" flag:"audit-checkpoint-interval" default:"10s" desc:"how often the stored audit log is checked against its last checkpoint and a new checkpoint signed"`
	CheckpointLog         string        `envconfig:"SIGNER_CHECKPOINT_LOG" flag:"checkpoint-log" desc:"file every checkpoint signed and cosigned is appended to (one JSON line) before it counts, on storage the database's writers cannot reach; its largest checkpoint is trusted at start-up (an anchor outside the store)"`
	CheckpointLogInit     bool          `envconfig:"SIGNER_CHECKPOINT_LOG_INIT" flag:"checkpoint-log-init" desc:"start the checkpoint file of a log that never had one (refused while the file holds checkpoints); set it once, deliberately"`
	WitnessPolicyFile     string        `envconfig:"SIGNER_WITNESS_POLICY_FILE" flag:"witness-policy-file" desc:"the audit log's witnesses and quorum (witness/group/quorum lines, docs/audit.md): every checkpoint is pushed to them (C2SP tlog-witness) and anchors the log once the quorum cosigned it"`
	WitnessTimeout        time.Duration `envconfig:"SIGNER_WITNESS_TIMEOUT" flag:"witness-timeout" default:"5s" desc:"how long one request to a witness may take"`
	AuditMaxUnanchored    time.Duration `envconfig:"SIGNER_AUDIT_MAX_UNANCHORED" flag:"audit-max-unanchored" default:"1m" desc:"how long the signer goes on signing while its audit log is not checked whole and anchored (cosigned by the witness quorum, written to the checkpoint file); after that it refuses every RPC until a check anchors it"`
	AuditAnchorRequired   bool          `envconfig:"SIGNER_AUDIT_ANCHOR_REQUIRED" flag:"audit-anchor-required" default:"true" desc:"refuse to start without an anchor outside the store (a witness policy or a checkpoint file); false only for development: a store writer could then roll the log back unseen"`
	CheckpointVerifierKey string        `envconfig:"SIGNER_CHECKPOINT_VERIFIER_KEY" flag:"checkpoint-verifier-key" desc:"the audit log's checkpoint verifier key, pinned (printed at the first start and by signerctl audit checkpoint-key): the signer refuses to start with another"`
	AuditEpoch            int           `envconfig:"SIGNER_AUDIT_EPOCH" flag:"audit-epoch" default:"1" desc:"the audit log's epoch: raise it by one, with a reason, to continue the log from a restored backup under a new origin (docs/operations.md, Restore)"`
	AuditEpochReason      string        `envconfig:"SIGNER_AUDIT_EPOCH_REASON" flag:"audit-epoch-reason" desc:"why a new epoch begins (recorded in the log's first entry of the epoch)"`

	Provider     string `envconfig:"SIGNER_PROVIDER" flag:"provider" default:"local" desc:"key provider: local (sealed keys in the store) or pkcs11 (HSM)"`
	LocalKEK     string `envconfig:"SIGNER_LOCAL_KEK" secret:"true" desc:"local provider key-encryption key: 32 bytes as hex or base64 (environment only)"`
	LocalKEKFile string `envconfig:"SIGNER_LOCAL_KEK_FILE" flag:"local-kek-file" desc:"file holding the local provider key-encryption key"`

	PKCS11Module     string `envconfig:"SIGNER_PKCS11_MODULE" flag:"pkcs11-module" desc:"PKCS#11 module (.so) path"`
	PKCS11TokenLabel string `envconfig:"SIGNER_PKCS11_TOKEN_LABEL" flag:"pkcs11-token-label" desc:"label of the token holding the keys"`
	PKCS11PIN        string `envconfig:"SIGNER_PKCS11_PIN" secret:"true" desc:"user PIN of the token (environment only)"`
	PKCS11PINFile    string `envconfig:"SIGNER_PKCS11_PIN_FILE" flag:"pkcs11-pin-file" desc:"file holding the token's user PIN"`
	PKCS11Sessions   int    `envconfig:"SIGNER_PKCS11_SESSIONS" flag:"pkcs11-sessions" default:"8" desc:"PKCS#11 sessions kept open for concurrent signing"`

	BootstrapScopes []string      `envconfig:"SIGNER_BOOTSTRAP_SCOPES" flag:"bootstrap-scope" desc:"scope given an ACTIVE key at start-up if it has none"`
	MaxPayloadBytes int           `envconfig:"SIGNER_MAX_PAYLOAD_BYTES" flag:"max-payload-bytes" default:"65536" desc:"largest payload Sign accepts"`
	KeyCacheTTL     time.Duration `envconfig:"SIGNER_KEY_CACHE_TTL" flag:"key-cache-ttl" default:"2s" desc:"how long a replica trusts a cached key record"`
	PrePublish      time.Duration `envconfig:"SIGNER_ROTATION_PREPUBLISH" flag:"rotation-prepublish" default:"5m" desc:"how long a PENDING key is published before Commit accepts it"`
	VerifyOnly      time.Duration `envconfig:"SIGNER_ROTATION_VERIFY_ONLY" flag:"rotation-verify-only" default:"24h" desc:"how long a key stays PREVIOUS before Retire accepts it"`

	MaxConnections       int `envconfig:"SIGNER_MAX_CONNECTIONS" flag:"max-connections" default:"4096" desc:"most client connections open at once; more are closed before the TLS handshake"`
	ConnectionRate       int `envconfig:"SIGNER_CONNECTION_RATE" flag:"connection-rate" default:"100" desc:"new connections per second accepted from one source address (bursts of 10x)"`
	MaxConcurrentStreams int `envconfig:"SIGNER_MAX_CONCURRENT_STREAMS" flag:"max-concurrent-streams" default:"256" desc:"most calls in flight on one connection"`
	DenialRate           int `envconfig:"SIGNER_DENIAL_RATE" flag:"denial-rate" default:"200" desc:"denied calls audited per second across all callers; further denied calls wait"`
	DenialsPerConnection int `envconfig:"SIGNER_DENIALS_PER_CONNECTION" flag:"denials-per-connection" default:"8" desc:"a connection is closed after this many denied calls (a connection without a client certificate after its first)"`
	// Flood control that refuses at the connection rather than skip an
	// audit entry (docs/operations.md, Flood control).
	MaxConnectionsPerSource int           `envconfig:"SIGNER_MAX_CONNECTIONS_PER_SOURCE" flag:"max-connections-per-source" default:"64" desc:"most connections open at once from one source address (one pod); more are closed before the TLS handshake; at least the upstream connections of one sidecar"`
	ConnectionTimeout       time.Duration `envconfig:"SIGNER_CONNECTION_TIMEOUT" flag:"connection-timeout" default:"5s" desc:"how long a new connection may take for its TLS handshake and HTTP/2 preface before it is closed"`
	MaxPendingDenials       int           `envconfig:"SIGNER_MAX_PENDING_DENIALS" flag:"max-pending-denials" default:"400" desc:"most denied calls waiting for their turn at the denial rate; past it, a call that would be denied is refused with its connection before it becomes an RPC"`
	DenialMaxWait           time.Duration `envconfig:"SIGNER_DENIAL_MAX_WAIT" flag:"denial-max-wait" default:"1s" desc:"a denied call whose turn at the denial rate is further away than this is still audited in its turn, and its connection closed"`
	DeniedConnectionRate    int           `envconfig:"SIGNER_DENIED_CONNECTION_RATE" flag:"denied-connection-rate" default:"1" desc:"denied connections per second allowed from one source address (bursts of 10x): a connection without a client certificate, or closed for repeated denials before any admitted call; past it, the source's new connections are closed before the TLS handshake until it has budget again (never while it holds an admitted connection)"`

	MaxConnectionAge time.Duration `envconfig:"SIGNER_MAX_CONNECTION_AGE" flag:"max-connection-age" default:"10m" desc:"clients reconnect (and re-handshake with their current SVID) after this long; keep it under half the SVID TTL"`
	ShutdownTimeout  time.Duration `envconfig:"SIGNER_SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" default:"20s" desc:"how long shutdown waits for in-flight RPCs"`
	LogLevel         string        `envconfig:"SIGNER_LOG_LEVEL" flag:"log-level" default:"info" desc:"debug, info, warn or error"`
}

// Maintenance reports whether the signer runs a one-off store task
// (--migrate-only, --prune-audit-upto) instead of serving.
func (c *Signer) Maintenance() bool { return c.MigrateOnly || c.PruneAuditUpTo > 0 }

// maxDenialQueueSeconds bounds how long a full queue of denied calls
// (SIGNER_MAX_PENDING_DENIALS at SIGNER_DENIAL_RATE) takes to drain.
const maxDenialQueueSeconds = 5

// MaxPayloadLimit bounds SIGNER_MAX_PAYLOAD_BYTES (the gRPC message limit is
// derived from it).
const MaxPayloadLimit = 4 << 20

// Validate checks every setting and cross-setting rule; the error names each
// bad setting by its flag and variable.
func (c *Signer) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(checkAddr(c, "Listen", c.Listen))
	if c.OpsListen != "" {
		add(checkAddr(c, "OpsListen", c.OpsListen))
	}
	add(c.checkJWKS())
	add(checkIDs(c, "AllowSPIFFEIDs", c.AllowSPIFFEIDs))
	add(checkIDs(c, "RotationAllowSPIFFEIDs", c.RotationAllowSPIFFEIDs))
	add(checkIDs(c, "AuditorAllowSPIFFEIDs", c.AuditorAllowSPIFFEIDs))
	for _, id := range c.AllowSPIFFEIDs {
		for _, a := range c.AuditorAllowSPIFFEIDs {
			if id == a {
				add(Errorf(c, "AuditorAllowSPIFFEIDs", "%s is also on %s: the core's identity must not read the audit log; use a separate auditor identity", id, Name(c, "AllowSPIFFEIDs")))
			}
		}
	}
	for _, id := range c.AllowSPIFFEIDs {
		for _, op := range c.RotationAllowSPIFFEIDs {
			if id == op {
				add(Errorf(c, "RotationAllowSPIFFEIDs", "%s is also on %s: the core's identity must never rotate keys; use a separate operator identity", id, Name(c, "AllowSPIFFEIDs")))
			}
		}
	}
	if _, err := c.Grants(); err != nil {
		add(Errorf(c, "ScopeGrants", "%v", err))
	}
	if _, err := c.SignVariants(); err != nil {
		add(Errorf(c, "ScopeSignVariants", "%v", err))
	}
	if _, err := c.AutoRotations(); err != nil {
		add(Errorf(c, "AutoRotate", "%v", err))
	}
	// The maintenance modes talk to the store only: no identity, no keys.
	if !c.Maintenance() {
		add(c.Identity.check(c))
	}

	switch c.Store {
	case "bbolt":
		if c.BboltPath == "" {
			add(Errorf(c, "BboltPath", "required with the bbolt store"))
		} else if _, err := os.Stat(c.BboltPath); c.PruneAuditUpTo > 0 && err != nil {
			// bbolt creates a missing file: a prune must find the serving
			// signer's store, never make an empty one.
			add(Errorf(c, "BboltPath", "%v: a prune works on the signer's store: set %s (and %s) as the serving signer has them",
				err, Name(c, "BboltPath"), Name(c, "Store")))
		}
	case "postgres":
		if !c.Maintenance() && (c.PostgresDSN == "") == (c.PostgresDSNFile == "") {
			add(Errorf(c, "PostgresDSNFile", "set exactly one of %s and %s with the postgres store", Name(c, "PostgresDSN"), Name(c, "PostgresDSNFile")))
		}
		if c.PostgresMaxConns < 1 {
			add(Errorf(c, "PostgresMaxConns", "must be at least 1"))
		}
		if c.PostgresOwnerDSN != "" && c.PostgresOwnerDSNFile != "" {
			add(Errorf(c, "PostgresOwnerDSNFile", "set at most one of %s and %s", Name(c, "PostgresOwnerDSN"), Name(c, "PostgresOwnerDSNFile")))
		}
		if c.MigrateOnly && c.PostgresOwnerDSN == "" && c.PostgresOwnerDSNFile == "" {
			add(Errorf(c, "PostgresOwnerDSNFile", "%s needs the schema owner's connection string (%s or %s)", Name(c, "MigrateOnly"), Name(c, "PostgresOwnerDSN"), Name(c, "PostgresOwnerDSNFile")))
		}
		if c.PostgresPruneRole != "" && c.PostgresPruneRole == c.PostgresRuntimeRole {
			add(Errorf(c, "PostgresPruneRole", "must be another role than %s: the serving signer must not be able to delete audit entries", Name(c, "PostgresRuntimeRole")))
		}
		if c.PostgresPruneDSN != "" && c.PostgresPruneDSNFile != "" {
			add(Errorf(c, "PostgresPruneDSNFile", "set at most one of %s and %s", Name(c, "PostgresPruneDSN"), Name(c, "PostgresPruneDSNFile")))
		}
		if c.PruneAuditUpTo > 0 && c.PostgresPruneDSN == "" && c.PostgresPruneDSNFile == "" && c.PostgresOwnerDSN == "" && c.PostgresOwnerDSNFile == "" {
			add(Errorf(c, "PostgresPruneDSNFile", "%s needs the prune role's connection string (%s, granted by --migrate-only with %s) or the owner's (%s): the serving role may not delete audit entries",
				Name(c, "PruneAuditUpTo"), Name(c, "PostgresPruneDSNFile"), Name(c, "PostgresPruneRole"), Name(c, "PostgresOwnerDSNFile")))
		}
	default:
		add(Errorf(c, "Store", "%q is not a store; use bbolt or postgres", c.Store))
	}
	if c.MigrateOnly && c.Store != "postgres" {
		add(Errorf(c, "MigrateOnly", "only the postgres store has migrations to run (%s is %q)", Name(c, "Store"), c.Store))
	}
	if c.PruneAuditUpTo < 0 {
		add(Errorf(c, "PruneAuditUpTo", "must not be negative"))
	}
	if (c.PruneAuditUpTo > 0) != (c.PruneAuditExport != "") {
		add(Errorf(c, "PruneAuditExport", "set %s and %s together: entries are pruned only when an export holding them verifies", Name(c, "PruneAuditUpTo"), Name(c, "PruneAuditExport")))
	}
	if c.AuditMaxBatch < 1 {
		add(Errorf(c, "AuditMaxBatch", "must be at least 1"))
	}
	if c.AuditOrigin != "" && (strings.ContainsAny(c.AuditOrigin, " +\n\t") || !utf8.ValidString(c.AuditOrigin)) {
		add(Errorf(c, "AuditOrigin", "%q: an origin has no spaces, '+' or newlines (e.g. example.org/plexsphere-signer)", c.AuditOrigin))
	}
	if c.CheckpointInterval < time.Second {
		add(Errorf(c, "CheckpointInterval", "must be at least 1s"))
	}
	if c.AuditMaxUnanchored < 2*c.CheckpointInterval {
		add(Errorf(c, "AuditMaxUnanchored", "%v is shorter than two checkpoint intervals (%s is %v): every check would find the log unanchored", c.AuditMaxUnanchored, Name(c, "CheckpointInterval"), c.CheckpointInterval))
	}
	if c.WitnessTimeout <= 0 || c.WitnessTimeout >= c.AuditMaxUnanchored {
		add(Errorf(c, "WitnessTimeout", "must be positive and shorter than %s", Name(c, "AuditMaxUnanchored")))
	}
	if c.AuditEpoch < 1 {
		add(Errorf(c, "AuditEpoch", "must be at least 1"))
	}
	if c.CheckpointLogInit && c.CheckpointLog == "" {
		add(Errorf(c, "CheckpointLogInit", "set only with %s", Name(c, "CheckpointLog")))
	}
	if c.AuditAnchorRequired && !c.Maintenance() && c.WitnessPolicyFile == "" && c.CheckpointLog == "" {
		add(Errorf(c, "AuditAnchorRequired", "the audit log needs an anchor outside the store: set %s (witnesses) and/or %s (a checkpoint file on storage the database's writers cannot reach); %s=false only for development",
			Name(c, "WitnessPolicyFile"), Name(c, "CheckpointLog"), Name(c, "AuditAnchorRequired")))
	}
	for _, n := range []struct {
		field string
		v     int
	}{{"MaxConnections", c.MaxConnections}, {"ConnectionRate", c.ConnectionRate}, {"MaxConcurrentStreams", c.MaxConcurrentStreams},
		{"DenialRate", c.DenialRate}, {"DenialsPerConnection", c.DenialsPerConnection},
		{"MaxConnectionsPerSource", c.MaxConnectionsPerSource}, {"MaxPendingDenials", c.MaxPendingDenials},
		{"DeniedConnectionRate", c.DeniedConnectionRate}} {
		if n.v < 1 {
			add(Errorf(c, n.field, "must be at least 1"))
		}
	}
	if c.MaxConnectionsPerSource > c.MaxConnections && c.MaxConnections >= 1 {
		add(Errorf(c, "MaxConnectionsPerSource", "%d is more than %s (%d): one source could take every connection", c.MaxConnectionsPerSource, Name(c, "MaxConnections"), c.MaxConnections))
	}
	if c.ConnectionTimeout < 100*time.Millisecond || c.ConnectionTimeout > 2*time.Minute {
		add(Errorf(c, "ConnectionTimeout", "%v is outside 100ms..2m (a TLS handshake and the HTTP/2 preface take milliseconds; a longer wait lets idle connections hold the pool)", c.ConnectionTimeout))
	}
	if c.DenialMaxWait <= 0 || c.DenialMaxWait > 10*time.Second {
		add(Errorf(c, "DenialMaxWait", "%v is outside (0, 10s]", c.DenialMaxWait))
	}
	// A full queue of denials must drain in seconds: every one of them is
	// answered only once its entries are committed, in its turn.
	if c.DenialRate >= 1 && c.MaxPendingDenials > maxDenialQueueSeconds*c.DenialRate {
		add(Errorf(c, "MaxPendingDenials", "%d denials take more than %ds to drain at %s=%d; at most %d", c.MaxPendingDenials, maxDenialQueueSeconds, Name(c, "DenialRate"), c.DenialRate, maxDenialQueueSeconds*c.DenialRate))
	}

	switch {
	case c.MigrateOnly && c.PruneAuditUpTo == 0:
		// Migrations need no key; a prune records itself in the log,
		// signed and sealed with the checkpoint key: the provider's settings.
	case c.Provider == "local":
		if (c.LocalKEK == "") == (c.LocalKEKFile == "") {
			add(Errorf(c, "LocalKEKFile", "set exactly one of %s and %s with the local provider (generate one with: head -c32 /dev/urandom | base64)", Name(c, "LocalKEK"), Name(c, "LocalKEKFile")))
		}
	case c.Provider == "pkcs11":
		if c.PKCS11Module == "" {
			add(Errorf(c, "PKCS11Module", "required with the pkcs11 provider"))
		}
		if c.PKCS11TokenLabel == "" {
			add(Errorf(c, "PKCS11TokenLabel", "required with the pkcs11 provider"))
		}
		if (c.PKCS11PIN == "") == (c.PKCS11PINFile == "") {
			add(Errorf(c, "PKCS11PINFile", "set exactly one of %s and %s with the pkcs11 provider", Name(c, "PKCS11PIN"), Name(c, "PKCS11PINFile")))
		}
		if c.PKCS11Sessions < 1 {
			add(Errorf(c, "PKCS11Sessions", "must be at least 1"))
		}
	default:
		add(Errorf(c, "Provider", "%q is not a provider; use local or pkcs11", c.Provider))
	}

	for _, s := range c.BootstrapScopes {
		if err := names.CheckScope(s); err != nil {
			add(Errorf(c, "BootstrapScopes", "%q: a scope %s", s, names.ScopeRule))
		}
	}
	if c.MaxPayloadBytes < 1 || c.MaxPayloadBytes > MaxPayloadLimit {
		add(Errorf(c, "MaxPayloadBytes", "%d is outside 1..%d", c.MaxPayloadBytes, MaxPayloadLimit))
	}
	if c.KeyCacheTTL < 0 {
		add(Errorf(c, "KeyCacheTTL", "must not be negative"))
	}
	if c.PrePublish < 0 {
		add(Errorf(c, "PrePublish", "must not be negative"))
	}
	if c.VerifyOnly < 0 {
		add(Errorf(c, "VerifyOnly", "must not be negative"))
	}
	// A replica may answer from a key cache up to KeyCacheTTL old: a window
	// shorter than that could let a key sign before every replica publishes
	// it, or be retired while a replica still signs with it. Refused, not
	// silently raised, so the configured value is the one in force.
	for _, w := range []struct {
		field string
		v     time.Duration
	}{{"PrePublish", c.PrePublish}, {"VerifyOnly", c.VerifyOnly}} {
		if w.v >= 0 && c.KeyCacheTTL > 0 && w.v < c.KeyCacheTTL {
			add(Errorf(c, w.field, "%v is shorter than %s (%v): every rotation window must be at least the key-cache TTL; raise it or lower the TTL",
				w.v, Name(c, "KeyCacheTTL"), c.KeyCacheTTL))
		}
	}
	if c.ShutdownTimeout <= 0 {
		add(Errorf(c, "ShutdownTimeout", "must be positive"))
	}
	if c.MaxConnectionAge < time.Second {
		add(Errorf(c, "MaxConnectionAge", "must be at least 1s"))
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		add(Errorf(c, "LogLevel", "%v", err))
	}
	return errors.Join(errs...)
}

// checkJWKS: the endpoint needs its own certificate; its other settings
// mean nothing without it.
func (c *Signer) checkJWKS() error {
	if c.JWKSListen == "" {
		for _, f := range []struct{ field, v string }{{"JWKSCertFile", c.JWKSCertFile}, {"JWKSKeyFile", c.JWKSKeyFile}, {"JWKSIssuerURL", c.JWKSIssuerURL}} {
			if f.v != "" {
				return Errorf(c, f.field, "set only with %s (the JWKS endpoint is off)", Name(c, "JWKSListen"))
			}
		}
		return nil
	}
	var errs []error
	errs = append(errs, checkAddr(c, "JWKSListen", c.JWKSListen))
	if c.JWKSCertFile == "" || c.JWKSKeyFile == "" {
		errs = append(errs, Errorf(c, "JWKSCertFile", "%s needs a server certificate and key (%s, %s) that its verifiers trust",
			Name(c, "JWKSListen"), Name(c, "JWKSCertFile"), Name(c, "JWKSKeyFile")))
	}
	if c.JWKSIssuerURL != "" {
		u, err := url.Parse(c.JWKSIssuerURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			errs = append(errs, Errorf(c, "JWKSIssuerURL", "%q is not an https URL without query or fragment (e.g. https://keys.example.com)", c.JWKSIssuerURL))
		}
	}
	if c.JWKSRate < 1 {
		errs = append(errs, Errorf(c, "JWKSRate", "must be at least 1"))
	}
	return errors.Join(errs...)
}

func checkAddr(cfg any, fieldName, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return Errorf(cfg, fieldName, "%q is not host:port: %v", addr, err)
	}
	return nil
}

func checkIDs(cfg any, fieldName string, ids []string) error {
	for _, id := range ids {
		if _, err := spiffeid.FromString(id); err != nil {
			return Errorf(cfg, fieldName, "%q is not a SPIFFE ID: %v", id, err)
		}
	}
	return nil
}

// Grants parses ScopeGrants into identity → scopes. Every granted identity
// must also be on the SignerService allow-list: a grant cannot admit anyone.
func (c *Signer) Grants() (map[string]map[string]bool, error) {
	allowed := map[string]bool{}
	for _, id := range c.AllowSPIFFEIDs {
		allowed[id] = true
	}
	out := map[string]map[string]bool{}
	for _, g := range c.ScopeGrants {
		id, scope, ok := strings.Cut(g, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not <spiffe-id>=<scope>", g)
		}
		if _, err := spiffeid.FromString(id); err != nil {
			return nil, fmt.Errorf("%q: %v", id, err)
		}
		if !allowed[id] {
			return nil, fmt.Errorf("%s is granted a scope but is not on %s", id, Name(c, "AllowSPIFFEIDs"))
		}
		if scope != "*" && names.CheckScope(scope) != nil {
			return nil, fmt.Errorf("%q is not a scope (or *)", scope)
		}
		if out[id] == nil {
			out[id] = map[string]bool{}
		}
		out[id][scope] = true
	}
	return out, nil
}

// SignVariants parses ScopeSignVariants into scope → the variants it may
// sign in besides pure Ed25519. A variant FIPS 140-3 mode does not approve
// (signvariant.Approved) is refused while the mode is on, so a signer that
// would refuse every such Sign does not start as if it could make them.
func (c *Signer) SignVariants() (map[string]map[signvariant.Variant]bool, error) {
	out := map[string]map[signvariant.Variant]bool{}
	for _, sv := range c.ScopeSignVariants {
		scope, name, ok := strings.Cut(sv, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not <scope>=<variant> (e.g. payments=ed25519ph)", sv)
		}
		if names.CheckScope(scope) != nil {
			return nil, fmt.Errorf("%q: %q is not a scope: a scope %s", sv, scope, names.ScopeRule)
		}
		v, err := signvariant.Parse(name)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", sv, err)
		}
		if v == signvariant.Ed25519 {
			return nil, fmt.Errorf("%q: every scope signs pure Ed25519; list only ed25519ph or ed25519ctx", sv)
		}
		if err := signvariant.Approved(v); err != nil {
			return nil, fmt.Errorf("%q: %v (Go's FIPS module is enabled: GODEBUG=fips140 or GOFIPS140); remove it, or run without FIPS mode", sv, err)
		}
		if out[scope] == nil {
			out[scope] = map[signvariant.Variant]bool{}
		}
		out[scope][v] = true
	}
	return out, nil
}

// AutoRotation is one scope's automatic rotation schedule.
type AutoRotation struct {
	Scope                          string
	Period, PrePublish, VerifyOnly time.Duration
}

// AutoRotations parses AutoRotate. Each window must be at least the
// signer-wide one (which Commit and Retire enforce), and the period must
// leave room for the pre-publication.
func (c *Signer) AutoRotations() ([]AutoRotation, error) {
	var out []AutoRotation
	seen := map[string]bool{}
	for _, s := range c.AutoRotate {
		f := strings.Split(s, ":")
		if len(f) != 4 {
			return nil, fmt.Errorf("%q is not <scope>:<period>:<prepublish>:<verify-only>", s)
		}
		a := AutoRotation{Scope: f[0]}
		if names.CheckScope(a.Scope) != nil || seen[a.Scope] {
			return nil, fmt.Errorf("%q: bad or repeated scope", s)
		}
		seen[a.Scope] = true
		for i, d := range []*time.Duration{&a.Period, &a.PrePublish, &a.VerifyOnly} {
			v, err := time.ParseDuration(f[i+1])
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("%q: %q is not a positive duration", s, f[i+1])
			}
			*d = v
		}
		switch {
		case a.PrePublish < c.PrePublish:
			return nil, fmt.Errorf("%q: pre-publication %v is shorter than %s (%v)", s, a.PrePublish, Name(c, "PrePublish"), c.PrePublish)
		case a.VerifyOnly < c.VerifyOnly:
			return nil, fmt.Errorf("%q: verify-only %v is shorter than %s (%v)", s, a.VerifyOnly, Name(c, "VerifyOnly"), c.VerifyOnly)
		case a.Period <= a.PrePublish:
			return nil, fmt.Errorf("%q: the period must be longer than the pre-publication window", s)
		}
		out = append(out, a)
	}
	return out, nil
}
