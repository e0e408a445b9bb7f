use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::core::ObjectMeta;
use serde_json::json;
use std::sync::Arc;

use stratus_core::agent_api::{MAX_DATA_DISKS, VolumeKey};
use stratus_core::ids::{self, AccountId, ServerId, StorageId};
use stratus_core::quota::{Quota, Usage, charged_object};
use stratus_core::resources::{
    MAX_STORAGE_GIB, ServerPhase, StorageContent, StorageEncryption, StoragePhase,
    StorageSubscription, StorageSubscriptionSpec,
};
use stratus_core::validate;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject};

use super::customer_objects::{
    Order, Retry, check_zone, claim_idempotency_key, idempotency_key, listed_namespace,
    orderable_account, refuse_while_held_as_evidence,
};
use super::storage_keys;
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery};
use crate::state::{ApiState, ContentError, ContentStream, StorageContents};
use crate::views::{OrderStorage, StorageActionBody, StorageActionKind, StorageView, restorable};

const WHAT: &str = "storage subscription";

fn is_operator(principal: &Principal) -> bool {
    matches!(principal, Principal::Admin { .. })
}

fn accepted(subscription: &StorageSubscription, principal: &Principal) -> Response {
    let view = StorageView::of(subscription, is_operator(principal));
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/storage/{}", subscription.name_any()))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn storage_id(raw: &str) -> Result<StorageId, ApiError> {
    StorageId::parse(raw).ok_or_else(|| ApiError::malformed_id(WHAT, raw, "st-<16 hex digits>"))
}

/// The subscription `id` as the caller may see it: customers only their
/// own account's (others are "not found"), operators any.
async fn find_storage(
    state: &ApiState,
    principal: &Principal,
    id: &StorageId,
) -> Result<StorageSubscription, ApiError> {
    let found = match principal {
        Principal::Customer { account_id, .. } => {
            state
                .storage
                .get(Some(account_id.as_str()), id.as_str())
                .await?
        }
        Principal::Billing { .. } => {
            principal.require_admin()?;
            None
        }
        // Ids are minted unique, so one namespace at most holds it.
        Principal::Admin { .. } => state
            .storage
            .find_by_name(id.as_str())
            .await?
            .into_iter()
            .next(),
    };
    // A snapshot is a server's, reached through its server's routes.
    found
        .filter(|s| s.spec.snapshot_of.is_none() || matches!(principal, Principal::Admin { .. }))
        .ok_or_else(|| ApiError::not_found(WHAT, id.as_str()))
}

/// Checks an order against the account's standing; answers the spec of
/// the subscription to create and the account's quota.
async fn validate_order(
    state: &ApiState,
    account_id: &AccountId,
    order: &OrderStorage,
) -> Result<(StorageSubscriptionSpec, Quota), ApiError> {
    let account = orderable_account(state, account_id).await?;
    if !validate::is_dns_label(&order.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "{:?} is not a valid name (1-63 lower-case letters, digits and '-', not at either end)",
                order.name
            ),
        ));
    }
    if !(1..=MAX_STORAGE_GIB).contains(&order.size_gib) {
        return Err(ApiError::invalid(
            "size_gib",
            format!("must be from 1 to {MAX_STORAGE_GIB} GiB"),
        ));
    }
    let encryption = match order.encryption.as_deref() {
        None => StorageEncryption::default(),
        Some(raw) => StorageEncryption::parse(raw).ok_or_else(|| {
            ApiError::invalid(
                "encryption",
                format!(
                    "unknown encryption {raw:?}: \"client\" (you encrypt before uploading) or \"luks\" (a disk formatted with your key)"
                ),
            )
        })?,
    };
    storage_keys::check_key(encryption, order.key.as_ref())?;
    if encryption == StorageEncryption::Luks {
        if order.attach_to.is_some() {
            return Err(ApiError::invalid(
                "attach_to",
                "a luks subscription is attached with its key once it is ready: order it without attach_to, then attach it",
            ));
        }
        contents(state)?;
    }
    if let Some(zone) = &order.zone {
        check_zone(state, zone).await?;
    }
    if let Some(server) = &order.attach_to {
        check_attach_to(state, account_id, server, order.zone.as_deref()).await?;
    }
    let spec = StorageSubscriptionSpec {
        name: order.name.clone(),
        size_gib: order.size_gib,
        zone: order.zone.clone(),
        encryption,
        content: None,
        verify_requests: 0,
        keys_given: 0,
        restore_from: None,
        snapshot_of: None,
        // A disk from the start: the guest writes it from its creation.
        attached_to: order.attach_to.clone(),
        written_by_guest: order.attach_to.clone(),
        suspension: None,
        termination: None,
    };
    Ok((spec, state.quota_of(&account)))
}

