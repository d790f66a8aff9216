-- +goose Up
-- History the store cannot rewrite (docs/postgres.md, "What each role can
-- do"). These hold for every role, the owner included, until someone drops
-- them; what the owner can still do is caught by the signer's checks.

-- A key's state only moves on: PENDING → ACTIVE → PREVIOUS → RETIRED, and
-- PENDING → RETIRED. RETIRED is terminal and its material is destroyed in
-- the same statement (the handle becomes empty). A key's identity (id,
-- scope, public key, provider, creation) never changes, and no key row is
-- ever deleted.
-- +goose StatementBegin
CREATE FUNCTION signing_keys_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'signing_keys: a key is never deleted (retire it)' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> OLD.id OR NEW.scope <> OLD.scope OR NEW.public_key <> OLD.public_key
       OR NEW.provider <> OLD.provider OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'signing_keys: key % may not change its identity', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.state <> OLD.state AND NOT (
           OLD.state = 'PENDING'  AND NEW.state IN ('ACTIVE', 'RETIRED')
        OR OLD.state = 'ACTIVE'   AND NEW.state = 'PREVIOUS'
        OR OLD.state = 'PREVIOUS' AND NEW.state = 'RETIRED') THEN
        RAISE EXCEPTION 'signing_keys: key % may not go from % to %', OLD.id, OLD.state, NEW.state USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.state = 'RETIRED' AND (NEW.handle <> OLD.handle OR NEW.retired_at IS DISTINCT FROM OLD.retired_at) THEN
        RAISE EXCEPTION 'signing_keys: key % is RETIRED', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.state = 'RETIRED' AND length(NEW.handle) <> 0 THEN
        RAISE EXCEPTION 'signing_keys: a RETIRED key keeps no handle' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.state <> 'RETIRED' AND NEW.handle <> OLD.handle THEN
        RAISE EXCEPTION 'signing_keys: key % may not change its handle', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER signing_keys_forward_only BEFORE UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION signing_keys_forward_only();
CREATE TRIGGER signing_keys_no_truncate BEFORE TRUNCATE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- A prune is a record in the log (client/auditlog.PruneRecord, appended and
-- sealed by the signer) and a mark that names it: the mark is append-only
-- and monotonic, and entries are deleted only at or below it. There is no
-- session setting that lets a role delete anything else.
ALTER TABLE audit_pruned ADD COLUMN record_seq bigint;
-- +goose StatementBegin
CREATE FUNCTION audit_pruned_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bigint;
    size bigint;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- A prune made before records existed may be given its record once.
        IF OLD.record_seq IS NULL AND NEW.upto = OLD.upto AND NEW.record_seq > NEW.upto THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit_pruned is append-only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT coalesce(max(upto), 0) INTO prev FROM audit_pruned;
    SELECT coalesce(max(seq), 0) INTO size FROM audit_entries;
    IF NEW.upto <= prev OR NEW.upto % 16 <> 0 OR NEW.record_seq IS NULL
       OR NEW.record_seq <= NEW.upto OR NEW.record_seq > size THEN
        RAISE EXCEPTION 'audit_pruned: a prune mark must be a whole tile beyond the last (%), and name its record in the log', prev
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_pruned_forward_only BEFORE INSERT OR UPDATE ON audit_pruned
    FOR EACH ROW EXECUTE FUNCTION audit_pruned_forward_only();
CREATE TRIGGER audit_pruned_no_delete BEFORE DELETE ON audit_pruned
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_pruned_no_truncate BEFORE TRUNCATE ON audit_pruned
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_entries_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT coalesce(max(upto), 0) FROM audit_pruned) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION audit_seals_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.size <= (SELECT coalesce(max(upto), 0) FROM audit_pruned) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_seals is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
DROP TRIGGER audit_seals_append_only ON audit_seals;
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_seals_prune_only();

-- The one way to delete: mark, then delete under the mark, in one call.
-- SECURITY DEFINER (the owner's rights) so that a prune role needs no
-- DELETE privilege; it checks what the triggers check, and the signer
-- checks the record itself (its seal, its root) before trusting the mark.
-- +goose StatementBegin
CREATE FUNCTION audit_prune(p_upto bigint, p_record bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    LOCK TABLE audit_pruned IN EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM audit_pruned WHERE upto = p_upto AND record_seq IS NULL) THEN
        UPDATE audit_pruned SET record_seq = p_record WHERE upto = p_upto;
        RETURN;
    END IF;
    INSERT INTO audit_pruned (upto, record_seq) VALUES (p_upto, p_record);
    DELETE FROM audit_entries WHERE seq <= p_upto;
    DELETE FROM audit_seals WHERE size <= p_upto;
END;
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION audit_prune(bigint, bigint) FROM PUBLIC;

-- Entries follow the log: a commit is contiguous and starts right after
-- the newest entry (or the prune mark), so no role inserts a row beyond
-- the log or in a gap.
-- +goose StatementBegin
CREATE FUNCTION audit_entries_contiguous() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo bigint;
    hi bigint;
    n bigint;
    prev bigint;
BEGIN
    SELECT min(seq), max(seq), count(*) INTO lo, hi, n FROM new_entries;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT greatest((SELECT coalesce(max(seq), 0) FROM audit_entries WHERE seq < lo),
                    (SELECT coalesce(max(upto), 0) FROM audit_pruned)) INTO prev;
    IF hi - lo + 1 <> n OR prev <> lo - 1 THEN
        RAISE EXCEPTION 'audit_entries: entries % to % do not follow the log (it ends at %)', lo, hi, prev
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_entries_contiguous AFTER INSERT ON audit_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_contiguous();

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_entries_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND OLD.seq <= coalesce(nullif(current_setting('plexsphere_signer.prune_upto', true), ''), '0')::bigint THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_entries is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
DROP TRIGGER audit_entries_contiguous ON audit_entries;
DROP FUNCTION audit_entries_contiguous();
DROP FUNCTION audit_prune(bigint, bigint);
DROP TRIGGER audit_seals_append_only ON audit_seals;
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
DROP FUNCTION audit_seals_prune_only();
DROP TRIGGER audit_pruned_no_truncate ON audit_pruned;
DROP TRIGGER audit_pruned_no_delete ON audit_pruned;
DROP TRIGGER audit_pruned_forward_only ON audit_pruned;
DROP FUNCTION audit_pruned_forward_only();
ALTER TABLE audit_pruned DROP COLUMN record_seq;
DROP TRIGGER signing_keys_no_truncate ON signing_keys;
DROP TRIGGER signing_keys_forward_only ON signing_keys;
DROP FUNCTION signing_keys_forward_only();
