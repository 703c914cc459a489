-- The example application's own table. Its migrations live in the default
-- `_sqlx_migrations` table; idem's live in `idem._sqlx_migrations`.
CREATE TABLE payments (
    id         uuid        PRIMARY KEY,
    tenant_id  text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    currency   char(3)     NOT NULL,
    reference  text,
    status     text        NOT NULL DEFAULT 'created',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payments_tenant_idx ON payments (tenant_id, created_at);
