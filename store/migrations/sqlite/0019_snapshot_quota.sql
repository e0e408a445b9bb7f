-- Snapshots and backups of servers' disks count against their own quota
-- key (`snapshotGib`), by the disk size of the server they copy.
ALTER TABLE quota_usage ADD COLUMN snapshot_gib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE quota_charges ADD COLUMN snapshot_gib BIGINT NOT NULL DEFAULT 0;
