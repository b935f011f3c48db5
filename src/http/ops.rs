//! Liveness, readiness and metrics for orchestrators, load balancers and
//! Prometheus.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::state::AppState;

/// `GET /metrics`: Prometheus text format.
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
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Longest a readiness probe waits for Postgres.
const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz`: 200 only when Redis and Postgres answer and the gateway is
/// not draining; otherwise 503 naming what failed. Always reports the
/// journal lag.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (redis, postgres) = tokio::join!(state.redis.ping(), async {
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
    };
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
        Json(json!({
            "redis": redis,
            "postgres": postgres,
            "journal_lag_seconds": lag,
            "draining": draining,
        })),
    )
}
