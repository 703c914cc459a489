-- idem: every table idem owns can be distributed by tenant_id (Citus), and works as
-- before on plain Postgres. Citus requires each unique constraint and primary key of a
-- table distributed by a column to include that column.
--
--   idem.keys:   operation ids are unique per tenant (the status URL's lookup names
--                the tenant too).
--   idem.outbox: tenant_id is NOT NULL ('' for a message enqueued outside any
--                tenant's request) and part of the primary key; the relay's
--                per-message statements find rows by id through outbox_id_idx.
DROP INDEX idem.keys_operation_id_idx;
CREATE UNIQUE INDEX keys_operation_id_idx ON idem.keys (tenant_id, operation_id)
    WHERE operation_id IS NOT NULL;

UPDATE idem.outbox SET tenant_id = '' WHERE tenant_id IS NULL;
ALTER TABLE idem.outbox ALTER COLUMN tenant_id SET DEFAULT '';
ALTER TABLE idem.outbox ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE idem.outbox DROP CONSTRAINT outbox_pkey;
ALTER TABLE idem.outbox ADD PRIMARY KEY (tenant_id, id);
CREATE INDEX outbox_id_idx ON idem.outbox (id);
