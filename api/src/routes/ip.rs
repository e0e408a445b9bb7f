//! IP pools and the IP ledger (operators): pools are created, listed and
//! deleted here in embedded mode (kubectl in Kubernetes mode); the ledger
//! answers who held an address when (R22). Customers see none of it.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stratus_core::ip::{self, Family};
use stratus_core::resources::{AddressCounts, IpPool, IpPoolSpec, Ipv4Block, Ipv6Block};
use stratus_core::validate;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject, CheckRequest, Holding, Listing, Override};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery, paginate};
use crate::state::ApiState;
use crate::views::millis_to_rfc3339;

/// A pool to create: its name, then the IpPool spec's fields (as the
/// configuration's `ipPools:` and kubectl write them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIpPool {
    pub name: String,
    pub zone: String,
    #[schema(value_type = Object)]
    pub ipv4: Ipv4Block,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub ipv6: Option<Ipv6Block>,
}

/// A pool; `ipv4` and `ipv6` are the IpPool spec's blocks, as written.
#[derive(Debug, Serialize, ToSchema)]
pub struct IpPoolView {
    pub name: String,
    pub zone: String,
    #[schema(value_type = Object)]
    pub ipv4: Ipv4Block,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ipv6: Option<Ipv6Block>,
    /// IPv4 addresses: total, allocated, quarantined, blacklisted, free.
    #[schema(value_type = Object)]
    pub ipv4_counts: AddressCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ipv6_counts: Option<AddressCounts>,
}

/// A pool as the ledger counts it now (not as its status last said).
async fn view(state: &ApiState, pool: &IpPool) -> Result<IpPoolView, ApiError> {
    let name = kube::ResourceExt::name_any(pool);
    let layout = pool.spec.layout().ok();
    let mut counts = [None, None];
    for (family, count) in Family::ALL.into_iter().zip(&mut counts) {
        if let Some(space) = layout.as_ref().and_then(|l| l.family(family)) {
            let usage = state.ledger.ips().usage(&name, family).await?;
            *count = Some(AddressCounts::new(
                space.usable(),
                usage.allocated,
                usage.quarantined,
                usage.blacklisted,
            ));
        }
    }
    let [ipv4_counts, ipv6_counts] = counts;
    Ok(IpPoolView {
        name,
        zone: pool.spec.zone.clone(),
        ipv4: pool.spec.ipv4.clone(),
        ipv6: pool.spec.ipv6.clone(),
        ipv4_counts: ipv4_counts.unwrap_or_default(),
        ipv6_counts,
    })
}

