//! Liveness and readiness for orchestrators and load balancers.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::state::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only when Redis answers and the gateway is not
/// draining; otherwise 503 naming what failed.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let redis = match state.redis.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("unavailable: {:?}", e.kind()).to_lowercase(),
    };
    let draining = state.lifecycle.is_draining();
    let ready = redis == "ok" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "redis": redis, "draining": draining })),
    )
}
