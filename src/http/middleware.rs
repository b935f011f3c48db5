//! The edge of every request: its id, its deadline, a net for panics, the
//! header limits, problem documents for every rejection, and its count and
//! latency in the metrics.
//!
//! The request id is the client's `X-Request-Id` when it is 1-128 characters
//! of `[A-Za-z0-9._:-]`, otherwise a fresh UUID. It is echoed on every
//! response and put in every problem body; handlers and the problem renderer
//! read it from a task-local, so no signature has to carry it.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{OnceLock, RwLock},
    time::Duration,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::FutureExt;
use metrics::{Counter, Histogram};

use super::problem::{ApiError, ensure_problem};
use crate::{metrics as names, telemetry::ACCESS_TARGET};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    ok.then(|| s.to_owned())
}

/// Most header fields a request may carry; more: 431. The listener lets
/// more through (`LISTENER_HEADERS_MAX`) so that this answer is a problem
/// document rather than hyper's empty one.
pub const HEADERS_MAX: usize = 100;
/// Most bytes a request's header names and values may take; more: 431.
pub const HEADER_BYTES_MAX: usize = 32 * 1024;
/// What hyper itself accepts before answering 431 with an empty body.
pub const LISTENER_HEADERS_MAX: usize = 4 * HEADERS_MAX;

fn headers_too_large(request: &Request) -> Option<String> {
    let headers = request.headers();
    if headers.len() > HEADERS_MAX {
        return Some(format!(
            "{} header fields; at most {HEADERS_MAX} are accepted",
            headers.len()
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (bytes > HEADER_BYTES_MAX)
        .then(|| format!("{bytes} bytes of header fields; at most {HEADER_BYTES_MAX} are accepted"))
}

/// Routes whose requests may wait for news (`wait_ms`) before answering.
const LONG_POLL_ROUTES: &[&str] = &["/v1/admin/events"];

/// The route whose requests read a long body and apply it line by line.
pub const IMPORT_ROUTE: &str = "/v1/admin/inventory/import";

/// Request deadlines: every request's, and a bulk import's.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub request: Duration,
    pub import: Duration,
}

/// Runs the rest of the stack with a request id, a deadline and a panic net,
/// answers every rejection as a problem document, and records the request
/// under its route template.
pub async fn edge(State(deadlines): State<Deadlines>, request: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    // A long poll may wait its whole `wait_ms` before the usual work.
    let timeout = match &route {
        Some(r) if LONG_POLL_ROUTES.contains(&r.as_str()) => {
            deadlines.request + super::feed::WAIT_MAX
        }
        Some(r) if r.as_str() == IMPORT_ROUTE => deadlines.import,
        _ => deadlines.request,
    };
    let method = method_label(request.method());
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let header = HeaderValue::from_str(&id).ok();
    let access = tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
        .then(|| (id.clone(), request.uri().path().to_owned()));
    let too_large = headers_too_large(&request);
    let mut response = REQUEST_ID
        .scope(id, async move {
            if let Some(detail) = too_large {
                let status = axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                return ApiError::Rejected { status, detail }.into_response();
            }
            let run = AssertUnwindSafe(next.run(request)).catch_unwind();
            let response = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(response)) => response,
                Ok(Err(_)) => ApiError::Internal("handler panicked".into()).into_response(),
                Err(_) => ApiError::Timeout.into_response(),
            };
            ensure_problem(response).await
        })
        .await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let status = response.status().as_u16();
    let (count, latency) = http_metrics(route, method, status);
    count.increment(1);
    let elapsed = started.elapsed();
    latency.record(elapsed.as_secs_f64());
    if let Some((request_id, path)) = access {
        tracing::info!(
            target: ACCESS_TARGET,
            method,
            route,
            path,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id,
            "request"
        );
    }
    response
}

/// One label set's handles of the HTTP metrics.
type HttpHandles = (Counter, Histogram);
/// Route template -> (method, status) -> handles.
type HandleMap = HashMap<String, HashMap<(&'static str, u16), HttpHandles>>;

/// The HTTP metrics' handles by route template, method and status, built on
/// first use so that a request does not build and hash its labels. The key
/// set is closed (route templates and `unmatched`, the methods of
/// `method_label`, status codes), so the map is bounded.
fn http_metrics(route: &str, method: &'static str, status: u16) -> HttpHandles {
    static HANDLES: OnceLock<RwLock<HandleMap>> = OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    let found = handles
        .read()
        .ok()
        .and_then(|map| map.get(route)?.get(&(method, status)).cloned());
    if let Some(found) = found {
        return found;
    }
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    let made = (
        metrics::counter!(names::HTTP_REQUESTS_TOTAL, &labels),
        metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, &labels),
    );
    if let Ok(mut map) = handles.write() {
        map.entry(route.to_owned())
            .or_default()
            .insert((method, status), made.clone());
    }
    made
}

/// The route label of requests no route matched, so that probing clients
/// cannot mint label values.
const UNMATCHED: &str = "unmatched";

/// The method label: the methods the API serves, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}
