-- idem: one row per (tenant, idempotency key).
-- In atomic mode a row becomes visible only when the request that claimed it commits,
-- together with the handler's writes and the stored response.
CREATE SCHEMA IF NOT EXISTS idem;

CREATE TABLE idem.keys (
    tenant_id              text        NOT NULL,
    key                    text        NOT NULL,
    fingerprint            bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    method                 text        NOT NULL,
    path                   text        NOT NULL,
    response_status        smallint,
    response_header_names  text[],
    response_header_values bytea[],
    -- NULL with a status set: the response was too large to store.
    response_body          bytea,
    created_at             timestamptz NOT NULL DEFAULT now(),
    completed_at           timestamptz,
    expires_at             timestamptz NOT NULL,
    -- Reserved for the phased mode: the last recovery point reached, and a lease.
    recovery_point         text,
    locked_until           timestamptz,
    PRIMARY KEY (tenant_id, key),
    CHECK (completed_at IS NULL OR response_status IS NOT NULL)
);

-- Lets the sweeper find expired rows without scanning the table.
CREATE INDEX keys_expires_at_idx ON idem.keys (expires_at);
