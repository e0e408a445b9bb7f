//! Snapshots of servers' disks (R3, R18, R26): the disk copied as of one
//! moment by the server's hypervisor, then kept by the storage machinery
//! as two verified copies in two zones, apart from the server. A snapshot
//! is a storage subscription that says what it copies (`snapshotOf`); the
//! storage routes do not show it to customers.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::core::ObjectMeta;
use serde_json::json;
use stratus_core::backups::MAX_KEEP;
use stratus_core::ids::{AccountId, StorageId};
use stratus_core::quota::{Usage, charged_object};
use stratus_core::resources::{
    BackupSchedule, SnapshotOf, StorageSubscription, StorageSubscriptionSpec, VirtualServer,
};
use stratus_core::validate;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject};

use super::customer_objects::{listed_namespace, orderable_account, refuse_while_held_as_evidence};
use super::servers::{find_server, refuse_while_held, server_id};
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery, paginate};
use crate::state::ApiState;
use crate::views::{ServerView, SetBackups, SnapshotList, SnapshotView, TakeSnapshot};

/// Snapshots one server keeps at most (its account's `snapshotGib` quota
/// bounds them too).
pub const MAX_SNAPSHOTS_PER_SERVER: usize = 64;

/// The snapshots of `server`, oldest first (its account's storage read
/// whole: bounded by the account's quotas).
async fn snapshots_of(
    state: &ApiState,
    server: &VirtualServer,
) -> Result<Vec<StorageSubscription>, ApiError> {
    let name = server.name_any();
    let mut found: Vec<StorageSubscription> = state
        .storage
        .list(server.namespace().as_deref())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            s.spec
                .snapshot_of
                .as_ref()
                .is_some_and(|of| of.server == name)
        })
        .collect();
    found.sort_by_key(|s| s.spec.snapshot_of.as_ref().map_or(0, |of| of.version));
    Ok(found)
}

/// Refuses a change of `server`'s disk (a rebuild, a restore, a resize)
/// while one of its snapshots is being copied from it: the copy would
/// take the disk as the change left it, or fail.
pub(super) async fn refuse_while_copying(
    state: &ApiState,
    server: &VirtualServer,
) -> Result<(), ApiError> {
    // Only one placed and not copied yet: one waiting for room would
    // hold the server back for as long as it waits (and its capture looks
    // at the server again anyway).
    let copying = snapshots_of(state, server).await?.into_iter().find(|s| {
        s.spec.content.is_none()
            && s.metadata.deletion_timestamp.is_none()
            && s.status
                .as_ref()
                .is_some_and(|st| !st.replicas.is_empty() && st.capture_failed.is_none())
    });
    match copying {
        Some(snapshot) => Err(ApiError::server_busy(
            "snapshot",
            format!(
                "snapshot {} ({}) is being copied from the server's disk: try again once it is",
                snapshot.name_any(),
                snapshot.spec.name
            ),
        )),
        None => Ok(()),
    }
}

