-- idem: what a phased key's derived keys and kept request are bound to.
--
--   binding: the key as stored when the phased key was claimed, if it differs from
--            `key` now (NULL: `key` itself). The keys a phase passes to other services
--            and the sealing of the kept request body are bound to it, so rewriting
--            `key` (turning key protection on, see the README's migration) changes
--            neither for a key still in progress. Cleared, with the kept request, when
--            the key finishes.
ALTER TABLE idem.keys ADD COLUMN binding text;
