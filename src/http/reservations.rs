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
    extract::{Authenticated, JsonBody, SkuOperator, seller_may},
    middleware::current_request_id,
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
        AmendReply, Amendment, Hold, Reservation, ReservationReply, ReservationStatus,
        ReserveReply, ReserveRequest, SettleRequest, Settlement, Staff,
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

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
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
                       (24 h) return the original answer with `Idempotent-Replayed: true`"),
        ("Queue-Admission" = Option<String>, Header,
        description = "For a SKU with a waiting room: the `admission` of the caller's admitted \
                       ticket; good for one reservation")),
    request_body = ReserveBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Held until `expires_at`", body = HoldView),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`admission-required`: the SKU has a waiting room and the request carries no usable `Queue-Admission` of this account", body = Problem, content_type = "application/problem+json"),
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
    let ticket = queue_admission(state, headers, &sku, &caller.account)?;
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
            cart: None,
            admission: ticket,
            claimed: false,
        })
        .await?;
    let hold = match reply {
        ReserveReply::Held(hold) => hold,
        refused => return Err(refusal(refused)),
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

pub const QUEUE_ADMISSION_HEADER: &str = "queue-admission";

/// The ticket of a `Queue-Admission` header the caller may use for `sku`
/// now; 403 `admission-required` for a forged, expired or foreign one.
fn queue_admission(
    state: &AppState,
    headers: &HeaderMap,
    sku: &Sku,
    account: &crate::inventory::AccountId,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(QUEUE_ADMISSION_HEADER) else {
        return Ok(None);
    };
    let token = value.to_str().map_err(|_| ApiError::AdmissionRequired)?;
    state
        .room_admissions
        .check(token, sku, account, crate::clock::now_ms())
        .map(Some)
        .ok_or(ApiError::AdmissionRequired)
}

/// The problem a reserve refusal is answered with.
pub fn refusal(reply: ReserveReply) -> ApiError {
    match reply {
        ReserveReply::InsufficientStock { available, .. } => {
            ApiError::InsufficientStock { available }
        }
        ReserveReply::PurchaseLimit { limit, already } => {
            ApiError::PurchaseLimit { limit, already }
        }
        ReserveReply::SaleNotOpen { opens_at_ms } => ApiError::SaleNotOpen {
            opens_at: rfc3339(opens_at_ms),
        },
        ReserveReply::SaleClosed => ApiError::SaleClosed,
        ReserveReply::UnknownSku => ApiError::UnknownSku,
        ReserveReply::UnknownLocation => ApiError::UnknownLocation,
        ReserveReply::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
        ReserveReply::AdmissionRequired => ApiError::AdmissionRequired,
        // A new reservation's id is random: no cart ever voided it.
        ReserveReply::Voided => ApiError::Internal("a new reservation id was voided".into()),
        ReserveReply::Held(_) => ApiError::Internal("a hold answered as a refusal".into()),
        ReserveReply::Bucketed(_) => ApiError::Internal("a bucketed SKU reached the edge".into()),
    }
}

pub fn reservation_response(reply: ReservationReply) -> Result<Json<ReservationView>, ApiError> {
    match reply {
        ReservationReply::Ok(r) => Ok(Json(r.into())),
        ReservationReply::NotFound => Err(ApiError::ReservationNotFound),
        ReservationReply::ReservationExpired => Err(ApiError::ReservationExpired),
        ReservationReply::ReservationReleased => Err(ApiError::ReservationReleased),
        ReservationReply::ReservationConfirmed => Err(ApiError::ReservationConfirmed),
    }
}

pub fn parse_id(state: &AppState, raw: &str) -> Result<ReservationId, ApiError> {
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// The new deadline is now + `seconds`: from 1 to
    /// `reservation.max_extend_seconds` (600).
    #[schema(minimum = 1, example = 120)]
    seconds: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Units to keep held: at least 1 and fewer than held now; the rest go
    /// back (journaled as `released` with that quantity).
    #[schema(minimum = 1, example = 1)]
    qty: i64,
}

/// Runs one change of the caller's own live hold and counts it.
async fn change_hold(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    amendment: Amendment<'_>,
) -> Result<Json<ReservationView>, ApiError> {
    let kind = match amendment {
        Amendment::Extend { .. } => "extend",
        Amendment::Shrink { .. } => "shrink",
        Amendment::Release { .. } | Amendment::Void { .. } => "release",
    };
    let result = async {
        let id = parse_id(state, raw)?;
        let _permit = state.admission.enter_redis()?;
        let owner = match amendment {
            Amendment::Release { .. } => None,
            _ => Some(&caller.account),
        };
        amend_response(state.inventory.amend(&id, owner, &amendment).await?)
    }
    .await;
    let outcome = result.as_ref().map_or_else(|e| e.code().0, |_| "ok");
    metrics::counter!(names::HOLD_CHANGES_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
    result
}

fn amend_response(reply: AmendReply) -> Result<Json<ReservationView>, ApiError> {
    match reply {
        AmendReply::Reservation(reply) => reservation_response(reply),
        AmendReply::HoldLimit { latest_ms } => Err(ApiError::HoldLimit {
            latest_expires_at: rfc3339(latest_ms),
        }),
        AmendReply::QtyNotSmaller { held } => Err(ApiError::Validation(format!(
            "qty must be smaller than the {held} units held"
        ))),
    }
}

/// `POST /v1/reservations/{id}/extend`: the owner only.
#[utoipa::path(post, path = "/v1/reservations/{id}/extend", operation_id = "extendReservation", tag = "shopper",
    summary = "Move a live hold's deadline to now + seconds",
    params(("id" = String, Path, description = "The reservation id")),
    request_body = ExtendBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The hold with its new `expires_at`", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 404, response = ReservationNotFound),
        (status = 409, description = "`hold-limit` (`latest_expires_at`: no hold outlives \
            `reservation.max_hold_seconds` from when it was made), `reservation-expired`, \
            `reservation-confirmed` or `reservation-released`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`: seconds outside 1..`reservation.max_extend_seconds`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn extend(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<ExtendBody>,
) -> Result<Json<ReservationView>, ApiError> {
    let max = state.limits.max_extend_seconds;
    let seconds = u32::try_from(body.seconds)
        .ok()
        .filter(|s| (1..=max).contains(s))
        .ok_or_else(|| ApiError::Validation(format!("seconds must be from 1 to {max}")))?;
    let amendment = Amendment::Extend {
        seconds,
        hold_max_ms: state.limits.max_hold_seconds * 1000,
    };
    change_hold(&state, &caller, &raw, amendment).await
}

/// `PATCH /v1/reservations/{id}`: the owner only.
#[utoipa::path(patch, path = "/v1/reservations/{id}", operation_id = "changeReservation", tag = "shopper",
    summary = "Keep fewer units of a live hold (a partial release)",
    params(("id" = String, Path, description = "The reservation id")),
    request_body = ChangeBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The hold with its new `qty`", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 404, response = ReservationNotFound),
        (status = 409, description = "`reservation-expired`, `reservation-confirmed` or `reservation-released`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`: qty below 1, or not below the units held", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn change(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<ChangeBody>,
) -> Result<Json<ReservationView>, ApiError> {
    let qty = Qty::parse(body.qty, state.limits.max_qty_per_request)?;
    change_hold(&state, &caller, &raw, Amendment::Shrink { qty }).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorReleaseBody {
    /// Why: 1-200 characters, kept in the journal with the operator.
    #[schema(example = "duplicate order")]
    reason: String,
}

/// `POST /v1/admin/reservations/{id}/release`: an operator (`inventory:admin`).
#[utoipa::path(post, path = "/v1/admin/reservations/{id}/release", operation_id = "operatorReleaseReservation", tag = "admin",
    summary = "Release any live hold, with a reason journaled with the operator",
    params(("id" = String, Path, description = "The reservation id")),
    request_body = OperatorReleaseBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released", body = ReservationView),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: neither `inventory:admin` nor `inventory:seller` (a seller reaches its own SKUs' holds only; others are 404)", body = Problem, content_type = "application/problem+json"),
        (status = 404, response = ReservationNotFound),
        (status = 409, description = "`reservation-confirmed`, `reservation-expired` or `reservation-released`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`: no reason, or one over 200 characters", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn operator_release(
    State(state): State<AppState>,
    SkuOperator(caller): SkuOperator,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<OperatorReleaseBody>,
) -> Result<Json<ReservationView>, ApiError> {
    // A seller releases holds of its own SKUs only; others read as unknown.
    let id = parse_id(&state, &raw)?;
    if seller_may(&state, &caller, id.sku()).await.is_err() {
        return Err(ApiError::ReservationNotFound);
    }
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 || reason.contains('|') {
        return Err(ApiError::Validation(
            "reason must be 1-200 characters without '|'".into(),
        ));
    }
    let request_id = current_request_id();
    let staff = Staff {
        actor: &caller.account,
        request_id: &request_id,
    };
    change_hold(&state, &caller, &raw, Amendment::Release { reason, staff }).await
}
