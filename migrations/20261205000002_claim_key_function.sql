-- idem: a new key's claim as one function call, so the layer can send it in the same
-- message as its transaction's BEGIN (one round trip instead of two; see
-- idem_sqlx::keys::open). It inserts the key's row, bounding the wait on a transaction
-- that holds the same key by p_wait_ms (lock_timeout, put back afterwards), and raises
-- SQLSTATE IDEM1 when the key already has a row: the caller then claims it the long
-- way, which reads that row (a replay, a mismatch, an expired key to take over).
-- PL/pgSQL keeps the INSERT's plan for the session, so the call is planned once per
-- connection, not per request.
CREATE FUNCTION idem.claim_key(
    p_tenant text,
    p_key text,
    p_fingerprint bytea,
    p_method text,
    p_path text,
    p_route text,
    p_retention double precision,
    p_wait_ms integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    saved text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', p_wait_ms || 'ms', true);
    INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route,
        created_at, expires_at, retention)
    VALUES (p_tenant, p_key, p_fingerprint, p_method, p_path, p_route,
        now(), now() + make_interval(secs => p_retention), make_interval(secs => p_retention))
    ON CONFLICT (tenant_id, key) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the idempotency key is taken' USING ERRCODE = 'IDEM1';
    END IF;
    PERFORM set_config('lock_timeout', saved, true);
END
$$;
