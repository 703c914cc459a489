-- idem: the relay leases outbox messages instead of holding a transaction while it
-- delivers; the sweeper removes delivered outbox rows and old inbox rows; the inbox
-- counts failed attempts and keeps poison messages as dead letters.

-- A relay claims a batch in a short transaction by moving available_at to the end of
-- its lease and recording itself in leased_by; it marks each message delivered (or
-- reschedules it) in its own statement. A relay that dies leaves its messages to be
-- claimed again once available_at passes.
ALTER TABLE idem.outbox ADD COLUMN leased_by uuid;

-- The sweeper's path to delivered rows past their retention.
CREATE INDEX outbox_delivered_idx ON idem.outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;

-- A row per (consumer, message) that was processed, is failing, or is dead.
--   processed_at: set in the transaction of the consumer's work (NULL until it commits)
--   attempts, last_error: failed attempts, counted outside the rolled-back work
--   dead_at: past the consumer's maximum attempts; kept until redriven or purged
--   subject, payload, headers: the message as last received, for redriving it
ALTER TABLE idem.inbox
    ADD COLUMN processed_at timestamptz,
    ADD COLUMN attempts     integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error   text,
    ADD COLUMN dead_at      timestamptz,
    ADD COLUMN subject      text,
    ADD COLUMN payload      bytea,
    ADD COLUMN headers      jsonb;
-- Every row written before this migration is a processed message.
UPDATE idem.inbox SET processed_at = received_at;

-- The sweeper's path to rows past the window; dead letters are not swept.
CREATE INDEX inbox_received_idx ON idem.inbox (received_at) WHERE dead_at IS NULL;
