-- Deleting a server fulfils the keys naming it (fulfil_resource).
CREATE INDEX idempotency_keys_by_resource ON idempotency_keys (account_id, resource_name);
