-- idem: fencing tokens that never repeat for a key.
--
-- A token used to count the owners of one row: 1 at the claim, one more at each
-- take-over. A row deleted (evicted, swept) or claimed again started over at 1, so a
-- hung owner holding token 1 of the key's previous generation could commit into the
-- next one. Tokens now come from one sequence, so no two claims or take-overs of any
-- key ever share one; it starts above every count the old scheme could have reached.
--   fence:  the token (from idem.fences);
--   owners: how many owners the key had (1 at the claim, one more at each take-over),
--           which the completer's max_owners reads instead of the token.
CREATE SEQUENCE idem.fences AS bigint START WITH 4294967296;

ALTER TABLE idem.keys ADD COLUMN owners integer;

UPDATE idem.keys SET owners = fence WHERE fence IS NOT NULL AND completed_at IS NULL;
