-- idem: storing a key's response is a HOT update again. An UPDATE can only be HOT when
-- no index names a column it sets, in its key or its predicate; the completion sets
-- completed_at, which the partial index of phased leases named. The index now names
-- locked_until alone: a phased key holds a lease (locked_until set) from its claim
-- until it finishes (set back to NULL), and an atomic key never has one, so the index
-- holds the same rows as before: the phased keys in progress.
DROP INDEX idem.keys_leases_idx;
CREATE INDEX keys_leases_idx ON idem.keys (locked_until) WHERE locked_until IS NOT NULL;

-- A claimed row is completed moments later, in the same transaction: a tenth of each
-- page is kept free so the completed version fits beside it (a HOT update needs room
-- on the row's own page).
ALTER TABLE idem.keys SET (fillfactor = 90);
