-- The ledger consumer's table: one row per payment.created message it processes.
-- Deliberately no unique constraint on payment_id: the inbox is what keeps
-- redelivered messages from writing twice.
CREATE TABLE ledger_entries (
    id         bigserial   PRIMARY KEY,
    payment_id uuid        NOT NULL,
    tenant_id  text        NOT NULL,
    amount     bigint      NOT NULL,
    currency   char(3)     NOT NULL,
    message_id uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
