use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::core::ObjectMeta;
use serde_json::json;
use stratus_core::cloud_init;
use stratus_core::ids::{AccountId, ServerId, StorageId};
use stratus_core::quota::{Quota, Usage, charged_object};
use stratus_core::resources::{
    PowerState, RebuildRequest, RescueRequest, ServerPhase, SnapshotOf, StorageReplica,
    StorageSubscription, VirtualServer, VirtualServerSpec,
};
use stratus_core::standing::Suspension;
use stratus_core::validate;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject, RechargeRefused};

use super::customer_objects::{
    Order, Retry, check_zone, claim_idempotency_key, idempotency_key, listed_namespace,
    orderable_account, refuse_while_held_as_evidence,
};
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery};
use crate::state::ApiState;
use crate::views::{OrderServer, ServerAction, ServerView};

fn accepted(server: &VirtualServer) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(ServerView::from(server))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/servers/{}", server.name_any())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The server `id` as the caller may see it: customers only their own
/// account's (others are "not found", so ids do not leak), operators any.
pub(super) async fn find_server(
    state: &ApiState,
    principal: &Principal,
    id: &ServerId,
) -> Result<VirtualServer, ApiError> {
    let found = match principal {
        Principal::Customer { account_id, .. } => {
            state
                .servers
                .get(Some(account_id.as_str()), id.as_str())
                .await?
        }
        Principal::Billing { .. } => {
            principal.require_admin()?;
            None
        }
        // Ids are minted unique, so one namespace at most holds it.
        Principal::Admin { .. } => state
            .servers
            .find_by_name(id.as_str())
            .await?
            .into_iter()
            .next(),
    };
    found.ok_or_else(|| ApiError::not_found("server", id.as_str()))
}

/// A server id from a request path.
pub(super) fn server_id(raw: &str) -> Result<ServerId, ApiError> {
    ServerId::parse(raw).ok_or_else(|| ApiError::malformed_id("server", raw, "vs-<16 hex digits>"))
}

fn reason_names(suspension: &Suspension) -> Vec<&'static str> {
    suspension.reasons.iter().map(|r| r.as_str()).collect()
}

/// Checks an order against the account's standing and the catalogue;
/// answers the spec of the server to create and the account's quota.
async fn validate_order(
    state: &ApiState,
    account_id: &AccountId,
    order: &OrderServer,
) -> Result<(VirtualServerSpec, Quota), ApiError> {
    let account = orderable_account(state, account_id).await?;
    if !validate::is_hostname(&order.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "{:?} is not a valid hostname (letters, digits and '-', dot-separated labels of 1-63)",
                order.name
            ),
        ));
    }
    let plan = state.config.plan(&order.plan).ok_or_else(|| {
        ApiError::invalid(
            "plan",
            format!("unknown plan {:?}; see GET /v1/plans", order.plan),
        )
    })?;
    let (image_name, snapshot) = match (&order.image, &order.snapshot) {
        (Some(image), None) => (image.clone(), None),
        (None, Some(snapshot)) => {
            let found = orderable_snapshot(state, account_id, snapshot, plan).await?;
            (found.image.clone(), Some(found))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "image",
                "give an image or a snapshot, not both: a server from a snapshot runs the snapshot's system",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "image",
                "give an image (GET /v1/images) or a snapshot (GET /v1/snapshots)",
            ));
        }
    };
    let Some(image) = state.config.image(&image_name) else {
        return Err(ApiError::invalid(
            "image",
            format!("unknown image {image_name:?}; see GET /v1/images"),
        ));
    };
    let zone = match (&order.zone, &snapshot) {
        (Some(zone), Some(found)) if *zone != found.zone => {
            return Err(ApiError::invalid(
                "zone",
                format!(
                    "snapshot {} is kept in zone {}: a server from it is made there",
                    found.id, found.zone
                ),
            ));
        }
        (_, Some(found)) => Some(found.zone.clone()),
        (zone, None) => zone.clone(),
    };
    // A disk smaller than the image's file system cannot boot it: the
    // guest would stop in its initramfs while the server said running.
    if plan.disk_gib < image.size_gib {
        return Err(ApiError::invalid(
            "plan",
            format!(
                "plan {} has a {} GiB disk and image {} needs at least {} GiB: choose a larger plan (GET /v1/images shows each image's min_disk_gib)",
                plan.name, plan.disk_gib, image.name, image.size_gib
            ),
        ));
    }
    check_guest_inputs(&order.ssh_keys, order.user_data.as_deref())?;
    if let Some(zone) = &zone {
        check_zone(state, zone).await?;
    }
    let spec = VirtualServerSpec {
        hostname: order.name.clone(),
        plan: plan.name.clone(),
        image: image.name.clone(),
        zone,
        resources: plan.resources(),
        power: PowerState::Running,
        reboot_requests: 0,
        suspension: None,
        termination: None,
        ssh_keys: order.ssh_keys.iter().map(|k| k.trim().to_owned()).collect(),
        user_data: order.user_data.clone(),
        rebuild: None,
        rescue: None,
        backups: None,
        from_snapshot: snapshot.map(|found| found.id),
    };
    Ok((spec, state.quota_of(&account)))
}

