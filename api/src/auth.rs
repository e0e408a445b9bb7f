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
        // A client that sent too many invalid tokens is answered before its
        // token costs a lookup, unless the token was valid lately: clients
        // sharing its address (behind one NAT or an ingress not listed in
        // trustedProxies) keep working, and a revoked token is still
        // refused at once, since a known token is always looked up.
        let client = client_key(parts, &state.trusted_proxies);
        let now = std::time::Instant::now();
        let digest = hash_token(token);
        if let Some(client) = &client
            && !state.recently_valid.contains(&digest)
        {
            state
                .invalid_tokens
                .peek(client, now)
                .map_err(ApiError::rate_limited)?;
        }
        let refused = |message: &'static str| {
            if let Some(client) = &client {
                let _ = state.invalid_tokens.take(client, now);
            }
            ApiError::unauthorized(message)
        };
        let record = state
            .ledger
            .tokens()
            .by_hash(&digest)
            .await?
            .ok_or_else(|| refused("unknown token"))?;
        if record.revoked_at.is_some() {
            return Err(refused("this token has been revoked"));
        }
        state.recently_valid.insert(digest);
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

/// The client a request comes from, as a rate-limit key: the connection's
/// address, or behind a trusted proxy the last address of
/// `X-Forwarded-For` that is not a trusted proxy. IPv6 clients are keyed
/// by their /64 (one customer's LAN has billions of addresses). None when
/// the server did not say (requests made in-process).
pub fn client_key(parts: &Parts, trusted: &[ipnet::IpNet]) -> Option<String> {
    use std::net::IpAddr;
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if is_trusted(&peer) {
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in forwarded.iter().rev() {
            // A hop a trusted proxy wrote that does not read as an address
            // (even without a port) leaves the client at that proxy.
            let Some(hop) = forwarded_address(hop) else {
                break;
            };
            client = hop;
            if !is_trusted(&hop) {
                break;
            }
        }
    }
    Some(match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => ipnet::Ipv6Net::new(v6, 64)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        },
    })
}

/// One `X-Forwarded-For` entry as an address: `203.0.113.7`, `2001:db8::1`,
/// or with a port (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn forwarded_address(hop: &str) -> Option<std::net::IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}
