-- +goose Up
-- One seal per commit: an HMAC of the commit's range and of the log's root
-- after it, under a key the database never holds (docs/audit.md, "Seals").
-- Entries that reach no seal were not written by a replica.
CREATE TABLE audit_seals (
    size bigint PRIMARY KEY CHECK (size > 0),
    mac  bytea  NOT NULL CHECK (length(mac) = 32)
);
-- Checkpoints with the cosignatures that met the witness policy's quorum.
CREATE TABLE audit_witnessed (
    size bigint PRIMARY KEY,
    note bytea  NOT NULL
);
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_witnessed_append_only BEFORE UPDATE OR DELETE ON audit_witnessed
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_witnessed_no_truncate BEFORE TRUNCATE ON audit_witnessed
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- +goose Down
DROP TABLE audit_witnessed;
DROP TABLE audit_seals;
