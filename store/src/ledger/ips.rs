//! The IP ledger (R19-R22): holdings of addresses and IPv6 prefixes, the
//! blacklist state of addresses, every blacklist answer and the
//! operators' verdicts. A holding is never deleted: it keeps who held the
//! address from when to when, for abuse and legal requests.

use std::collections::HashSet;

use sqlx::Row;
use sqlx::any::AnyRow;
use stratus_core::ip::Family;

use super::malformed;
use crate::db::Database;
use crate::error::Result;

pub struct IpLedger<'a> {
    pub(super) db: &'a Database,
}

/// Who holds (or held) an address or IPv6 prefix, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub id: i64,
    pub pool: String,
    pub family: Family,
    pub slot: u64,
    /// An IPv4 address, or an IPv6 prefix in CIDR notation.
    pub address: String,
    pub prefix_len: u8,
    /// The holding server's uid.
    pub holder: String,
    pub account: String,
    /// `namespace/name` of the holding server.
    pub subject: String,
    pub allocated_at: i64,
    pub released_at: Option<i64>,
    pub quarantine_until: Option<i64>,
    /// When the address went back to the free set.
    pub returned_at: Option<i64>,
    /// When the sweep next asks the blacklists about it (`None`: now).
    pub next_check_at: Option<i64>,
    /// Inconclusive sweep checks in a row.
    pub inconclusive_checks: u32,
}

/// A holding about to be taken.
#[derive(Debug, Clone)]
pub struct NewHolding<'a> {
    pub pool: &'a str,
    pub family: Family,
    pub slot: u64,
    pub address: &'a str,
    pub prefix_len: u8,
    pub holder: &'a str,
    pub account: &'a str,
    pub subject: &'a str,
    pub at: i64,
    /// When the sweep first asks the blacklists about it again.
    pub next_check_at: i64,
}

/// How the addresses of one family of a pool are used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub allocated: u64,
    /// Released and not yet back in the free set (blacklisted ones aside).
    pub quarantined: u64,
    /// Listed by a blocking blacklist and not held.
    pub blacklisted: u64,
}

/// A blacklist's answer about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Listed,
    Clean,
    /// Inconclusive: an error code, a timeout, a SERVFAIL.
    Error,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listed => "listed",
            Self::Clean => "clean",
            Self::Error => "error",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        [Self::Listed, Self::Clean, Self::Error]
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| malformed("blacklist check result", raw))
    }
}

/// One stored blacklist answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub address: String,
    pub zone: String,
    pub result: CheckResult,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub checked_at: i64,
}

/// An address a blocking blacklist lists now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The holding's address (IPv6: the prefix).
    pub address: String,
    pub pool: String,
    pub family: Family,
    pub slot: u64,
    /// The address the blacklists were asked about.
    pub checked: String,
    pub zone: String,
    pub reason: String,
    pub since: i64,
}

/// An operator's verdict on an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub address: String,
    /// True: treat as listed; false: treat as clean.
    pub listed: bool,
    pub reason: String,
    pub actor: String,
    pub decided_at: i64,
}

/// A blacklist check an operator asked for, and its answer once given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub id: i64,
    /// The ledger's name of the address (IPv6: the server prefix).
    pub address: String,
    /// The address the blacklists are asked about.
    pub checked: String,
    pub pool: String,
    pub family: Family,
    pub slot: u64,
    pub requested_by: String,
    pub requested_at: i64,
    pub answered_at: Option<i64>,
    /// `clean`, `listed` or `inconclusive`, once answered.
    pub verdict: Option<String>,
}

const REQUEST_COLUMNS: &str = "id, address, checked, pool, family, slot, requested_by, \
     requested_at, answered_at, verdict";

fn check_request(row: &AnyRow) -> Result<CheckRequest> {
    Ok(CheckRequest {
        id: row.try_get("id")?,
        address: row.try_get("address")?,
        checked: row.try_get("checked")?,
        pool: row.try_get("pool")?,
        family: family(&row.try_get::<String, _>("family")?)?,
        slot: unsigned(row, "slot")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        answered_at: row.try_get("answered_at")?,
        verdict: row.try_get("verdict")?,
    })
}

const HOLDING_COLUMNS: &str = "id, pool, family, slot, address, prefix_len, holder, account, \
     subject, allocated_at, released_at, quarantine_until, returned_at, next_check_at, \
     inconclusive_checks";

fn family(raw: &str) -> Result<Family> {
    Family::parse(raw).ok_or_else(|| malformed("address family", raw))
}

fn unsigned(row: &AnyRow, column: &str) -> Result<u64> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| malformed(column, &value.to_string()))
}

