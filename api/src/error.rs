//! The one error type of the API: `{"error": {"code", "message", "details"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use stratus_core::quota::QuotaExceeded;
use stratus_core::standing::SuspensionReason;
use stratus_store::StoreError;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
}

/// Error body of every non-2xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Structured details, e.g. `{"field": "plan"}`.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    /// The token called faster than its rate limit allows.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests with this token; retry in {seconds} s"),
        )
        .with_details(json!({ "retry_after_seconds": seconds }));
        error.retry_after = Some(seconds);
        error
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// The request body or query is malformed; `field` names what.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
            .with_details(json!({ "field": field }))
    }

    /// Well-formed but not acceptable; `field` names what.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_details(json!({ "field": field }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} not found"),
        )
    }

    /// A path id that cannot name anything of its kind: answered like an
    /// unknown one, and never passed on to a store.
    pub fn malformed_id(what: &str, raw: &str, shape: &str) -> Self {
        let shown: String = raw.chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {shown:?} not found: {what} ids look like {shape}"),
        )
        .with_details(json!({ "field": "id" }))
    }

    /// R2: a suspended account orders nothing; `reason` is the first cause.
    pub fn account_suspended(reason: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "account_suspended",
            format!("the account is suspended ({reason}): new orders are refused"),
        )
        .with_details(json!({ "reason": reason }))
    }

    /// A suspended account's storage takes no writes; `reason` is the first cause.
    pub fn read_only_while_suspended(reason: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "account_suspended",
            format!(
                "the account is suspended ({reason}): its storage is read-only until the suspension is lifted"
            ),
        )
        .with_details(json!({ "reason": reason }))
    }

    /// R5: what an account suspended for abuse holds is evidence; its
    /// customer cannot destroy it.
    pub fn held_as_evidence(what: &str, reason: SuspensionReason) -> Self {
        let code = if what == "server" {
            "server_suspended"
        } else {
            "account_suspended"
        };
        Self::new(
            StatusCode::CONFLICT,
            code,
            format!(
                "suspended {}: the {what} is kept as evidence until an operator lifts the hold or terminates it",
                reason.describe()
            ),
        )
        .with_details(json!({ "reason": reason.as_str(), "reasons": [reason.as_str()] }))
    }

    /// Too many content streams in flight (R27's transfers are bounded
    /// per account and per hypervisor): try again when one ends.
    pub fn too_many_streams(full: crate::stream_slots::Full) -> Self {
        let (message, limit) = match full {
            crate::stream_slots::Full::Account => (
                "your account has as many content transfers in flight as it may: try again when one ends",
                crate::stream_slots::PER_ACCOUNT,
            ),
            crate::stream_slots::Full::Hypervisor => (
                "the hypervisor of this copy has as many content transfers in flight as it serves: try again shortly",
                crate::stream_slots::PER_HYPERVISOR,
            ),
        };
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_transfers", message)
            .with_details(json!({ "limit": limit }))
    }

    /// A suspended server refuses the customer's actions; `reasons` say why.
    pub fn server_suspended(reasons: &[&str], message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "server_suspended", message)
            .with_details(json!({ "reason": reasons.first(), "reasons": reasons }))
    }

    /// R27: a content longer than the subscription; nothing of it was kept.
    pub fn content_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_large",
            format!(
                "the content is longer than the subscription's {limit} bytes: nothing of it was kept, and the previous content is unchanged"
            ),
        )
        .with_details(json!({ "limit_bytes": limit }))
    }

    /// The subscription is, or was until its content is settled, a server's
    /// disk: its content is the server's to write.
    pub fn storage_attached(server: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "storage_attached", message)
            .with_details(json!({ "server": server }))
    }

    /// R23: the server's hypervisor has no room for the plan asked for;
    /// `missing` says how much of what it lacks.
    pub fn insufficient_capacity(
        hypervisor: &str,
        missing: stratus_core::scheduling::Load,
    ) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "insufficient_capacity",
            format!(
                "the server's hypervisor {hypervisor} has no room for this plan: it lacks {missing}; nothing was changed"
            ),
        )
        .with_details(json!({
            "field": "plan",
            "hypervisor": hypervisor,
            "missing": {
                "vcpus": missing.vcpus,
                "memory_mib": missing.memory_mib,
                "disk_gib": missing.disk_gib,
            },
        }))
    }

    /// The server is busy with another action, named in `action`.
    pub fn server_busy(action: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "server_busy", message)
            .with_details(json!({ "action": action }))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// An order that does not fit the account's quota.
    pub fn quota_exceeded(exceeded: QuotaExceeded) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota_exceeded",
            format!("the order does not fit the account's quota: {exceeded}"),
        )
        .with_details(json!({
            "quota": exceeded.quota.key(),
            "limit": exceeded.limit,
            "used": exceeded.used,
            "requested": exceeded.requested,
        }))
    }

    /// 503: a part this request needs cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Conflict { .. } => Self::conflict(format!("{error}; retry the request")),
            StoreError::AlreadyExists { .. } => Self::conflict(error.to_string()),
            // The Kubernetes API server refused the object (its schema).
            StoreError::Invalid(message) => Self::invalid("body", message.clone()),
            StoreError::NotFound { .. } => {
                Self::conflict(format!("{error}; it was removed meanwhile"))
            }
            // The only continue token a request carries is its cursor.
            StoreError::InvalidContinue(_) => Self::bad_request(
                "cursor",
                "cursor is invalid or expired; list again without it",
            ),
            _ => {
                tracing::error!(%error, "store failure");
                Self::internal(
                    "the control plane could not complete the request; it was not applied",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
