-- Billing events are read by cursor (their id). PostgreSQL hands out ids
-- before commit, so a row with a smaller id can become visible after a
-- larger one: each row keeps the transaction that wrote it, and readers
-- see only rows older than every transaction still running, so a consumer
-- that stores its cursor never skips one.
ALTER TABLE billing_charges ADD COLUMN writer_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
