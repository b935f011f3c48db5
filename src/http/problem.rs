//! Every error a client can see: one table of problem codes with their HTTP
//! status, rendered as RFC 9457 problem details.
//!
//! This is the only layer that knows status codes. A 5xx never carries the
//! internal error text: it is logged here, once, with the request id the
//! client receives.

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use super::middleware::current_request_id;
use crate::{
    auth::AuthError,
    limits::{RateReport, Refusal},
    redis::RedisError,
    service::ServiceError,
};

const TYPE_BASE: &str = "https://flashgate.dev/problems/";

/// An error body as `/openapi.json` describes it: RFC 9457 members, then
/// the extension members some codes carry. `into_response` renders it; a
/// unit test keeps the two in step.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://flashgate.dev/problems/insufficient-stock",
    "title": "Insufficient stock", "status": 409,
    "detail": "not enough units available", "request_id": "4f1c…", "available": 0
}))]
pub struct Problem {
    /// A URI ending in the problem code, e.g. `…/problems/insufficient-stock`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// Never internal error text on a 5xx.
    pub detail: String,
    /// The response's `X-Request-Id`.
    pub request_id: String,
    /// `insufficient-stock`: units available now.
    pub available: Option<i64>,
    /// `purchase-limit`: units one account may hold or buy.
    pub limit: Option<i64>,
    /// `purchase-limit`: units the account already has.
    pub already: Option<i64>,
    /// `sale-not-open`: when the sale opens (RFC 3339).
    pub opens_at: Option<String>,
    /// `precondition-failed`: the SKU's current version.
    pub version: Option<u64>,
    /// `cart-unavailable`: the lines that could not be held (nothing is).
    pub failed_lines: Option<Vec<crate::redis::carts::FailedLine>>,
    /// `hold-limit`: the latest deadline the hold may have (RFC 3339).
    pub latest_expires_at: Option<String>,
}

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    MalformedJson(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("the token's scopes do not allow this")]
    Forbidden,
    #[error(
        "this SKU has a waiting room: reserve with the Queue-Admission token of an admitted ticket of this account, unused and unexpired"
    )]
    AdmissionRequired,
    #[error("the SKU has no waiting room")]
    NoWaitingRoom,
    #[error("no such ticket")]
    TicketNotFound,
    #[error("unknown sku")]
    UnknownSku,
    #[error("unknown location for this sku")]
    UnknownLocation,
    #[error("no such reservation")]
    ReservationNotFound,
    #[error("no such cart")]
    CartNotFound,
    #[error("not every line of the cart could be held, so none is")]
    CartUnavailable {
        failed_lines: Vec<crate::redis::carts::FailedLine>,
    },
    #[error("the cart is still being placed or rolled back; retry shortly")]
    CartPending,
    #[error("the hold may not last that long")]
    HoldLimit { latest_expires_at: String },
    #[error("no such webhook")]
    UnknownWebhook,
    #[error("no such webhook delivery")]
    UnknownDelivery,
    #[error("{0}")]
    WebhookLimit(String),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("not enough units available")]
    InsufficientStock { available: i64 },
    #[error("the per-account purchase limit is reached")]
    PurchaseLimit { limit: i64, already: i64 },
    #[error("the sale has not opened yet")]
    SaleNotOpen { opens_at: String },
    #[error("the sale is closed")]
    SaleClosed,
    #[error("the reservation has expired")]
    ReservationExpired,
    #[error("the reservation was released")]
    ReservationReleased,
    #[error("the reservation is already confirmed")]
    ReservationConfirmed,
    #[error("this Idempotency-Key was used with another request body")]
    IdempotencyKeyReused,
    #[error("the SKU's version is {version}, not the one in If-Match")]
    PreconditionFailed { version: u64 },
    #[error("too many requests; retry after the time in Retry-After")]
    RateLimited(RateReport),
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded,
    #[error("a dependency is unavailable; retry shortly")]
    Unavailable(String),
    #[error("this sku is being rebuilt from the journal after redis lost writes; retry shortly")]
    SkuRecovering,
    #[error("the request took too long; retry shortly")]
    Timeout,
    #[error("{0}")]
    BucketsLocked(String),
    #[error("internal error")]
    Internal(String),
    /// A rejection made below the handlers (the router, an extractor, the
    /// listener's limits), with the status it chose and its reason.
    #[error("{detail}")]
    Rejected { status: StatusCode, detail: String },
}