fn holding(row: &AnyRow) -> Result<Holding> {
    let prefix_len = unsigned(row, "prefix_len")?;
    Ok(Holding {
        id: row.try_get("id")?,
        pool: row.try_get("pool")?,
        family: family(&row.try_get::<String, _>("family")?)?,
        slot: unsigned(row, "slot")?,
        address: row.try_get("address")?,
        prefix_len: u8::try_from(prefix_len)
            .map_err(|_| malformed("prefix length", &prefix_len.to_string()))?,
        holder: row.try_get("holder")?,
        account: row.try_get("account")?,
        subject: row.try_get("subject")?,
        allocated_at: row.try_get("allocated_at")?,
        released_at: row.try_get("released_at")?,
        quarantine_until: row.try_get("quarantine_until")?,
        returned_at: row.try_get("returned_at")?,
        next_check_at: row.try_get("next_check_at")?,
        inconclusive_checks: u32::try_from(unsigned(row, "inconclusive_checks")?)
            .unwrap_or(u32::MAX),
    })
}

fn listing(row: &AnyRow) -> Result<Listing> {
    Ok(Listing {
        address: row.try_get("address")?,
        pool: row.try_get("pool")?,
        family: family(&row.try_get::<String, _>("family")?)?,
        slot: unsigned(row, "slot")?,
        checked: row.try_get("checked")?,
        zone: row.try_get("zone")?,
        reason: row.try_get("reason")?,
        since: row.try_get("since")?,
    })
}

fn slot_column(slot: u64) -> Result<i64> {
    i64::try_from(slot).map_err(|_| malformed("slot", &slot.to_string()))
}

