use axum::Json;
use axum::extract::State;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::Page;
use crate::state::ApiState;
use crate::views::{ImageView, PlanView};

/// Plans customers can order.
#[utoipa::path(get, path = "/v1/plans", tag = "catalog",
    responses((status = 200, body = Page<PlanView>), (status = 401, body = ErrorBody)))]
pub async fn list_plans(
    _: Principal,
    State(state): State<ApiState>,
) -> Result<Json<Page<PlanView>>, ApiError> {
    Ok(Json(Page {
        items: state.config.plans.iter().map(PlanView::from).collect(),
        next_cursor: None,
    }))
}

/// Images servers can be created from.
#[utoipa::path(get, path = "/v1/images", tag = "catalog",
    responses((status = 200, body = Page<ImageView>), (status = 401, body = ErrorBody)))]
pub async fn list_images(
    _: Principal,
    State(state): State<ApiState>,
) -> Result<Json<Page<ImageView>>, ApiError> {
    Ok(Json(Page {
        items: state.config.images.iter().map(ImageView::from).collect(),
        next_cursor: None,
    }))
}