/// Takes a snapshot of the server's disk: charged to the account's
/// `snapshotGib` quota (by the server's disk size) in one step with the
/// check, then copied by the controller.
#[utoipa::path(post, path = "/v1/servers/{id}/snapshots", tag = "servers", params(("id" = String, Path)), request_body = TakeSnapshot,
    responses((status = 202, body = SnapshotView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn take_snapshot(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TakeSnapshot>,
) -> Result<Response, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    if !validate::is_dns_label(&body.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "{:?} is not a valid name (1-63 lower-case letters, digits and '-', not at either end)",
                body.name
            ),
        ));
    }
    refuse_while_held(&server, "snapshot")?;
    let status = server.status.clone().unwrap_or_default();
    if !status.provisioned || status.hypervisor.is_none() {
        return Err(ApiError::server_busy(
            "provisioning",
            "the server is still being provisioned: take a snapshot once it runs",
        ));
    }
    if server.rebuilding() || server.resizing() || server.in_rescue() {
        return Err(ApiError::server_busy(
            "disk_change",
            "the server's disk is being changed (a rebuild, restore, resize or rescue mode): take a snapshot once that is done",
        ));
    }
    let existing = snapshots_of(&state, &server).await?;
    if existing.len() >= MAX_SNAPSHOTS_PER_SERVER {
        return Err(ApiError::conflict(format!(
            "the server keeps {MAX_SNAPSHOTS_PER_SERVER} snapshots already: delete one first"
        )));
    }
    let account_id = server
        .namespace()
        .and_then(|ns| AccountId::parse(&ns))
        .ok_or_else(|| ApiError::internal("the server is in no account"))?;
    let account = orderable_account(&state, &account_id).await?;
    let disk_gib = status
        .applied
        .as_ref()
        .map_or(server.spec.resources.disk_gib, |a| a.resources.disk_gib);
    let snapshot_id = StorageId::from_random(state.random_u64()?);
    let charged_as = charged_object(account_id.as_str(), snapshot_id.as_str());
    let charge = state
        .ledger
        .quotas()
        .charge(
            account_id.as_str(),
            &charged_as,
            Usage::of_snapshot(disk_gib),
            state.quota_of(&account),
            state.now_millis(),
        )
        .await?;
    if let Err(exceeded) = charge {
        return Err(ApiError::quota_exceeded(exceeded));
    }
    let version = u64::try_from(state.now_millis()).unwrap_or(1).max(1);
    let snapshot = StorageSubscription {
        metadata: ObjectMeta {
            name: Some(snapshot_id.to_string()),
            namespace: Some(account_id.to_string()),
            ..Default::default()
        },
        spec: StorageSubscriptionSpec::snapshot(
            body.name.clone(),
            disk_gib,
            SnapshotOf {
                server: server.name_any(),
                image: server.image().to_owned(),
                instance_generation: status.instance_generation.unwrap_or(status.disk_generation),
                version,
                backup: false,
            },
        ),
        status: None,
    };
    let created = match state.storage.create(&snapshot).await {
        Ok(created) => created,
        Err(error) => {
            if let Err(error) = state.ledger.quotas().release(&charged_as).await {
                tracing::warn!(%error, resource = %charged_as, "could not return the charge of a failed snapshot");
            }
            return Err(error.into());
        }
    };
    state
        .audit(
            principal.actor(),
            AuditAction::ServerSnapshot,
            AuditSubject::server(&server),
            json!({ "snapshot": created.name_any(), "name": body.name, "size_gib": disk_gib,
                    "image": server.image() }),
        )
        .await;
    tracing::info!(server = %id, snapshot = %snapshot_id, disk_gib, "snapshot asked");
    let view = SnapshotView::of(&created)
        .ok_or_else(|| ApiError::internal("a snapshot was stored without what it copies"))?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Lists the server's snapshots, oldest first (at most
/// [`MAX_SNAPSHOTS_PER_SERVER`]).
#[utoipa::path(get, path = "/v1/servers/{id}/snapshots", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = SnapshotList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotList>, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    let items = snapshots_of(&state, &server)
        .await?
        .iter()
        .filter_map(SnapshotView::of)
        .collect();
    Ok(Json(SnapshotList { items }))
}