impl IpLedger<'_> {
    /// Takes `new` unless its address is out of circulation or the holder
    /// already holds an address of the family: the unique indexes decide,
    /// also between racing controllers. False when refused.
    pub async fn try_hold(&self, new: &NewHolding<'_>) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO ip_holdings (pool, family, slot, address, prefix_len, holder, account, subject, allocated_at, next_check_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(new.pool)
        .bind(new.family.api_name())
        .bind(slot_column(new.slot)?)
        .bind(new.address)
        .bind(i64::from(new.prefix_len))
        .bind(new.holder)
        .bind(new.account)
        .bind(new.subject)
        .bind(new.at)
        .bind(new.next_check_at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Held addresses of `pool` the sweep should ask about at `now`, the
    /// longest due first.
    pub async fn due_for_check(&self, pool: &str, now: i64, limit: u32) -> Result<Vec<Holding>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {HOLDING_COLUMNS} FROM ip_holdings \
             WHERE pool = $1 AND released_at IS NULL AND (next_check_at IS NULL OR next_check_at <= $2) \
             ORDER BY COALESCE(next_check_at, 0), id LIMIT $3"
        )))
        .bind(pool)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(holding).collect()
    }

    /// Sets when the sweep next asks about a holding, and its count of
    /// inconclusive checks in a row.
    pub async fn schedule_check(
        &self,
        id: i64,
        next_check_at: i64,
        inconclusive: u32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE ip_holdings SET next_check_at = $2, inconclusive_checks = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(next_check_at)
        .bind(i64::from(inconclusive))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The listings of what `holder` holds now.
    pub async fn listings_held_by(&self, holder: &str) -> Result<Vec<Listing>> {
        let rows = sqlx::query(
            "SELECT b.address, b.pool, b.family, b.slot, b.checked, b.zone, b.reason, b.since \
             FROM ip_blacklisted b JOIN ip_holdings h ON h.address = b.address \
             WHERE h.holder = $1 AND h.released_at IS NULL ORDER BY b.family",
        )
        .bind(holder)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(listing).collect()
    }

    /// What `holder` holds now, one holding per family at most.
    pub async fn held_by(&self, holder: &str) -> Result<Vec<Holding>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {HOLDING_COLUMNS} FROM ip_holdings WHERE holder = $1 AND released_at IS NULL ORDER BY family"
        )))
        .bind(holder)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(holding).collect()
    }

    /// Slots of a pool's family that are out of circulation: held, in
    /// quarantine, or listed by a blocking blacklist.
    pub async fn unavailable_slots(&self, pool: &str, family: Family) -> Result<HashSet<u64>> {
        let rows = sqlx::query(
            "SELECT slot FROM ip_holdings WHERE pool = $1 AND family = $2 AND returned_at IS NULL \
             UNION SELECT slot FROM ip_blacklisted WHERE pool = $1 AND family = $2",
        )
        .bind(pool)
        .bind(family.api_name())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|row| unsigned(row, "slot")).collect()
    }

    /// Ends the holdings of `holder`: their addresses wait in quarantine
    /// until `quarantine_until`. A second call changes nothing.
    /// The PTRs of its addresses are removed in the same step (R22: a
    /// released address answers no customer's name).
    pub async fn release(&self, holder: &str, at: i64, quarantine_until: i64) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "UPDATE ip_holdings SET released_at = $2, quarantine_until = $3 \
             WHERE holder = $1 AND released_at IS NULL",
        )
        .bind(holder)
        .bind(at)
        .bind(quarantine_until)
        .execute(&mut *tx)
        .await?;
        super::ptrs::remove_all_of(&mut tx, holder, "controller", at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Released holdings of `pool` whose quarantine is over at `now`,
    /// oldest first.
    pub async fn quarantine_over(&self, pool: &str, now: i64, limit: u32) -> Result<Vec<Holding>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {HOLDING_COLUMNS} FROM ip_holdings \
             WHERE released_at IS NOT NULL AND returned_at IS NULL AND quarantine_until <= $1 \
             AND pool = $3 ORDER BY quarantine_until, id LIMIT $2"
        )))
        .bind(now)
        .bind(i64::from(limit))
        .bind(pool)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(holding).collect()
    }

    /// Puts a released holding's address back in the free set.
    pub async fn return_to_pool(&self, id: i64, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE ip_holdings SET returned_at = $2 \
             WHERE id = $1 AND released_at IS NOT NULL AND returned_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Every holding of an address (IPv6: of a prefix), oldest first.
    pub async fn history(&self, address: &str) -> Result<Vec<Holding>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {HOLDING_COLUMNS} FROM ip_holdings WHERE address = $1 ORDER BY allocated_at, id"
        )))
        .bind(address)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(holding).collect()
    }

    /// The IPv6 prefix lengths holdings were ever made with: an address is
    /// looked up under the prefix of each.
    pub async fn ipv6_prefix_lengths(&self) -> Result<Vec<u8>> {
        let rows = sqlx::query("SELECT DISTINCT prefix_len FROM ip_holdings WHERE family = 'ipv6'")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let len = unsigned(row, "prefix_len")?;
                u8::try_from(len).map_err(|_| malformed("prefix length", &len.to_string()))
            })
            .collect()
    }

    /// Whether any address of `pool` is held or in quarantine.
    pub async fn pool_in_use(&self, pool: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS used FROM ip_holdings WHERE pool = $1 AND returned_at IS NULL LIMIT 1",
        )
        .bind(pool)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.is_some())
    }

    /// How the addresses of one family of a pool are used now.
    pub async fn usage(&self, pool: &str, family: Family) -> Result<Usage> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM ip_holdings WHERE pool = $1 AND family = $2 AND released_at IS NULL) AS allocated, \
               (SELECT COUNT(*) FROM ip_holdings h WHERE pool = $1 AND family = $2 \
                  AND released_at IS NOT NULL AND returned_at IS NULL \
                  AND NOT EXISTS (SELECT 1 FROM ip_blacklisted b WHERE b.address = h.address)) AS quarantined, \
               (SELECT COUNT(*) FROM ip_blacklisted b WHERE pool = $1 AND family = $2 \
                  AND NOT EXISTS (SELECT 1 FROM ip_holdings h WHERE h.address = b.address AND h.released_at IS NULL)) AS blacklisted",
        )
        .bind(pool)
        .bind(family.api_name())
        .fetch_one(self.db.pool())
        .await?;
        Ok(Usage {
            allocated: unsigned(&row, "allocated")?,
            quarantined: unsigned(&row, "quarantined")?,
            blacklisted: unsigned(&row, "blacklisted")?,
        })
    }

    /// Appends a blacklist answer.
    pub async fn record_check(&self, check: &Check) -> Result<()> {
        sqlx::query(
            "INSERT INTO dnsbl_checks (address, zone, result, code, reason, checked_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&check.address)
        .bind(&check.zone)
        .bind(check.result.as_str())
        .bind(check.code.as_deref())
        .bind(check.reason.as_deref())
        .bind(check.checked_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The latest `limit` answers about an address, newest first.
    pub async fn checks(&self, address: &str, limit: u32) -> Result<Vec<Check>> {
        let rows = sqlx::query(
            "SELECT address, zone, result, code, reason, checked_at FROM dnsbl_checks \
             WHERE address = $1 ORDER BY checked_at DESC, id DESC LIMIT $2",
        )
        .bind(address)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Check {
                    address: row.try_get("address")?,
                    zone: row.try_get("zone")?,
                    result: CheckResult::parse(&row.try_get::<String, _>("result")?)?,
                    code: row.try_get("code")?,
                    reason: row.try_get("reason")?,
                    checked_at: row.try_get("checked_at")?,
                })
            })
            .collect()
    }

    /// Marks an address listed by a blocking blacklist (the first listing
    /// is kept when it is listed again).
    pub async fn mark_listed(&self, listing: &Listing) -> Result<()> {
        sqlx::query(
            "INSERT INTO ip_blacklisted (address, pool, family, slot, checked, zone, reason, since) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&listing.address)
        .bind(&listing.pool)
        .bind(listing.family.api_name())
        .bind(slot_column(listing.slot)?)
        .bind(&listing.checked)
        .bind(&listing.zone)
        .bind(&listing.reason)
        .bind(listing.since)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Clears the listing of an address; true if it was listed.
    pub async fn clear_listing(&self, address: &str) -> Result<bool> {
        let cleared = sqlx::query("DELETE FROM ip_blacklisted WHERE address = $1")
            .bind(address)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(cleared > 0)
    }

    /// The listing of an address, if listed.
    pub async fn listing(&self, address: &str) -> Result<Option<Listing>> {
        let row = sqlx::query(
            "SELECT address, pool, family, slot, checked, zone, reason, since FROM ip_blacklisted WHERE address = $1",
        )
        .bind(address)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(listing).transpose()
    }

    /// Listed addresses in address order, `limit` after `after`.
    pub async fn listings(&self, after: Option<&str>, limit: u32) -> Result<Vec<Listing>> {
        let rows = sqlx::query(
            "SELECT address, pool, family, slot, checked, zone, reason, since FROM ip_blacklisted \
             WHERE address > $1 ORDER BY address LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(listing).collect()
    }

    /// Records an operator's verdict on an address, replacing an earlier one.
    pub async fn set_override(&self, verdict: &Override) -> Result<()> {
        sqlx::query(
            "INSERT INTO ip_overrides (address, verdict, reason, actor, decided_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (address) DO UPDATE SET verdict = excluded.verdict, reason = excluded.reason, \
             actor = excluded.actor, decided_at = excluded.decided_at",
        )
        .bind(&verdict.address)
        .bind(if verdict.listed { "listed" } else { "clean" })
        .bind(&verdict.reason)
        .bind(&verdict.actor)
        .bind(verdict.decided_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The operator's verdict on an address, if any.
    pub async fn override_of(&self, address: &str) -> Result<Option<Override>> {
        let row = sqlx::query(
            "SELECT address, verdict, reason, actor, decided_at FROM ip_overrides WHERE address = $1",
        )
        .bind(address)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| {
            let verdict: String = row.try_get("verdict")?;
            Ok(Override {
                address: row.try_get("address")?,
                listed: match verdict.as_str() {
                    "listed" => true,
                    "clean" => false,
                    other => return Err(malformed("override verdict", other)),
                },
                reason: row.try_get("reason")?,
                actor: row.try_get("actor")?,
                decided_at: row.try_get("decided_at")?,
            })
        })
        .transpose()
    }

    /// Withdraws the operator's verdict on an address; true if there was one.
    pub async fn remove_override(&self, address: &str) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM ip_overrides WHERE address = $1")
            .bind(address)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    /// Records an operator's request for a check of `request`'s address,
    /// unless one is already waiting for an answer: then that one is
    /// returned, so repeated clicks queue one check.
    pub async fn request_check(&self, request: &CheckRequest) -> Result<CheckRequest> {
        if let Some(waiting) = self.pending_request_for(&request.address).await? {
            return Ok(waiting);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO dnsbl_check_requests (address, checked, pool, family, slot, requested_by, requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {REQUEST_COLUMNS}"
        )))
        .bind(&request.address)
        .bind(&request.checked)
        .bind(&request.pool)
        .bind(request.family.api_name())
        .bind(slot_column(request.slot)?)
        .bind(&request.requested_by)
        .bind(request.requested_at)
        .fetch_one(self.db.pool())
        .await?;
        check_request(&row)
    }

    async fn pending_request_for(&self, address: &str) -> Result<Option<CheckRequest>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM dnsbl_check_requests \
             WHERE address = $1 AND answered_at IS NULL ORDER BY id LIMIT 1"
        )))
        .bind(address)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(check_request).transpose()
    }

    /// Requests of `pool` waiting for an answer, oldest first.
    pub async fn pending_requests(&self, pool: &str, limit: u32) -> Result<Vec<CheckRequest>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM dnsbl_check_requests \
             WHERE pool = $1 AND answered_at IS NULL ORDER BY id LIMIT $2"
        )))
        .bind(pool)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(check_request).collect()
    }

    pub async fn answer_request(&self, id: i64, verdict: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE dnsbl_check_requests SET answered_at = $2, verdict = $3 \
             WHERE id = $1 AND answered_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .bind(verdict)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The latest `limit` requests about an address, newest first.
    pub async fn requests_about(&self, address: &str, limit: u32) -> Result<Vec<CheckRequest>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM dnsbl_check_requests \
             WHERE address = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(address)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(check_request).collect()
    }
}
