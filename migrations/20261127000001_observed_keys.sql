-- idem: keys seen by routes in observe mode (passive key logging, the first step of a
-- rollout). The layer records each key's first fingerprint and how often it came, to
-- count what it would have done; nothing here is ever replayed.
CREATE TABLE idem.observed_keys (
    tenant_id   text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    route       text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    seen        integer     NOT NULL DEFAULT 1,
    -- last_seen + the route's retention: past it the key counts as new again.
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- The sweeper's path to observations past their retention.
CREATE INDEX observed_keys_expires_at_idx ON idem.observed_keys (expires_at);
