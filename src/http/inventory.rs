//! The public inventory view.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::{problem::ApiError, state::AppState};
use crate::inventory::{Sku, view::InventoryView};

/// The view as a response, with its version as the `ETag` (the value an
/// admin sends back in `If-Match`).
pub fn view_response(view: InventoryView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version)).ok();
    let mut response = Json(view).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `GET /v1/inventory/{sku}`: no token needed.
pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&raw)?;
    let _permit = state.admission.enter_redis()?;
    let view = state
        .redis
        .inventory(&sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    Ok(view_response(view))
}
