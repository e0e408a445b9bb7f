use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::ApiState;

/// Liveness: the API process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()), responses((status = 200, description = "ok", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics of the whole process.
#[utoipa::path(get, path = "/metrics", tag = "system", security(()), responses((status = 200, description = "OpenMetrics text")))]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
