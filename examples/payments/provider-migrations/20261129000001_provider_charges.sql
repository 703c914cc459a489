-- The example card provider's own table, in its own schema (with its own migration
-- history, `provider._sqlx_migrations`), in its own database in a real deployment.
CREATE SCHEMA IF NOT EXISTS provider;

CREATE TABLE provider.charges (
    id          text        PRIMARY KEY,
    merchant    text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    currency    char(3)     NOT NULL,
    status      text        NOT NULL DEFAULT 'captured',
    created_at  timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz
);
