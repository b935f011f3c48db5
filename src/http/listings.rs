//! Listings from the journal: a shopper's own reservations, an operator's
//! reservations by SKU, status and account, and SKUs by stock status (the
//! low-stock report). Postgres answers them (`journal::listings`), so they
//! are as fresh as the journal, and a listing storm costs Redis nothing.

use axum::{
    Json,
    extract::{Query, State},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{Authenticated, SkuReader, seller_may},
    openapi::{Forbidden, Unauthorized, Unavailable, ValidationFailed},
    paging,
    problem::ApiError,
    rfc3339,
    state::AppState,
};
use crate::{
    inventory::{AccountId, Sku, view::InventoryView},
    journal::{
        listings::{self, ListedReservation, ReservationFilter},
        notifications::view_at,
    },
};

const RESERVATION_STATUSES: &[&str] = &["held", "confirmed", "released", "expired"];
const STOCK_STATUSES: &[&str] = &["IN_STOCK", "LOW_STOCK", "OUT_OF_STOCK", "BACKORDER"];

fn unavailable(e: crate::journal::store::StoreError) -> ApiError {
    ApiError::Unavailable(format!("the journal cannot be read: {e}"))
}

/// One reservation of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedReservationView {
    reservation_id: String,
    sku: String,
    location: String,
    qty: i32,
    /// `held`, `confirmed`, `released` or `expired`.
    status: String,
    account_id: String,
    backorder: bool,
    created_at: Option<String>,
    expires_at: Option<String>,
    updated_at: String,
}