/// A snapshot a new server may start from.
struct OrderableSnapshot {
    id: String,
    image: String,
    /// The zone of the hypervisor keeping its primary copy.
    zone: String,
}

/// A snapshot of the account a server's disk can be made from, for an
/// order or a restore (`for_what` ends the refusal of one not ready):
/// refused naming `snapshot` when unknown (`listed_at` says where the
/// account's are listed), being deleted, held with its server (evidence of
/// an abuse termination or a legal hold is put back on no server), or not
/// ready.
async fn usable_snapshot(
    state: &ApiState,
    namespace: Option<&str>,
    raw: &str,
    listed_at: &str,
    for_what: &str,
) -> Result<(StorageId, StorageSubscription, SnapshotOf), ApiError> {
    let not_one = || {
        ApiError::invalid(
            "snapshot",
            format!("no snapshot {raw:?} of this account; see GET {listed_at}"),
        )
    };
    let id = StorageId::parse(raw).ok_or_else(not_one)?;
    let snapshot = state
        .storage
        .get(namespace, id.as_str())
        .await?
        .ok_or_else(not_one)?;
    let of = snapshot.spec.snapshot_of.clone().ok_or_else(not_one)?;
    if snapshot.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::invalid(
            "snapshot",
            format!("snapshot {id} is being deleted"),
        ));
    }
    if let Some(held) = snapshot.spec.held() {
        return Err(ApiError::invalid(
            "snapshot",
            format!("snapshot {id} is {held}"),
        ));
    }
    let (state_now, reason) =
        stratus_core::storage::snapshot_state(&snapshot.spec, snapshot.status.as_ref());
    if state_now != stratus_core::storage::SnapshotState::Ready {
        return Err(ApiError::invalid(
            "snapshot",
            format!(
                "snapshot {id} is {}{}: {for_what}",
                state_now.api_name(),
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        ));
    }
    Ok((id, snapshot, of))
}

/// The replica holding a ready snapshot's primary copy.
fn primary_copy(snapshot: &StorageSubscription) -> Option<&StorageReplica> {
    snapshot.status.as_ref()?.replicas.first()
}

/// The snapshot `raw` of the account, if a server of `plan` can start from
/// it: usable, no bigger than the plan's disk.
async fn orderable_snapshot(
    state: &ApiState,
    account_id: &AccountId,
    raw: &str,
    plan: &stratus_core::config::Plan,
) -> Result<OrderableSnapshot, ApiError> {
    let (id, found, of) = usable_snapshot(
        state,
        Some(account_id.as_str()),
        raw,
        "/v1/snapshots",
        "a server starts only from a ready one",
    )
    .await?;
    if found.spec.size_gib > plan.disk_gib {
        return Err(ApiError::invalid(
            "plan",
            format!(
                "snapshot {id} holds a {} GiB disk and plan {} has {} GiB: choose a larger plan",
                found.spec.size_gib, plan.name, plan.disk_gib
            ),
        ));
    }
    let zone = primary_copy(&found)
        .map(|r| r.zone.clone())
        .ok_or_else(|| {
            ApiError::invalid(
                "snapshot",
                format!("snapshot {id} has no copy to start from"),
            )
        })?;
    Ok(OrderableSnapshot {
        id: id.to_string(),
        image: of.image,
        zone,
    })
}

/// Refuses SSH keys or user data cloud-init would not take, naming the
/// field.
fn check_guest_inputs(ssh_keys: &[String], user_data: Option<&str>) -> Result<(), ApiError> {
    if ssh_keys.len() > cloud_init::MAX_SSH_KEYS {
        return Err(ApiError::invalid(
            "ssh_keys",
            format!("at most {} keys", cloud_init::MAX_SSH_KEYS),
        ));
    }
    for (i, key) in ssh_keys.iter().enumerate() {
        cloud_init::check_ssh_key(key.trim())
            .map_err(|message| ApiError::invalid(&format!("ssh_keys[{i}]"), message))?;
    }
    if let Some(user_data) = user_data {
        cloud_init::check_user_data(user_data)
            .map_err(|message| ApiError::invalid("user_data", message))?;
    }
    Ok(())
}

