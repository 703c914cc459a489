-- idem: what the metrics need of a key row.
--
-- route: the route template the key was claimed on (axum's MatchedPath), so storage
-- growth can be told per endpoint without parsing raw paths. NULL for keys claimed
-- before this migration or outside a matched route.
--
-- replays: how many times the key's response was replayed, counted in batches after
-- the replays (never in the replaying request's path). With it the periodic stats
-- query tells how many keys were retried and how often.
--
-- Both are added without a table rewrite (a NULL column, and a constant default).
ALTER TABLE idem.keys ADD COLUMN route text;
ALTER TABLE idem.keys ADD COLUMN replays integer NOT NULL DEFAULT 0;

-- The periodic stats query counts dead letters through these small partial indexes
-- instead of scanning every delivered or processed row.
CREATE INDEX outbox_dead_idx ON idem.outbox (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL;
CREATE INDEX inbox_dead_idx ON idem.inbox (consumer) WHERE dead_at IS NOT NULL;
