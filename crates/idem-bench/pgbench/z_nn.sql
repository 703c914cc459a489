\set r random(1, 9000000000000000)
BEGIN;
INSERT INTO handwritten_idempotency (tenant_id, idempotency_key, created_at) VALUES ('bench', 'k' || :client_id || '-' || :r, now()) ON CONFLICT DO NOTHING;
INSERT INTO payments (id, tenant_id, amount, currency, reference) VALUES (gen_random_uuid(), 'bench', 1250, 'EUR', 'bench') RETURNING created_at;
INSERT INTO idem.outbox (id, topic, payload, headers, tenant_id, idempotency_key) VALUES (gen_random_uuid(), 'payments.created', '\x7b7d'::bytea, '{}'::jsonb, 'bench', 'k');
UPDATE handwritten_idempotency SET response_status_code = 201, response_body = '\x7b226964223a2230313933616263642d303030302d373030302d383030302d303030303030303030303030222c22616d6f756e74223a313235302c2263757272656e6379223a22455552222c227265666572656e6365223a2262656e6368222c22737461747573223a2263726561746564222c22637265617465645f6174223a22323032362d31312d32345430303a30303a30305a227d'::bytea WHERE tenant_id = 'bench' AND idempotency_key = 'k' || :client_id || '-' || :r;
COMMIT;
