//! The HTTP API: routes, middleware and the shared state.
//!
//! A request passes `middleware::edge` (id, deadline, panic net), the body
//! limit, then its handler: auth extractor, parsing into domain types (422
//! before Redis is touched), one typed Redis call, and a response or problem.

pub mod admin;
pub mod carts;
pub mod extract;
pub mod feed;
pub mod inventory;
pub mod listings;
pub mod live;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod paging;
pub mod problem;
pub mod queue;
pub mod reservations;
pub mod serve;
pub mod state;
pub mod webhooks;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{delete, get, post, put},
};

use problem::ApiError;
pub use state::AppState;

pub fn router(
    state: AppState,
    body_limit_bytes: usize,
    deadlines: middleware::Deadlines,
) -> Router {
    Router::new()
        .route("/v1/inventory/{sku}", get(inventory::get))
        .route("/v1/inventory/{sku}/events", get(live::events))
        .route("/live/{sku}", get(live::page))
        .route(
            "/v1/reservations",
            post(reservations::create).get(listings::mine),
        )
        .route("/v1/admin/reservations", get(listings::all))
        .route("/v1/admin/inventory", get(listings::skus))
        .route("/v1/admin/inventory/{sku}/history", get(listings::history))
        .route(
            "/v1/admin/inventory/{sku}/rebalance",
            post(admin::rebalance),
        )
        .route(middleware::IMPORT_ROUTE, post(admin::import))
        .route(
            "/v1/reservations/{id}",
            get(reservations::get).patch(reservations::change),
        )
        .route("/v1/reservations/{id}/extend", post(reservations::extend))
        .route(
            "/v1/admin/reservations/{id}/release",
            post(reservations::operator_release),
        )
        .route("/v1/queue/{sku}/tickets", post(queue::take))
        .route("/v1/queue/{sku}/tickets/{ticket}", get(queue::get))
        .route(
            "/v1/queue/{sku}/tickets/{ticket}/events",
            get(queue::events),
        )
        .route("/v1/carts", post(carts::create))
        .route("/v1/carts/{id}", get(carts::get))
        .route("/v1/carts/{id}/confirm", post(carts::confirm))
        .route("/v1/carts/{id}/release", post(carts::release))
        .route("/v1/reservations/{id}/confirm", post(reservations::confirm))
        .route("/v1/reservations/{id}/release", post(reservations::release))
        .route(
            "/v1/admin/inventory/{sku}/locations/{location}",
            put(admin::set_stock),
        )
        .route(
            "/v1/admin/inventory/{sku}",
            put(admin::set_policy).get(admin::get_sku),
        )
        .route(
            "/v1/admin/inventory/{sku}/locations/{location}/adjustments",
            post(admin::adjust),
        )
        .route("/v1/admin/events", get(feed::list))
        .route(
            "/v1/admin/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/v1/admin/webhooks/{id}", delete(webhooks::delete))
        .route(
            "/v1/admin/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/v1/admin/webhook-deliveries/{id}/retry",
            post(webhooks::retry),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        // A span per request (debug level: silent unless asked for); a
        // failed request is logged once, by the problem renderer.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .layer(axum::middleware::from_fn_with_state(
            deadlines,
            middleware::edge,
        ))
        .with_state(state)
}

/// The router of `metrics.listen`: `GET /metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .with_state(state)
}

pub use crate::clock::{parse_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_utc() {
        let ms = parse_rfc3339("2026-11-21T10:00:00.250+01:00").unwrap();
        assert_eq!(rfc3339(ms), "2026-11-21T09:00:00.25Z");
    }
}
