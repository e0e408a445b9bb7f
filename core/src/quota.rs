//! Quotas: how much an account may hold, and the check of an order against
//! what it holds already. The database applies the same limits atomically
//! when it charges an order; this is the explanation of a refusal.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::ServerResources;

/// How the ledger names what an object (`namespace/name`) is charged.
pub fn charged_object(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Limits of one account; a key that is absent is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Servers held at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<u64>,
    /// Virtual CPUs over all servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    /// Memory over all servers, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// System disks over all servers, GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    /// Storage subscriptions, GiB (R27).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_gib: Option<u64>,
    /// Snapshots and backups of servers' disks, GiB: each counts its
    /// server's disk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_gib: Option<u64>,
}

/// What an account holds (or an order asks for), in the units of [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub servers: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub storage_gib: u64,
    #[serde(default)]
    pub snapshot_gib: u64,
}

impl Usage {
    /// What one server of `resources` counts.
    pub fn of_server(resources: &ServerResources) -> Self {
        Self {
            servers: 1,
            vcpus: u64::from(resources.vcpus),
            memory_mib: resources.memory_mib,
            disk_gib: resources.disk_gib,
            storage_gib: 0,
            snapshot_gib: 0,
        }
    }

    /// What one storage subscription of `size_gib` counts.
    pub fn of_storage(size_gib: u64) -> Self {
        Self {
            storage_gib: size_gib,
            ..Self::default()
        }
    }

    /// What one snapshot of a disk of `disk_gib` counts.
    pub fn of_snapshot(disk_gib: u64) -> Self {
        Self {
            snapshot_gib: disk_gib,
            ..Self::default()
        }
    }

    fn get(&self, kind: QuotaKind) -> u64 {
        match kind {
            QuotaKind::Servers => self.servers,
            QuotaKind::Vcpus => self.vcpus,
            QuotaKind::MemoryMib => self.memory_mib,
            QuotaKind::DiskGib => self.disk_gib,
            QuotaKind::StorageGib => self.storage_gib,
            QuotaKind::SnapshotGib => self.snapshot_gib,
        }
    }
}

/// One key of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Servers,
    Vcpus,
    MemoryMib,
    DiskGib,
    StorageGib,
    SnapshotGib,
}

impl QuotaKind {
    pub const ALL: [Self; 6] = [
        Self::Servers,
        Self::Vcpus,
        Self::MemoryMib,
        Self::DiskGib,
        Self::StorageGib,
        Self::SnapshotGib,
    ];

    /// The key as the configuration and the API spell it.
    pub fn key(self) -> &'static str {
        match self {
            Self::Servers => "servers",
            Self::Vcpus => "vcpus",
            Self::MemoryMib => "memoryMib",
            Self::DiskGib => "diskGib",
            Self::StorageGib => "storageGib",
            Self::SnapshotGib => "snapshotGib",
        }
    }
}

/// Why an order does not fit: the first quota it would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub quota: QuotaKind,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota {} is {}: {} in use, this order needs {} more",
            self.quota.key(),
            self.limit,
            self.used,
            self.requested
        )
    }
}

impl Quota {
    pub fn limit(&self, kind: QuotaKind) -> Option<u64> {
        match kind {
            QuotaKind::Servers => self.servers,
            QuotaKind::Vcpus => self.vcpus,
            QuotaKind::MemoryMib => self.memory_mib,
            QuotaKind::DiskGib => self.disk_gib,
            QuotaKind::StorageGib => self.storage_gib,
            QuotaKind::SnapshotGib => self.snapshot_gib,
        }
    }

    /// These limits where set, `defaults` (the provider's) elsewhere.
    pub fn or(self, defaults: Quota) -> Quota {
        Quota {
            servers: self.servers.or(defaults.servers),
            vcpus: self.vcpus.or(defaults.vcpus),
            memory_mib: self.memory_mib.or(defaults.memory_mib),
            disk_gib: self.disk_gib.or(defaults.disk_gib),
            storage_gib: self.storage_gib.or(defaults.storage_gib),
            snapshot_gib: self.snapshot_gib.or(defaults.snapshot_gib),
        }
    }

    /// Whether `requested` fits beside `used`.
    pub fn check(&self, used: Usage, requested: Usage) -> Result<(), QuotaExceeded> {
        for quota in QuotaKind::ALL {
            let Some(limit) = self.limit(quota) else {
                continue;
            };
            let (used, requested) = (used.get(quota), requested.get(quota));
            if used.saturating_add(requested) > limit {
                return Err(QuotaExceeded {
                    quota,
                    limit,
                    used,
                    requested,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: ServerResources = ServerResources {
        vcpus: 2,
        memory_mib: 4096,
        disk_gib: 80,
    };

    #[test]
    fn an_order_fits_up_to_each_limit_and_not_beyond() {
        let quota = Quota {
            servers: Some(3),
            vcpus: Some(4),
            ..Default::default()
        };
        let one = Usage::of_server(&SMALL);
        assert_eq!(quota.check(Usage::default(), one), Ok(()));
        assert_eq!(quota.check(one, one), Ok(()), "exactly at the vCPU limit");
        let two = Usage {
            servers: 2,
            vcpus: 4,
            memory_mib: 8192,
            disk_gib: 160,
            storage_gib: 0,
            snapshot_gib: 0,
        };
        assert_eq!(
            quota.check(two, one),
            Err(QuotaExceeded {
                quota: QuotaKind::Vcpus,
                limit: 4,
                used: 4,
                requested: 2
            })
        );
        assert_eq!(
            Quota::default().check(two, one),
            Ok(()),
            "absent keys are unlimited"
        );
    }

    #[test]
    fn r27_storage_counts_against_its_own_quota_only() {
        let quota = Quota {
            disk_gib: Some(10),
            storage_gib: Some(100),
            ..Default::default()
        };
        let backup = Usage::of_storage(60);
        assert_eq!(quota.check(Usage::default(), backup), Ok(()));
        assert_eq!(
            quota.check(backup, backup),
            Err(QuotaExceeded {
                quota: QuotaKind::StorageGib,
                limit: 100,
                used: 60,
                requested: 60
            })
        );
        assert_eq!(
            quota.check(backup, Usage::of_storage(40)),
            Ok(()),
            "exactly at the limit"
        );
    }

    #[test]
    fn an_accounts_own_limits_override_the_defaults_key_by_key() {
        let defaults = Quota {
            servers: Some(10),
            vcpus: Some(32),
            ..Default::default()
        };
        let own = Quota {
            vcpus: Some(64),
            disk_gib: Some(500),
            ..Default::default()
        };
        assert_eq!(
            own.or(defaults),
            Quota {
                servers: Some(10),
                vcpus: Some(64),
                memory_mib: None,
                disk_gib: Some(500),
                storage_gib: None,
                snapshot_gib: None,
            }
        );
    }
}