/// The server an order attaches its storage to: of the account, not
/// going away, and (when it is placed) in the zone the order asks for.
async fn check_attach_to(
    state: &ApiState,
    account_id: &AccountId,
    raw: &str,
    zone: Option<&str>,
) -> Result<(), ApiError> {
    let id = ServerId::parse(raw).ok_or_else(|| {
        ApiError::invalid(
            "attach_to",
            format!("{raw:?} is not a server id (vs- and 16 hex digits)"),
        )
    })?;
    let server = state
        .servers
        .get(Some(account_id.as_str()), id.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::invalid("attach_to", format!("your account has no server {id}"))
        })?;
    if server.metadata.deletion_timestamp.is_some() || server.spec.termination.is_some() {
        return Err(ApiError::invalid(
            "attach_to",
            format!("server {id} is being deleted or terminated"),
        ));
    }
    let Some(hypervisor) = server.status.and_then(|s| s.hypervisor) else {
        return Ok(());
    };
    let server_zone = state
        .hypervisors
        .get(None, hypervisor.as_str())
        .await?
        .map(|h| h.spec.zone);
    if let (Some(wanted), Some(server_zone)) = (zone, server_zone)
        && wanted != server_zone
    {
        return Err(ApiError::invalid(
            "zone",
            format!(
                "server {id} runs in zone {server_zone}: storage attached to it has its primary copy there"
            ),
        ));
    }
    Ok(())
}

