//! Live stock over server-sent events, and the live page that shows it.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream::{self, Stream};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    inventory::current_view,
    openapi::{Unavailable, UnknownSku, ValidationFailed},
    problem::ApiError,
    state::AppState,
};
use crate::{
    inventory::Sku,
    live::feed::{Snapshot, StreamSlot},
};

/// Browsers reconnect this long after a stream breaks.
const RECONNECT_AFTER: Duration = Duration::from_millis(2000);

/// `GET /v1/inventory/{sku}/events`: no token needed.
#[utoipa::path(get, path = "/v1/inventory/{sku}/events", operation_id = "streamInventory", tag = "shopper",
    summary = "Follow a SKU's stock as server-sent events",
    description = "The first `stock` event (`id` = version, `data` = the inventory view) comes at once, \
        then one after changes, at most `live.max_updates_per_second` per connection; the newest state \
        always arrives. A comment line every `live.heartbeat_seconds`; `retry: 2000`.",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"),
        ("Last-Event-ID" = Option<String>, Header, description = "The version this client last saw: no first event while the SKU is still at it")),
    responses(
        (status = 200, description = "`text/event-stream` of `stock` events", content_type = "text/event-stream", body = String),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&raw)?;
    let slot = state.live.admit().ok_or(ApiError::Overloaded)?;
    let view = current_view(&state, &sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    let mut newest = state.live.watch(&sku, &view);
    let first = newest.borrow_and_update().clone();
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let events = StockStream {
        first: Some(if last_seen == Some(first.version) {
            // Nothing new for this client: only the reconnect delay.
            Event::default().retry(RECONNECT_AFTER)
        } else {
            stock_event(&first).retry(RECONNECT_AFTER)
        }),
        last: first.version,
        next_at: Instant::now() + state.live.interval,
        closing: state.live.closing(),
        newest,
        slot,
    };
    if last_seen != Some(first.version) {
        events.slot.feed().sent(0);
    }
    Ok(sse_response(events.into_stream(), state.live.heartbeat))
}

/// An event stream's response: a comment every `heartbeat`, and headers
/// that tell proxies to pass events on as they come.
pub fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    heartbeat: Duration,
) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn stock_event(snapshot: &Snapshot) -> Event {
    Event::default()
        .event("stock")
        .id(snapshot.version.to_string())
        .data(&*snapshot.json)
}

/// One client's stream: its first event, then the newest view at most once
/// per `live.max_updates_per_second` interval.
struct StockStream {
    first: Option<Event>,
    /// The version this client was last sent.
    last: u64,
    /// No event before this instant (the rate limit).
    next_at: Instant,
    closing: CancellationToken,
    newest: watch::Receiver<Snapshot>,
    /// Dropped with the stream: the client's place is given back.
    slot: StreamSlot,
}

impl StockStream {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut s| async move {
            if let Some(first) = s.first.take() {
                return Some((Ok(first), s));
            }
            let event = s.next_event().await?;
            Some((Ok(event), s))
        })
    }

    /// Waits for a newer view and for the rate limit; `None` ends the stream
    /// (the gateway is draining).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => return None,
                changed = self.newest.changed() => changed.ok()?,
            }
            tokio::select! {
                _ = self.closing.cancelled() => return None,
                _ = tokio::time::sleep_until(self.next_at) => {}
            }
            let newest = self.newest.borrow_and_update().clone();
            if newest.version > self.last {
                self.slot.feed().sent(newest.version - self.last - 1);
                self.last = newest.version;
                self.next_at = Instant::now() + self.slot.feed().interval;
                return Some(stock_event(&newest));
            }
        }
    }
}

/// `GET /live/{sku}`: the page operators watch a drop on. The SKU is read
/// from the address by the page itself; nothing is filled in here.
#[utoipa::path(get, path = "/live/{sku}", operation_id = "getLivePage", tag = "shopper",
    summary = "A self-contained page that shows a SKU's stock live",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    responses(
        (status = 200, description = "The live page (HTML with inline CSS and script)", content_type = "text/html", body = String),
        (status = 422, response = ValidationFailed),
    ))]
pub async fn page(Path(raw): Path<String>) -> Result<Response, ApiError> {
    Sku::parse(&raw)?;
    let mut response = Html(include_str!("live.html")).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    Ok(response)
}
