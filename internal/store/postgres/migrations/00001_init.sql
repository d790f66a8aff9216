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

-- The audit log: append-only and hash-chained. seq is assigned under the
-- row lock on audit_head, so replicas sharing the database extend one chain.
CREATE TABLE audit_entries (
    seq              bigint PRIMARY KEY,
    id               text        NOT NULL UNIQUE,
    request_id       text        NOT NULL,
    subject          text        NOT NULL,
    relation         text        NOT NULL,
    object           text        NOT NULL,
    reason           text        NOT NULL,
    caveat_context   text[]      NOT NULL,
    ts               timestamptz NOT NULL,
    method           text        NOT NULL,
    code             text        NOT NULL,
    payload_sha256   text        NOT NULL,
    signature_sha256 text        NOT NULL,
    prev_hash        text        NOT NULL,
    hash             text        NOT NULL
);
CREATE INDEX audit_entries_object ON audit_entries (object text_pattern_ops, seq);

CREATE TABLE audit_head (
    id   int PRIMARY KEY CHECK (id = 1),
    seq  bigint NOT NULL,
    hash text   NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');

-- Defence in depth behind the grants (docs/postgres.md): no role, not even
-- the owner, rewrites history without first dropping this trigger.
-- +goose StatementBegin
CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_entries_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only();
CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only();

-- +goose Down
DROP TABLE audit_head;
DROP TABLE audit_entries;
DROP FUNCTION audit_entries_append_only();
DROP TABLE signing_keys;
