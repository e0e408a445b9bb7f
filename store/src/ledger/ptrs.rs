//! Reverse DNS records (R20–R22): the PTR set for an address a server
//! holds, and every change of one, for ever. A record exists only while
//! its holding does: [`super::IpLedger::release`] removes the records of
//! the holdings it ends in the same transaction, and setting one locks its
//! holding, so a PTR is never left on an address given back.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::Database;
use crate::error::Result;

pub struct PtrRecords<'a> {
    pub(super) db: &'a Database,
}

/// A PTR as it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtrRecord {
    pub address: String,
    pub hostname: String,
    pub holding_id: i64,
    pub holder: String,
    pub account: String,
    pub changed_at: i64,
}

/// One change of an address's PTR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtrChange {
    pub id: i64,
    pub address: String,
    /// `None`: removed (the default answers again).
    pub hostname: Option<String>,
    pub holder: String,
    pub account: String,
    pub subject: String,
    pub actor: String,
    pub changed_at: i64,
}

/// A PTR to set.
#[derive(Debug, Clone)]
pub struct SetPtr<'a> {
    pub address: &'a str,
    /// `None` removes it.
    pub hostname: Option<&'a str>,
    /// The holding the address belongs to, and its holder.
    pub holding_id: i64,
    pub holder: &'a str,
    pub actor: &'a str,
    pub at: i64,
}

fn record(row: &AnyRow) -> Result<PtrRecord> {
    Ok(PtrRecord {
        address: row.try_get("address")?,
        hostname: row.try_get("hostname")?,
        holding_id: row.try_get("holding_id")?,
        holder: row.try_get("holder")?,
        account: row.try_get("account")?,
        changed_at: row.try_get("changed_at")?,
    })
}

fn change(row: &AnyRow) -> Result<PtrChange> {
    Ok(PtrChange {
        id: row.try_get("id")?,
        address: row.try_get("address")?,
        hostname: row.try_get("hostname")?,
        holder: row.try_get("holder")?,
        account: row.try_get("account")?,
        subject: row.try_get("subject")?,
        actor: row.try_get("actor")?,
        changed_at: row.try_get("changed_at")?,
    })
}

/// Removes the PTRs of `holder`'s addresses, recording each removal, inside
/// the caller's transaction (the release of its holdings).
pub(super) async fn remove_all_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    holder: &str,
    actor: &str,
    at: i64,
) -> Result<u64> {
    let recorded = sqlx::query(
        "INSERT INTO ip_ptr_changes (address, hostname, holder, account, subject, actor, changed_at) \
         SELECT r.address, NULL, r.holder, r.account, h.subject, $2, $3 \
         FROM ip_ptr_records r JOIN ip_holdings h ON h.id = r.holding_id WHERE r.holder = $1",
    )
    .bind(holder)
    .bind(actor)
    .bind(at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM ip_ptr_records WHERE holder = $1")
        .bind(holder)
        .execute(&mut **tx)
        .await?;
    if recorded > 0 {
        bump_version(tx).await?;
    }
    Ok(recorded)
}

/// Moves the PTRs' version, in commit order (the row stays locked until
/// the caller's transaction ends).
async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE ip_ptr_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Most PTRs one holding may have (an IPv6 prefix holds many addresses;
/// an IPv4 holding has one).
pub const MAX_PTRS_PER_HOLDING: i64 = 64;

impl PtrRecords<'_> {
    /// Sets (or with no hostname removes) the PTR of an address of a
    /// holding, recording the change. False, changing nothing, when the
    /// holding is not `holder`'s or was released: the row is locked first,
    /// so a release racing this either comes after (and removes the PTR)
    /// or before (and this refuses).
    pub async fn set(&self, ptr: &SetPtr<'_>) -> Result<bool> {
        let mut tx = self.db.pool().begin().await?;
        // A no-op update: locks the holding row (PostgreSQL) and checks it
        // is still held, in one statement that SQLite runs too.
        let held = sqlx::query(
            "UPDATE ip_holdings SET holder = holder WHERE id = $1 AND holder = $2 AND released_at IS NULL",
        )
        .bind(ptr.holding_id)
        .bind(ptr.holder)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held != 1 {
            return Ok(false);
        }
        let holding = sqlx::query("SELECT account, subject FROM ip_holdings WHERE id = $1")
            .bind(ptr.holding_id)
            .fetch_one(&mut *tx)
            .await?;
        let account: String = holding.try_get("account")?;
        let subject: String = holding.try_get("subject")?;
        let previous: Option<String> =
            sqlx::query("SELECT hostname FROM ip_ptr_records WHERE address = $1")
                .bind(ptr.address)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("hostname"))
                .transpose()?;
        if previous.as_deref() == ptr.hostname {
            // Nothing changes: no history row, and the zone's serial stays.
            return Ok(true);
        }
        if previous.is_none() && ptr.hostname.is_some() {
            let held: i64 =
                sqlx::query("SELECT COUNT(*) AS held FROM ip_ptr_records WHERE holding_id = $1")
                    .bind(ptr.holding_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("held")?;
            if held >= MAX_PTRS_PER_HOLDING {
                return Err(crate::error::StoreError::Invalid(format!(
                    "at most {MAX_PTRS_PER_HOLDING} PTRs per address or prefix"
                )));
            }
        }
        match ptr.hostname {
            Some(hostname) => {
                sqlx::query(
                    "INSERT INTO ip_ptr_records (address, hostname, holding_id, holder, account, changed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (address) DO UPDATE SET hostname = excluded.hostname, \
                     holding_id = excluded.holding_id, holder = excluded.holder, \
                     account = excluded.account, changed_at = excluded.changed_at",
                )
                .bind(ptr.address)
                .bind(hostname)
                .bind(ptr.holding_id)
                .bind(ptr.holder)
                .bind(&account)
                .bind(ptr.at)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM ip_ptr_records WHERE address = $1")
                    .bind(ptr.address)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO ip_ptr_changes (address, hostname, holder, account, subject, actor, changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(ptr.address)
        .bind(ptr.hostname)
        .bind(ptr.holder)
        .bind(&account)
        .bind(&subject)
        .bind(ptr.actor)
        .bind(ptr.at)
        .execute(&mut *tx)
        .await?;
        bump_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The PTRs set for `holder`'s addresses.
    pub async fn of_holder(&self, holder: &str) -> Result<Vec<PtrRecord>> {
        let rows = sqlx::query(
            "SELECT address, hostname, holding_id, holder, account, changed_at \
             FROM ip_ptr_records WHERE holder = $1 ORDER BY address",
        )
        .bind(holder)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(record).collect()
    }

    /// A page of every PTR set, by address after `after`.
    pub async fn page(&self, after: Option<&str>, limit: u32) -> Result<Vec<PtrRecord>> {
        let rows = sqlx::query(
            "SELECT address, hostname, holding_id, holder, account, changed_at \
             FROM ip_ptr_records WHERE address > $1 ORDER BY address LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(record).collect()
    }

    /// The PTRs' version: moves with every committed change, in commit
    /// order (a reader that saw it never misses a change), 0 before the
    /// first.
    pub async fn last_change(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM ip_ptr_version WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get("version")?)
    }

    /// Every change of `address`'s PTR, oldest first.
    pub async fn history(&self, address: &str) -> Result<Vec<PtrChange>> {
        let rows = sqlx::query(
            "SELECT id, address, hostname, holder, account, subject, actor, changed_at \
             FROM ip_ptr_changes WHERE address = $1 ORDER BY id",
        )
        .bind(address)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(change).collect()
    }
}
