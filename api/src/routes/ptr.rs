//! Reverse DNS of a server's addresses (R20–R22): customers set the PTR of
//! an address their server holds; every change is kept with its holder in
//! the IP ledger, and stratus's DNS server answers it.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, State};
use kube::ResourceExt;
use serde_json::json;
use stratus_core::ip::Family;
use stratus_core::rdns;
use stratus_core::resources::VirtualServer;
use stratus_store::StoreError;
use stratus_store::ledger::{AuditAction, AuditSubject, Holding, SetPtr};

use super::servers::{find_server, server_id};
use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::forward::Forward;
use crate::state::ApiState;
use crate::views::{PtrList, PtrView, SetPtrBody};

/// The server's uid: the holder of its addresses in the IP ledger.
fn holder_of(server: &VirtualServer) -> Result<String, ApiError> {
    server
        .metadata
        .uid
        .clone()
        .ok_or_else(|| ApiError::internal("the server has no uid"))
}

/// The holding of `server` that `ip` belongs to: its IPv4 address, or an
/// address of its IPv6 prefix.
fn holding_of(holdings: &[Holding], ip: IpAddr) -> Option<&Holding> {
    holdings.iter().find(|holding| match (holding.family, ip) {
        (Family::V4, IpAddr::V4(_)) => holding.address.parse::<IpAddr>().ok() == Some(ip),
        (Family::V6, IpAddr::V6(_)) => holding
            .address
            .parse::<ipnet::IpNet>()
            .is_ok_and(|prefix| prefix.contains(&ip)),
        _ => false,
    })
}

/// Sets the PTR of an address the server holds.
#[utoipa::path(put, path = "/v1/servers/{id}/ptr", tag = "servers", params(("id" = String, Path)), request_body = SetPtrBody,
    responses((status = 200, body = PtrView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn set_ptr(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SetPtrBody>,
) -> Result<Json<PtrView>, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    if server.metadata.deletion_timestamp.is_some() || server.spec.termination.is_some() {
        return Err(ApiError::conflict(
            "the server is being deleted or was terminated: its addresses are being given back",
        ));
    }
    if let Some(suspension) = &server.spec.suspension {
        // A server suspended for spam or abuse does not rename itself.
        let reasons: Vec<&str> = suspension.reasons.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::server_suspended(
            &reasons,
            format!(
                "the server is {}: its reverse DNS stays as it is until the suspension is lifted",
                suspension.describe()
            ),
        ));
    }
    let ip: IpAddr = body
        .ip
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid("ip", format!("{:?} is not an IP address", body.ip)))?;
    let holder = holder_of(&server)?;
    let holdings = state.ledger.ips().held_by(&holder).await?;
    let holding = holding_of(&holdings, ip).ok_or_else(|| {
        ApiError::invalid(
            "ip",
            format!("the server does not hold {ip}: give its IPv4 address or an address of its IPv6 prefix"),
        )
    })?;
    let hostname = body
        .hostname
        .as_deref()
        .map(rdns::check_hostname)
        .transpose()
        .map_err(|message| ApiError::invalid("hostname", message))?;
    if let Some(name) = &hostname
        && state.config.rdns.require_forward_match
    {
        let Some(forward) = &state.forward else {
            return Err(ApiError::unavailable(
                "the provider checks that a PTR's name resolves to its address and has no resolver to ask (dnsbl.resolver): reverse DNS cannot be set until it is configured",
            ));
        };
        match forward.addresses(name, ip).await {
            Forward::Addresses(found) if found.contains(&ip) => {}
            Forward::Addresses(found) => {
                return Err(ApiError::invalid(
                    "hostname",
                    format!(
                        "{name} resolves to {} and not to {ip}: add the record first (forward-confirmed reverse DNS)",
                        if found.is_empty() {
                            "nothing".to_owned()
                        } else {
                            found
                                .iter()
                                .map(IpAddr::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            Forward::Unknown(why) => {
                return Err(ApiError::unavailable(format!(
                    "{name} could not be looked up ({why}); try again"
                )));
            }
        }
    }
    let address = ip.to_string();
    let actor = principal.actor().to_string();
    let set = state
        .ledger
        .ptrs()
        .set(&SetPtr {
            address: &address,
            hostname: hostname.as_deref(),
            holding_id: holding.id,
            holder: &holder,
            actor: &actor,
            at: state.now_millis(),
        })
        .await
        .map_err(|error| match error {
            StoreError::Invalid(message) => ApiError::invalid("ip", message),
            other => other.into(),
        })?;
    if !set {
        return Err(ApiError::conflict(format!(
            "{ip} was given back meanwhile: the server no longer holds it"
        )));
    }
    state
        .audit(
            principal.actor(),
            AuditAction::ServerPtr,
            AuditSubject::server(&server),
            json!({"ip": address, "hostname": hostname}),
        )
        .await;
    tracing::info!(server = %server.name_any(), %ip, hostname = ?hostname, "PTR set");
    let view = match hostname {
        Some(hostname) => PtrView {
            ip: address,
            hostname: Some(hostname),
            default: false,
        },
        None => default_view(&state, ip),
    };
    Ok(Json(view))
}

fn default_view(state: &ApiState, ip: IpAddr) -> PtrView {
    PtrView {
        ip: ip.to_string(),
        hostname: state
            .config
            .rdns
            .default_template
            .as_deref()
            .map(|template| rdns::default_ptr(template, ip)),
        default: true,
    }
}

/// The reverse DNS of the server's addresses: its IPv4 address and every
/// IPv6 address a PTR was set for.
#[utoipa::path(get, path = "/v1/servers/{id}/ptr", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = PtrList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_ptrs(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PtrList>, ApiError> {
    let id = server_id(&id)?;
    let server = find_server(&state, &principal, &id).await?;
    let holder = holder_of(&server)?;
    let set = state.ledger.ptrs().of_holder(&holder).await?;
    let holdings = state.ledger.ips().held_by(&holder).await?;
    let mut items: Vec<PtrView> = Vec::new();
    for holding in holdings.iter().filter(|h| h.family == Family::V4) {
        let Ok(ip) = holding.address.parse::<IpAddr>() else {
            continue;
        };
        if !set.iter().any(|record| record.address == holding.address) {
            items.push(default_view(&state, ip));
        }
    }
    items.extend(set.into_iter().map(|record| PtrView {
        ip: record.address,
        hostname: Some(record.hostname),
        default: false,
    }));
    items.sort_by(|a, b| a.ip.cmp(&b.ip));
    Ok(Json(PtrList { items }))
}
