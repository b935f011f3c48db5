//! The public inventory view.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
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

/// The SKU's view, from the in-process cache when it is fresh enough;
/// `None` for a SKU Redis does not know.
pub async fn current_view(state: &AppState, sku: &Sku) -> Result<Option<InventoryView>, ApiError> {
    if let Some(view) = state.inventory.views.cached(sku).await {
        return Ok(view);
    }
    // Only a read that reaches Redis takes a place among its calls.
    let _permit = state.admission.enter_redis()?;
    Ok(state.inventory.view(sku).await?)
}

/// `GET /v1/inventory/{sku}`: no token needed. Answered from a view at
/// most `live.read_staleness_ms` old (see `live::views`), cacheable by
/// CDNs for `live.read_max_age_seconds`, and 304 when `If-None-Match`
/// names its version.
#[utoipa::path(get, path = "/v1/inventory/{sku}", operation_id = "getInventory", tag = "shopper",
    summary = "Read a SKU's stock, in total and per location",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` this client holds: 304 while the SKU is still at that version")),
    responses(
        (status = 200, description = "The inventory view, at most `live.read_staleness_ms` old; `ETag` is its version", body = InventoryView),
        (status = 304, description = "Not modified: the SKU is at the version `If-None-Match` names"),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&raw)?;
    let view = current_view(&state, &sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    let etag = format!("\"{}\"", view.version);
    let cache_control = HeaderValue::from_str(&state.inventory.views.cache_control()).ok();
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if unchanged {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        response
    } else {
        view_response(view)
    };
    if let Some(value) = cache_control {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    Ok(response)
}
