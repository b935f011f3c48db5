//! The public inventory view.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::{
    openapi::{Unavailable, UnknownSku, ValidationFailed},
    problem::ApiError,
    state::AppState,
};
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
#[utoipa::path(get, path = "/v1/inventory/{sku}", operation_id = "getInventory", tag = "shopper",
    summary = "Read a SKU's stock, in total and per location",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    responses(
        (status = 200, description = "The inventory view; `ETag` is its version", body = InventoryView),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&raw)?;
    let _permit = state.admission.enter_redis()?;
    let view = state
        .inventory
        .view(&sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    Ok(view_response(view))
}
