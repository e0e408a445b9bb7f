//! Facts that are not desired state: API tokens (hashes only), idempotency
//! keys and the append-only audit log.

use sqlx::Row;

use crate::db::Database;
use crate::error::Result;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// The provider's operators: every account, hypervisors.
    Admin,
    /// One account's own resources.
    Customer,
}

impl TokenScope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Customer => "customer",
        }
    }

    fn parse(raw: &str) -> Self {
        if raw == "admin" {
            Self::Admin
        } else {
            Self::Customer
        }
    }
}

/// A stored token; the secret itself is never kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub account_id: Option<String>,
    pub name: String,
    pub scope: TokenScope,
    /// Unix milliseconds.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now bound to this request and resource name.
    Claimed,
    /// The key was used before, for this request hash and resource.
    Existing {
        request_hash: String,
        resource_name: String,
    },
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: i64,
    /// Who or what: `token:tok-…`, `controller`, `admin`.
    pub actor: String,
    pub action: String,
    /// What it was done to: `account/acc-…`, `server/acc-…/vs-…`.
    pub subject: String,
    /// Cause and evidence, as JSON.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn insert_token(&self, record: &TokenRecord, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, account_id, name, token_hash, scope, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&record.id)
        .bind(record.account_id.as_deref())
        .bind(&record.name)
        .bind(token_hash)
        .bind(record.scope.as_str())
        .bind(record.created_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT id, account_id, name, scope, created_at, revoked_at FROM api_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| token_from_row(&row)).transpose()
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, account_id, name, scope, created_at, revoked_at FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| token_from_row(&row)).transpose()
    }

    pub async fn tokens_of_account(&self, account_id: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, account_id, name, scope, created_at, revoked_at FROM api_tokens WHERE account_id = $1 ORDER BY created_at, id",
        )
        .bind(account_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token at `at`; revoking twice keeps the first time.
    pub async fn revoke_token(&self, id: &str, at: i64) -> Result<Option<TokenRecord>> {
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(self.db.pool())
            .await?;
        self.token(id).await
    }

    pub async fn has_active_admin_token(&self) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE scope = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok(count > 0)
    }

    /// Binds `key` to a request and the resource it creates, or tells what it
    /// was bound to before. Safe under concurrent callers: one wins.
    pub async fn claim_idempotency_key(
        &self,
        account_id: &str,
        key: &str,
        request_hash: &str,
        resource_name: &str,
        at: i64,
    ) -> Result<IdempotencyClaim> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (account_id, idempotency_key, request_hash, resource_name, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, idempotency_key) DO NOTHING",
        )
        .bind(account_id)
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
            "SELECT request_hash, resource_name FROM idempotency_keys WHERE account_id = $1 AND idempotency_key = $2",
        )
        .bind(account_id)
        .bind(key)
        .fetch_one(self.db.pool())
        .await?;
        Ok(IdempotencyClaim::Existing {
            request_hash: row.try_get("request_hash")?,
            resource_name: row.try_get("resource_name")?,
        })
    }

    /// Appends to the audit log (there is no update or delete).
    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.subject)
            .bind(&entry.detail)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Audit entries whose subject starts with `prefix`, oldest first.
    pub async fn audit_trail(&self, subject_prefix: &str) -> Result<Vec<AuditEntry>> {
        let pattern = format!(
            "{}%",
            subject_prefix.replace('%', "\\%").replace('_', "\\_")
        );
        let rows = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM audit_log WHERE subject LIKE $1 ESCAPE '\\' ORDER BY id",
        )
        .bind(pattern)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    subject: row.try_get("subject")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord> {
    let scope: String = row.try_get("scope")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        name: row.try_get("name")?,
        scope: TokenScope::parse(&scope),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
