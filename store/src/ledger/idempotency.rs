//! Idempotency keys: a retried request finds what its first attempt created.

use sqlx::Row;
use stratus_core::ids::AccountId;

use crate::db::Database;
use crate::error::Result;

/// Outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now bound to this request and resource name.
    Claimed,
    /// The key was used before, for this request hash and resource.
    Existing {
        request_hash: String,
        resource_name: String,
        /// Whether the resource was created (it may have been deleted since);
        /// false when the first attempt stopped before creating it.
        fulfilled: bool,
    },
}

pub struct IdempotencyKeys<'a> {
    pub(super) db: &'a Database,
}

impl IdempotencyKeys<'_> {
    /// Binds `key` to a request and the resource it creates, or tells what it
    /// was bound to before. Safe under concurrent callers: one wins.
    pub async fn claim(
        &self,
        account: &AccountId,
        key: &str,
        request_hash: &str,
        resource_name: &str,
        at: i64,
    ) -> Result<IdempotencyClaim> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (account_id, idempotency_key, request_hash, resource_name, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, idempotency_key) DO NOTHING",
        )
        .bind(account.as_str())
        .bind(key)
        .bind(request_hash)
        .bind(resource_name)
        .bind(at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(IdempotencyClaim::Claimed);
        }
        let row = sqlx::query(
            "SELECT request_hash, resource_name, fulfilled_at FROM idempotency_keys \
             WHERE account_id = $1 AND idempotency_key = $2",
        )
        .bind(account.as_str())
        .bind(key)
        .fetch_one(self.db.pool())
        .await?;
        let fulfilled_at: Option<i64> = row.try_get("fulfilled_at")?;
        Ok(IdempotencyClaim::Existing {
            request_hash: row.try_get("request_hash")?,
            resource_name: row.try_get("resource_name")?,
            fulfilled: fulfilled_at.is_some(),
        })
    }

    /// Records that the resource of `key` exists (the first time only).
    pub async fn fulfil(&self, account: &AccountId, key: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET fulfilled_at = $1 \
             WHERE account_id = $2 AND idempotency_key = $3 AND fulfilled_at IS NULL",
        )
        .bind(at)
        .bind(account.as_str())
        .bind(key)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Records that the resource a key names was created, whichever key
    /// names it: called before the resource is deleted, so a retry of an
    /// order whose first attempt stopped after creating it (and never
    /// fulfilled its key) cannot bring a deleted server back.
    pub async fn fulfil_resource(
        &self,
        account: &AccountId,
        resource_name: &str,
        at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET fulfilled_at = $1 \
             WHERE account_id = $2 AND resource_name = $3 AND fulfilled_at IS NULL",
        )
        .bind(at)
        .bind(account.as_str())
        .bind(resource_name)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Drops a claim whose order was refused before anything was created,
    /// so the key is as unused as before.
    pub async fn forget_unfulfilled(
        &self,
        account: &AccountId,
        key: &str,
        resource_name: &str,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE account_id = $1 AND idempotency_key = $2 \
             AND resource_name = $3 AND fulfilled_at IS NULL",
        )
        .bind(account.as_str())
        .bind(key)
        .bind(resource_name)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}