/// Orders a server. With an `Idempotency-Key`, repeating the same request
/// returns the same server; the same key with another body is refused.
#[utoipa::path(post, path = "/v1/servers", tag = "servers", request_body = OrderServer,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same server")),
    responses((status = 202, body = ServerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn order_server(
    principal: Principal,
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(order): JsonBody<OrderServer>,
) -> Result<Response, ApiError> {
    let account_id = principal.account()?.clone();
    let key = idempotency_key(&headers)?;
    let (spec, quota) = validate_order(&state, &account_id, &order).await?;
    let fresh = ServerId::from_random(state.random_u64()?);
    let claim = claim_idempotency_key(
        &state,
        &state.servers,
        Order::new(
            "server",
            &account_id,
            key.as_deref(),
            &order,
            fresh,
            ServerId::parse,
        )?,
    )
    .await?;
    let id = match claim {
        Retry::Existing(server) => return Ok(accepted(&server)),
        Retry::Create(id) => id,
    };
    // Charged before the server exists, in one step with the limit check,
    // so racing orders cannot overshoot; a retry is charged once.
    let charged_as = charged_object(account_id.as_str(), id.as_str());
    let charge = state
        .ledger
        .quotas()
        .charge(
            account_id.as_str(),
            &charged_as,
            Usage::of_server(&spec.resources),
            quota,
            state.now_millis(),
        )
        .await?;
    if let Err(exceeded) = charge {
        if let Some(key) = &key {
            state
                .ledger
                .idempotency()
                .forget_unfulfilled(&account_id, key, id.as_str())
                .await?;
        }
        return Err(ApiError::quota_exceeded(exceeded));
    }
    let server = VirtualServer {
        metadata: ObjectMeta {
            name: Some(id.to_string()),
            namespace: Some(account_id.to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let created = match state.servers.create(&server).await {
        Ok(created) => created,
        // A concurrent retry with the same key created it first.
        Err(StoreError::AlreadyExists { .. }) => state
            .servers
            .get(Some(account_id.as_str()), id.as_str())
            .await?
            .ok_or_else(|| ApiError::conflict("the server was deleted while being ordered"))?,
        Err(other) => {
            // Nothing was created: the charge goes back (a retry charges again).
            if let Err(error) = state.ledger.quotas().release(&charged_as).await {
                tracing::warn!(%error, resource = %charged_as, "could not return the charge of a failed order");
            }
            return Err(other.into());
        }
    };
    if let Some(key) = &key {
        state
            .ledger
            .idempotency()
            .fulfil(&account_id, key, state.now_millis())
            .await?;
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerOrder,
            AuditSubject::server(&created),
            json!({ "plan": order.plan, "image": created.spec.image, "snapshot": order.snapshot,
                    "zone": order.zone, "idempotency_key": key }),
        )
        .await;
    tracing::info!(server = %id, account = %account_id, plan = %order.plan, "server ordered");
    Ok(accepted(&created))
}

/// Lists the caller's servers (operators: all, or `?account=`).
#[utoipa::path(get, path = "/v1/servers", tag = "servers", params(PageQuery),
    responses((status = 200, body = Page<ServerView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_servers(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<ServerView>>, ApiError> {
    let namespace = listed_namespace(&principal, &query)?;
    let page = state
        .servers
        .list_page(
            namespace.as_deref(),
            query.store_limit()?,
            query.store_cursor()?.as_deref(),
        )
        .await?;
    Ok(Json(Page::from_store(page, |s| ServerView::from(s))))
}

/// Shows one server.
#[utoipa::path(get, path = "/v1/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = ServerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_server(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ServerView>, ApiError> {
    let id = server_id(&id)?;
    Ok(Json(ServerView::from(
        &find_server(&state, &principal, &id).await?,
    )))
}

/// The last 64 KiB of the server's serial console (boot messages,
/// cloud-init's output), as text; the owner's and operators' only.
#[utoipa::path(get, path = "/v1/servers/{id}/console", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn server_console(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    let consoles = state.consoles.as_ref().ok_or_else(|| {
        ApiError::unavailable("this API process cannot reach the agents; ask the all-in-one or a process with agent credentials")
    })?;
    let status = server.status.clone().unwrap_or_default();
    let (Some(hypervisor), Some(domain)) = (status.hypervisor, status.domain) else {
        return Err(ApiError::conflict(
            "the server is not placed on a hypervisor yet: it has no console",
        ));
    };
    let bytes = consoles
        .tail(hypervisor.as_str(), &domain)
        .await
        .map_err(|message| {
            ApiError::unavailable(format!("the console could not be read: {message}"))
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        String::from_utf8_lossy(&bytes).into_owned(),
    )
        .into_response())
}

/// Deletes a server: its domain is destroyed and its disk wiped, then it
/// disappears (404).
#[utoipa::path(delete, path = "/v1/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 202, body = ServerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_server(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    if let Principal::Customer { account_id, .. } = &principal {
        let own: Vec<_> = server
            .spec
            .suspension
            .iter()
            .flat_map(|s| s.reasons.iter().copied())
            .collect();
        refuse_while_held_as_evidence(&state, account_id, "server", &server.name_any(), &own)
            .await?;
    }
    let namespace = server.namespace();
    // Before the delete: an order retried after it must not create it again.
    if let Some(account) = namespace.as_deref().and_then(AccountId::parse) {
        state
            .ledger
            .idempotency()
            .fulfil_resource(&account, id.as_str(), state.now_millis())
            .await?;
    }
    let deletion = state
        .servers
        .delete(namespace.as_deref(), id.as_str())
        .await;
    let mut view = match deletion {
        Ok(stratus_store::objects::Deletion::Pending(pending)) => pending,
        Ok(stratus_store::objects::Deletion::Deleted) => {
            super::customer_objects::release_deleted_outright(
                &state,
                namespace.as_deref(),
                id.as_str(),
            )
            .await;
            server.clone()
        }
        Err(StoreError::NotFound { .. }) => server.clone(),
        Err(other) => return Err(other.into()),
    };
    if view.metadata.deletion_timestamp.is_none() {
        view.status.get_or_insert_with(Default::default).phase = ServerPhase::Terminating;
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerDelete,
            AuditSubject::server(&server),
            json!({}),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(ServerView::from(&view))).into_response())
}

/// Stops, starts, reboots or resizes a server.
#[utoipa::path(post, path = "/v1/servers/{id}/actions", tag = "servers", params(("id" = String, Path)), request_body = ServerAction,
    responses((status = 202, body = ServerView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn server_action(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(action): JsonBody<ServerAction>,
) -> Result<Response, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    refuse_unless_actionable(&server, &action)?;
    if let ServerAction::Resize { plan } = &action {
        return resize_server(&state, &principal, &server, plan).await;
    }
    if let ServerAction::Rebuild {
        image,
        ssh_keys,
        user_data,
    } = &action
    {
        let asked = RebuildAsked {
            image,
            ssh_keys: ssh_keys.as_deref(),
            user_data: user_data.as_deref(),
        };
        return rebuild_server(&state, &principal, &server, asked).await;
    }
    if let ServerAction::Restore { snapshot } = &action {
        return restore_server(&state, &principal, &server, snapshot).await;
    }
    if let ServerAction::EnableRescue {
        ssh_keys,
        user_data,
    } = &action
    {
        if state.config.rescue_image.is_none() {
            return Err(ApiError::invalid(
                "type",
                "this provider offers no rescue system (no rescueImage is configured)",
            ));
        }
        if !server.status.as_ref().is_some_and(|s| s.provisioned) {
            return Err(ApiError::server_busy(
                "provisioning",
                "the server is still being provisioned: rescue it once it runs",
            ));
        }
        check_guest_inputs(ssh_keys, user_data.as_deref())?;
        if ssh_keys.is_empty() && user_data.is_none() {
            return Err(ApiError::invalid(
                "ssh_keys",
                "give at least one key (or user data): nobody could use the rescue system",
            ));
        }
        let rescue_volume = state
            .config
            .rescue_image
            .as_deref()
            .and_then(|name| state.config.image(name))
            .map(|image| image.volume.clone())
            .unwrap_or_default();
        let hypervisor = server
            .status
            .as_ref()
            .and_then(|s| s.hypervisor.as_ref())
            .map(|h| h.as_str().to_owned());
        if let Some(hypervisor) = hypervisor
            && !image_on(&state, &hypervisor, &rescue_volume).await?
        {
            return Err(ApiError::conflict(
                "the rescue system is not on the server's hypervisor yet: try again later",
            ));
        }
    }
    if action == (ServerAction::Reboot {}) && server.spec.power == PowerState::Stopped {
        return Err(ApiError::conflict(
            "the server is stopped: start it instead of rebooting",
        ));
    }
    let namespace = server.namespace();
    // Checked again on the object written, in one compare-and-set: a
    // suspension, termination or resize that came meanwhile wins.
    let mut refused = None;
    let updated = state
        .servers
        .update(namespace.as_deref(), id.as_str(), |s| {
            refused = refuse_unless_actionable(s, &action).err();
            if refused.is_some() {
                return false;
            }
            match action {
                ServerAction::Stop {} if s.spec.power != PowerState::Stopped => {
                    s.spec.power = PowerState::Stopped;
                    true
                }
                ServerAction::Start {} if s.spec.power != PowerState::Running => {
                    s.spec.power = PowerState::Running;
                    true
                }
                ServerAction::Reboot {} => {
                    s.spec.reboot_requests = s.spec.reboot_requests.saturating_add(1);
                    true
                }
                ServerAction::EnableRescue {
                    ref ssh_keys,
                    ref user_data,
                } => {
                    s.spec.rescue = Some(RescueRequest {
                        ssh_keys: ssh_keys.iter().map(|k| k.trim().to_owned()).collect(),
                        user_data: user_data.clone(),
                    });
                    true
                }
                ServerAction::DisableRescue {} => s.spec.rescue.take().is_some(),
                _ => false,
            }
        })
        .await?
        .ok_or_else(|| ApiError::not_found("server", id.as_str()))?;
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    state
        .audit(
            principal.actor(),
            match action {
                ServerAction::Stop {} => AuditAction::ServerStop,
                ServerAction::Start {} => AuditAction::ServerStart,
                ServerAction::EnableRescue { .. } => AuditAction::ServerRescueEnable,
                ServerAction::DisableRescue {} => AuditAction::ServerRescueDisable,
                _ => AuditAction::ServerReboot,
            },
            AuditSubject::server(&updated),
            match &action {
                ServerAction::EnableRescue {
                    ssh_keys,
                    user_data,
                } => {
                    json!({"ssh_keys": ssh_keys.len(), "user_data": user_data.is_some()})
                }
                _ => json!({}),
            },
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(ServerView::from(&updated))).into_response())
}

/// Why `server` takes no `what` (an action, a snapshot) now: being
/// deleted, terminated, or suspended (naming the reasons).
pub(super) fn refuse_while_held(server: &VirtualServer, what: &str) -> Result<(), ApiError> {
    if server.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::conflict("the server is being deleted"));
    }
    if let Some(termination) = &server.spec.termination {
        return Err(ApiError::conflict(format!(
            "the server was terminated ({}): its disk is wiped at {}",
            termination.cause.as_str(),
            termination.wipe_at
        )));
    }
    if let Some(suspension) = &server.spec.suspension {
        return Err(ApiError::server_suspended(
            &reason_names(suspension),
            format!(
                "the server is {}: it takes no {what} until the suspension is lifted",
                suspension.describe(),
            ),
        ));
    }
    Ok(())
}

