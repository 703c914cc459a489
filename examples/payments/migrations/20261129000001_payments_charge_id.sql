-- The card provider's charge id of a payment made through `POST /payments/charged`
-- (NULL for payments that only record an intent, and until the charge is recorded).
ALTER TABLE payments ADD COLUMN charge_id text;