/// Lists the account's snapshots, of every server, those whose server was
/// deleted too, oldest first, a page at a time (an account keeping a
/// month of daily backups of hundreds of servers has thousands).
#[utoipa::path(get, path = "/v1/snapshots", tag = "servers", params(PageQuery),
    responses((status = 200, body = Page<SnapshotView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list_account_snapshots(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<SnapshotView>>, ApiError> {
    let account = principal.account()?.clone();
    listed_namespace(&principal, &query)?;
    let found: Vec<StorageSubscription> = state
        .storage
        .list(Some(account.as_str()))
        .await?
        .items
        .into_iter()
        .filter(|s| s.spec.snapshot_of.is_some())
        .collect();
    // Oldest first, the id apart two taken in one millisecond.
    let page = paginate(found, &query, |s| {
        let taken = s.spec.snapshot_of.as_ref().map_or(0, |of| of.version);
        format!("{taken:020}-{}", s.name_any())
    })?;
    Ok(Json(Page {
        items: page.items.iter().filter_map(SnapshotView::of).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Deletes one of the account's snapshots, its server there or not.
#[utoipa::path(delete, path = "/v1/snapshots/{snapshot}", tag = "servers", params(("snapshot" = String, Path)),
    responses((status = 202, body = SnapshotView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete_account_snapshot(
    principal: Principal,
    State(state): State<ApiState>,
    Path(snapshot): Path<String>,
) -> Result<Response, ApiError> {
    let account = principal.account()?.clone();
    let not_found = || ApiError::not_found("snapshot", &snapshot);
    let snapshot_id = StorageId::parse(&snapshot).ok_or_else(not_found)?;
    let found = state
        .storage
        .get(Some(account.as_str()), snapshot_id.as_str())
        .await?
        .filter(|s| s.spec.snapshot_of.is_some())
        .ok_or_else(not_found)?;
    delete_found(&state, &principal, found).await
}

/// Deletes a snapshot: both copies are wiped, then its quota is given
/// back. One that a restore is being made from is wiped once that restore
/// made its disk.
#[utoipa::path(delete, path = "/v1/servers/{id}/snapshots/{snapshot}", tag = "servers",
    params(("id" = String, Path), ("snapshot" = String, Path)),
    responses((status = 202, body = SnapshotView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete_snapshot(
    principal: Principal,
    State(state): State<ApiState>,
    Path((id, snapshot)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    let not_found = || ApiError::not_found("snapshot", &snapshot);
    let snapshot_id = StorageId::parse(&snapshot).ok_or_else(not_found)?;
    let namespace = server.namespace();
    let found = state
        .storage
        .get(namespace.as_deref(), snapshot_id.as_str())
        .await?
        .filter(|s| {
            s.spec
                .snapshot_of
                .as_ref()
                .is_some_and(|of| of.server == server.name_any())
        })
        .ok_or_else(not_found)?;
    delete_found(&state, &principal, found).await
}

/// Deletes `found`, a snapshot the caller may reach.
async fn delete_found(
    state: &ApiState,
    principal: &Principal,
    found: StorageSubscription,
) -> Result<Response, ApiError> {
    let namespace = found.namespace();
    let id = found.name_any();
    if let Principal::Customer { account_id, .. } = principal {
        // A snapshot of a server held for abuse is evidence too (R5, R8).
        let own: Vec<_> = found
            .spec
            .suspension
            .iter()
            .flat_map(|s| s.reasons.iter().copied())
            .collect();
        let server = found
            .spec
            .snapshot_of
            .as_ref()
            .map_or(id.as_str(), |of| of.server.as_str());
        refuse_while_held_as_evidence(state, account_id, "snapshot", server, &own).await?;
    }
    if let Some(termination) = &found.spec.termination {
        return Err(ApiError::conflict(format!(
            "the snapshot was terminated with its account's services: it is wiped at {}",
            termination.wipe_at
        )));
    }
    let deletion = state.storage.delete(namespace.as_deref(), &id).await;
    let left = match deletion {
        Ok(stratus_store::objects::Deletion::Pending(pending)) => pending,
        Ok(stratus_store::objects::Deletion::Deleted) => {
            super::customer_objects::release_deleted_outright(state, namespace.as_deref(), &id)
                .await;
            found.clone()
        }
        Err(StoreError::NotFound { .. }) => found.clone(),
        Err(other) => return Err(other.into()),
    };
    state
        .audit(
            principal.actor(),
            AuditAction::ServerSnapshotDelete,
            AuditSubject::storage(&found),
            json!({ "snapshot": id, "name": found.spec.name,
                    "server": found.spec.snapshot_of.as_ref().map(|of| of.server.clone()) }),
        )
        .await;
    let mut view = SnapshotView::of(&left)
        .ok_or_else(|| ApiError::internal("a snapshot was stored without what it copies"))?;
    view.deleting = true;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Turns daily backups of the server's disk on (keeping the newest `keep`)
/// or off (those taken stay until deleted), in one compare-and-set on the
/// server.
#[utoipa::path(put, path = "/v1/servers/{id}/backups", tag = "servers", params(("id" = String, Path)), request_body = SetBackups,
    responses((status = 200, body = ServerView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_backups(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SetBackups>,
) -> Result<Json<ServerView>, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    let wanted = match (body.enabled, body.keep) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "keep",
                "backups that are off keep nothing: leave keep out",
            ));
        }
        (true, Some(keep)) if (1..=MAX_KEEP).contains(&keep) => Some(BackupSchedule { keep }),
        (true, _) => {
            return Err(ApiError::invalid(
                "keep",
                format!("how many backups are kept: 1 to {MAX_KEEP}"),
            ));
        }
    };
    refuse_while_held(&server, "backups change")?;
    let mut refused = None;
    let updated = state
        .servers
        .update(server.namespace().as_deref(), &server.name_any(), |s| {
            refused = refuse_while_held(s, "backups change").err();
            if refused.is_some() || s.spec.backups == wanted {
                return false;
            }
            s.spec.backups = wanted;
            true
        })
        .await?
        .ok_or_else(|| ApiError::not_found("server", id.as_str()))?;
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerBackups,
            AuditSubject::server(&updated),
            json!({ "enabled": body.enabled, "keep": body.keep }),
        )
        .await;
    Ok(Json(ServerView::from(&updated)))
}