/// Why `server` takes no `action` now: being deleted, terminated,
/// suspended (naming the reasons) or busy with a resize.
fn refuse_unless_actionable(server: &VirtualServer, action: &ServerAction) -> Result<(), ApiError> {
    refuse_while_held(server, action.name())?;
    let status = server.status.as_ref();
    let withdraws = matches!(action, ServerAction::Resize { plan }
        if status.and_then(|s| s.applied.as_ref()).is_some_and(|a| a.plan == *plan)
            && !status.and_then(|s| s.resize.as_ref()).is_some_and(|r| r.stopping));
    let rescue_change = server
        .status
        .as_ref()
        .is_some_and(|s| s.rescue_change.is_some());
    match action {
        ServerAction::EnableRescue { .. } if server.spec.rescue.is_some() => {
            return Err(ApiError::conflict("the server is in rescue mode already"));
        }
        ServerAction::DisableRescue {} if server.spec.rescue.is_none() => {
            return Err(ApiError::conflict("the server is not in rescue mode"));
        }
        ServerAction::Resize { .. }
        | ServerAction::Rebuild { .. }
        | ServerAction::Restore { .. }
            if server.in_rescue() =>
        {
            return Err(ApiError::server_busy(
                "rescue",
                format!(
                    "the server is in rescue mode: disable it before a {}",
                    action.name()
                ),
            ));
        }
        // Stop, start and reboot act on the rescue system once it runs.
        _ if rescue_change
            && !matches!(
                action,
                ServerAction::EnableRescue { .. } | ServerAction::DisableRescue {}
            ) =>
        {
            return Err(ApiError::server_busy(
                "rescue",
                format!(
                    "the server is moving into or out of rescue mode: it takes no {} until that is done",
                    action.name()
                ),
            ));
        }
        _ => {}
    }
    if server.rebuilding() {
        let image = server
            .spec
            .rebuild
            .as_ref()
            .map_or("", |r| r.image.as_str());
        return Err(ApiError::server_busy(
            "rebuild",
            format!(
                "the server is being reinstalled from image {image}: it takes no {} until that is done",
                action.name()
            ),
        ));
    }
    if server.resizing() && !withdraws {
        return Err(ApiError::server_busy(
            "resize",
            format!(
                "the server is moving to plan {}: it takes no {} until that is done",
                server.spec.plan,
                action.name()
            ),
        ));
    }
    Ok(())
}

