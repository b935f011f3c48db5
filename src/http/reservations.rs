//! Shopper reservations: hold, read, confirm, release.

use std::net::SocketAddr;

use axum::{
    Json,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    extract::{Authenticated, JsonBody},
    openapi::{RateLimited, ReservationNotFound, Unauthorized, Unavailable, UnknownSku},
    problem::{ApiError, Problem, insert_rate_headers},
    rfc3339,
    state::AppState,
};
use crate::{
    auth::Caller,
    inventory::{IdempotencyKey, Location, Qty, ReservationId, Sku},
    limits::{RateReport, sold_out::Answer},
    metrics as names,
    redis::calls::{
        Hold, Reservation, ReservationReply, ReservationStatus, ReserveReply, ReserveRequest,
        SettleRequest, Settlement,
    },
};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// 1-64 characters of `[A-Za-z0-9._-]`.
    #[schema(example = "SNEAKER-42")]
    sku: String,
    /// From 1 to `reservation.max_qty_per_request` (default 10).
    #[schema(minimum = 1, example = 1)]
    qty: i64,
    /// Without it, the location with the most available units that can
    /// serve the whole quantity.
    #[serde(default)]
    location: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldView {
    reservation_id: String,
    sku: String,
    location: String,
    qty: u32,
    status: ReservationStatus,
    expires_at: String,
    backorder: bool,
}