impl ApiError {
    /// The public code (last segment of `type`) and HTTP status of each error.
    pub fn code(&self) -> (&'static str, StatusCode) {
        use ApiError::*;
        match self {
            Validation(_) => ("validation-failed", StatusCode::UNPROCESSABLE_ENTITY),
            MalformedJson(_) => ("malformed-json", StatusCode::BAD_REQUEST),
            PayloadTooLarge => ("payload-too-large", StatusCode::PAYLOAD_TOO_LARGE),
            Unauthorized(_) => ("unauthorized", StatusCode::UNAUTHORIZED),
            Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            AdmissionRequired => ("admission-required", StatusCode::FORBIDDEN),
            NoWaitingRoom => ("no-waiting-room", StatusCode::NOT_FOUND),
            TicketNotFound => ("ticket-not-found", StatusCode::NOT_FOUND),
            UnknownSku => ("unknown-sku", StatusCode::NOT_FOUND),
            UnknownLocation => ("unknown-location", StatusCode::NOT_FOUND),
            ReservationNotFound => ("reservation-not-found", StatusCode::NOT_FOUND),
            CartNotFound => ("cart-not-found", StatusCode::NOT_FOUND),
            CartUnavailable { .. } => ("cart-unavailable", StatusCode::CONFLICT),
            CartPending => ("cart-pending", StatusCode::CONFLICT),
            HoldLimit { .. } => ("hold-limit", StatusCode::CONFLICT),
            UnknownWebhook => ("unknown-webhook", StatusCode::NOT_FOUND),
            UnknownDelivery => ("unknown-delivery", StatusCode::NOT_FOUND),
            WebhookLimit(_) => ("webhook-limit", StatusCode::CONFLICT),
            RouteNotFound => ("not-found", StatusCode::NOT_FOUND),
            MethodNotAllowed => ("method-not-allowed", StatusCode::METHOD_NOT_ALLOWED),
            InsufficientStock { .. } => ("insufficient-stock", StatusCode::CONFLICT),
            PurchaseLimit { .. } => ("purchase-limit", StatusCode::CONFLICT),
            SaleNotOpen { .. } => ("sale-not-open", StatusCode::CONFLICT),
            SaleClosed => ("sale-closed", StatusCode::CONFLICT),
            ReservationExpired => ("reservation-expired", StatusCode::CONFLICT),
            ReservationReleased => ("reservation-released", StatusCode::CONFLICT),
            ReservationConfirmed => ("reservation-confirmed", StatusCode::CONFLICT),
            IdempotencyKeyReused => ("idempotency-key-reused", StatusCode::UNPROCESSABLE_ENTITY),
            PreconditionFailed { .. } => ("precondition-failed", StatusCode::PRECONDITION_FAILED),
            RateLimited(_) => ("rate-limited", StatusCode::TOO_MANY_REQUESTS),
            Overloaded => ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
            Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            SkuRecovering => ("sku-recovering", StatusCode::SERVICE_UNAVAILABLE),
            Timeout => ("timeout", StatusCode::SERVICE_UNAVAILABLE),
            BucketsLocked(_) => ("buckets-locked", StatusCode::CONFLICT),
            Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
            Rejected { status, .. } => (rejection_code(*status), *status),
        }
    }

    fn title(code: &str) -> String {
        let mut title = code.replace('-', " ");
        if let Some(first) = title.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        title
    }

    /// Extension members that clients act on.
    fn members(&self) -> Map<String, Value> {
        let value = match self {
            Self::InsufficientStock { available } => json!({ "available": available }),
            Self::PurchaseLimit { limit, already } => json!({ "limit": limit, "already": already }),
            Self::SaleNotOpen { opens_at } => json!({ "opens_at": opens_at }),
            Self::PreconditionFailed { version } => json!({ "version": version }),
            Self::CartUnavailable { failed_lines } => json!({ "failed_lines": failed_lines }),
            Self::HoldLimit { latest_expires_at } => {
                json!({ "latest_expires_at": latest_expires_at })
            }
            _ => return Map::new(),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Shortest time between two log lines about requests answered 503
/// `unavailable`: while a dependency is down every request would log one.
const UNAVAILABLE_LOG_INTERVAL_MS: u64 = 1_000;

/// Logs a request answered 503 `unavailable`: at most one WARN per
/// `UNAVAILABLE_LOG_INTERVAL_MS`, counting the ones left out since.
fn log_unavailable(request_id: &str, error: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(crate::clock::now_ms()).unwrap_or_default();
    let last = LAST_MS.load(Ordering::Relaxed);
    let due = now.saturating_sub(last) >= UNAVAILABLE_LOG_INTERVAL_MS;
    if due
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let also = SKIPPED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            request_id,
            error,
            also_unavailable_since_last_line = also,
            "request answered 503 unavailable"
        );
    } else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(request_id, error, "request answered 503 unavailable");
    }
}