/// Moves a server to another plan (R23): checked against the catalogue,
/// its hypervisor's room and the account's quota (charged in the same
/// step), then asked of the controller, which stops the server, makes it
/// again with the new plan and starts it.
async fn resize_server(
    state: &ApiState,
    principal: &Principal,
    server: &VirtualServer,
    plan_name: &str,
) -> Result<Response, ApiError> {
    let plan = state.config.plan(plan_name).ok_or_else(|| {
        ApiError::invalid(
            "plan",
            format!("unknown plan {plan_name:?}; see GET /v1/plans"),
        )
    })?;
    let wanted = plan.resources();
    if plan.name == server.spec.plan {
        return Err(ApiError::invalid(
            "plan",
            format!("the server is on plan {} already", plan.name),
        ));
    }
    let status = server.status.clone().unwrap_or_default();
    let (Some(hypervisor), Some(applied)) = (status.hypervisor.clone(), status.applied.clone())
    else {
        return Err(ApiError::server_busy(
            "provisioning",
            "the server is still being provisioned: resize it once it runs",
        ));
    };
    let disk = applied.resources.disk_gib;
    if wanted.disk_gib < disk {
        return Err(ApiError::invalid(
            "plan",
            format!(
                "plan {} has a {} GiB disk and the server's is {disk} GiB: a disk only grows, choose a plan with at least {disk} GiB",
                plan.name, wanted.disk_gib
            ),
        ));
    }
    let account_id = server.namespace().unwrap_or_default();
    let grows = wanted.larger_of(applied.resources) != applied.resources;
    let account = if grows {
        // A suspended or closed account grows nothing.
        let id = AccountId::parse(&account_id)
            .ok_or_else(|| ApiError::not_found("account", &account_id))?;
        orderable_account(state, &id).await?
    } else {
        state
            .accounts
            .get(None, &account_id)
            .await?
            .ok_or_else(|| ApiError::not_found("account", &account_id))?
    };
    super::snapshots::refuse_while_copying(state, server).await?;
    check_room(state, server, &hypervisor, &applied.resources, &wanted).await?;

    // Charged the larger of both plans until the controller finishes (the
    // guest runs on the old one until then), which settles the charge.
    let charged_as = charged_object(&account_id, &server.name_any());
    let before = Usage::of_server(&server.held_resources());
    let during = Usage::of_server(&wanted.larger_of(applied.resources));
    let charge = state
        .ledger
        .quotas()
        .recharge(
            &account_id,
            &charged_as,
            before,
            during,
            state.quota_of(&account),
            state.now_millis(),
        )
        .await?;
    match charge {
        Ok(()) => {}
        Err(RechargeRefused::Exceeded(exceeded)) => {
            return Err(ApiError::quota_exceeded(exceeded));
        }
        Err(RechargeRefused::ChargedOtherwise) => {
            return Err(ApiError::server_busy(
                "resize",
                "another change of this server's plan, or its deletion, came first",
            ));
        }
    }
    // Asked of the object in one compare-and-set: a suspension, a
    // termination, a deletion or another resize that came since the
    // checks above wins, and the charge goes back.
    let mut refused = None;
    let namespace = server.namespace();
    let from = server.spec.plan.clone();
    let updated = state
        .servers
        .update(namespace.as_deref(), &server.name_any(), |s| {
            let action = ServerAction::Resize {
                plan: plan.name.clone(),
            };
            match refuse_unless_actionable(s, &action) {
                Err(error) => {
                    refused = Some(error);
                    false
                }
                Ok(()) if s.spec.plan != from => {
                    refused = Some(ApiError::server_busy(
                        "resize",
                        format!("the server moved to plan {} meanwhile", s.spec.plan),
                    ));
                    false
                }
                Ok(()) => {
                    s.spec.plan = plan.name.clone();
                    s.spec.resources = wanted;
                    refused = None;
                    true
                }
            }
        })
        .await;
    let refusal = match updated {
        Ok(Some(updated)) if refused.is_none() => {
            state
                .audit(
                    principal.actor(),
                    AuditAction::ServerResize,
                    AuditSubject::server(&updated),
                    json!({ "from": from, "to": plan.name, "resources": {
                        "vcpus": wanted.vcpus, "memory_mib": wanted.memory_mib, "disk_gib": wanted.disk_gib,
                    }}),
                )
                .await;
            tracing::info!(server = %updated.name_any(), %from, to = %plan.name, "resize asked");
            return Ok((StatusCode::ACCEPTED, Json(ServerView::from(&updated))).into_response());
        }
        Ok(Some(_)) => refused.unwrap_or_else(|| ApiError::conflict("the server changed")),
        Ok(None) => ApiError::not_found("server", &server.name_any()),
        Err(error) => {
            // Perhaps written all the same (a timeout after the commit):
            // the charge goes back only if the server does not ask for it.
            let written = state
                .servers
                .get(namespace.as_deref(), &server.name_any())
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.spec.plan == plan.name);
            if written {
                return Err(error.into());
            }
            error.into()
        }
    };
    // Exactly what this request took, if it is still charged so; a charge
    // already released (the server went) stays released.
    let back = state
        .ledger
        .quotas()
        .recharge(
            &account_id,
            &charged_as,
            during,
            before,
            stratus_core::quota::Quota::default(),
            state.now_millis(),
        )
        .await;
    if let Err(error) = back {
        tracing::warn!(%error, resource = %charged_as, "could not return the charge of a refused resize");
    }
    Err(refusal)
}

