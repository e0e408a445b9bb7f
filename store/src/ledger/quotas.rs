//! Quota use: what each account holds, charged when an order is accepted
//! and released when the object is gone. The limit check and the charge are
//! one conditional UPDATE, so racing orders (two API replicas, one
//! customer's script) cannot overshoot.

use sqlx::Row;
use stratus_core::quota::{Quota, QuotaExceeded, Usage};

use crate::db::Database;
use crate::error::{Result, StoreError};

/// Why a resource's charge was not moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RechargeRefused {
    /// The growth does not fit the account's quota.
    Exceeded(QuotaExceeded),
    /// It is not charged what the caller expected: another change came
    /// first, or it is not charged at all (its object is gone).
    ChargedOtherwise,
}

pub struct Quotas<'a> {
    pub(super) db: &'a Database,
}

/// An unlimited key, as the SQL compares it.
fn bound(limit: Option<u64>) -> i64 {
    limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

fn column(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("quota amount {value} too large")))
}

/// `usage` as the columns store it: servers, vcpus, memory_mib, disk_gib,
/// storage_gib, snapshot_gib.
fn columns(usage: Usage) -> Result<[i64; 6]> {
    Ok([
        column(usage.servers)?,
        column(usage.vcpus)?,
        column(usage.memory_mib)?,
        column(usage.disk_gib)?,
        column(usage.storage_gib)?,
        column(usage.snapshot_gib)?,
    ])
}

/// The columns of a charge, in the order of [`columns`].
const NAMES: [&str; 6] = [
    "servers",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "storage_gib",
    "snapshot_gib",
];

fn usage_of(row: &sqlx::any::AnyRow) -> Usage {
    Usage {
        servers: amount(row, NAMES[0]),
        vcpus: amount(row, NAMES[1]),
        memory_mib: amount(row, NAMES[2]),
        disk_gib: amount(row, NAMES[3]),
        storage_gib: amount(row, NAMES[4]),
        snapshot_gib: amount(row, NAMES[5]),
    }
}

/// A stored amount; negative only if the ledger was edited by hand.
fn amount(row: &sqlx::any::AnyRow, name: &str) -> u64 {
    u64::try_from(row.get::<i64, _>(name)).unwrap_or(0)
}

/// Racing releases can make a refused charge fit on a second look; this
/// many looks, then the refusal stands.
const ATTEMPTS: usize = 3;

