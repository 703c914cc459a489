-- idem: mismatches counted on the key row.
--
-- mismatches: how many times the key came back with a different request (another
-- fingerprint), refused or, under the report-only hash policy, answered with the
-- stored response. Counted in batches after the answers, with the replays, so
-- operators can tell which routes' clients reuse keys for changed requests.
--
-- A constant default: added without a table rewrite.
ALTER TABLE idem.keys ADD COLUMN mismatches integer NOT NULL DEFAULT 0;