/// Whether `hypervisor` says it has the image volume `volume` (one that
/// has not reported its images yet is given the benefit of the doubt).
async fn image_on(state: &ApiState, hypervisor: &str, volume: &str) -> Result<bool, ApiError> {
    let found = state.hypervisors.get(None, hypervisor).await?;
    let images = found
        .and_then(|h| h.status)
        .and_then(|s| s.capacity)
        .map(|c| c.images);
    Ok(images.is_none_or(|images| images.iter().any(|i| i == volume)))
}

/// A rebuild as asked.
struct RebuildAsked<'a> {
    image: &'a str,
    ssh_keys: Option<&'a [String]>,
    user_data: Option<&'a str>,
}

/// Reinstalls a server from an image: checked against the catalogue and
/// the server's disk, then asked of the controller in one compare-and-set
/// on the object, which stops the server, makes its disk afresh beside
/// the old one, wipes the old one and starts it again.
async fn rebuild_server(
    state: &ApiState,
    principal: &Principal,
    server: &VirtualServer,
    asked: RebuildAsked<'_>,
) -> Result<Response, ApiError> {
    let image = state.config.image(asked.image).ok_or_else(|| {
        ApiError::invalid(
            "image",
            format!("unknown image {:?}; see GET /v1/images", asked.image),
        )
    })?;
    let status = server.status.clone().unwrap_or_default();
    if !status.provisioned {
        return Err(ApiError::server_busy(
            "provisioning",
            "the server is still being provisioned: rebuild it once it runs",
        ));
    }
    let disk_gib = status
        .applied
        .as_ref()
        .map_or(server.spec.resources.disk_gib, |a| a.resources.disk_gib);
    if disk_gib < image.size_gib {
        return Err(ApiError::invalid(
            "image",
            format!(
                "image {} needs a disk of at least {} GiB and the server's is {disk_gib} GiB: resize it first",
                image.name, image.size_gib
            ),
        ));
    }
    if let Some(hypervisor) = &status.hypervisor
        && !image_on(state, hypervisor.as_str(), &image.volume).await?
    {
        return Err(ApiError::invalid(
            "image",
            format!(
                "image {} is not on the server's hypervisor yet; choose another (GET /v1/images)",
                image.name
            ),
        ));
    }
    check_guest_inputs(asked.ssh_keys.unwrap_or_default(), asked.user_data)?;
    super::snapshots::refuse_while_copying(state, server).await?;
    let ssh_keys: Option<Vec<String>> = asked
        .ssh_keys
        .map(|keys| keys.iter().map(|k| k.trim().to_owned()).collect());
    let action = ServerAction::Rebuild {
        image: image.name.clone(),
        ssh_keys: ssh_keys.clone(),
        user_data: asked.user_data.map(str::to_owned),
    };
    let from = server.image().to_owned();
    let namespace = server.namespace();
    // Checked again on the object written: a suspension, termination,
    // deletion, resize or another rebuild that came meanwhile wins.
    let mut refused = None;
    let updated = state
        .servers
        .update(namespace.as_deref(), &server.name_any(), |s| {
            refused = refuse_unless_actionable(s, &action).err();
            if refused.is_some() {
                return false;
            }
            let done = s.status.as_ref().map_or(0, |st| st.disk_generation);
            let before = s.spec.rebuild.take();
            let asked_before = before.as_ref().map_or(0, |r| r.generation);
            // Keys and user data not given are those the system runs
            // with: an earlier rebuild's, else the server's own.
            let (keys_before, user_data_before) = before
                .map(|r| (r.ssh_keys, r.user_data))
                .unwrap_or_default();
            s.spec.rebuild = Some(RebuildRequest {
                image: image.name.clone(),
                generation: done.max(asked_before).saturating_add(1),
                ssh_keys: ssh_keys.clone().or(keys_before),
                user_data: asked.user_data.map(str::to_owned).or(user_data_before),
                snapshot: None,
                instance_generation: None,
            });
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found("server", &server.name_any()))?;
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerRebuild,
            AuditSubject::server(&updated),
            json!({
                "from": from,
                "to": image.name,
                "generation": updated.spec.rebuild.as_ref().map(|r| r.generation),
                "ssh_keys": ssh_keys.as_ref().map(Vec::len),
                "user_data": asked.user_data.is_some(),
            }),
        )
        .await;
    tracing::info!(server = %updated.name_any(), %from, to = %image.name, "rebuild asked");
    Ok((StatusCode::ACCEPTED, Json(ServerView::from(&updated))).into_response())
}

