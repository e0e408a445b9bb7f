-- Resource objects (desired state + status), kept as JSON documents.
-- Deleted objects stay as tombstones until compaction so watchers see the deletion.
CREATE TABLE objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    resource_version BIGINT NOT NULL,
    created_revision BIGINT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE INDEX objects_by_revision ON objects (kind, resource_version);

-- One row; every write bumps `value` first, which serialises writers so
-- revisions are handed out in commit order.
CREATE TABLE store_revision (
    id INTEGER PRIMARY KEY,
    value BIGINT NOT NULL,
    compacted BIGINT NOT NULL
);
INSERT INTO store_revision (id, value, compacted) VALUES (1, 0, 0);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    account_id TEXT,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_by_account ON api_tokens (account_id);

CREATE TABLE idempotency_keys (
    account_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
);

-- Append-only: who or what changed what, when, and why.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- Secrets such as agent tokens, encrypted with the control plane's master key.
CREATE TABLE credentials (
    name TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
