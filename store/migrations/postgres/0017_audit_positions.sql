-- The audit log is read by position too (an account's history, R10): each
-- row keeps the transaction that wrote it, as billing charges do (0011,
-- 0015), so a reader never skips an entry committed late.
ALTER TABLE audit_log ADD COLUMN writer_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX audit_log_by_position ON audit_log (writer_xid, id);