/// The problem code of a status chosen below the handlers.
fn rejection_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "request-timeout",
        413 => "payload-too-large",
        414 => "uri-too-long",
        415 => "unsupported-media-type",
        422 => "validation-failed",
        431 => "header-fields-too-large",
        500..=599 => "internal",
        _ => "bad-request",
    }
}

/// Whether an error response is plain text or empty (what axum's
/// rejections and hyper's fallbacks produce), not a document a handler
/// chose to send (a problem, or `/readyz`'s 503 readiness report).
fn is_plain(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/"))
}

/// Longest reason kept from a rejection's plain-text body.
const REJECTION_DETAIL_MAX_CHARS: usize = 512;

/// Turns a plain-text or empty error response (axum's path and extractor
/// rejections) into a problem document with the same status and headers,
/// its text as `detail` (never on a 5xx).
pub async fn ensure_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !is_plain(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REJECTION_DETAIL_MAX_CHARS * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), error = %text, "the HTTP stack failed a request");
        "internal error".to_owned()
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("rejected").to_owned()
    } else {
        text.chars().take(REJECTION_DETAIL_MAX_CHARS).collect()
    };
    let mut problem = ApiError::Rejected { status, detail }.into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        problem.headers_mut().entry(name).or_insert(value.clone());
    }
    problem
}

impl From<RedisError> for ApiError {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::Unavailable { .. } => Self::Unavailable(e.to_string()),
            RedisError::Overloaded { .. } => Self::Overloaded,
            RedisError::Fenced { .. } => Self::SkuRecovering,
            RedisError::Refused { .. } | RedisError::Reply { .. } => Self::Internal(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Redis(e) => e.into(),
            ServiceError::Journal(_) => Self::Unavailable(e.to_string()),
            ServiceError::Buckets(why) => Self::BucketsLocked(why),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::RateLimited(report) => Self::RateLimited(report),
            Refusal::Overloaded => Self::Overloaded,
        }
    }
}

/// Adds the IETF `RateLimit-Policy` and `RateLimit` headers for `report`.
pub fn insert_rate_headers(headers: &mut HeaderMap, report: &RateReport) {
    let Some(policy) = &report.policy_header else {
        return;
    };
    headers.insert(RATELIMIT_POLICY, policy.clone());
    if let Some(check) = report.tightest
        && let Ok(v) = HeaderValue::from_str(&check.header_item())
    {
        headers.insert(RATELIMIT, v);
    }
}

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        let request_id = current_request_id();
        let detail = match &self {
            Self::Internal(internal) => {
                tracing::error!(request_id, code, error = %internal, "request failed");
                self.to_string()
            }
            Self::Unavailable(internal) => {
                log_unavailable(&request_id, internal);
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut body = Map::new();
        body.insert("type".into(), format!("{TYPE_BASE}{code}").into());
        body.insert("title".into(), Self::title(code).into());
        body.insert("status".into(), status.as_u16().into());
        body.insert("detail".into(), detail.into());
        body.insert("request_id".into(), request_id.into());
        body.extend(self.members());
        let mut response = (status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || matches!(self, Self::CartPending) {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if let Self::RateLimited(report) = &self {
            let seconds = report.tightest.map_or(1, |c| c.retry_after_seconds());
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            insert_rate_headers(headers, report);
        }
        response
    }
}

impl From<crate::inventory::InvalidValue> for ApiError {
    fn from(e: crate::inventory::InvalidValue) -> Self {
        Self::Validation(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members `/openapi.json` lists for a problem body.
    fn documented_members() -> Vec<String> {
        let schema = serde_json::to_value(<Problem as utoipa::PartialSchema>::schema()).unwrap();
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn every_rendered_problem_member_is_documented() {
        let documented = documented_members();
        let errors = [
            ApiError::InsufficientStock { available: 0 },
            ApiError::PurchaseLimit {
                limit: 2,
                already: 2,
            },
            ApiError::SaleNotOpen {
                opens_at: "2026-11-21T10:00:00Z".into(),
            },
            ApiError::PreconditionFailed { version: 3 },
            ApiError::CartUnavailable {
                failed_lines: vec![crate::redis::carts::FailedLine {
                    index: 1,
                    sku: "S".into(),
                    code: "insufficient-stock".into(),
                    available: Some(0),
                }],
            },
            ApiError::HoldLimit {
                latest_expires_at: "2026-11-21T10:00:00Z".into(),
            },
            ApiError::Internal("secret".into()),
        ];
        for error in errors {
            let response = error.into_response();
            let bytes = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            for member in body.as_object().unwrap().keys() {
                assert!(documented.contains(member), "{member} is not documented");
            }
        }
    }
}
