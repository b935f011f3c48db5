//! The waiting room: shoppers take a ticket for a SKU and read it until it
//! is admitted (`service::room`).

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response, sse::Event},
};
use futures_util::{Stream, StreamExt, stream};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::{
    extract::Authenticated,
    inventory::current_view,
    openapi::{Unauthorized, Unavailable, ValidationFailed},
    problem::{ApiError, Problem},
    rfc3339,
    state::AppState,
};
use crate::{
    inventory::{AccountId, Sku},
    live::feed::{Snapshot, StreamSlot},
    metrics as names,
    redis::calls::{RoomAction, RoomReply, TicketStatus},
    service::room::{is_ticket_id, new_ticket_id},
};

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TicketView {
    ticket: String,
    /// `waiting`, `admitted`, `sold_out` or `expired`.
    status: &'static str,
    /// `waiting`: 1-based place in the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    /// `waiting`: the position over the room's admissions per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_wait_seconds: Option<u64>,
    /// `admitted`: the `Queue-Admission` token for one reservation of this
    /// account; absent once a reservation used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    admission: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_expires_at: Option<String>,
    /// `admitted`: true once a reservation used the admission.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admission_used: bool,
}

fn view(
    state: &AppState,
    sku: &Sku,
    account: &AccountId,
    reply: RoomReply,
) -> Result<TicketView, ApiError> {
    let (ticket, status, rate) = match reply {
        RoomReply::Ticket {
            ticket,
            status,
            admit_per_second,
        } => (ticket, status, admit_per_second.max(1) as u64),
        RoomReply::NotFound => return Err(ApiError::TicketNotFound),
        RoomReply::NoRoom => return Err(ApiError::NoWaitingRoom),
        RoomReply::UnknownSku => return Err(ApiError::UnknownSku),
    };
    let mut view = TicketView {
        ticket,
        status: "waiting",
        position: None,
        estimated_wait_seconds: None,
        admission: None,
        admission_expires_at: None,
        admission_used: false,
    };
    match status {
        TicketStatus::Waiting { position } => {
            view.position = Some(position);
            view.estimated_wait_seconds = Some(position.div_ceil(rate));
        }
        TicketStatus::Admitted { deadline_ms } => {
            view.status = "admitted";
            view.admission = Some(state.room_admissions.sign(
                sku,
                &view.ticket,
                account,
                deadline_ms,
            ));
            view.admission_expires_at = Some(rfc3339(deadline_ms));
        }
        TicketStatus::Used { deadline_ms } => {
            view.status = "admitted";
            view.admission_used = true;
            view.admission_expires_at = Some(rfc3339(deadline_ms));
        }
        TicketStatus::Expired => view.status = "expired",
        TicketStatus::SoldOut => view.status = "sold_out",
    }
    metrics::counter!(names::QUEUE_TICKET_READS_TOTAL, "status" => view.status).increment(1);
    Ok(view)
}

/// Exports the waiting room's counters at 0, so rates and the dashboard
/// see the first ticket.
pub fn export_metrics() {
    for outcome in ["new", "existing"] {
        metrics::counter!(names::QUEUE_TICKETS_TOTAL, "outcome" => outcome).increment(0);
    }
    for status in ["waiting", "admitted", "sold_out", "expired"] {
        metrics::counter!(names::QUEUE_TICKET_READS_TOTAL, "status" => status).increment(0);
    }
}

/// `POST /v1/queue/{sku}/tickets`
#[utoipa::path(post, path = "/v1/queue/{sku}/tickets", operation_id = "takeTicket", tag = "shopper",
    summary = "Take the caller's ticket for a SKU's waiting room (one per account)",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A new ticket", body = TicketView),
        (status = 200, description = "The account's ticket, taken before", body = TicketView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`unknown-sku`, or `no-waiting-room` (the SKU's policy has none)", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn take(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku)?;
    let _permit = state.admission.enter_redis()?;
    let id = new_ticket_id();
    let reply = state
        .inventory
        .ticket(&sku, RoomAction::Take, &caller.account, &id)
        .await?;
    let view = view(&state, &sku, &caller.account, reply)?;
    let (status, outcome) = if view.ticket == id {
        (StatusCode::CREATED, "new")
    } else {
        (StatusCode::OK, "existing")
    };
    metrics::counter!(names::QUEUE_TICKETS_TOTAL, "outcome" => outcome).increment(1);
    Ok((status, Json(view)).into_response())
}

/// `GET /v1/queue/{sku}/tickets/{ticket}`
#[utoipa::path(get, path = "/v1/queue/{sku}/tickets/{ticket}", operation_id = "getTicket", tag = "shopper",
    summary = "Read the caller's ticket: its place, or its admission",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"),
        ("ticket" = String, Path, description = "The ticket, as `POST /v1/queue/{sku}/tickets` returned it")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ticket", body = TicketView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`ticket-not-found` (unknown, or another account's), `unknown-sku` or `no-waiting-room`", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((sku, ticket)): Path<(String, String)>,
) -> Result<Json<TicketView>, ApiError> {
    let _permit = state.admission.enter_redis()?;
    let (_, view) = read_ticket(&state, &caller.account, &sku, &ticket).await?;
    Ok(Json(view))
}

