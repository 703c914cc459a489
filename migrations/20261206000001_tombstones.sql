-- idem: tombstones. A route whose policy keeps them (RiskClass::Critical's does) stores
-- a window with each key; when the key's retention has passed, the sweeper moves what
-- a late retry needs to be told apart into idem.tombstones, and a retry of the same
-- request within the window is answered 410 key-expired instead of running again.
-- The window is stored per key, like the retention, so the sweeper needs no policy.
ALTER TABLE idem.keys ADD COLUMN tombstone_window interval;

-- What is left of a key after its retention: no response, no request, no headers.
CREATE TABLE idem.tombstones (
    tenant_id       text        NOT NULL,
    key             text        NOT NULL,
    fingerprint     bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- When the original request completed, and the status it answered with.
    completed_at    timestamptz NOT NULL,
    response_status smallint    NOT NULL,
    -- The end of the window: the key's own expiry + its tombstone_window.
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- The sweeper's path to tombstones past their window.
CREATE INDEX tombstones_expires_at_idx ON idem.tombstones (expires_at);
