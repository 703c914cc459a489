-- idem: the phased mode's columns on the key row.
--
-- A phased key's row commits at once, in progress, before the work; the handler's
-- phases then commit one by one. Reserved since the first migration:
--   recovery_point: the last phase that committed;
--   locked_until:   the end of the owner's lease (a retry after it takes the key over).
-- Added here:
--   fence:          the fencing token: 1 at the claim, one more at each take-over. A
--                   phase commits only while the row still carries its owner's token.
--                   NULL for keys of atomic routes.
--   phases:         the journal: each committed phase's output, or its permanent
--                   failure, by phase name (a JSON object).
--   request_query, request_body, request_content_type: the request as the claim
--                   received it (its path is in `path`), so the completer can finish
--                   a key whose client never came back.
--   operation_id:   the id of the key's status URL, for requests answered 202 Accepted
--                   while their phases go on.
--
-- All NULL columns: added without a table rewrite.
ALTER TABLE idem.keys ADD COLUMN fence bigint;
ALTER TABLE idem.keys ADD COLUMN phases jsonb;
ALTER TABLE idem.keys ADD COLUMN request_query text;
ALTER TABLE idem.keys ADD COLUMN request_body bytea;
ALTER TABLE idem.keys ADD COLUMN request_content_type text;
ALTER TABLE idem.keys ADD COLUMN operation_id uuid;

CREATE UNIQUE INDEX keys_operation_id_idx ON idem.keys (operation_id)
    WHERE operation_id IS NOT NULL;

-- The completer finds keys in progress whose lease passed through this small partial
-- index (only in-progress phased keys are in it).
CREATE INDEX keys_leases_idx ON idem.keys (locked_until)
    WHERE completed_at IS NULL AND fence IS NOT NULL;
