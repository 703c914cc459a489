-- The example's tables can be distributed by tenant (Citus), co-located with idem's:
-- a distributed table's primary key must include its distribution column. On plain
-- Postgres nothing else changes.
ALTER TABLE payments DROP CONSTRAINT payments_pkey;
ALTER TABLE payments ADD PRIMARY KEY (tenant_id, id);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD PRIMARY KEY (tenant_id, id);
