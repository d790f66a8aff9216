-- +goose Up
-- Key metadata and lifecycle. The private half never appears here: handle is
-- what the key provider needs to find the key (a sealed blob, an HSM id).
CREATE TABLE signing_keys (
    id             text PRIMARY KEY,
    scope          text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'PREVIOUS', 'RETIRED')),
    public_key     bytea       NOT NULL CHECK (length(public_key) = 32),
    provider       text        NOT NULL,
    handle         bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    activated_at   timestamptz,
    deactivated_at timestamptz,
    retired_at     timestamptz
);
CREATE INDEX signing_keys_scope ON signing_keys (scope, created_at);
-- Exactly one signing key per scope, and at most one open rotation (PENDING
-- key) per scope, enforced here for every replica.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (scope) WHERE state = 'ACTIVE';
CREATE UNIQUE INDEX signing_keys_one_pending ON signing_keys (scope) WHERE state = 'PENDING';

-- The audit log (docs/audit.md): the leaves of an RFC 6962 Merkle tree, in
-- their canonical encoding; seq - 1 is the leaf index. Replicas extend one
-- log: the primary key refuses a second entry at the same seq.
CREATE TABLE audit_entries (
    seq  bigint PRIMARY KEY CHECK (seq > 0),
    leaf bytea  NOT NULL
);
-- Tree nodes from level 4 up (one per 16 entries); lower ones are recomputed.
CREATE TABLE audit_nodes (
    level smallint NOT NULL,
    idx   bigint   NOT NULL,
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);
-- Signed checkpoints (C2SP signed notes), one per size.
CREATE TABLE audit_checkpoints (
    size bigint PRIMARY KEY,
    note bytea  NOT NULL
);
-- Exported ranges dropped by the owner (plexsphere-signer --prune-audit-upto).
CREATE TABLE audit_pruned (
    upto bigint PRIMARY KEY,
    at   timestamptz NOT NULL DEFAULT now()
);
-- The checkpoint key: a provider key like the signing keys, never one of them.
CREATE TABLE audit_log_key (
    id          int  PRIMARY KEY CHECK (id = 1),
    key_id      text        NOT NULL,
    public_key  bytea       NOT NULL CHECK (length(public_key) = 32),
    provider    text        NOT NULL,
    handle      bytea       NOT NULL,
    created_at  timestamptz NOT NULL
);

-- Defence in depth behind the grants (docs/postgres.md): no role, not even
-- the owner, rewrites history without first dropping these triggers. The
-- owner's prune of exported entries announces itself with a transaction
-- setting; the service role has no DELETE privilege to use it with.
-- +goose StatementBegin
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION audit_entries_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.seq <= coalesce(nullif(current_setting('plexsphere_signer.prune_upto', true), ''), '0')::bigint THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_prune_only();
CREATE TRIGGER audit_nodes_append_only BEFORE UPDATE OR DELETE ON audit_nodes
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_key_append_only BEFORE UPDATE OR DELETE ON audit_log_key
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- +goose Down
DROP TABLE audit_log_key;
DROP TABLE audit_pruned;
DROP TABLE audit_checkpoints;
DROP TABLE audit_nodes;
DROP TABLE audit_entries;
DROP FUNCTION audit_append_only();
DROP FUNCTION audit_entries_prune_only();
DROP TABLE signing_keys;
