BEGIN;
INSERT INTO payments (id, tenant_id, amount, currency, reference) VALUES (gen_random_uuid(), 'bench', 1250, 'EUR', 'bench') RETURNING created_at;
WITH ins AS (INSERT INTO idem.outbox (id, topic, payload, headers, tenant_id, idempotency_key) VALUES (gen_random_uuid(), 'payments.created', '\x7b7d'::bytea, '{}'::jsonb, 'bench', 'k') RETURNING id) SELECT pg_notify('idem_outbox', '') FROM ins;
COMMIT;
