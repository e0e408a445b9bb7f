-- Storage subscriptions count against their own quota (R27), beside the
-- servers' system disks.
ALTER TABLE quota_usage ADD COLUMN storage_gib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE quota_charges ADD COLUMN storage_gib BIGINT NOT NULL DEFAULT 0;