/// The caller's ticket as its path names it (parsed here), read (and
/// admitted) through Redis.
async fn read_ticket(
    state: &AppState,
    account: &AccountId,
    sku: &str,
    ticket: &str,
) -> Result<(Sku, TicketView), ApiError> {
    let sku = Sku::parse(sku)?;
    if !is_ticket_id(ticket) {
        return Err(ApiError::TicketNotFound);
    }
    let reply = state
        .inventory
        .ticket(&sku, RoomAction::Read, account, ticket)
        .await?;
    let view = view(state, &sku, account, reply)?;
    Ok((sku, view))
}

/// A ticket stream re-reads its ticket at least this often while it waits.
const TICKET_READ_MIN: Duration = Duration::from_secs(1);
/// ... and at most this rarely (a ticket far back in a slow queue).
const TICKET_READ_MAX: Duration = Duration::from_secs(15);
/// Browsers reconnect this long after a stream breaks.
const RECONNECT_AFTER: Duration = Duration::from_millis(2000);

/// How long a stream may wait before reading its ticket again: a tenth of
/// its estimated wait, within `TICKET_READ_MIN..=TICKET_READ_MAX`.
fn next_read_in(view: &TicketView) -> Duration {
    let tenth = view.estimated_wait_seconds.unwrap_or(0) * 100;
    Duration::from_millis(tenth).clamp(TICKET_READ_MIN, TICKET_READ_MAX)
}

fn ticket_event(view: &TicketView) -> Event {
    Event::default()
        .event("ticket")
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event("ticket"))
}

/// One client's ticket stream: an event whenever what its ticket says
/// changes. It reads the ticket again when the SKU's stock changes (the
/// live-stock fan-out: one Redis subscription per partition per instance)
/// and at least every `next_read_in`, since admissions also come with time.
struct TicketStream {
    state: AppState,
    sku: Sku,
    account: AccountId,
    last: Option<TicketView>,
    stock: watch::Receiver<Snapshot>,
    closing: CancellationToken,
    /// Dropped with the stream: the client's place is given back.
    _slot: StreamSlot,
}

impl TicketStream {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut s| async move {
            let event = s.next_event().await?;
            Some((Ok(event), s))
        })
    }

    /// The next change of the ticket; `None` ends the stream (the gateway
    /// is draining, or the ticket went away).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(last) = &self.last {
                let wait = next_read_in(last);
                tokio::select! {
                    _ = self.closing.cancelled() => return None,
                    changed = self.stock.changed() => changed.ok()?,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let ticket = self.last.as_ref().map(|v| v.ticket.clone())?;
            let reply = self
                .state
                .inventory
                .ticket(&self.sku, RoomAction::Read, &self.account, &ticket)
                .await;
            // Redis away: try again at the next wake-up.
            let Ok(reply) = reply else { continue };
            let view = view(&self.state, &self.sku, &self.account, reply).ok()?;
            if self.last.as_ref() != Some(&view) {
                let event = ticket_event(&view);
                self.last = Some(view);
                return Some(event);
            }
        }
    }
}

/// `GET /v1/queue/{sku}/tickets/{ticket}/events`
#[utoipa::path(get, path = "/v1/queue/{sku}/tickets/{ticket}/events", operation_id = "streamTicket", tag = "shopper",
    summary = "Server-sent events: the caller's ticket whenever what it says changes",
    description = "The first event at once: `event: ticket`, `data:` the `GET` body. Then one \
        after each change (position, status, admission), read again on the SKU's stock changes and \
        at least every 1-15 s (a tenth of the estimated wait).",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"),
        ("ticket" = String, Path, description = "The ticket")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`ticket-not-found`, `unknown-sku` or `no-waiting-room`", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((sku, ticket)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let slot = state.live.admit().ok_or(ApiError::Overloaded)?;
    let (sku, first) = read_ticket(&state, &caller.account, &sku, &ticket).await?;
    let stock = current_view(&state, &sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    let stock = state.live.watch(&sku, &stock);
    let event = ticket_event(&first).retry(RECONNECT_AFTER);
    let rest = TicketStream {
        closing: state.live.closing(),
        state: state.clone(),
        sku,
        account: caller.account,
        last: Some(first),
        stock,
        _slot: slot,
    };
    let events = stream::once(async move { Ok::<_, Infallible>(event) }).chain(rest.into_stream());
    Ok(super::live::sse_response(events, state.live.heartbeat))
}
