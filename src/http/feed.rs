//! The change feed for downstream systems: `GET /v1/admin/events`, the
//! journal's events in journal order, page by page, with a long poll.

use std::time::Duration;

use axum::{
    Json,
    extract::{Query, State},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::Reader,
    openapi::{Forbidden, Unauthorized, Unavailable, ValidationFailed},
    problem::ApiError,
    rfc3339,
    state::AppState,
};
use crate::{
    inventory::Sku,
    journal::store::{FeedCursor, FeedRow},
};

/// Longest `wait_ms` a long poll may ask for.
pub const WAIT_MAX: Duration = Duration::from_secs(30);
/// A waiting long poll looks again this often even without local news:
/// other instances' writes, and the reconciler's, reach it this way.
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `next` of the previous page; from the journal's start when absent.
    after: Option<String>,
    /// Events per page, 1-1000 (default 100).
    limit: Option<i64>,
    /// Only this SKU's events.
    sku: Option<String>,
    /// On an empty page, wait up to this many milliseconds (0-30000) for
    /// the next event.
    wait_ms: Option<u64>,
}

/// One journal event.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedEvent {
    /// This event's place; `after` it resumes behind it.
    cursor: String,
    /// `reserved`, `confirmed`, `released`, `expired`, `stock_set` or `adjusted`.
    kind: String,
    sku: String,
    /// For a SKU with stock buckets, the partition of the bucket the event
    /// happened in (its `version` is that bucket's: per SKU and bucket,
    /// `version` orders the events); null otherwise.
    bucket: Option<u32>,
    location: String,
    reservation_id: Option<String>,
    account_id: Option<String>,
    qty: i32,
    on_hand_after: i64,
    reserved_after: i64,
    version: i64,
    occurred_at: String,
    reason: Option<String>,
    reference: Option<String>,
    /// Who made an operator's stock change (the token's `sub`); null for
    /// shoppers' events.
    actor: Option<String>,
    /// The request that made an operator's stock change (its `X-Request-Id`).
    request_id: Option<String>,
}

impl From<FeedRow> for FeedEvent {
    fn from(r: FeedRow) -> Self {
        Self {
            cursor: r.cursor.to_string(),
            kind: r.kind,
            bucket: Sku::parse_stored(&r.sku)
                .ok()
                .and_then(|s| s.bucket_partition())
                .map(|p| p.0),
            sku: crate::inventory::client_sku(&r.sku).to_owned(),
            location: r.location,
            reservation_id: r.reservation_id,
            account_id: r.account_id,
            qty: r.qty,
            on_hand_after: r.on_hand_after,
            reserved_after: r.reserved_after,
            version: r.version,
            occurred_at: rfc3339(r.occurred_at_ms),
            reason: r.reason,
            reference: r.reference,
            actor: r.actor,
            request_id: r.request_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    events: Vec<FeedEvent>,
    /// Pass as `after` for the next page: the last event's cursor, or the
    /// `after` given when the page is empty. Absent only when both are.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /v1/admin/events`
#[utoipa::path(get, path = "/v1/admin/events", operation_id = "listEvents", tag = "admin",
    summary = "Read the journal's events in journal order (change feed, long poll)",
    description = "Every journal event exactly once, in the order the journal committed them, \
        page by page: store `next` and pass it back as `after`. With `wait_ms`, an empty page \
        waits up to that long for the next event. Per SKU, `version` orders its events.",
    params(FeedQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = FeedPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _reader: Reader,
    Query(query): Query<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let after = query
        .after
        .as_deref()
        .map(|raw| {
            FeedCursor::parse(raw)
                .ok_or_else(|| ApiError::Validation("after must be a cursor from `next`".into()))
        })
        .transpose()?;
    let limit = super::paging::limit(query.limit)?;
    let sku = query.sku.as_deref().map(Sku::parse).transpose()?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    if wait > WAIT_MAX {
        return Err(ApiError::Validation(format!(
            "wait_ms must be from 0 to {}",
            WAIT_MAX.as_millis()
        )));
    }
    let store = &state.journal.store;
    let deadline = tokio::time::Instant::now() + wait;
    let mut journaled = store.journaled();
    let rows = loop {
        journaled.borrow_and_update();
        let rows = store
            .feed(after, sku.as_ref().map(Sku::as_str), limit)
            .await
            .map_err(|e| ApiError::Unavailable(format!("the journal cannot be read: {e}")))?;
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
        tokio::select! {
            _ = journaled.changed() => {}
            _ = tokio::time::sleep_until(recheck) => {}
        }
    };
    let next = rows
        .last()
        .map(|r| r.cursor)
        .or(after)
        .map(|c| c.to_string());
    Ok(Json(FeedPage {
        events: rows.into_iter().map(FeedEvent::from).collect(),
        next,
    }))
}
