-- idem: the transactional outbox and the inbox of idempotent consumers.

-- Messages enqueued in a request's transaction; a relay delivers them after commit.
CREATE TABLE idem.outbox (
    id               uuid        PRIMARY KEY,          -- UUIDv7; the downstream dedupe key
    topic            text        NOT NULL,
    payload          bytea       NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tenant_id        text,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    available_at     timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    delivered_at     timestamptz,
    dead_lettered_at timestamptz
);

-- The relay's queue: pending messages in the order they become available.
CREATE INDEX outbox_pending_idx ON idem.outbox (available_at, id)
    WHERE delivered_at IS NULL AND dead_lettered_at IS NULL;

-- Messages a consumer has processed; a redelivered message finds its row and is skipped.
CREATE TABLE idem.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
