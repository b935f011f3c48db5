//! Shopper carts: several SKUs held all or nothing (`service::carts`).

use std::net::{IpAddr, SocketAddr};

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
    openapi::{Unauthorized, Unavailable},
    problem::{ApiError, Problem},
    reservations::{IDEMPOTENT_REPLAYED_HEADER, idempotency_key},
    rfc3339,
    state::AppState,
};
use crate::{
    inventory::{AccountId, CartId, Location, Qty, Sku},
    metrics as names,
    redis::{
        calls::Settlement,
        carts::{CartRecord, CartStatus},
    },
    service::carts::{LineRequest, Placed, Refused},
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartLineBody {
    #[schema(example = "SNEAKER-42")]
    sku: String,
    #[schema(minimum = 1, example = 1)]
    qty: i64,
    /// Without it, the location with the most available units.
    #[serde(default)]
    location: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartBody {
    /// 1 to `cart.max_lines` (20) lines, SKUs distinct.
    lines: Vec<CartLineBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartLineView {
    reservation_id: String,
    sku: String,
    location: Option<String>,
    qty: u32,
    backorder: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartView {
    cart_id: String,
    /// `pending` (being placed or rolled back), `held`, `failed`,
    /// `confirming`, `confirmed`, `releasing`, `released` or `expired`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The cart's one deadline (the earliest of its lines'), once held.
    expires_at: Option<String>,
    lines: Vec<CartLineView>,
}

impl CartView {
    fn new(id: &CartId, cart: CartRecord) -> Self {
        let now = crate::clock::now_ms();
        let status = match cart.status {
            CartStatus::Recovering => CartStatus::Pending,
            CartStatus::Held if cart.expires_at_ms.is_some_and(|e| e <= now) => CartStatus::Expired,
            other => other,
        };
        Self {
            cart_id: id.as_str().to_owned(),
            status: status.as_str(),
            expires_at: cart.expires_at_ms.map(rfc3339),
            lines: cart
                .lines
                .into_iter()
                .map(|l| CartLineView {
                    reservation_id: l.reservation_id,
                    sku: l.sku,
                    location: l.location,
                    qty: l.qty,
                    backorder: l.backorder,
                })
                .collect(),
        }
    }
}

fn parse_lines(state: &AppState, body: CartBody) -> Result<Vec<LineRequest>, ApiError> {
    let max = state.limits.max_cart_lines;
    if body.lines.is_empty() || body.lines.len() > max {
        return Err(ApiError::Validation(format!("a cart has 1 to {max} lines")));
    }
    let mut lines: Vec<LineRequest> = Vec::with_capacity(body.lines.len());
    for line in body.lines {
        let sku = Sku::parse(&line.sku)?;
        if lines.iter().any(|l| l.sku == sku) {
            return Err(ApiError::Validation(format!("sku {sku} is on two lines")));
        }
        lines.push(LineRequest {
            sku,
            qty: Qty::parse(line.qty, state.limits.max_qty_per_request)?,
            location: line.location.as_deref().map(Location::parse).transpose()?,
            admission: None,
        });
    }
    Ok(lines)
}

/// `POST /v1/carts`.
#[utoipa::path(post, path = "/v1/carts", operation_id = "createCart", tag = "shopper",
    summary = "Hold every line of a cart, or none",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-128 printable ASCII characters: the same key and body answer the original \
                       cart with `Idempotent-Replayed: true`"),
        ("Queue-Admission" = Option<String>, Header,
        description = "For lines of SKUs with a waiting room: the admissions of the caller's admitted \
                       tickets (comma-separated, or the header repeated); each goes to the line of \
                       its SKU")),
    request_body = CartBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Every line is held until `expires_at`", body = CartView),
        (status = 401, response = Unauthorized),
        (status = 409, description = "`cart-unavailable` (`failed_lines`; nothing is held), or \
            `cart-pending` (the cart with this Idempotency-Key is still being placed or rolled \
            back; `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`admission-required`: a `Queue-Admission` token good for no line (forged, expired, another account's or SKU's)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`, or `idempotency-key-reused`", body = Problem, content_type = "application/problem+json"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 503, response = Unavailable),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CartBody>,
) -> Response {
    let ip = state.admission.client_ip(peer.ip(), &headers);
    let result = place(&state, &caller.account, ip, &headers, body).await;
    let outcome = match &result {
        Ok(r) if r.headers().contains_key(IDEMPOTENT_REPLAYED_HEADER) => "replayed",
        Ok(_) => "held",
        Err(ApiError::CartUnavailable { .. }) => "failed",
        Err(ApiError::CartPending) => "pending",
        Err(ApiError::IdempotencyKeyReused) => "key_reused",
        Err(_) => "error",
    };
    metrics::counter!(names::CARTS_TOTAL, "outcome" => outcome).increment(1);
    result.into_response()
}

async fn place(
    state: &AppState,
    account: &AccountId,
    ip: IpAddr,
    headers: &HeaderMap,
    body: CartBody,
) -> Result<Response, ApiError> {
    let mut lines = parse_lines(state, body)?;
    admit_lines(state, headers, account, &mut lines)?;
    let key = idempotency_key(headers)?;
    // A cart is one shopper action: it passes the limits once.
    state.admission.check_local(account, ip)?;
    let _permit = state.admission.enter_redis()?;
    let (cart, id, replayed) = match state.carts.place(account, &lines, key.as_ref()).await? {
        Placed::Held { cart, id, replayed } => (cart, id, replayed),
        Placed::Failed { failed } => {
            return Err(ApiError::CartUnavailable {
                failed_lines: failed,
            });
        }
        Placed::Pending => return Err(ApiError::CartPending),
        Placed::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let location = format!("/v1/carts/{}", id.as_str());
    let mut response = (StatusCode::CREATED, Json(CartView::new(&id, cart))).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Gives each line the `Queue-Admission` token (the header may come more
/// than once, or hold several tokens separated by commas) that is good for
/// its SKU and this account now; 403 `admission-required` for a token good
/// for no line.
fn admit_lines(
    state: &AppState,
    headers: &HeaderMap,
    account: &AccountId,
    lines: &mut [LineRequest],
) -> Result<(), ApiError> {
    let now = crate::clock::now_ms();
    let tokens = headers
        .get_all(super::reservations::QUEUE_ADMISSION_HEADER)
        .iter()
        .map(|v| v.to_str().map_err(|_| ApiError::AdmissionRequired))
        .collect::<Result<Vec<_>, _>>()?;
    for token in tokens.iter().flat_map(|t| t.split(',')).map(str::trim) {
        let line = lines.iter_mut().find_map(|line| {
            let ticket = state
                .room_admissions
                .check(token, &line.sku, account, now)?;
            Some((line, ticket))
        });
        match line {
            Some((line, ticket)) => line.admission = Some(ticket),
            None => return Err(ApiError::AdmissionRequired),
        }
    }
    Ok(())
}

fn parse_id(state: &AppState, raw: &str) -> Result<CartId, ApiError> {
    CartId::parse(raw, state.inventory.redis.keys().partitions()).ok_or(ApiError::CartNotFound)
}

/// `GET /v1/carts/{id}`: the owner only.
#[utoipa::path(get, path = "/v1/carts/{id}", operation_id = "getCart", tag = "shopper",
    summary = "Read a cart",
    params(("id" = String, Path, description = "The cart id, as returned by `POST /v1/carts`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart", body = CartView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`cart-not-found`: unknown, or another account's", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<CartView>, ApiError> {
    let id = parse_id(&state, &raw)?;
    let _permit = state.admission.enter_redis()?;
    match state.carts.get(&id, &caller.account).await? {
        Some(cart) => Ok(Json(CartView::new(&id, cart))),
        None => Err(ApiError::CartNotFound),
    }
}

async fn settle(
    state: AppState,
    account: AccountId,
    raw: String,
    settlement: Settlement,
) -> Result<Json<CartView>, ApiError> {
    let id = parse_id(&state, &raw)?;
    let _permit = state.admission.enter_redis()?;
    match state.carts.settle(&id, &account, settlement).await? {
        Ok(cart) => Ok(Json(CartView::new(&id, cart))),
        Err(Refused::NotFound) => Err(ApiError::CartNotFound),
        Err(Refused::Pending) => Err(ApiError::CartPending),
        Err(Refused::Expired) => Err(ApiError::ReservationExpired),
        Err(Refused::Released) => Err(ApiError::ReservationReleased),
        Err(Refused::Confirmed) => Err(ApiError::ReservationConfirmed),
    }
}

/// `POST /v1/carts/{id}/confirm`: the owner only.
#[utoipa::path(post, path = "/v1/carts/{id}/confirm", operation_id = "confirmCart", tag = "shopper",
    summary = "Turn every line of a held cart into a sale (idempotent)",
    params(("id" = String, Path, description = "The cart id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Confirmed (again, when repeated)", body = CartView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`cart-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-expired` (past, or within \
            `cart.confirm_margin_ms` of, the deadline), `reservation-released` (released or \
            failed) or `cart-pending`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<CartView>, ApiError> {
    settle(state, caller.account, raw, Settlement::Confirm).await
}

/// `POST /v1/carts/{id}/release`: the owner only.
#[utoipa::path(post, path = "/v1/carts/{id}/release", operation_id = "releaseCart", tag = "shopper",
    summary = "Give every line of a held cart back (idempotent)",
    params(("id" = String, Path, description = "The cart id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released (again, when repeated)", body = CartView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`cart-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reservation-confirmed`, `reservation-expired` or \
            `cart-pending`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn release(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(raw): Path<String>,
) -> Result<Json<CartView>, ApiError> {
    settle(state, caller.account, raw, Settlement::Release).await
}
