//! The router: every handler is registered with its OpenAPI description, so
//! `/openapi.json` is generated from the handlers themselves.

mod accounts;
mod catalog;
mod customer_objects;
mod events;
pub mod hypervisors;
mod ip;
mod notifications;
mod ptr;
mod servers;
mod snapshots;
mod storage;
mod storage_keys;
mod system;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::metrics;
use crate::state::ApiState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "stratus API", description = "Order and manage virtual servers; operate accounts and hypervisors."),
    security(("bearer" = [])),
    tags(
        (name = "accounts", description = "Customer accounts and their API tokens (operators)"),
        (name = "catalog", description = "Plans and images"),
        (name = "servers", description = "Virtual servers of the caller's account"),
        (name = "storage", description = "Storage subscriptions of the caller's account: two copies in two zones"),
        (name = "hypervisors", description = "Hypervisors (operators)"),
        (name = "ip", description = "IP pools and the IP ledger (operators)"),
        (name = "system", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

fn openapi_router() -> OpenApiRouter<ApiState> {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    } else {
        let mut components = utoipa::openapi::Components::new();
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        doc.components = Some(components);
    }
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(accounts::create_account, accounts::list_accounts))
        .routes(routes!(accounts::get_account))
        .routes(routes!(accounts::own_account))
        .routes(routes!(accounts::set_quota))
        .routes(routes!(accounts::create_token, accounts::list_tokens))
        .routes(routes!(accounts::revoke_token))
        .routes(routes!(accounts::create_operator_token))
        .routes(routes!(events::report_account_event))
        .routes(routes!(events::report_event))
        .routes(routes!(events::list_billing_events))
        .routes(routes!(events::account_audit))
        .routes(routes!(events::own_account_events))
        .routes(routes!(notifications::list_notifications))
        .routes(routes!(notifications::retry_notification))
        .routes(routes!(catalog::list_plans))
        .routes(routes!(catalog::list_images))
        .routes(routes!(servers::order_server, servers::list_servers))
        .routes(routes!(servers::get_server, servers::delete_server))
        .routes(routes!(servers::server_action))
        .routes(routes!(servers::server_console))
        .routes(routes!(ptr::set_ptr, ptr::list_ptrs))
        .routes(routes!(snapshots::take_snapshot, snapshots::list_snapshots))
        .routes(routes!(snapshots::delete_snapshot))
        .routes(routes!(snapshots::list_account_snapshots))
        .routes(routes!(snapshots::delete_account_snapshot))
        .routes(routes!(snapshots::set_backups))
        .routes(routes!(storage::order_storage, storage::list_storage))
        .routes(routes!(storage::get_storage, storage::delete_storage))
        .routes(routes!(storage::write_content, storage::read_content))
        .routes(routes!(storage::verify_storage))
        .routes(routes!(storage::storage_action))
        .routes(routes!(
            hypervisors::register_hypervisor,
            hypervisors::list_hypervisors
        ))
        .routes(routes!(hypervisors::get_hypervisor))
        .routes(routes!(ip::create_ip_pool, ip::list_ip_pools))
        .routes(routes!(ip::get_ip_pool, ip::delete_ip_pool))
        .routes(routes!(ip::ip_history))
        .routes(routes!(ip::list_ips))
        .routes(routes!(ip::override_ip, ip::withdraw_ip_override))
        .routes(routes!(ip::check_ip))
        .routes(routes!(ip::ip_checks))
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
}

/// The OpenAPI document of this API.
pub fn openapi() -> OpenApi {
    openapi_router().into_openapi()
}

pub fn app(state: ApiState) -> Router {
    let (router, doc) = openapi_router().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("route", "requested") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
