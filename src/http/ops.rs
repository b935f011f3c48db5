//! Liveness, readiness and metrics for orchestrators, load balancers and
//! Prometheus.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::state::AppState;

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operations",
    summary = "Prometheus metrics (also on `metrics.listen` when set)",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    state.journal.publish_metrics();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "getLiveness", tag = "operations",
    summary = "Liveness: 200 while the process runs",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The body of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, or `unavailable: <reason>`.
    #[schema(example = "ok")]
    redis: String,
    /// `ok`, `unavailable` or `unavailable: timeout`.
    #[schema(example = "ok")]
    postgres: String,
    /// How far Postgres trails what Redis acknowledged.
    #[schema(example = 0.2)]
    journal_lag_seconds: f64,
    /// Shutting down: finishing in-flight requests.
    draining: bool,
}

/// Longest a readiness probe waits for Postgres.
const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz`: 200 only when Redis and Postgres answer and the gateway is
/// not draining; otherwise 503 naming what failed. Always reports the
/// journal lag.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "operations",
    summary = "Readiness: Redis, Postgres, not draining; always the journal lag",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the failing checks say why", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (redis, postgres) = tokio::join!(state.inventory.redis.ping(), async {
        tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, state.journal.store.ping()).await
    });
    let redis = match redis {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("unavailable: {:?}", e.kind()).to_lowercase(),
    };
    let postgres = match postgres {
        Ok(Ok(())) => "ok",
        Ok(Err(_)) => "unavailable",
        Err(_) => "unavailable: timeout",
    }
    .to_owned();
    let draining = state.lifecycle.is_draining();
    let lag = (state.journal.status.lag_seconds() * 1000.0).round() / 1000.0;
    let ready = redis == "ok" && postgres == "ok" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            redis,
            postgres,
            journal_lag_seconds: lag,
            draining,
        }),
    )
}
