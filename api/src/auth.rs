//! Bearer tokens: random secrets shown once, stored as SHA-256 hashes, looked
//! up on every request (so a revoked token stops working at once).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use stratus_core::ids::{AccountId, TokenId};
use stratus_store::ledger::{Actor, TokenRecord, TokenScope};

use crate::error::ApiError;
use crate::state::ApiState;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin {
        token_id: TokenId,
    },
    Customer {
        token_id: TokenId,
        account_id: AccountId,
    },
    /// The provider's billing system: billing facts and billing events only.
    Billing {
        token_id: TokenId,
    },
}

impl Principal {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> Actor {
        match self {
            Self::Admin { token_id }
            | Self::Customer { token_id, .. }
            | Self::Billing { token_id } => Actor::Token(token_id.clone()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin { .. } => Ok(()),
            Self::Customer { .. } | Self::Billing { .. } => Err(ApiError::forbidden(
                "this operation needs an operator (admin) token",
            )),
        }
    }

    /// Operators and the billing system.
    pub fn require_billing(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin { .. } | Self::Billing { .. } => Ok(()),
            Self::Customer { .. } => Err(ApiError::forbidden(
                "this operation needs an operator or billing token",
            )),
        }
    }

    /// The account a customer acts for; operators must use the admin endpoints.
    pub fn account(&self) -> Result<&AccountId, ApiError> {
        match self {
            Self::Customer { account_id, .. } => Ok(account_id),
            Self::Admin { .. } | Self::Billing { .. } => Err(ApiError::forbidden(
                "this operation is done with a token of the customer's account (POST /v1/accounts/{id}/tokens)",
            )),
        }
    }
}

pub use stratus_store::ledger::tokens::hash_token;

/// Creates a token; the secret is returned once and never stored.
pub async fn issue_token(
    state: &ApiState,
    account_id: Option<&AccountId>,
    name: &str,
    scope: TokenScope,
) -> Result<(TokenRecord, String), ApiError> {
    Ok(state
        .ledger
        .tokens()
        .issue(state.now_millis(), account_id, name, scope)
        .await?)
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <token> header")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header must be `Bearer <token>`")
            })?;
        let record = state
            .ledger
            .tokens()
            .by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized("this token has been revoked"));
        }
        state
            .rate_limiter
            .take(record.id.as_str(), std::time::Instant::now())
            .map_err(ApiError::rate_limited)?;
        Ok(match (record.scope, record.account_id) {
            (TokenScope::Admin, _) => Principal::Admin {
                token_id: record.id,
            },
            (TokenScope::Billing, _) => Principal::Billing {
                token_id: record.id,
            },
            (TokenScope::Customer, Some(account_id)) => Principal::Customer {
                token_id: record.id,
                account_id,
            },
            (TokenScope::Customer, None) => {
                return Err(ApiError::unauthorized("token is not bound to an account"));
            }
        })
    }
}