impl Quotas<'_> {
    /// Charges `requested` to `account` for the object `resource`
    /// (`namespace/name`) if it fits within `limits`; charging the same
    /// resource again changes nothing. The inner error says which quota it
    /// would exceed.
    pub async fn charge(
        &self,
        account: &str,
        resource: &str,
        requested: Usage,
        limits: Quota,
        at: i64,
    ) -> Result<std::result::Result<(), QuotaExceeded>> {
        let amounts = columns(requested)?;
        for _ in 0..ATTEMPTS {
            let mut tx = self.db.pool().begin().await?;
            let new = sqlx::query(
                "INSERT INTO quota_charges (resource, account, servers, vcpus, memory_mib, disk_gib, \
                 storage_gib, snapshot_gib, charged_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(resource)
            .bind(account)
            .bind(amounts[0])
            .bind(amounts[1])
            .bind(amounts[2])
            .bind(amounts[3])
            .bind(amounts[4])
            .bind(amounts[5])
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if new == 0 {
                tx.commit().await?;
                return Ok(Ok(()));
            }
            // The account's first charge finds no usage row: make it and
            // try once more. Every later charge is these two statements.
            let mut charged = 0;
            for _ in 0..2 {
                charged = sqlx::query(
                    "UPDATE quota_usage SET servers = servers + $2, vcpus = vcpus + $3, \
                     memory_mib = memory_mib + $4, disk_gib = disk_gib + $5, \
                     storage_gib = storage_gib + $6, snapshot_gib = snapshot_gib + $7 \
                     WHERE account = $1 AND servers + $2 <= $8 AND vcpus + $3 <= $9 \
                     AND memory_mib + $4 <= $10 AND disk_gib + $5 <= $11 AND storage_gib + $6 <= $12 \
                     AND snapshot_gib + $7 <= $13",
                )
                .bind(account)
                .bind(amounts[0])
                .bind(amounts[1])
                .bind(amounts[2])
                .bind(amounts[3])
                .bind(amounts[4])
                .bind(amounts[5])
                .bind(bound(limits.servers))
                .bind(bound(limits.vcpus))
                .bind(bound(limits.memory_mib))
                .bind(bound(limits.disk_gib))
                .bind(bound(limits.storage_gib))
                .bind(bound(limits.snapshot_gib))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if charged == 1 {
                    break;
                }
                let first = sqlx::query(
                    "INSERT INTO quota_usage (account) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(account)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if first == 0 {
                    break;
                }
            }
            if charged == 1 {
                tx.commit().await?;
                return Ok(Ok(()));
            }
            tx.rollback().await?;
            if let Err(exceeded) = limits.check(self.usage(account).await?, requested) {
                return Ok(Err(exceeded));
            }
        }
        Err(StoreError::Conflict {
            kind: "quota use of account".into(),
            name: account.into(),
            expected: format!("the one seen while charging {resource}"),
        })
    }

    /// Charges `resource` `wanted` instead of `expected`, if the growth fits
    /// within `limits` (shrinking always fits) and it is charged `expected`
    /// now: a compare-and-set, so of two racing resizes of one server only
    /// one moves its charge, and a refused one can give back exactly what
    /// it took. Check and change are one transaction, so racing resizes
    /// and orders cannot overshoot. A resource not charged at all (its
    /// object is gone) is left alone.
    pub async fn recharge(
        &self,
        account: &str,
        resource: &str,
        expected: Usage,
        wanted: Usage,
        limits: Quota,
        at: i64,
    ) -> Result<std::result::Result<(), RechargeRefused>> {
        let wanted_amounts = columns(wanted)?;
        let mut tx = self.db.pool().begin().await?;
        // A write first, so the row is this transaction's until it ends
        // (PostgreSQL's row lock, SQLite's write lock).
        let held = sqlx::query(
            "UPDATE quota_charges SET charged_at = charged_at WHERE resource = $1 AND account = $2 \
             RETURNING servers, vcpus, memory_mib, disk_gib, storage_gib, snapshot_gib",
        )
        .bind(resource)
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            // Released (the object is gone), or never charged: nothing to move.
            tx.rollback().await?;
            return Ok(Err(RechargeRefused::ChargedOtherwise));
        };
        if usage_of(&held) != expected {
            tx.rollback().await?;
            return Ok(Err(RechargeRefused::ChargedOtherwise));
        }
        let mut delta = [0i64; 6];
        for (i, name) in NAMES.iter().enumerate() {
            delta[i] = wanted_amounts[i] - held.get::<i64, _>(*name);
        }
        if delta == [0; 6] {
            tx.commit().await?;
            return Ok(Ok(()));
        }
        let changed = sqlx::query(
            "UPDATE quota_usage SET servers = servers + $2, vcpus = vcpus + $3, \
             memory_mib = memory_mib + $4, disk_gib = disk_gib + $5, \
             storage_gib = storage_gib + $6, snapshot_gib = snapshot_gib + $7 \
             WHERE account = $1 AND ($2 <= 0 OR servers + $2 <= $8) AND ($3 <= 0 OR vcpus + $3 <= $9) \
             AND ($4 <= 0 OR memory_mib + $4 <= $10) AND ($5 <= 0 OR disk_gib + $5 <= $11) \
             AND ($6 <= 0 OR storage_gib + $6 <= $12) AND ($7 <= 0 OR snapshot_gib + $7 <= $13)",
        )
        .bind(account)
        .bind(delta[0])
        .bind(delta[1])
        .bind(delta[2])
        .bind(delta[3])
        .bind(delta[4])
        .bind(delta[5])
        .bind(bound(limits.servers))
        .bind(bound(limits.vcpus))
        .bind(bound(limits.memory_mib))
        .bind(bound(limits.disk_gib))
        .bind(bound(limits.storage_gib))
        .bind(bound(limits.snapshot_gib))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            sqlx::query(
                "UPDATE quota_charges SET servers = $2, vcpus = $3, memory_mib = $4, \
                 disk_gib = $5, storage_gib = $6, snapshot_gib = $7, charged_at = $8 WHERE resource = $1",
            )
            .bind(resource)
            .bind(wanted_amounts[0])
            .bind(wanted_amounts[1])
            .bind(wanted_amounts[2])
            .bind(wanted_amounts[3])
            .bind(wanted_amounts[4])
            .bind(wanted_amounts[5])
            .bind(at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Ok(()));
        }
        tx.rollback().await?;
        let growth = |i: usize| u64::try_from(delta[i]).unwrap_or(0);
        let requested = Usage {
            servers: growth(0),
            vcpus: growth(1),
            memory_mib: growth(2),
            disk_gib: growth(3),
            storage_gib: growth(4),
            snapshot_gib: growth(5),
        };
        match limits.check(self.usage(account).await?, requested) {
            Err(exceeded) => Ok(Err(RechargeRefused::Exceeded(exceeded))),
            // The usage row moved under it (a release): a refusal that no
            // longer holds is no refusal; the caller may ask again.
            Ok(()) => Err(StoreError::Conflict {
                kind: "quota use of account".into(),
                name: account.into(),
                expected: format!("the one seen while charging {resource} again"),
            }),
        }
    }

    /// Returns what `resource` was charged; a second call changes nothing.
    pub async fn release(&self, resource: &str) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        let charge = sqlx::query(
            "DELETE FROM quota_charges WHERE resource = $1 \
             RETURNING account, servers, vcpus, memory_mib, disk_gib, storage_gib, snapshot_gib",
        )
        .bind(resource)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(charge) = charge {
            sqlx::query(
                "UPDATE quota_usage SET servers = servers - $2, vcpus = vcpus - $3, \
                 memory_mib = memory_mib - $4, disk_gib = disk_gib - $5, \
                 storage_gib = storage_gib - $6, snapshot_gib = snapshot_gib - $7 WHERE account = $1",
            )
            .bind(charge.get::<String, _>("account"))
            .bind(charge.get::<i64, _>("servers"))
            .bind(charge.get::<i64, _>("vcpus"))
            .bind(charge.get::<i64, _>("memory_mib"))
            .bind(charge.get::<i64, _>("disk_gib"))
            .bind(charge.get::<i64, _>("storage_gib"))
            .bind(charge.get::<i64, _>("snapshot_gib"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What `account` holds now.
    pub async fn usage(&self, account: &str) -> Result<Usage> {
        let row = sqlx::query(
            "SELECT servers, vcpus, memory_mib, disk_gib, storage_gib, snapshot_gib FROM quota_usage \
             WHERE account = $1",
        )
        .bind(account)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map_or_else(Usage::default, |row| usage_of(&row)))
    }
}
