//! What the routes of customers' objects (servers, storage) share: the
//! account that may order, the `Idempotency-Key` of an order and the id it
//! binds, and which account a caller lists.

use crate::auth::Principal;
use crate::pagination::PageQuery;
use axum::http::HeaderMap;
use serde::Serialize;
use stratus_core::ids::AccountId;
use stratus_core::resources::{Account, AccountState};
use stratus_core::standing::{self, SuspensionReason};
use stratus_store::Resources;
use stratus_store::ledger::IdempotencyClaim;
use stratus_store::objects::StoredKind;

use crate::auth::hash_token;
use crate::error::ApiError;
use crate::state::ApiState;

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The order's `Idempotency-Key`, if it has a well-formed one.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = raw.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// What an order's idempotency key says to do.
pub enum Retry<K, Id> {
    /// Create the object under this id.
    Create(Id),
    /// The first attempt created it: answer with it.
    Existing(Box<K>),
}

/// An order, as its idempotency key binds it.
pub struct Order<'a, Id> {
    /// Names the kind in messages (`server`, `storage subscription`); it is
    /// also hashed with the body, so one key never serves two kinds.
    pub what: &'a str,
    pub account: &'a AccountId,
    /// The order's `Idempotency-Key`, if it has one.
    pub key: Option<&'a str>,
    /// The order as it is hashed (never with a secret in it).
    pub body: String,
    /// The id a first attempt gives the object.
    pub fresh: Id,
    pub parse: fn(&str) -> Option<Id>,
}

impl<'a, Id> Order<'a, Id> {
    pub fn new(
        what: &'a str,
        account: &'a AccountId,
        key: Option<&'a str>,
        body: &impl Serialize,
        fresh: Id,
        parse: fn(&str) -> Option<Id>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            what,
            account,
            key,
            body: serde_json::to_string(body).map_err(|e| ApiError::internal(e.to_string()))?,
            fresh,
            parse,
        })
    }
}

/// Binds the order's idempotency key (if any) to the id the object gets:
/// its fresh id for a first attempt, the first attempt's id for a retry.
pub async fn claim_idempotency_key<K: StoredKind, Id: std::fmt::Display>(
    state: &ApiState,
    objects: &Resources<K>,
    order: Order<'_, Id>,
) -> Result<Retry<K, Id>, ApiError> {
    let Order {
        what,
        account: account_id,
        key,
        body,
        fresh,
        parse,
    } = order;
    let Some(key) = key else {
        return Ok(Retry::Create(fresh));
    };
    // Servers' orders were hashed bare before other kinds existed.
    let request_hash = if what == "server" {
        hash_token(&body)
    } else {
        hash_token(&format!("{what}:{body}"))
    };
    let fresh_name = fresh.to_string();
    let claim = state
        .ledger
        .idempotency()
        .claim(
            account_id,
            key,
            &request_hash,
            &fresh_name,
            state.now_millis(),
        )
        .await?;
    let IdempotencyClaim::Existing {
        request_hash: earlier,
        resource_name,
        fulfilled,
    } = claim
    else {
        return Ok(Retry::Create(fresh));
    };
    if earlier != request_hash {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this Idempotency-Key was already used with a different request body",
        ));
    }
    if let Some(existing) = objects
        .get(Some(account_id.as_str()), &resource_name)
        .await?
    {
        return Ok(Retry::Existing(Box::new(existing)));
    }
    if fulfilled {
        return Err(ApiError::conflict(format!(
            "the {what} {resource_name} ordered with this Idempotency-Key has since been deleted"
        )));
    }
    // The first attempt stopped between claiming the key and creating the object.
    let id = parse(&resource_name).ok_or_else(|| {
        ApiError::internal(format!("malformed {what} id bound to an idempotency key"))
    })?;
    Ok(Retry::Create(id))
}