/// Creates an IP pool (operators). Overlapping another pool is refused,
/// naming it.
#[utoipa::path(post, path = "/v1/admin/ip-pools", tag = "ip", request_body = CreateIpPool,
    responses((status = 201, body = IpPoolView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_ip_pool(
    principal: Principal,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateIpPool>,
) -> Result<(StatusCode, Json<IpPoolView>), ApiError> {
    principal.require_admin()?;
    if !validate::is_dns_label(&request.name) {
        return Err(ApiError::invalid(
            "name",
            "name must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        ));
    }
    let spec = IpPoolSpec {
        zone: request.zone,
        ipv4: request.ipv4,
        ipv6: request.ipv6,
    };
    let layout = spec
        .layout()
        .map_err(|e| ApiError::invalid(&e.field, e.to_string()))?;
    let existing = state.ip_pools.list(None).await?.items;
    let named: Vec<(String, &IpPoolSpec)> = existing
        .iter()
        .map(|p| (kube::ResourceExt::name_any(p), &p.spec))
        .collect();
    if named.iter().any(|(name, _)| *name == request.name) {
        return Err(ApiError::conflict(format!(
            "IP pool {} exists",
            request.name
        )));
    }
    if let Some((other, family)) =
        ip::overlapping(&layout, named.iter().map(|(n, s)| (n.as_str(), *s)))
    {
        return Err(ApiError::conflict(format!(
            "the {family} addresses overlap those of IP pool {other}"
        ))
        .with_details(json!({ "field": family.api_name(), "pool": other })));
    }
    let created = match state
        .ip_pools
        .create(&IpPool::new(&request.name, spec))
        .await
    {
        Ok(created) => created,
        Err(StoreError::AlreadyExists { .. }) => {
            return Err(ApiError::conflict(format!(
                "IP pool {} exists",
                request.name
            )));
        }
        Err(other) => return Err(other.into()),
    };
    state
        .audit(
            principal.actor(),
            AuditAction::IpPoolCreate,
            AuditSubject::IpPool(request.name.clone()),
            json!({ "zone": created.spec.zone, "ipv4": created.spec.ipv4.cidr,
                    "ipv6": created.spec.ipv6.as_ref().map(|b| &b.prefix) }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(view(&state, &created).await?)))
}

/// Lists IP pools with their counts (operators).
#[utoipa::path(get, path = "/v1/admin/ip-pools", tag = "ip", params(PageQuery),
    responses((status = 200, body = Page<IpPoolView>), (status = 403, body = ErrorBody)))]
pub async fn list_ip_pools(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<IpPoolView>>, ApiError> {
    principal.require_admin()?;
    let mut views = Vec::new();
    for pool in state.ip_pools.list(None).await?.items {
        views.push(view(&state, &pool).await?);
    }
    Ok(Json(paginate(views, &query, |p: &IpPoolView| {
        p.name.clone()
    })?))
}

fn pool_name(raw: &str) -> Result<&str, ApiError> {
    if validate::is_dns_label(raw) {
        Ok(raw)
    } else {
        Err(ApiError::malformed_id("IP pool", raw, "a DNS label"))
    }
}

/// Shows one IP pool (operators).
#[utoipa::path(get, path = "/v1/admin/ip-pools/{name}", tag = "ip", params(("name" = String, Path)),
    responses((status = 200, body = IpPoolView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_ip_pool(
    principal: Principal,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<IpPoolView>, ApiError> {
    principal.require_admin()?;
    let name = pool_name(&name)?;
    let pool = state
        .ip_pools
        .get(None, name)
        .await?
        .ok_or_else(|| ApiError::not_found("IP pool", name))?;
    Ok(Json(view(&state, &pool).await?))
}

/// Deletes an IP pool none of whose addresses is held or in quarantine
/// (operators); otherwise 409.
#[utoipa::path(delete, path = "/v1/admin/ip-pools/{name}", tag = "ip", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_ip_pool(
    principal: Principal,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let name = pool_name(&name)?;
    if state.ip_pools.get(None, name).await?.is_none() {
        return Err(ApiError::not_found("IP pool", name));
    }
    if state.ledger.ips().pool_in_use(name).await? {
        return Err(ApiError::conflict(format!(
            "IP pool {name} has addresses held by servers or in quarantine"
        )));
    }
    state.ip_pools.delete(None, name).await?;
    state
        .audit(
            principal.actor(),
            AuditAction::IpPoolDelete,
            AuditSubject::IpPool(name.into()),
            json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only the holding at this instant (RFC 3339).
    pub at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldingView {
    /// The IPv4 address or IPv6 prefix held.
    pub address: String,
    pub pool: String,
    pub account_id: String,
    /// `account/name` of the server that held it.
    pub server: String,
    pub server_uid: String,
    pub from: String,
    /// When the server let it go; absent while held.
    pub to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub address: String,
    pub holdings: Vec<HoldingView>,
}

impl From<&Holding> for HoldingView {
    fn from(h: &Holding) -> Self {
        Self {
            address: h.address.clone(),
            pool: h.pool.clone(),
            account_id: h.account.clone(),
            server: h.subject.clone(),
            server_uid: h.holder.clone(),
            from: millis_to_rfc3339(h.allocated_at),
            to: h.released_at.map(millis_to_rfc3339),
        }
    }
}

/// Who held an address, and when (R22): every holding of an IPv4 address
/// or of the IPv6 prefix holding an address, oldest first; with `at`,
/// the holding at that instant (operators).
#[utoipa::path(get, path = "/v1/admin/ips/{address}/history", tag = "ip",
    params(("address" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn ip_history(
    principal: Principal,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiError> {
    principal.require_admin()?;
    let address = parse_address(&raw)?;
    let at = query
        .at
        .as_deref()
        .map(|at| {
            at.parse::<Timestamp>().map_err(|_| {
                ApiError::bad_request(
                    "at",
                    "at must be an RFC 3339 time such as 2026-03-03T14:02:00Z",
                )
            })
        })
        .transpose()?;
    let holdings = holdings_of(&state, address, at.map(Timestamp::as_millisecond)).await?;
    Ok(Json(HistoryView {
        address: address.to_string(),
        holdings: holdings.iter().map(HoldingView::from).collect(),
    }))
}

/// Who held `address` (an IPv4 address, or any address inside a held IPv6
/// prefix), oldest first; with `at` (Unix ms), only the holding of then (R22).
pub(crate) async fn holdings_of(
    state: &ApiState,
    address: IpAddr,
    at: Option<i64>,
) -> Result<Vec<Holding>, ApiError> {
    let ips = state.ledger.ips();
    let mut holdings = match address {
        IpAddr::V4(_) => ips.history(&address.to_string()).await?,
        IpAddr::V6(v6) => {
            let mut found = Vec::new();
            for len in ips.ipv6_prefix_lengths().await? {
                if let Some(prefix) = ip::containing_prefix(v6, len) {
                    found.extend(ips.history(&prefix).await?);
                }
            }
            found.sort_by_key(|h| (h.allocated_at, h.id));
            found
        }
    };
    if let Some(at) = at {
        holdings.retain(|h| h.allocated_at <= at && h.released_at.is_none_or(|to| to > at));
    }
    Ok(holdings)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListingsQuery {
    /// Must be `true`: the addresses a blocking blacklist lists now.
    pub blacklisted: Option<bool>,
    pub limit: Option<u32>,
    /// The last address of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListingView {
    pub address: String,
    pub checked: String,
    pub pool: String,
    pub zone: String,
    pub reason: String,
    pub since: String,
}

/// The addresses a blocking blacklist lists now (`?blacklisted=true`),
/// held or not, in address order (operators).
#[utoipa::path(get, path = "/v1/admin/ips", tag = "ip", params(ListingsQuery),
    responses((status = 200, body = Vec<ListingView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_ips(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<ListingsQuery>,
) -> Result<Json<Vec<ListingView>>, ApiError> {
    principal.require_admin()?;
    if query.blacklisted != Some(true) {
        return Err(ApiError::bad_request(
            "blacklisted",
            "blacklisted=true is required: held addresses are on the servers, history under /v1/admin/ips/{address}/history",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            "limit must be from 1 to 1000",
        ));
    }
    let listings = state
        .ledger
        .ips()
        .listings(query.after.as_deref(), limit)
        .await?;
    Ok(Json(
        listings
            .into_iter()
            .map(|l| ListingView {
                address: l.address,
                checked: l.checked,
                pool: l.pool,
                zone: l.zone,
                reason: l.reason,
                since: millis_to_rfc3339(l.since),
            })
            .collect(),
    ))
}

/// Where an address lives: its pool and slot, and what the blacklists are
/// asked about for it (IPv6: the NIC address of its server prefix).
struct Located {
    pool: String,
    family: Family,
    slot: u64,
    /// The ledger's name: the address, or the IPv6 server prefix.
    holding: String,
    checked: IpAddr,
}

/// The `{address}` of a path.
fn parse_address(raw: &str) -> Result<IpAddr, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::malformed_id("address", raw, "an IPv4 or IPv6 address"))
}

async fn locate(state: &ApiState, raw: &str) -> Result<Located, ApiError> {
    let address = parse_address(raw)?;
    for pool in state.ip_pools.list(None).await?.items {
        let Ok(layout) = pool.spec.layout() else {
            continue;
        };
        if let Some((family, slot)) = layout.slot_of(address)
            && let Some(space) = layout.family(family)
        {
            let assignment = space.assignment(slot);
            return Ok(Located {
                pool: kube::ResourceExt::name_any(&pool),
                family,
                slot,
                holding: assignment.holding,
                checked: assignment.address,
            });
        }
    }
    Err(ApiError::not_found("address in an IP pool", raw))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// `clean` or `listed`: what stratus takes the address to be, whatever
    /// the blacklists answer.
    pub verdict: String,
    /// Why (a ticket, the blacklist operator's delisting mail): audited.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideView {
    /// The ledger's name of the address (IPv6: the server prefix).
    pub address: String,
    pub verdict: String,
    pub reason: String,
    pub decided_by: String,
    pub decided_at: String,
}

/// Replaces the blacklists' verdict on an address with an operator's
/// (operators; audited). It applies at once: `listed` takes the address out
/// of circulation, `clean` clears its listing.
#[utoipa::path(post, path = "/v1/admin/ips/{address}/override", tag = "ip",
    params(("address" = String, Path)), request_body = OverrideRequest,
    responses((status = 200, body = OverrideView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn override_ip(
    principal: Principal,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<OverrideRequest>,
) -> Result<Json<OverrideView>, ApiError> {
    principal.require_admin()?;
    let listed = match request.verdict.as_str() {
        "listed" => true,
        "clean" => false,
        _ => {
            return Err(ApiError::invalid(
                "verdict",
                "verdict must be clean or listed",
            ));
        }
    };
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::invalid(
            "reason",
            "reason must be 1 to 500 characters: it is what the audit keeps",
        ));
    }
    let located = locate(&state, &raw).await?;
    let actor = principal.actor();
    let now = state.clock.now().as_millisecond();
    let ips = state.ledger.ips();
    ips.set_override(&Override {
        address: located.holding.clone(),
        listed,
        reason: reason.to_owned(),
        actor: actor.to_string(),
        decided_at: now,
    })
    .await?;
    if listed {
        ips.mark_listed(&Listing {
            address: located.holding.clone(),
            pool: located.pool.clone(),
            family: located.family,
            slot: located.slot,
            checked: located.checked.to_string(),
            zone: "operator".into(),
            reason: reason.to_owned(),
            since: now,
        })
        .await?;
    } else {
        ips.clear_listing(&located.holding).await?;
    }
    state
        .audit(
            actor.clone(),
            AuditAction::IpOverride,
            AuditSubject::IpPool(located.pool.clone()),
            json!({ "address": located.holding, "verdict": request.verdict, "reason": reason }),
        )
        .await;
    Ok(Json(OverrideView {
        address: located.holding,
        verdict: request.verdict,
        reason: reason.to_owned(),
        decided_by: actor.to_string(),
        decided_at: millis_to_rfc3339(now),
    }))
}

/// Withdraws the operator's verdict on an address: the blacklists decide
/// again at its next check (operators; audited).
#[utoipa::path(delete, path = "/v1/admin/ips/{address}/override", tag = "ip",
    params(("address" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn withdraw_ip_override(
    principal: Principal,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let located = locate(&state, &raw).await?;
    if !state.ledger.ips().remove_override(&located.holding).await? {
        return Err(ApiError::not_found("override", &located.holding));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::IpOverrideWithdraw,
            AuditSubject::IpPool(located.pool),
            json!({ "address": located.holding }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckRequestView {
    pub id: i64,
    pub address: String,
    /// The address the blacklists are asked about.
    pub checked: String,
    pub pool: String,
    pub requested_by: String,
    pub requested_at: String,
    /// `pending` until the controller asked the blacklists (within one
    /// pool round, a minute by default), then `answered`.
    pub status: &'static str,
    /// `clean`, `listed` or `inconclusive`, once answered.
    pub verdict: Option<String>,
    pub answered_at: Option<String>,
}

impl From<CheckRequest> for CheckRequestView {
    fn from(r: CheckRequest) -> Self {
        Self {
            id: r.id,
            address: r.address,
            checked: r.checked,
            pool: r.pool,
            requested_by: r.requested_by,
            requested_at: millis_to_rfc3339(r.requested_at),
            status: if r.answered_at.is_some() {
                "answered"
            } else {
                "pending"
            },
            verdict: r.verdict,
            answered_at: r.answered_at.map(millis_to_rfc3339),
        }
    }
}

/// Asks for a blacklist check of an address now (operators; audited): the
/// controller asks every zone in its next round of the address's pool and
/// records the answers; `GET …/checks` shows them. A check already waiting
/// is returned instead of queueing another.
#[utoipa::path(post, path = "/v1/admin/ips/{address}/check", tag = "ip",
    params(("address" = String, Path)),
    responses((status = 202, body = CheckRequestView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn check_ip(
    principal: Principal,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<CheckRequestView>), ApiError> {
    principal.require_admin()?;
    let located = locate(&state, &raw).await?;
    let actor = principal.actor();
    let request = state
        .ledger
        .ips()
        .request_check(&CheckRequest {
            id: 0,
            address: located.holding.clone(),
            checked: located.checked.to_string(),
            pool: located.pool.clone(),
            family: located.family,
            slot: located.slot,
            requested_by: actor.to_string(),
            requested_at: state.clock.now().as_millisecond(),
            answered_at: None,
            verdict: None,
        })
        .await?;
    state
        .audit(
            actor,
            AuditAction::IpCheckRequest,
            AuditSubject::IpPool(located.pool),
            json!({ "address": located.holding, "request": request.id }),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(request.into())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    /// The address asked about.
    pub address: String,
    pub zone: String,
    /// `listed`, `clean` or `error` (inconclusive).
    pub result: &'static str,
    /// The A answer of a listing or error code, or what went wrong.
    pub code: Option<String>,
    pub reason: Option<String>,
    pub checked_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChecksView {
    /// The ledger's name of the address (IPv6: the server prefix).
    pub address: String,
    /// The operator's verdict in force, if any.
    pub override_verdict: Option<String>,
    /// The latest 20 requested checks, newest first.
    pub requests: Vec<CheckRequestView>,
    /// The latest 100 blacklist answers, newest first.
    pub checks: Vec<CheckView>,
}

/// The blacklists' latest answers about an address and the checks
/// operators asked for (operators).
#[utoipa::path(get, path = "/v1/admin/ips/{address}/checks", tag = "ip",
    params(("address" = String, Path)),
    responses((status = 200, body = ChecksView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ip_checks(
    principal: Principal,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<ChecksView>, ApiError> {
    principal.require_admin()?;
    let located = locate(&state, &raw).await?;
    let ips = state.ledger.ips();
    let requests = ips.requests_about(&located.holding, 20).await?;
    let checks = ips.checks(&located.checked.to_string(), 100).await?;
    let override_verdict = ips
        .override_of(&located.holding)
        .await?
        .map(|o| if o.listed { "listed" } else { "clean" }.to_owned());
    Ok(Json(ChecksView {
        address: located.holding,
        override_verdict,
        requests: requests.into_iter().map(Into::into).collect(),
        checks: checks
            .into_iter()
            .map(|c| CheckView {
                address: c.address,
                zone: c.zone,
                result: c.result.as_str(),
                code: c.code,
                reason: c.reason,
                checked_at: millis_to_rfc3339(c.checked_at),
            })
            .collect(),
    }))
}