impl From<ListedReservation> for ListedReservationView {
    fn from(r: ListedReservation) -> Self {
        Self {
            reservation_id: r.reservation_id,
            sku: r.sku,
            location: r.location,
            qty: r.qty,
            status: r.status,
            account_id: r.account_id,
            backorder: r.backorder,
            created_at: r.created_at_ms.map(rfc3339),
            expires_at: r.expires_at_ms.map(rfc3339),
            updated_at: rfc3339(r.updated_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationPage {
    reservations: Vec<ListedReservationView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MineQuery {
    /// Only reservations in this status: `held`, `confirmed`, `released` or `expired`.
    status: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllQuery {
    /// Only this SKU's reservations.
    sku: Option<String>,
    /// Only reservations in this status: `held`, `confirmed`, `released` or `expired`.
    status: Option<String>,
    /// Only this account's reservations.
    account: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

async fn page(
    state: &AppState,
    filter: ReservationFilter<'_>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<ReservationPage, ApiError> {
    let before = paging::seq_cursor(cursor)?;
    let rows = listings::reservations(state.journal.store.pool(), filter, before, limit)
        .await
        .map_err(unavailable)?;
    let next = paging::next(&rows, limit, |r| r.seq.to_string());
    Ok(ReservationPage {
        reservations: rows.into_iter().map(Into::into).collect(),
        next,
    })
}

/// `GET /v1/reservations`
#[utoipa::path(get, path = "/v1/reservations", operation_id = "listReservations", tag = "shopper",
    summary = "The caller's own reservations, newest first",
    description = "Read from the journal: a change shows once it is journaled (under steady load \
        within a second).",
    params(MineQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of reservations", body = ReservationPage),
        (status = 401, response = Unauthorized),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn mine(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<MineQuery>,
) -> Result<Json<ReservationPage>, ApiError> {
    let status = paging::one_of("status", query.status.as_deref(), RESERVATION_STATUSES)?;
    let filter = ReservationFilter {
        account: Some(caller.account.as_str()),
        sku: None,
        status,
        seller: None,
    };
    let limit = paging::limit(query.limit)?;
    Ok(Json(
        page(&state, filter, query.cursor.as_deref(), limit).await?,
    ))
}

/// `GET /v1/admin/reservations`
#[utoipa::path(get, path = "/v1/admin/reservations", operation_id = "listAllReservations", tag = "admin",
    summary = "Reservations by SKU, status and account, newest first",
    description = "Read from the journal: a change shows once it is journaled (under steady load \
        within a second).",
    params(AllQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of reservations", body = ReservationPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn all(
    State(state): State<AppState>,
    SkuReader(caller): SkuReader,
    Query(query): Query<AllQuery>,
) -> Result<Json<ReservationPage>, ApiError> {
    let status = paging::one_of("status", query.status.as_deref(), RESERVATION_STATUSES)?;
    let sku = query.sku.as_deref().map(Sku::parse).transpose()?;
    let account = query
        .account
        .as_deref()
        .map(|a| {
            AccountId::parse(a).map_err(|_| {
                ApiError::Validation("account must be 1-64 characters of [A-Za-z0-9._:@-]".into())
            })
        })
        .transpose()?;
    let filter = ReservationFilter {
        account: account.as_ref().map(AccountId::as_str),
        sku: sku.as_ref().map(Sku::as_str),
        status,
        seller: caller.grants.seller_only().map(|s| s.as_str()),
    };
    let limit = paging::limit(query.limit)?;
    Ok(Json(
        page(&state, filter, query.cursor.as_deref(), limit).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// `IN_STOCK`, `LOW_STOCK`, `OUT_OF_STOCK` or `BACKORDER` (required).
    status: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

/// One SKU of a status listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedSkuView {
    #[serde(flatten)]
    view: InventoryView,
    /// When the journal last moved this SKU's status follower.
    updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkuPage {
    skus: Vec<ListedSkuView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /v1/admin/inventory`
#[utoipa::path(get, path = "/v1/admin/inventory", operation_id = "listSkusByStatus", tag = "admin",
    summary = "SKUs by stock status, in SKU order (the low-stock report)",
    description = "Each SKU's view as the journal has it (the status the stock notifications \
        follow), so as fresh as the journal.",
    params(StatusQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of SKUs", body = SkuPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn skus(
    State(state): State<AppState>,
    SkuReader(caller): SkuReader,
    Query(query): Query<StatusQuery>,
) -> Result<Json<SkuPage>, ApiError> {
    let status = paging::one_of("status", query.status.as_deref(), STOCK_STATUSES)?
        .ok_or_else(|| ApiError::Validation("status is required".into()))?;
    let after = query.cursor.as_deref().map(Sku::parse).transpose()?;
    let limit = paging::limit(query.limit)?;
    let rows = listings::skus_by_status(
        state.journal.store.pool(),
        status,
        after.as_ref().map_or("", Sku::as_str),
        limit,
        caller.grants.seller_only().map(|s| s.as_str()),
    )
    .await
    .map_err(unavailable)?;
    let next = paging::next(&rows, limit, |r| r.sku.clone());
    Ok(Json(SkuPage {
        skus: rows
            .into_iter()
            .map(|r| ListedSkuView {
                view: view_at(&r.sku, r.version, &r.locations),
                updated_at: rfc3339(r.updated_at_ms),
            })
            .collect(),
        next,
    }))
}

/// One stock or policy change of a SKU's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockChangeView {
    /// The SKU's version after the change (a policy change keeps it).
    version: i64,
    /// `stock_set`, `adjusted` or `policy`.
    kind: String,
    /// Null on policy changes, as are the counts.
    location: Option<String>,
    /// The on-hand change.
    delta: Option<i32>,
    on_hand_after: Option<i64>,
    reserved_after: Option<i64>,
    occurred_at: String,
    reason: Option<String>,
    reference: Option<String>,
    /// The operator's token `sub`; null for changes journaled before actors
    /// were.
    actor: Option<String>,
    /// The request's `X-Request-Id`.
    request_id: Option<String>,
    /// A policy change: the policy after it (`max_per_account`,
    /// `sale_opens_at`, `sale_closes_at`, `reservation_ttl_seconds`, `seller`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    policy: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    changes: Vec<StockChangeView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

/// `GET /v1/admin/inventory/{sku}/history`
#[utoipa::path(get, path = "/v1/admin/inventory/{sku}/history", operation_id = "getStockHistory", tag = "admin",
    summary = "A SKU's stock and policy changes, newest first, with who made each and through which request",
    description = "Read from the journal.",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"), HistoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of changes", body = HistoryPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn history(
    State(state): State<AppState>,
    SkuReader(caller): SkuReader,
    axum::extract::Path(sku): axum::extract::Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let sku = Sku::parse(&sku)?;
    seller_may(&state, &caller, &sku).await?;
    let before = history_cursor(query.cursor.as_deref())?;
    let limit = paging::limit(query.limit)?;
    let rows = listings::stock_changes(state.journal.store.pool(), sku.as_str(), before, limit)
        .await
        .map_err(unavailable)?;
    let next = paging::next(&rows, limit, |r| match r.sub {
        0 => r.version.to_string(),
        sub => format!("{}.{sub}", r.version),
    });
    Ok(Json(HistoryPage {
        changes: rows
            .into_iter()
            .map(|r| StockChangeView {
                version: r.version,
                kind: r.kind,
                location: r.location,
                delta: r.delta,
                on_hand_after: r.on_hand_after,
                reserved_after: r.reserved_after,
                occurred_at: rfc3339(r.occurred_at_ms),
                reason: r.reason,
                reference: r.reference,
                actor: r.actor,
                request_id: r.request_id,
                policy: r.policy,
            })
            .collect(),
        next,
    }))
}

/// A history cursor: `<version>` after a stock change, `<version>.<id>`
/// after a policy change.
fn history_cursor(raw: Option<&str>) -> Result<Option<listings::HistoryCursor>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let (version, sub) = raw.split_once('.').unwrap_or((raw, "0"));
    let bad = || ApiError::Validation("cursor must be a `next` from a page".into());
    let version = paging::seq_cursor(Some(version))?.ok_or_else(bad)?;
    let sub = sub
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(bad)?;
    Ok(Some((version, sub)))
}