/// Orders storage: two copies of `size_gib` in two zones. With an
/// `Idempotency-Key`, repeating the same request returns the same
/// subscription.
#[utoipa::path(post, path = "/v1/storage", tag = "storage", request_body = OrderStorage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same subscription")),
    responses((status = 202, body = StorageView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn order_storage(
    principal: Principal,
    State(state): State<ApiState>,
    headers: HeaderMap,
    JsonBody(order): JsonBody<OrderStorage>,
) -> Result<Response, ApiError> {
    let account_id = principal.account()?.clone();
    let key = idempotency_key(&headers)?;
    let (spec, quota) = validate_order(&state, &account_id, &order).await?;
    let fresh = StorageId::from_random(state.random_u64()?);
    let claim = claim_idempotency_key(
        &state,
        &state.storage,
        Order::new(
            WHAT,
            &account_id,
            key.as_deref(),
            // Never a digest of the key: a retry is recognised without it.
            &order.without_key(),
            fresh,
            StorageId::parse,
        )?,
    )
    .await?;
    let id = match claim {
        Retry::Existing(subscription) => {
            format_with_order_key(&state, &principal, &account_id, &subscription, &order);
            return Ok(accepted(&subscription, &principal));
        }
        Retry::Create(id) => id,
    };
    // Charged with the limit check in one step before the object exists,
    // so racing orders cannot overshoot (R27); a retry is charged once.
    let charged_as = charged_object(account_id.as_str(), id.as_str());
    let charge = state
        .ledger
        .quotas()
        .charge(
            account_id.as_str(),
            &charged_as,
            Usage::of_storage(spec.size_gib),
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
    let subscription = StorageSubscription {
        metadata: ObjectMeta {
            name: Some(id.to_string()),
            namespace: Some(account_id.to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let created = match state.storage.create(&subscription).await {
        Ok(created) => created,
        Err(StoreError::AlreadyExists { .. }) => state
            .storage
            .get(Some(account_id.as_str()), id.as_str())
            .await?
            .ok_or_else(|| {
                ApiError::conflict("the subscription was deleted while being ordered")
            })?,
        Err(other) => {
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
            AuditAction::StorageOrder,
            AuditSubject::storage(&created),
            json!({ "size_gib": order.size_gib, "zone": order.zone,
                    "encryption": created.spec.encryption.api_name(), "idempotency_key": key }),
        )
        .await;
    tracing::info!(storage = %id, account = %account_id, size_gib = order.size_gib, "storage ordered");
    format_with_order_key(&state, &principal, &account_id, &created, &order);
    Ok(accepted(&created, &principal))
}

/// A `luks` order's key formats its primary copy once it exists.
fn format_with_order_key(
    state: &ApiState,
    principal: &Principal,
    account_id: &AccountId,
    subscription: &StorageSubscription,
    order: &OrderStorage,
) {
    let (Some(key), None) = (&order.key, &subscription.spec.content) else {
        return;
    };
    if subscription.spec.encryption != StorageEncryption::Luks {
        return;
    }
    let Some(id) = StorageId::parse(&subscription.name_any()) else {
        return;
    };
    storage_keys::start_formatting(state, account_id, &id, key.clone(), principal.actor());
}

/// Lists the caller's storage subscriptions (operators: all, or `?account=`).
#[utoipa::path(get, path = "/v1/storage", tag = "storage", params(PageQuery),
    responses((status = 200, body = Page<StorageView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_storage(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<StorageView>>, ApiError> {
    let namespace = listed_namespace(&principal, &query)?;
    let operator = is_operator(&principal);
    let page = state
        .storage
        .list_page(
            namespace.as_deref(),
            query.store_limit()?,
            query.store_cursor()?.as_deref(),
        )
        .await?;
    let mut page = Page::from_store(page, |s| {
        (s.spec.snapshot_of.is_none() || operator).then(|| StorageView::of(s, operator))
    });
    // Snapshots are listed with their server; a page may hold fewer items.
    Ok(Json(Page {
        items: page.items.drain(..).flatten().collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Shows one storage subscription.
#[utoipa::path(get, path = "/v1/storage/{id}", tag = "storage", params(("id" = String, Path)),
    responses((status = 200, body = StorageView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_storage(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StorageView>, ApiError> {
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    Ok(Json(StorageView::of(
        &subscription,
        is_operator(&principal),
    )))
}

/// A suspended account's storage is read-only: nothing is written or
/// restored until the suspension is lifted (and data held for abuse stays
/// as it was found).
async fn refuse_writes_while_suspended(
    state: &ApiState,
    account_id: &AccountId,
    subscription: &StorageSubscription,
) -> Result<(), ApiError> {
    // Held on its own (a fact named it), or terminated.
    if let Some(suspension) = &subscription.spec.suspension
        && let Some(reason) = suspension.reasons.first()
    {
        return Err(ApiError::read_only_while_suspended(reason.as_str()));
    }
    if let Some(termination) = &subscription.spec.termination {
        return Err(ApiError::read_only_while_suspended(
            termination.cause.as_str(),
        ));
    }
    let account = state.accounts.get(None, account_id.as_str()).await?;
    let suspensions = account
        .and_then(|a| a.status)
        .map(|s| s.suspensions)
        .unwrap_or_default();
    match suspensions.first() {
        Some(suspension) => Err(ApiError::read_only_while_suspended(
            suspension.reason.as_str(),
        )),
        None => Ok(()),
    }
}

/// The content of a subscription attached to a server, or not yet
/// settled since it was, is the server's: neither written nor restored
/// through the API.
/// A `luks` subscription is a disk: its content is reached through the
/// server it is attached to, never through the content API.
fn refuse_for_luks(subscription: &StorageSubscription) -> Result<(), ApiError> {
    if subscription.spec.encryption == StorageEncryption::Luks {
        return Err(ApiError::conflict(
            "a luks subscription is a disk of your servers: its content is read and written by the server it is attached to",
        ));
    }
    Ok(())
}

fn refuse_while_attached(subscription: &StorageSubscription) -> Result<(), ApiError> {
    if let Some(server) = &subscription.spec.attached_to {
        return Err(ApiError::storage_attached(
            server,
            format!(
                "the subscription is attached to server {server}: its content is what the server writes; detach it first"
            ),
        ));
    }
    if let Some(server) = &subscription.spec.written_by_guest {
        return Err(ApiError::storage_attached(
            server,
            format!(
                "the subscription was detached from server {server} and what it left is being copied into a new version: try again once it is ready"
            ),
        ));
    }
    Ok(())
}

/// Deletes a storage subscription: both copies are wiped, then deleted,
/// then it disappears (404).
#[utoipa::path(delete, path = "/v1/storage/{id}", tag = "storage", params(("id" = String, Path)),
    responses((status = 202, body = StorageView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete_storage(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    if let Principal::Customer { account_id, .. } = &principal {
        let own: Vec<_> = subscription
            .spec
            .suspension
            .iter()
            .flat_map(|s| s.reasons.iter().copied())
            .collect();
        refuse_while_held_as_evidence(
            &state,
            account_id,
            "storage",
            &subscription.name_any(),
            &own,
        )
        .await?;
    }
    if let Some(server) = &subscription.spec.attached_to {
        return Err(ApiError::storage_attached(
            server,
            format!("the subscription is attached to server {server}: detach it first"),
        ));
    }
    let namespace = subscription.namespace();
    // Before the delete: an order retried after it must not create it again.
    if let Some(account) = namespace.as_deref().and_then(AccountId::parse) {
        state
            .ledger
            .idempotency()
            .fulfil_resource(&account, id.as_str(), state.now_millis())
            .await?;
    }
    let deletion = state
        .storage
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
            subscription.clone()
        }
        Err(StoreError::NotFound { .. }) => subscription.clone(),
        Err(other) => return Err(other.into()),
    };
    if view.metadata.deletion_timestamp.is_none() {
        view.status.get_or_insert_with(Default::default).phase = StoragePhase::Terminating;
    }
    state
        .audit(
            principal.actor(),
            AuditAction::StorageDelete,
            AuditSubject::storage(&subscription),
            json!({}),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(StorageView::of(&view, is_operator(&principal))),
    )
        .into_response())
}

/// A content as it was stored.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ContentView {
    /// Its version: the upload's start in Unix milliseconds.
    pub version: u64,
    pub bytes: u64,
    /// SHA-256 of the bytes, lower-case hex: compare it with your own.
    pub sha256: String,
    /// RFC 3339.
    pub written_at: String,
}

fn content_error(error: ContentError, limit: u64) -> ApiError {
    match error {
        ContentError::TooLarge => ApiError::content_too_large(limit),
        ContentError::Conflict(message) => ApiError::conflict(format!(
            "another upload is writing this subscription's next version: {message}; try again"
        )),
        ContentError::Unavailable(message) => ApiError::unavailable(format!(
            "the primary copy's hypervisor did not answer: {message}"
        )),
        ContentError::WrongKey => ApiError::internal("a content takes no key"),
    }
}

fn contents(state: &ApiState) -> Result<&Arc<dyn StorageContents>, ApiError> {
    state.contents.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "this API process cannot reach the agents; use the all-in-one or a process with agent credentials",
        )
    })
}

/// Replaces the whole content of a subscription with the request body
/// (bytes the customer encrypted first: stratus never sees a key). It is
/// written as a new version beside the current one and becomes current
/// only once complete: longer than the subscription → 413
/// `content_too_large`, and the previous content is unchanged (R27). Both
/// copies hold it once the controller copied and verified it (R24, R26).
#[utoipa::path(put, path = "/v1/storage/{id}/content", tag = "storage", params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = ContentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn write_content(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<ContentView>, ApiError> {
    let account_id = principal.account()?.clone();
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    if subscription.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::conflict("the subscription is being deleted"));
    }
    refuse_writes_while_suspended(&state, &account_id, &subscription).await?;
    refuse_for_luks(&subscription)?;
    refuse_while_attached(&subscription)?;
    let status = subscription.status.clone().unwrap_or_default();
    let Some(primary) = status.replicas.first().filter(|r| r.created) else {
        return Err(ApiError::conflict(
            "the subscription's copies are not created yet: write its content once it is ready",
        ));
    };
    let limit = subscription.spec.size_gib << 30;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::content_too_large(limit));
    }
    let contents = contents(&state)?;
    let _slot = state
        .streams
        .take(account_id.as_str(), primary.hypervisor.as_str())
        .map_err(ApiError::too_many_streams)?;
    let current = subscription.spec.content.as_ref().map_or(0, |c| c.version);
    let version = u64::try_from(state.now_millis())
        .unwrap_or(0)
        .max(current + 1);
    let name = ids::domain_name(account_id.as_str(), id.as_str());
    let stream: ContentStream = {
        use futures::StreamExt;
        body.into_data_stream()
            .map(|chunk| chunk.map(|c| c.to_vec()).map_err(|e| e.to_string()))
            .boxed()
    };
    let stored = contents
        .write(
            primary.hypervisor.as_str(),
            &name,
            version,
            subscription.spec.size_gib,
            stream,
        )
        .await
        .map_err(|e| content_error(e, limit))?;
    let written = StorageContent {
        version,
        bytes: stored.bytes,
        sha256: stored.sha256,
        written_at: state.clock.now().to_string(),
    };
    let recorded = written.clone();
    let updated = state
        .storage
        .update(Some(account_id.as_str()), id.as_str(), move |s| {
            if s.spec.content.as_ref().map_or(0, |c| c.version) >= recorded.version {
                return false;
            }
            s.spec.content = Some(recorded.clone());
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found(WHAT, id.as_str()))?;
    if updated.spec.content.as_ref() != Some(&written) {
        return Err(ApiError::conflict(
            "a newer content was written while this one was uploading; this one is discarded",
        ));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::StorageWrite,
            AuditSubject::storage(&updated),
            json!({ "version": written.version, "bytes": written.bytes, "sha256": written.sha256 }),
        )
        .await;
    tracing::info!(storage = %id, version, bytes = written.bytes, "content written");
    Ok(Json(ContentView {
        version: written.version,
        bytes: written.bytes,
        sha256: written.sha256,
        written_at: written.written_at,
    }))
}

/// Streams the subscription's current content back to its owner, with its
/// SHA-256 in `x-content-sha256` (204 when nothing was written yet).
#[utoipa::path(get, path = "/v1/storage/{id}/content", tag = "storage", params(("id" = String, Path)),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream"), (status = 204),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn read_content(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // The customer's data, even encrypted, is the customer's alone.
    principal.account()?;
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    refuse_for_luks(&subscription)?;
    let Some(content) = subscription.spec.content.clone() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let status = subscription.status.clone().unwrap_or_default();
    let primary = status
        .replicas
        .first()
        .ok_or_else(|| ApiError::conflict("the subscription has no copy"))?;
    let name = ids::domain_name(
        subscription.namespace().as_deref().unwrap_or_default(),
        id.as_str(),
    );
    // Held until the body is sent or dropped.
    let slot = state
        .streams
        .take(
            subscription.namespace().as_deref().unwrap_or_default(),
            primary.hypervisor.as_str(),
        )
        .map_err(ApiError::too_many_streams)?;
    let stream = contents(&state)?
        .read(
            primary.hypervisor.as_str(),
            &name,
            content.version,
            content.bytes,
        )
        .await
        .map_err(|e| content_error(e, subscription.spec.size_gib << 30))?;
    let body = {
        use futures::StreamExt;
        axum::body::Body::from_stream(stream.map(move |chunk| {
            let _held = &slot;
            chunk
                .map(axum::body::Bytes::from)
                .map_err(std::io::Error::other)
        }))
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content.bytes));
    for (name, value) in [
        ("x-content-sha256", content.sha256.clone()),
        ("x-content-version", content.version.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// Asks the controller to read both copies back now and check them
/// against the recorded checksums (R26), besides its schedule: a copy that
/// no longer matches is repaired from the other and reported in the
/// subscription's conditions and events.
#[utoipa::path(post, path = "/v1/admin/storage/{id}/verify", tag = "storage", params(("id" = String, Path)),
    responses((status = 202, body = StorageView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn verify_storage(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    if subscription.spec.content.is_none() {
        return Err(ApiError::conflict(
            "nothing was written to this subscription yet: there is nothing to verify",
        ));
    }
    if subscription.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::conflict("the subscription is being deleted"));
    }
    let namespace = subscription.namespace();
    let updated = state
        .storage
        .update(namespace.as_deref(), id.as_str(), |s| {
            s.spec.verify_requests = s.spec.verify_requests.saturating_add(1);
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found(WHAT, id.as_str()))?;
    state
        .audit(
            principal.actor(),
            AuditAction::StorageVerify,
            AuditSubject::storage(&updated),
            json!({ "request": updated.spec.verify_requests }),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(StorageView::of(&updated, true))).into_response())
}

/// Restores the subscription's content from a verified version the
/// secondary copy keeps (`versions` in the view; the newest by default):
/// the primary is rebuilt from it as a new version, and the content before
/// the restore stays among the kept versions.
#[utoipa::path(post, path = "/v1/storage/{id}/actions", tag = "storage", params(("id" = String, Path)),
    request_body = StorageActionBody,
    responses((status = 202, body = StorageView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn storage_action(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(action): JsonBody<StorageActionBody>,
) -> Result<Response, ApiError> {
    let account_id = principal.account()?.clone();
    let id = storage_id(&id)?;
    let subscription = find_storage(&state, &principal, &id).await?;
    if subscription.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::conflict("the subscription is being deleted"));
    }
    refuse_writes_while_suspended(&state, &account_id, &subscription).await?;
    if action.version.is_some() && action.kind != StorageActionKind::Restore {
        return Err(ApiError::bad_request(
            "version",
            "a version is given only to a restore",
        ));
    }
    if action.server.is_some() && action.kind != StorageActionKind::Attach {
        return Err(ApiError::bad_request(
            "server",
            "a server is given only to an attach",
        ));
    }
    if action.key.is_some() && action.kind != StorageActionKind::Attach {
        return Err(ApiError::bad_request(
            "key",
            "a key is given only to an attach",
        ));
    }
    match action.kind {
        StorageActionKind::Restore => {}
        StorageActionKind::Attach => {
            storage_keys::check_key(subscription.spec.encryption, action.key.as_ref())?;
            return attach(
                &state,
                &principal,
                &account_id,
                subscription,
                action.server,
                action.key,
            )
            .await;
        }
        StorageActionKind::Detach => {
            return detach(&state, &principal, &account_id, subscription).await;
        }
    }
    refuse_while_attached(&subscription)?;
    let status = subscription.status.clone().unwrap_or_default();
    let available = restorable(&status);
    let chosen = match action.version {
        None => available.first().cloned().ok_or_else(|| {
            ApiError::conflict("no verified version is kept yet: there is nothing to restore")
        })?,
        Some(version) => available
            .iter()
            .find(|k| k.version == version)
            .cloned()
            .ok_or_else(|| {
                let listed: Vec<String> = available.iter().map(|k| k.version.to_string()).collect();
                ApiError::invalid(
                    "version",
                    format!(
                        "version {version} is not kept; the verified versions are: [{}]",
                        listed.join(", ")
                    ),
                )
            })?,
    };
    let before = subscription.spec.content.as_ref().map_or(0, |c| c.version);
    let version = u64::try_from(state.now_millis())
        .unwrap_or(0)
        .max(before + 1);
    let restored = StorageContent {
        version,
        bytes: chosen.bytes,
        sha256: chosen.sha256.clone(),
        written_at: state.clock.now().to_string(),
    };
    let recorded = restored.clone();
    let updated = state
        .storage
        .update(Some(account_id.as_str()), id.as_str(), move |s| {
            if s.spec.content.as_ref().map_or(0, |c| c.version) != before {
                return false;
            }
            s.spec.content = Some(recorded.clone());
            s.spec.restore_from = Some(chosen.version);
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found(WHAT, id.as_str()))?;
    if updated.spec.content.as_ref() != Some(&restored) {
        return Err(ApiError::conflict(
            "the content changed while the restore was asked for; look at the versions again",
        ));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::StorageRestore,
            AuditSubject::storage(&updated),
            json!({ "from": chosen.version, "version": version, "sha256": chosen.sha256 }),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(StorageView::of(&updated, is_operator(&principal))),
    )
        .into_response())
}

/// Attaches the primary copy to a server of the same account on the
/// hypervisor that holds it; the controller plugs it in (hot-plug when the
/// server runs). Attaching it again to the same server changes nothing.
async fn attach(
    state: &ApiState,
    principal: &Principal,
    account_id: &AccountId,
    subscription: StorageSubscription,
    server: Option<String>,
    key: Option<VolumeKey>,
) -> Result<Response, ApiError> {
    let raw = server.ok_or_else(|| {
        ApiError::bad_request("server", "the id of the server to attach to is required")
    })?;
    let server_id = ServerId::parse(&raw).ok_or_else(|| {
        ApiError::invalid(
            "server",
            format!("{raw:?} is not a server id (vs- and 16 hex digits)"),
        )
    })?;
    let id = subscription.name_any();
    match &subscription.spec.attached_to {
        Some(attached) if attached == server_id.as_str() => {
            // Attached already: a luks disk's key is given again (after
            // its server started again, say) and loaded.
            if let Some(key) = &key {
                unlock(state, principal, &subscription, key).await?;
            }
            return Ok((
                StatusCode::ACCEPTED,
                Json(StorageView::of(&subscription, is_operator(principal))),
            )
                .into_response());
        }
        Some(attached) => {
            return Err(ApiError::storage_attached(
                attached,
                format!("the subscription is attached to server {attached}: detach it first"),
            ));
        }
        None => {}
    }
    let target = state
        .servers
        .get(Some(account_id.as_str()), server_id.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::invalid("server", format!("your account has no server {server_id}"))
        })?;
    if target.metadata.deletion_timestamp.is_some() || target.spec.termination.is_some() {
        return Err(ApiError::conflict(format!(
            "server {server_id} is being deleted or terminated"
        )));
    }
    if let Some(key) = &key
        && subscription.spec.content.is_none()
    {
        // Its order's key was lost before it formatted the primary copy
        // (a restart): this one formats it.
        let storage = storage_id(&id)?;
        if !storage_keys::formatting(state, &subscription) {
            storage_keys::start_formatting(
                state,
                account_id,
                &storage,
                key.clone(),
                principal.actor(),
            );
        }
        return Err(ApiError::conflict(
            "the subscription is being formatted with its key: attach it once it is ready",
        ));
    }
    let status = subscription.status.clone().unwrap_or_default();
    if let Some(busy) = &status.busy {
        return Err(ApiError::conflict(format!(
            "{} since {}: attach it once that ends (no guest writes a copy while it is checked or rewritten)",
            busy.what, busy.since
        )));
    }
    let primary = status.replicas.first().filter(|r| r.created);
    let settled = subscription.spec.written_by_guest.is_none()
        && status.replicas_in_sync
        && status.replicas.iter().all(|r| r.created);
    let Some(primary) = primary.filter(|_| settled) else {
        return Err(ApiError::conflict(
            "the subscription's two copies are not in sync yet: attach it once it is ready",
        ));
    };
    let server_host = target.status.as_ref().and_then(|s| s.hypervisor.clone());
    if server_host.as_ref() != Some(&primary.hypervisor) {
        let on = server_host.map_or_else(|| "no hypervisor yet".to_owned(), |h| h.to_string());
        return Err(ApiError::invalid(
            "server",
            format!(
                "server {server_id} runs on {on}, and the subscription's primary copy is on {} (zone {}): a disk is attached to a server on the hypervisor that holds it",
                primary.hypervisor, primary.zone
            ),
        ));
    }
    let attached_there = state
        .storage
        .list(Some(account_id.as_str()))
        .await?
        .items
        .iter()
        .filter(|s| s.spec.attached_to.as_deref() == Some(server_id.as_str()))
        .count();
    if attached_there >= MAX_DATA_DISKS {
        return Err(ApiError::conflict(format!(
            "server {server_id} has {MAX_DATA_DISKS} subscriptions attached, the most it can have"
        )));
    }
    if let Some(key) = &key {
        let running = target
            .status
            .as_ref()
            .is_some_and(|s| s.phase == ServerPhase::Running);
        if !running {
            return Err(ApiError::conflict(format!(
                "server {server_id} is not running: a luks disk is plugged into a running server only, with its key"
            )));
        }
        unlock(state, principal, &subscription, key).await?;
    }
    let wanted = server_id.as_str().to_owned();
    let updated = state
        .storage
        .update(Some(account_id.as_str()), &id, move |s| {
            if s.spec.attached_to.is_some() || s.spec.written_by_guest.is_some() {
                return false;
            }
            s.spec.attached_to = Some(wanted.clone());
            // From now on the guest may write to the primary copy.
            s.spec.written_by_guest = Some(wanted.clone());
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found(WHAT, &id))?;
    if updated.spec.attached_to.as_deref() != Some(server_id.as_str()) {
        // The key this attach loaded is not left in libvirtd, unless
        // another attach won and needs it to plug the disk in.
        if key.is_some() && updated.spec.attached_to.is_none() {
            let name = ids::domain_name(account_id.as_str(), id.as_str());
            if let Err(error) = contents(state)?
                .lock(primary.hypervisor.as_str(), &name, primary.version)
                .await
            {
                tracing::warn!(?error, storage = %id, "the key of an attach that lost a race could not be unloaded");
            }
        }
        return Err(ApiError::conflict(
            "the subscription changed while it was being attached; look at it again",
        ));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::StorageAttach,
            AuditSubject::storage(&updated),
            json!({ "server": server_id.as_str(), "hypervisor": primary.hypervisor }),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(StorageView::of(&updated, is_operator(principal))),
    )
        .into_response())
}

/// Loads the key of a `luks` subscription's current primary version on its
/// hypervisor; a key that does not open it is refused (422, `key`).
async fn unlock(
    state: &ApiState,
    principal: &Principal,
    subscription: &StorageSubscription,
    key: &VolumeKey,
) -> Result<(), ApiError> {
    let status = subscription.status.clone().unwrap_or_default();
    let primary = status
        .replicas
        .first()
        .filter(|r| r.created)
        .ok_or_else(|| ApiError::conflict("the subscription's primary copy is not created yet"))?;
    let name = ids::domain_name(
        subscription.namespace().as_deref().unwrap_or_default(),
        &subscription.name_any(),
    );
    contents(state)?
        .unlock(primary.hypervisor.as_str(), &name, primary.version, key)
        .await
        .map_err(storage_keys::key_error)?;
    // The controller learns of it and lets its server plug the disk in.
    state
        .storage
        .update(
            subscription.namespace().as_deref(),
            &subscription.name_any(),
            |s| {
                s.spec.keys_given = s.spec.keys_given.saturating_add(1);
                true
            },
        )
        .await?;
    state
        .audit(
            principal.actor(),
            AuditAction::StorageUnlocked,
            AuditSubject::storage(subscription),
            json!({ "hypervisor": primary.hypervisor, "version": primary.version }),
        )
        .await;
    Ok(())
}

/// Detaches the primary copy from its server (unplugged from a running
/// guest); what the guest left becomes a new version, copied to the
/// secondary. Detaching a detached subscription changes nothing.
async fn detach(
    state: &ApiState,
    principal: &Principal,
    account_id: &AccountId,
    subscription: StorageSubscription,
) -> Result<Response, ApiError> {
    let Some(server) = subscription.spec.attached_to.clone() else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(StorageView::of(&subscription, is_operator(principal))),
        )
            .into_response());
    };
    let id = subscription.name_any();
    let expected = server.clone();
    let updated = state
        .storage
        .update(Some(account_id.as_str()), &id, move |s| {
            if s.spec.attached_to.as_deref() != Some(expected.as_str()) {
                return false;
            }
            s.spec.attached_to = None;
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found(WHAT, &id))?;
    if updated.spec.attached_to.is_some() {
        return Err(ApiError::conflict(
            "the subscription changed while it was being detached; look at it again",
        ));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::StorageDetach,
            AuditSubject::storage(&updated),
            json!({ "server": server, "cause": "customer" }),
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(StorageView::of(&updated, is_operator(principal))),
    )
        .into_response())
}
