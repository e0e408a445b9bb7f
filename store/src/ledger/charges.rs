//! Chargeable events for the provider's billing system (R21's IP cleanup
//! fee, later ones), appended once each: the key makes a retried
//! reconcile record a charge once.

use serde::Serialize;
use sqlx::Row;

use super::position::Position;
use crate::db::Database;
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

impl Charge {
    /// The charge as billing reads it, at `cursor`.
    pub fn into_event(self, cursor: Position) -> BillingEvent {
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
    /// charge exactly once ([`Position`]).
    pub async fn since(&self, cursor: Position, limit: u32) -> Result<Vec<(Position, Charge)>> {
        let backend = self.db.backend();
        let (paging, binds) = cursor.paging(backend, "billing_charges", 2);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, {writer}, {COLUMNS} FROM billing_charges WHERE {after} \
             ORDER BY {order} LIMIT $1",
            writer = paging.writer,
            after = paging.after,
            order = paging.order,
        )))
        .bind(i64::from(limit));
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|row| Ok((Position::of_row(backend, row)?, charge(row)?)))
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