/// The caller's account, if it may order: it exists, is active and no
/// suspension holds it.
pub async fn orderable_account(
    state: &ApiState,
    account_id: &AccountId,
) -> Result<Account, ApiError> {
    let account = state
        .accounts
        .get(None, account_id.as_str())
        .await?
        .ok_or_else(|| ApiError::forbidden("the account of this token no longer exists"))?;
    let standing = account.status.clone().unwrap_or_default();
    if let Some(suspension) = standing.suspensions.first() {
        return Err(ApiError::account_suspended(suspension.reason.as_str()));
    }
    if standing.state != AccountState::Active {
        return Err(ApiError::conflict(
            "the account is not active: new orders are refused",
        ));
    }
    Ok(account)
}

/// An order's `zone` must be one some registered hypervisor is in.
pub async fn check_zone(state: &ApiState, zone: &str) -> Result<(), ApiError> {
    let hypervisors = state.hypervisors.list(None).await?.items;
    if hypervisors.iter().any(|h| h.spec.zone == zone) {
        Ok(())
    } else {
        Err(ApiError::invalid("zone", format!("unknown zone {zone:?}")))
    }
}

/// The namespace a listing covers: a customer's own account, an
/// operator's `?account=` or every account.
pub fn listed_namespace(
    principal: &Principal,
    query: &PageQuery,
) -> Result<Option<String>, ApiError> {
    match principal {
        Principal::Customer { account_id, .. } => {
            if query
                .account
                .as_ref()
                .is_some_and(|a| a != account_id.as_str())
            {
                return Err(ApiError::bad_request(
                    "account",
                    "a customer token lists its own account only",
                ));
            }
            Ok(Some(account_id.to_string()))
        }
        Principal::Billing { .. } => {
            principal.require_admin()?;
            Ok(None)
        }
        Principal::Admin { .. } => match &query.account {
            Some(account) => Ok(Some(
                AccountId::parse(account)
                    .ok_or_else(|| ApiError::bad_request("account", "not an account id"))?
                    .to_string(),
            )),
            None => Ok(None),
        },
    }
}

/// Facts read to know whether an object is held (no real account comes
/// near it; beyond it the check refuses rather than reads without bound).
const MAX_FACTS: usize = 100_000;

/// A customer's server or storage `name` is evidence while it, or its
/// account, is held for abuse, an authority's request or an incomplete
/// identity file (R5, R8): its customer cannot destroy it (409 naming the
/// hold) until an operator lifts the hold or terminates it. The hold is
/// worked out from the facts as recorded, not from what the deadline
/// runner has carried out yet, so a customer who sees a hold reported in
/// its history cannot delete ahead of the runner; `own` are the reasons
/// already written on the object.
pub async fn refuse_while_held_as_evidence(
    state: &ApiState,
    account_id: &AccountId,
    what: &str,
    name: &str,
    own: &[SuspensionReason],
) -> Result<(), ApiError> {
    let facts = state
        .ledger
        .facts()
        .standing_facts(account_id.as_str(), MAX_FACTS)
        .await?;
    let policy = &state.config.policy;
    let standing = standing::standing(&facts, policy, state.clock.now());
    let by_facts = standing
        .suspension_of(name, policy)
        .map(|s| s.reasons)
        .unwrap_or_default();
    let account = state.accounts.get(None, account_id.as_str()).await?;
    let held: Vec<SuspensionReason> = account
        .and_then(|a| a.status)
        .map(|s| s.suspensions)
        .unwrap_or_default()
        .iter()
        .map(|s| s.reason)
        .chain(by_facts)
        .chain(own.iter().copied())
        .filter(|r| r.keeps_evidence())
        .collect();
    match held.first() {
        Some(reason) => Err(ApiError::held_as_evidence(what, *reason)),
        None => Ok(()),
    }
}

/// Gives back the quota charge of `namespace/name`, an object the store
/// deleted outright: it had no finalizer yet, so the controller had made
/// nothing of it, and nothing else would ever give its charge back.
pub async fn release_deleted_outright(state: &ApiState, namespace: Option<&str>, name: &str) {
    let charged_as = stratus_core::quota::charged_object(namespace.unwrap_or_default(), name);
    if let Err(error) = state.ledger.quotas().release(&charged_as).await {
        tracing::warn!(%error, resource = %charged_as, "could not give back the charge of an object deleted outright");
    }
}
