-- idem: the inbox is keyed by tenant too, so it can be distributed by tenant_id (Citus)
-- beside the consumer's own tenant-distributed tables: an idempotent consumer records
-- the message in the transaction of its work, and with the row on the worker of the
-- work's tenant that transaction stays on one worker. On plain Postgres it works as
-- before.
--
--   tenant_id: the tenant the message names (the relay's Idem-Tenant-Id header), ''
--              for a message without one. The same message always names the same
--              tenant, so (tenant_id, consumer, message_id) finds its row as
--              (consumer, message_id) did.
--
-- Rows recorded before this migration get the tenant from the headers they kept (a
-- failing or dead message), else from this database's outbox when the message came
-- from it (and is still there), else ''. A message of a tenant from another
-- producer's database, processed before the upgrade and delivered again after it,
-- would not find its row and would be processed again: upgrade such a consumer once
-- the broker holds nothing it processed without acknowledging.
ALTER TABLE idem.inbox ADD COLUMN tenant_id text NOT NULL DEFAULT '';

-- Only rows whose tenant is found are written.
UPDATE idem.inbox i SET tenant_id = o.tenant_id
    FROM idem.outbox o
    WHERE o.id = i.message_id AND o.tenant_id <> '';
UPDATE idem.inbox i SET tenant_id = h.value
    FROM (SELECT i2.consumer, i2.message_id, min(kv.value) AS value
            FROM idem.inbox i2,
                 jsonb_each_text(CASE WHEN jsonb_typeof(i2.headers) = 'object'
                                      THEN i2.headers END) kv
           WHERE lower(kv.key) = 'idem-tenant-id'
           GROUP BY i2.consumer, i2.message_id) h
    WHERE h.consumer = i.consumer AND h.message_id = i.message_id;

-- The consumer's statements name the tenant: the primary key finds the row. The
-- sweeper's (inbox_received_idx) and the dead letters' (inbox_dead_idx) paths stay as
-- they are: they need no uniqueness, so no tenant either.
ALTER TABLE idem.inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE idem.inbox ADD PRIMARY KEY (tenant_id, consumer, message_id);
