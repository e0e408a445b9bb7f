-- An idempotency key remembers whether the resource it names was created, so
-- a retry after the resource was deleted is refused without reading the audit log.
ALTER TABLE idempotency_keys ADD COLUMN fulfilled_at BIGINT;

UPDATE idempotency_keys SET fulfilled_at = created_at
WHERE EXISTS (
    SELECT 1 FROM audit_log a
    WHERE a.action = 'server.order'
      AND a.subject = 'server/' || idempotency_keys.account_id || '/' || idempotency_keys.resource_name
);

-- Audit trails are read by subject.
CREATE INDEX audit_log_subject ON audit_log (subject, id);
