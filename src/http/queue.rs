//! The waiting room: shoppers take a ticket for a SKU and read it until it
//! is admitted (`service::room`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    extract::Authenticated,
    openapi::{Unauthorized, Unavailable},
    problem::{ApiError, Problem},
    rfc3339,
    state::AppState,
};
use crate::{
    inventory::{AccountId, Sku},
    metrics as names,
    redis::calls::{RoomAction, RoomReply, TicketStatus},
    service::room::{is_ticket_id, new_ticket_id},
};

#[derive(Debug, Serialize, ToSchema)]
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
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((sku, ticket)): Path<(String, String)>,
) -> Result<Json<TicketView>, ApiError> {
    let sku = Sku::parse(&sku)?;
    if !is_ticket_id(&ticket) {
        return Err(ApiError::TicketNotFound);
    }
    let _permit = state.admission.enter_redis()?;
    let reply = state
        .inventory
        .ticket(&sku, RoomAction::Read, &caller.account, &ticket)
        .await?;
    Ok(Json(view(&state, &sku, &caller.account, reply)?))
}
