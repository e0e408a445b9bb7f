//! The notification outbox as operators see it: what was told to whom,
//! what is still being tried, what was given up; and a failed one queued
//! again once its receiver is fixed.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use stratus_store::ledger::{DeliveryState, Notification};
use utoipa::ToSchema;

use super::events::{CursorPage, CursorQuery};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::ApiState;
use crate::views::millis_to_rfc3339;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// `pending`, `delivered` or `failed`; every state when absent.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page; absent or 0: from the first.
    pub since: Option<String>,
    /// Rows per page (1-1000, default 100).
    pub limit: Option<String>,
}

/// One notification of the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    /// Stable per cause and channel: `{account}/{message id}/{channel}`.
    pub key: String,
    pub account_id: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// The e-mail address or the webhook URL.
    pub recipient: String,
    pub subject: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    /// When a pending one is tried next.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

impl From<Notification> for NotificationView {
    fn from(n: Notification) -> Self {
        Self {
            id: n.id.to_string(),
            subject: n.message["subject"].as_str().unwrap_or_default().to_owned(),
            key: n.key,
            account_id: n.account,
            channel: n.channel.as_str().to_owned(),
            recipient: n.recipient,
            state: n.state.as_str().to_owned(),
            attempts: n.attempts,
            next_attempt_at: (n.state == DeliveryState::Pending)
                .then(|| millis_to_rfc3339(n.next_attempt_at)),
            last_error: n.last_error,
            created_at: millis_to_rfc3339(n.created_at),
            delivered_at: n.delivered_at.map(millis_to_rfc3339),
        }
    }
}

/// The outbox, oldest first, of one state or all (operators).
#[utoipa::path(get, path = "/v1/admin/notifications", tag = "accounts", params(NotificationQuery),
    responses((status = 200, body = CursorPage<NotificationView>), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list_notifications(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<NotificationQuery>,
) -> Result<Json<CursorPage<NotificationView>>, ApiError> {
    principal.require_admin()?;
    let wanted = match query.state.as_deref() {
        None => None,
        Some(raw) => Some(DeliveryState::parse(raw).ok_or_else(|| {
            ApiError::bad_request("state", "state is pending, delivered or failed")
        })?),
    };
    let page = CursorQuery {
        since: query.since,
        limit: query.limit,
    };
    let cursor = page.cursor()?;
    let rows = state
        .ledger
        .notifications()
        .page(wanted, cursor, page.limit()?)
        .await?;
    let next_cursor = rows.last().map_or(cursor, |n| n.id).to_string();
    Ok(Json(CursorPage {
        items: rows.into_iter().map(NotificationView::from).collect(),
        next_cursor,
    }))
}

/// Queues a failed notification again, due now with its attempts counted
/// afresh (operators).
#[utoipa::path(post, path = "/v1/admin/notifications/{id}/retry", tag = "accounts",
    params(("id" = String, Path)),
    responses((status = 200, body = NotificationView), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry_notification(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    principal.require_admin()?;
    let number = id
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::malformed_id("notification", &id, "a positive number"))?;
    let outbox = state.ledger.notifications();
    let now = state.clock.now().as_millisecond();
    if !outbox.retry(number, now).await? {
        return match outbox.get(number).await? {
            None => Err(ApiError::not_found("notification", &id)),
            Some(n) => Err(ApiError::conflict(format!(
                "notification {id} is {}: only a failed one is queued again",
                n.state.as_str()
            ))),
        };
    }
    tracing::info!(notification = number, actor = %principal.actor(), "failed notification queued again");
    let queued = outbox
        .get(number)
        .await?
        .ok_or_else(|| ApiError::not_found("notification", &id))?;
    Ok(Json(queued.into()))
}
