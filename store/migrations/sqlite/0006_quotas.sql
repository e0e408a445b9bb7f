-- Quota use per account, charged and released with the objects that use
-- it. An order is charged by one conditional UPDATE of its account's row,
-- so concurrent orders can never take an account past its limits.
CREATE TABLE quota_usage (
    account TEXT PRIMARY KEY,
    servers BIGINT NOT NULL DEFAULT 0,
    vcpus BIGINT NOT NULL DEFAULT 0,
    memory_mib BIGINT NOT NULL DEFAULT 0,
    disk_gib BIGINT NOT NULL DEFAULT 0
);
-- One row per charged object (namespace/name): a retried order is charged
-- once, and a release returns exactly what was charged, once.
CREATE TABLE quota_charges (
    resource TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    servers BIGINT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    charged_at BIGINT NOT NULL
);
