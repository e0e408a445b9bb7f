-- What the controller carries out by policy (a suspension, a termination)
-- is audited exactly once however often it is worked out again: such rows
-- carry the change's id, unique. Rows written by callers have none.
ALTER TABLE audit_log ADD COLUMN once_key TEXT;
CREATE UNIQUE INDEX audit_log_once_key ON audit_log (once_key);