/// Makes a server's disk the content of one of its account's snapshots:
/// checked (ready, kept on the server's hypervisor, no bigger than the
/// server's disk, its image still offered), then asked of the controller
/// in one compare-and-set on the object, as a rebuild whose new disk is a
/// copy of the snapshot: the server is stopped, the copy made beside the
/// old disk, the old disk wiped, and the server started again. The guest
/// keeps the cloud-init instance the snapshot carries.
async fn restore_server(
    state: &ApiState,
    principal: &Principal,
    server: &VirtualServer,
    snapshot_id: &str,
) -> Result<Response, ApiError> {
    let status = server.status.clone().unwrap_or_default();
    if !status.provisioned {
        return Err(ApiError::server_busy(
            "provisioning",
            "the server is still being provisioned: restore it once it runs",
        ));
    }
    let namespace = server.namespace();
    let (id, snapshot, of) = usable_snapshot(
        state,
        namespace.as_deref(),
        snapshot_id,
        "/v1/servers/{id}/snapshots",
        "only a ready one is restored",
    )
    .await?;
    let kept_on = primary_copy(&snapshot).map(|r| r.hypervisor.clone());
    if kept_on.is_none() || kept_on != status.hypervisor {
        return Err(ApiError::invalid(
            "snapshot",
            format!(
                "snapshot {id} is kept on another hypervisor than the server's: it restores the server it was taken of"
            ),
        ));
    }
    let disk_gib = status
        .applied
        .as_ref()
        .map_or(server.spec.resources.disk_gib, |a| a.resources.disk_gib);
    if snapshot.spec.size_gib > disk_gib {
        return Err(ApiError::invalid(
            "snapshot",
            format!(
                "snapshot {id} holds a {} GiB disk and the server's is {disk_gib} GiB: resize it first",
                snapshot.spec.size_gib
            ),
        ));
    }
    if state.config.image(&of.image).is_none() {
        return Err(ApiError::invalid(
            "snapshot",
            format!(
                "snapshot {id} is of image {}, which this provider no longer offers",
                of.image
            ),
        ));
    }
    super::snapshots::refuse_while_copying(state, server).await?;
    let action = ServerAction::Restore {
        snapshot: id.to_string(),
    };
    let mut refused = None;
    let updated = state
        .servers
        .update(namespace.as_deref(), &server.name_any(), |s| {
            refused = refuse_unless_actionable(s, &action).err();
            if refused.is_some() {
                return false;
            }
            let done = s.status.as_ref().map_or(0, |st| st.disk_generation);
            let before = s.spec.rebuild.take();
            let asked_before = before.as_ref().map_or(0, |r| r.generation);
            let (ssh_keys, user_data) = before
                .map(|r| (r.ssh_keys, r.user_data))
                .unwrap_or_default();
            s.spec.rebuild = Some(RebuildRequest {
                image: of.image.clone(),
                generation: done.max(asked_before).saturating_add(1),
                ssh_keys,
                user_data,
                snapshot: Some(id.to_string()),
                instance_generation: Some(of.instance_generation),
            });
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found("server", &server.name_any()))?;
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerRestore,
            AuditSubject::server(&updated),
            json!({
                "snapshot": id.as_str(),
                "snapshot_name": snapshot.spec.name,
                "sha256": snapshot.spec.content.as_ref().map(|c| c.sha256.clone()),
                "generation": updated.spec.rebuild.as_ref().map(|r| r.generation),
            }),
        )
        .await;
    tracing::info!(server = %updated.name_any(), snapshot = %id, "restore asked");
    Ok((StatusCode::ACCEPTED, Json(ServerView::from(&updated))).into_response())
}

/// Refuses a resize whose plan does not fit on the server's hypervisor
/// beside everything else placed there (as listed a moment ago). The
/// controller checks again under its placement lock before it stops the
/// server; this answers at once.
async fn check_room(
    state: &ApiState,
    server: &VirtualServer,
    hypervisor: &stratus_core::ids::HypervisorName,
    from: &stratus_core::resources::ServerResources,
    to: &stratus_core::resources::ServerResources,
) -> Result<(), ApiError> {
    use stratus_core::scheduling;
    let capacity = state
        .hypervisors
        .get(None, hypervisor.as_str())
        .await?
        .and_then(|h| h.status.and_then(|s| s.capacity))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "hypervisor {hypervisor} has not reported its capacity: try again later"
            ))
        })?;
    let placed = state.placed.load(&state.servers, &state.storage).await?;
    // Everything there but this server, which holds its current plan.
    let load = placed
        .get(hypervisor)
        .map(|p| p.load)
        .unwrap_or_default()
        .without(&server.held_resources());
    match scheduling::growth_shortfall(&capacity, load, from, to) {
        Some(missing) => Err(ApiError::insufficient_capacity(
            hypervisor.as_str(),
            missing,
        )),
        None => Ok(()),
    }
}
