//! Chargeable events for the provider's billing system (R21's IP cleanup
//! fee, later ones), appended once each: the key makes a retried
//! reconcile record a charge once.

use serde::Serialize;
use sqlx::Row;

use crate::db::{Backend, Database};
use crate::error::Result;

pub struct Charges<'a> {
    pub(super) db: &'a Database,
}

/// One chargeable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Unique per charge (`ip_cleanup:{holding id}`).
    pub key: String,
    pub account: String,
    /// What is charged: `ip_cleanup`, ...
    pub kind: String,
    /// In minor units of `currency`.
    pub amount: u64,
    pub currency: String,
    /// What it is about (an address, a server).
    pub subject: String,
    /// Evidence, as JSON.
    pub detail: serde_json::Value,
    pub created_at: i64,
}

/// A charge as the provider's billing reads it, by cursor
/// (`GET /v1/admin/billing-events`) and on the billing webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingEvent {
    /// Unique and stable: the same charge always has the same id.
    pub id: String,
    pub cursor: String,
    pub account_id: String,
    /// `abuse_report`, `abuse_case_minimum`, `restore`, `ip_cleanup`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Integer, in minor units of `currency`.
    pub amount: u64,
    pub currency: String,
    pub subject: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub detail: serde_json::Value,
    /// RFC 3339.
    pub at: String,
}

/// Where a reader of the billing events stands: every charge before it was
/// shown, and every charge shown after it sorts after it.
///
/// On SQLite charges become visible in the order of their ids (one writer
/// commits at a time), so the position is the id, written as an integer.
/// On PostgreSQL ids are handed out before commit, so a charge with a
/// smaller id can become visible after a larger one: the position is the
/// writing transaction and the id, `"{xid}.{id}"`, and only charges of
/// transactions older than every one still running are shown, a set that
/// never grows below the position once seen. An integer cursor handed out
/// before (the id alone) still works there: the charges after that id, then
/// positions; a charge written concurrently with the last one it covered
/// may be shown once more (never skipped), recognisable by its stable id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ChargeCursor {
    /// Before the first charge.
    #[default]
    Start,
    /// After the charge with this id (SQLite's position; on PostgreSQL a
    /// cursor stored before positions existed).
    Id(i64),
    /// After the charge `id` written by transaction `writer` (PostgreSQL).
    Written { writer: i64, id: i64 },
}

impl ChargeCursor {
    /// Reads a cursor this ledger handed out (`0`, `N`, or `XID.N`).
    pub fn parse(raw: &str) -> Option<Self> {
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<i64>().ok())
                .flatten()
        };
        match raw.split_once('.') {
            None => match number(raw)? {
                0 => Some(Self::Start),
                id => Some(Self::Id(id)),
            },
            Some((writer, id)) => Some(Self::Written {
                writer: number(writer)?,
                id: number(id)?,
            }),
        }
    }
}

impl std::fmt::Display for ChargeCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start => f.write_str("0"),
            Self::Id(id) => write!(f, "{id}"),
            Self::Written { writer, id } => write!(f, "{writer}.{id}"),
        }
    }
}

impl Charge {
    /// The charge as billing reads it, at `cursor`.
    pub fn into_event(self, cursor: ChargeCursor) -> BillingEvent {
        BillingEvent {
            id: self.key,
            cursor: cursor.to_string(),
            account_id: self.account,
            kind: self.kind,
            amount: self.amount,
            currency: self.currency,
            subject: self.subject,
            detail: self.detail,
            at: jiff::Timestamp::from_millisecond(self.created_at)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        }
    }
}

impl Charges<'_> {
    /// Records `charge` unless its key was recorded before; true if new.
    pub async fn record(&self, charge: &Charge) -> Result<bool> {
        let amount = i64::try_from(charge.amount).map_err(|_| {
            crate::error::StoreError::Invalid(format!("charge amount {} too large", charge.amount))
        })?;
        let inserted = sqlx::query(
            "INSERT INTO billing_charges (charge_key, account, kind, amount, currency, subject, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&charge.key)
        .bind(&charge.account)
        .bind(&charge.kind)
        .bind(amount)
        .bind(&charge.currency)
        .bind(&charge.subject)
        .bind(charge.detail.to_string())
        .bind(charge.created_at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Up to `limit` charges after `cursor`, in order, each with its own
    /// cursor. A reader that resumes from the last cursor it saw sees every
    /// charge exactly once ([`ChargeCursor`]).
    pub async fn since(
        &self,
        cursor: ChargeCursor,
        limit: u32,
    ) -> Result<Vec<(ChargeCursor, Charge)>> {
        let limit = i64::from(limit);
        let rows = match self.db.backend() {
            Backend::Sqlite => {
                let after = match cursor {
                    ChargeCursor::Start => 0,
                    ChargeCursor::Id(id) | ChargeCursor::Written { id, .. } => id,
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id, 0 AS writer, {COLUMNS} FROM billing_charges WHERE id > $1 \
                     ORDER BY id LIMIT $2"
                )))
                .bind(after)
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?
            }
            Backend::Postgres => {
                // Only the constant column list and the cursor's form are
                // formatted in; its values are bound.
                let after = match cursor {
                    ChargeCursor::Start | ChargeCursor::Id(_) => "id > $2",
                    ChargeCursor::Written { .. } => {
                        "(writer_xid, id) > (CAST(CAST($2 AS TEXT) AS xid8), $3)"
                    }
                };
                let query = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id, CAST(CAST(writer_xid AS TEXT) AS BIGINT) AS writer, {COLUMNS} \
                     FROM billing_charges \
                     WHERE writer_xid < pg_snapshot_xmin(pg_current_snapshot()) AND {after} \
                     ORDER BY writer_xid, id LIMIT $1"
                )))
                .bind(limit);
                let query = match cursor {
                    ChargeCursor::Start => query.bind(0_i64),
                    ChargeCursor::Id(id) => query.bind(id),
                    ChargeCursor::Written { writer, id } => query.bind(writer).bind(id),
                };
                query.fetch_all(self.db.pool()).await?
            }
        };
        let sqlite = self.db.backend() == Backend::Sqlite;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let cursor = if sqlite {
                    ChargeCursor::Id(id)
                } else {
                    ChargeCursor::Written {
                        writer: row.try_get("writer")?,
                        id,
                    }
                };
                Ok((cursor, charge(row)?))
            })
            .collect()
    }

    /// The latest `limit` charges of an account, newest first.
    pub async fn of_account(&self, account: &str, limit: u32) -> Result<Vec<Charge>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM billing_charges WHERE account = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        )))
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(charge).collect()
    }
}

const COLUMNS: &str = "charge_key, account, kind, amount, currency, subject, detail, created_at";

fn charge(row: &sqlx::any::AnyRow) -> Result<Charge> {
    let detail: String = row.try_get("detail")?;
    let amount: i64 = row.try_get("amount")?;
    Ok(Charge {
        key: row.try_get("charge_key")?,
        account: row.try_get("account")?,
        kind: row.try_get("kind")?,
        amount: u64::try_from(amount)
            .map_err(|_| super::malformed("charge amount", &amount.to_string()))?,
        currency: row.try_get("currency")?,
        subject: row.try_get("subject")?,
        detail: serde_json::from_str(&detail)
            .map_err(|_| super::malformed("charge detail", &detail))?,
        created_at: row.try_get("created_at")?,
    })
}