impl From<Hold> for HoldView {
    fn from(h: Hold) -> Self {
        Self {
            reservation_id: h.reservation_id,
            sku: h.sku,
            location: h.location,
            qty: h.qty,
            status: ReservationStatus::Held,
            expires_at: rfc3339(h.expires_at_ms),
            backorder: h.backorder,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationView {
    reservation_id: String,
    sku: String,
    location: String,
    qty: u32,
    status: ReservationStatus,
    expires_at: String,
    account_id: String,
    backorder: bool,
}

impl From<Reservation> for ReservationView {
    fn from(r: Reservation) -> Self {
        Self {
            reservation_id: r.reservation_id,
            sku: r.sku,
            location: r.location,
            qty: r.qty,
            status: r.status,
            expires_at: rfc3339(r.expires_at_ms),
            account_id: r.account_id,
            backorder: r.backorder,
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::Validation("Idempotency-Key must be ASCII".into()))
                .and_then(|s| Ok(IdempotencyKey::parse(s)?))
        })
        .transpose()
}

/// `POST /v1/reservations`. Every answer past the token and body checks
/// carries the rate-limit headers of the limits it passed.
#[utoipa::path(post, path = "/v1/reservations", operation_id = "createReservation", tag = "shopper",
    summary = "Hold units of a SKU for the caller's account",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-128 printable ASCII characters: the same key and body within its TTL \
                       (24 h) return the original answer with `Idempotent-Replayed: true`")),
    request_body = ReserveBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Held until `expires_at`", body = HoldView),
        (status = 401, response = Unauthorized),
        (status = 404, response = UnknownSku),
        (status = 409, description = "`insufficient-stock` (`available`), `purchase-limit` (`limit`, `already`), \
            `sale-not-open` (`opens_at`) or `sale-closed`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over `http.body_limit_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`, or `idempotency-key-reused` with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReserveBody>,
) -> Response {
    let mut report = None;
    let result = admit_and_reserve(&state, peer, &caller, &headers, body, &mut report).await;
    let outcome = match &result {
        Ok(r) if r.headers().contains_key(IDEMPOTENT_REPLAYED_HEADER) => "replayed",
        Ok(_) => "held",
        Err(e) => e.code().0,
    };
    static RESERVATIONS: names::LabelledCounter =
        names::LabelledCounter::new(names::RESERVATIONS_TOTAL, "outcome");
    RESERVATIONS.increment(outcome, 1);
    let mut response = result.into_response();
    if let Some(report) = &report {
        insert_rate_headers(response.headers_mut(), report);
    }
    response
}

/// Checks, admission, then the one Redis call; `report` receives the rate
/// state once the limits have passed.
async fn admit_and_reserve(
    state: &AppState,
    peer: SocketAddr,
    caller: &Caller,
    headers: &HeaderMap,
    body: ReserveBody,
    report: &mut Option<RateReport>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&body.sku)?;
    let qty = Qty::parse(body.qty, state.limits.max_qty_per_request)?;
    let location = body.location.as_deref().map(Location::parse).transpose()?;
    let key = idempotency_key(headers)?;
    let admission = &state.admission;
    let ip = admission.client_ip(peer.ip(), headers);
    let passed = admission.check_local(&caller.account, ip)?;
    // A repeated Idempotency-Key is owed its original answer, which only
    // Redis has: such requests are never answered "sold out" locally.
    if key.is_none() && admission.sold_out.check(&sku) == Answer::SoldOut {
        *report = Some(passed);
        return Err(ApiError::InsufficientStock { available: 0 });
    }
    let _permit = admission.enter_redis()?;
    let passed = admission
        .check_shared(&state.inventory.redis, &caller.account, passed)
        .await?;
    *report = Some(passed);
    let partition = state.inventory.redis.keys().partition_of(&sku);
    let reply = state
        .inventory
        .reserve(ReserveRequest {
            id: ReservationId::generate(&sku, partition),
            account: caller.account.clone(),
            qty,
            location,
            idempotency_key: key,
        })
        .await?;
    let hold = match reply {
        ReserveReply::Held(hold) => hold,
        ReserveReply::InsufficientStock { available, .. } => {
            return Err(ApiError::InsufficientStock { available });
        }
        ReserveReply::PurchaseLimit { limit, already } => {
            return Err(ApiError::PurchaseLimit { limit, already });
        }
        ReserveReply::SaleNotOpen { opens_at_ms } => {
            return Err(ApiError::SaleNotOpen {
                opens_at: rfc3339(opens_at_ms),
            });
        }
        ReserveReply::SaleClosed => return Err(ApiError::SaleClosed),
        ReserveReply::UnknownSku => return Err(ApiError::UnknownSku),
        ReserveReply::UnknownLocation => return Err(ApiError::UnknownLocation),
        ReserveReply::IdempotencyKeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let replayed = hold.replayed;
    let location = format!("/v1/reservations/{}", hold.reservation_id);
    let mut response = (StatusCode::CREATED, Json(HoldView::from(hold))).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn reservation_response(reply: ReservationReply) -> Result<Json<ReservationView>, ApiError> {
    match reply {
        ReservationReply::Ok(r) => Ok(Json(r.into())),
        ReservationReply::NotFound => Err(ApiError::ReservationNotFound),
        ReservationReply::ReservationExpired => Err(ApiError::ReservationExpired),
        ReservationReply::ReservationReleased => Err(ApiError::ReservationReleased),
        ReservationReply::ReservationConfirmed => Err(ApiError::ReservationConfirmed),
    }
}

fn parse_id(state: &AppState, raw: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw, state.inventory.redis.keys().partitions())
        .ok_or(ApiError::ReservationNotFound)
}

/// `GET /v1/reservations/{id}`: the owner, or staff who read (`inventory:admin`, `inventory:read`).
#[utoipa::path(get, path = "/v1/reservations/{id}", operation_id = "getReservation", tag = "shopper",
    summary = "Read a reservation (its owner, or a token with inventory:admin or inventory:read)",
    params(("id" = String, Path, description = "The reservation id, as returned by `POST /v1/reservations`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The reservation", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 404, response = ReservationNotFound),
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let id = parse_id(&state, &raw)?;
    let _permit = state.admission.enter_redis()?;
    // Staff who read (`inventory:admin`, `inventory:read`) read anyone's.
    let owner = (!caller.grants.reads()).then_some(&caller.account);
    reservation_response(state.inventory.reservation(&id, owner).await?)
}

async fn settle(
    state: AppState,
    caller: Caller,
    raw: String,
    settlement: Settlement,
) -> Result<Json<ReservationView>, ApiError> {
    let id = parse_id(&state, &raw)?;
    let _permit = state.admission.enter_redis()?;
    let reply = state
        .inventory
        .settle(SettleRequest {
            id,
            account: caller.account,
            settlement,
        })
        .await?;
    reservation_response(reply)
}

/// `POST /v1/reservations/{id}/confirm`: the owner only.
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", operation_id = "confirmReservation", tag = "shopper",
    summary = "Turn a hold into a sale (idempotent)",
    params(("id" = String, Path, description = "The reservation id, as returned by `POST /v1/reservations`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Confirmed (again, when repeated)", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 404, response = ReservationNotFound),
        (status = 409, description = "`reservation-expired` or `reservation-released`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    settle(state, caller, raw, Settlement::Confirm).await
}

/// `POST /v1/reservations/{id}/release`: the owner only.
#[utoipa::path(post, path = "/v1/reservations/{id}/release", operation_id = "releaseReservation", tag = "shopper",
    summary = "Give the held units back (idempotent)",
    params(("id" = String, Path, description = "The reservation id, as returned by `POST /v1/reservations`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released (again, when repeated)", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 404, response = ReservationNotFound),
        (status = 409, description = "`reservation-confirmed` or `reservation-expired`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn release(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    settle(state, caller, raw, Settlement::Release).await
}
