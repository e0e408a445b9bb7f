//! API tokens: the secret is never kept, only its SHA-256.

use ring::digest::{SHA256, digest};
use sqlx::Row;
use stratus_core::ids::{AccountId, TokenId};

use super::malformed;
use crate::db::Database;
use crate::error::{Result, StoreError};
use crate::vault::{hex, random_hex};

/// Every token starts with this, so a leaked one is easy to recognise.
pub const TOKEN_PREFIX: &str = "stx_";

/// The SHA-256 of a token (or of any text), in hex: what is stored.
pub fn hash_token(token: &str) -> String {
    hex(digest(&SHA256, token.as_bytes()).as_ref())
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// The provider's operators: every account, hypervisors.
    Admin,
    /// One account's own resources.
    Customer,
    /// The provider's billing system: posts billing facts (invoices,
    /// reminders, payments) and reads billing events, nothing else.
    Billing,
}

impl TokenScope {
    /// An operator token's role as operators name it.
    pub fn role(self) -> &'static str {
        match self {
            Self::Admin => "operator",
            Self::Customer => "customer",
            Self::Billing => "billing",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Customer => "customer",
            Self::Billing => "billing",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "admin" => Ok(Self::Admin),
            "customer" => Ok(Self::Customer),
            "billing" => Ok(Self::Billing),
            other => Err(malformed("token scope", other)),
        }
    }
}

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub account_id: Option<AccountId>,
    pub name: String,
    pub scope: TokenScope,
    /// Unix milliseconds.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub struct Tokens<'a> {
    pub(super) db: &'a Database,
}

/// A token query: the columns of a record, then `$rest`.
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, account_id, name, scope, created_at, revoked_at FROM api_tokens ",
            $rest
        )
    };
}

impl Tokens<'_> {
    /// Creates a token and returns it with its secret, which is shown once
    /// and never stored (only its hash is).
    pub async fn issue(
        &self,
        now_millis: i64,
        account_id: Option<&AccountId>,
        name: &str,
        scope: TokenScope,
    ) -> Result<(TokenRecord, String)> {
        let token = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let id_bits = u64::from_str_radix(&random_hex(8)?, 16)
            .map_err(|_| StoreError::Invalid("random id".into()))?;
        let record = TokenRecord {
            id: TokenId::from_random(id_bits),
            account_id: account_id.cloned(),
            name: name.to_owned(),
            scope,
            created_at: now_millis,
            revoked_at: None,
        };
        self.insert(&record, &hash_token(&token)).await?;
        Ok((record, token))
    }

    pub async fn insert(&self, record: &TokenRecord, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, account_id, name, token_hash, scope, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(record.id.as_str())
        .bind(record.account_id.as_ref().map(AccountId::as_str))
        .bind(&record.name)
        .bind(token_hash)
        .bind(record.scope.as_str())
        .bind(record.created_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(select_tokens!("WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| from_row(&row)).transpose()
    }

    pub async fn get(&self, id: &TokenId) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(select_tokens!("WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| from_row(&row)).transpose()
    }

    pub async fn of_account(&self, account: &AccountId) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(select_tokens!(
            "WHERE account_id = $1 ORDER BY created_at, id"
        ))
        .bind(account.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes a token at `at`; revoking twice keeps the first time.
    pub async fn revoke(&self, id: &TokenId, at: i64) -> Result<Option<TokenRecord>> {
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(id.as_str())
            .execute(self.db.pool())
            .await?;
        self.get(id).await
    }

    pub async fn has_active_admin(&self) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE scope = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok(count > 0)
    }
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord> {
    let id: String = row.try_get("id")?;
    let account_id: Option<String> = row.try_get("account_id")?;
    let scope: String = row.try_get("scope")?;
    Ok(TokenRecord {
        id: TokenId::parse(&id).ok_or_else(|| malformed("token id", &id))?,
        account_id: account_id
            .map(|raw| AccountId::parse(&raw).ok_or_else(|| malformed("account id", &raw)))
            .transpose()?,
        name: row.try_get("name")?,
        scope: TokenScope::parse(&scope)?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
