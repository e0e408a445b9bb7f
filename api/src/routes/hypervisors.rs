use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kube::core::ObjectMeta;
use serde_json::json;
use stratus_core::ids::HypervisorName;
use stratus_core::resources::{Hypervisor, HypervisorSpec};
use stratus_core::scheduling::{self, Placed};
use stratus_core::validate;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject};

use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery, paginate};
use crate::state::ApiState;
use crate::views::{HypervisorView, RegisterHypervisor};

/// Minimum length of an agent token, so a guessable one is refused.
const MIN_AGENT_TOKEN_LEN: usize = 16;

/// What is placed on each hypervisor.
async fn placed_load(state: &ApiState) -> Result<HashMap<HypervisorName, Placed>, ApiError> {
    let servers = state.servers.list(None).await?.items;
    Ok(scheduling::placed_load(scheduling::placements_of(&servers)))
}

fn view(hypervisor: &Hypervisor, load: &HashMap<HypervisorName, Placed>) -> HypervisorView {
    let placed = load
        .get(&HypervisorName::of(hypervisor))
        .copied()
        .unwrap_or_default();
    HypervisorView::new(hypervisor, placed)
}

/// Registers a hypervisor running the agent (operators). Its token is stored
/// encrypted and never returned or logged.
#[utoipa::path(post, path = "/v1/admin/hypervisors", tag = "hypervisors", request_body = RegisterHypervisor,
    responses((status = 201, body = HypervisorView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn register_hypervisor(
    principal: Principal,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<RegisterHypervisor>,
) -> Result<(StatusCode, Json<HypervisorView>), ApiError> {
    principal.require_admin()?;
    let name = HypervisorName::parse(&request.name).ok_or_else(|| {
        ApiError::invalid(
            "name",
            "name must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        )
    })?;
    if !validate::is_slug(&request.zone) {
        return Err(ApiError::invalid(
            "zone",
            "zone must be lower-case letters, digits, '-', '.' or '_' (1-63)",
        ));
    }
    let url_ok = request
        .url
        .strip_prefix("https://")
        .is_some_and(|host| !host.is_empty() && !host.starts_with('/'))
        && request.url.len() <= 2048
        && !request
            .url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !url_ok {
        return Err(ApiError::invalid(
            "url",
            "url must be the https:// URL of the agent (agents serve mutual TLS only)",
        ));
    }
    if request.token.len() < MIN_AGENT_TOKEN_LEN
        || request
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(
            "token",
            format!("token must be at least {MIN_AGENT_TOKEN_LEN} characters without spaces"),
        ));
    }
    if state.hypervisors.get(None, name.as_str()).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "hypervisor {name} is already registered"
        )));
    }
    // The object is created first: its creation is the atomic claim of the
    // name, so a racing or refused registration never overwrites the
    // credential of a hypervisor that exists.
    let credential = name.credential_name();
    let hypervisor = Hypervisor {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: HypervisorSpec {
            url: request.url.clone(),
            zone: request.zone.clone(),
            credential: credential.clone(),
            cordoned: false,
        },
        status: None,
    };
    let created = match state.hypervisors.create(&hypervisor).await {
        Ok(created) => created,
        Err(StoreError::AlreadyExists { .. }) => {
            return Err(ApiError::conflict(format!(
                "hypervisor {name} is already registered"
            )));
        }
        Err(other) => return Err(other.into()),
    };
    if let Err(error) = state.secrets.put(&credential, &request.token).await {
        // Without its credential the hypervisor is unusable: take it back.
        if let Err(undo) = state.hypervisors.delete(None, name.as_str()).await {
            tracing::error!(%undo, hypervisor = %name, "a hypervisor whose credential could not be stored is left registered");
        }
        return Err(error.into());
    }
    state
        .audit(
            principal.actor(),
            AuditAction::HypervisorRegister,
            AuditSubject::Hypervisor(name.to_string()),
            json!({ "url": request.url, "zone": request.zone }),
        )
        .await;
    tracing::info!(hypervisor = %request.name, zone = %request.zone, "hypervisor registered");
    Ok((StatusCode::CREATED, Json(view(&created, &HashMap::new()))))
}

/// Lists hypervisors with capacity, placed load, last contact (operators).
#[utoipa::path(get, path = "/v1/admin/hypervisors", tag = "hypervisors", params(PageQuery),
    responses((status = 200, body = Page<HypervisorView>), (status = 403, body = ErrorBody)))]
pub async fn list_hypervisors(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<HypervisorView>>, ApiError> {
    principal.require_admin()?;
    let load = placed_load(&state).await?;
    let hypervisors = state.hypervisors.list(None).await?.items;
    let views = hypervisors.iter().map(|h| view(h, &load)).collect();
    Ok(Json(paginate(views, &query, |h: &HypervisorView| {
        h.name.clone()
    })?))
}

/// Shows one hypervisor (operators).
#[utoipa::path(get, path = "/v1/admin/hypervisors/{name}", tag = "hypervisors", params(("name" = String, Path)),
    responses((status = 200, body = HypervisorView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_hypervisor(
    principal: Principal,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<HypervisorView>, ApiError> {
    principal.require_admin()?;
    let name = HypervisorName::parse(&name).ok_or_else(|| {
        ApiError::malformed_id(
            "hypervisor",
            &name,
            "a slug of lowercase letters, digits and -",
        )
    })?;
    let hypervisor = state
        .hypervisors
        .get(None, name.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("hypervisor", name.as_str()))?;
    let load = placed_load(&state).await?;
    Ok(Json(view(&hypervisor, &load)))
}
