//! Admin endpoints (scope `inventory:admin`): stock counts, sale policy,
//! adjustments.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::{
    extract::{JsonBody, SkuOperator, SkuReader, SkuWriter, seller_may},
    inventory::view_response,
    middleware::current_request_id,
    openapi::{Forbidden, Unauthorized, Unavailable, UnknownSku, ValidationFailed},
    parse_rfc3339,
    problem::{ApiError, Problem},
    rfc3339,
    state::AppState,
};
use crate::{
    auth::Caller,
    inventory::{Location, SellerId, Sku, view::InventoryView},
    redis::calls::{Adjustment, AdminReply, Policy, PolicyField, PolicyUpdate, Staff, StockCounts},
    service::{
        ServiceError,
        import::{ImportError, Imported, Importer},
    },
};

/// Largest count an admin may set or add in one request.
const COUNT_MAX: i64 = crate::inventory::STOCK_COUNT_MAX;
/// Longest hold TTL a policy may set (one day).
const POLICY_TTL_SECONDS_MAX: i64 = 86_400;
/// Largest per-account cap a policy may set.
const POLICY_MAX_PER_ACCOUNT_MAX: i64 = 1_000_000;
/// Longest adjustment reference.
const REFERENCE_LEN_MAX: usize = 128;

/// 403 unless the caller may write stock at `location` (a seller may at
/// every location of its own SKUs), 404 when a seller does not own `sku`.
async fn may_write(
    state: &AppState,
    caller: &Caller,
    sku: &Sku,
    location: &Location,
) -> Result<(), ApiError> {
    let seller = caller.grants.seller_only().is_some();
    if !seller && !caller.grants.writes_location(location.as_str()) {
        return Err(ApiError::Forbidden);
    }
    seller_may(state, caller, sku).await
}

fn sku_and_location(sku: &str, location: &str) -> Result<(Sku, Location), ApiError> {
    Ok((Sku::parse(sku)?, Location::parse(location)?))
}

/// `If-Match: "<version>"` (or `*`, meaning any version).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/")
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::Validation("If-Match must be a quoted version, e.g. \"12\"".into())
        })
}

fn admin_response(sku: &Sku, reply: AdminReply) -> Result<Response, ApiError> {
    match reply {
        AdminReply::Ok { sku: hash } => hash
            .view(sku.as_str())
            .map(view_response)
            .ok_or_else(|| ApiError::Internal("empty SKU hash after a write".into())),
        AdminReply::VersionMismatch { version } => Err(ApiError::PreconditionFailed { version }),
        AdminReply::InsufficientStock { available, .. } => {
            Err(ApiError::InsufficientStock { available })
        }
        AdminReply::UnknownSku => Err(ApiError::UnknownSku),
        AdminReply::UnknownLocation => Err(ApiError::UnknownLocation),
    }
}

fn operation_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    on_hand: i64,
    #[serde(default)]
    safety_stock: i64,
    #[serde(default)]
    low_stock_threshold: i64,
    #[serde(default)]
    backorder_limit: i64,
}

/// `PUT /v1/admin/inventory/{sku}/locations/{location}`
#[utoipa::path(put, path = "/v1/admin/inventory/{sku}/locations/{location}", operation_id = "setStock", tag = "admin",
    summary = "Create or set a location's counts (reserved units are untouched)",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"), ("location" = String, Path, description = "1-32 characters of `[A-Za-z0-9._-]`"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: refuse with 412 unless the SKU is at this version")),
    request_body = StockBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inventory view after the change", body = InventoryView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, description = "`insufficient-stock` (member `available`): the counts would leave fewer holdable units than are held", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`precondition-failed` (member `version`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn set_stock(
    State(state): State<AppState>,
    SkuWriter(caller): SkuWriter,
    Path((sku, location)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StockBody>,
) -> Result<Response, ApiError> {
    let (sku, location) = sku_and_location(&sku, &location)?;
    may_write(&state, &caller, &sku, &location).await?;
    let counts = StockCounts::parse(
        body.on_hand,
        body.safety_stock,
        body.low_stock_threshold,
        body.backorder_limit,
    )
    .map_err(ApiError::Validation)?;
    let expected = if_match(&headers)?;
    let reply = state
        .inventory
        .set_stock(
            &sku,
            &location,
            counts,
            expected,
            &Staff {
                actor: &caller.account,
                request_id: &current_request_id(),
            },
            &operation_id(),
        )
        .await?;
    admin_response(&sku, reply)
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdjustmentReason {
    Receipt,
    Shrinkage,
    Correction,
    Return,
}

impl AdjustmentReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Shrinkage => "shrinkage",
            Self::Correction => "correction",
            Self::Return => "return",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    delta: i64,
    reason: AdjustmentReason,
    #[serde(default)]
    reference: Option<String>,
}

/// `POST /v1/admin/inventory/{sku}/locations/{location}/adjustments`
#[utoipa::path(post, path = "/v1/admin/inventory/{sku}/locations/{location}/adjustments", operation_id = "adjustStock", tag = "admin",
    summary = "Add or remove units with a reason",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`"), ("location" = String, Path, description = "1-32 characters of `[A-Za-z0-9._-]`")),
    request_body = AdjustBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The inventory view after the change", body = InventoryView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownSku),
        (status = 409, description = "`insufficient-stock`: fewer units would be left than are held", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn adjust(
    State(state): State<AppState>,
    SkuWriter(caller): SkuWriter,
    Path((sku, location)): Path<(String, String)>,
    JsonBody(body): JsonBody<AdjustBody>,
) -> Result<Response, ApiError> {
    let (sku, location) = sku_and_location(&sku, &location)?;
    may_write(&state, &caller, &sku, &location).await?;
    if body.delta == 0 || body.delta.abs() > COUNT_MAX {
        return Err(ApiError::Validation(format!(
            "delta must be non-zero and at most {COUNT_MAX} in size"
        )));
    }
    if let Some(r) = &body.reference {
        let printable = r.bytes().all(|b| (0x20..0x7f).contains(&b));
        if r.len() > REFERENCE_LEN_MAX || !printable {
            return Err(ApiError::Validation(format!(
                "reference must be at most {REFERENCE_LEN_MAX} printable ASCII characters"
            )));
        }
    }
    let reply = state
        .inventory
        .adjust(
            &sku,
            &location,
            &Adjustment {
                delta: body.delta,
                reason: body.reason.as_str(),
                reference: body.reference.as_deref(),
            },
            &Staff {
                actor: &caller.account,
                request_id: &current_request_id(),
            },
            &operation_id(),
        )
        .await?;
    admin_response(&sku, reply)
}

/// Absent stays `None`; `null` becomes `Some(None)`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Each field is optional: absent keeps the current value, `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    max_per_account: Option<Option<i64>>,
    /// RFC 3339.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    sale_opens_at: Option<Option<String>>,
    /// RFC 3339.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    sale_closes_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    reservation_ttl_seconds: Option<Option<i64>>,
    /// The marketplace seller who owns the SKU (1-64 characters of
    /// `[A-Za-z0-9._:@-]`): tokens with `inventory:seller` and this `seller`
    /// claim reach its admin endpoints. Set by `inventory:admin` only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    seller: Option<Option<String>>,
    /// An inventory-aware waiting room: while it is on, reservations need a
    /// `Queue-Admission` token (README, "Waiting room"). `null` turns it off.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<WaitingRoomBody>)]
    waiting_room: Option<Option<WaitingRoomBody>>,
    /// Hot-SKU stock buckets (1-64, default 1): the SKU's stock spread over
    /// this many partitions on distinct Redis masters (README, "Stock
    /// buckets"). Laid out while the SKU has no live holds (its stock moves
    /// into the buckets; 409 `buckets-locked` otherwise, or with a waiting
    /// room); not changed once laid out.
    #[schema(minimum = 1, maximum = 64)]
    buckets: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomBody {
    /// Tickets admitted per second at most (1-100,000).
    admit_per_second: i64,
    /// How long an admission is good for (1-3,600 s; default 60).
    #[serde(default = "default_admission_ttl")]
    admission_ttl_seconds: i64,
}

fn default_admission_ttl() -> i64 {
    60
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    sku: String,
    max_per_account: Option<i64>,
    sale_opens_at: Option<String>,
    sale_closes_at: Option<String>,
    reservation_ttl_seconds: Option<i64>,
    seller: Option<String>,
    waiting_room: Option<WaitingRoomBody>,
    buckets: i64,
}

fn bounded(
    name: &str,
    value: Option<Option<i64>>,
    max: i64,
) -> Result<Option<PolicyField>, ApiError> {
    Ok(match value {
        None => None,
        Some(None) => Some(PolicyField::Clear),
        Some(Some(v)) if (1..=max).contains(&v) => Some(PolicyField::Set(v)),
        Some(Some(_)) => {
            return Err(ApiError::Validation(format!(
                "{name} must be from 1 to {max}"
            )));
        }
    })
}

fn instant(name: &str, value: Option<Option<String>>) -> Result<Option<PolicyField>, ApiError> {
    Ok(match value {
        None => None,
        Some(None) => Some(PolicyField::Clear),
        Some(Some(s)) => Some(PolicyField::Set(parse_rfc3339(&s).ok_or_else(|| {
            ApiError::Validation(format!("{name} must be an RFC 3339 timestamp"))
        })?)),
    })
}

/// `PUT /v1/admin/inventory/{sku}`: the sale policy. Absent fields stay,
/// `null` clears.
#[utoipa::path(put, path = "/v1/admin/inventory/{sku}", operation_id = "setPolicy", tag = "admin",
    summary = "Set a SKU's sale policy: purchase cap, sale window, hold TTL",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    request_body = PolicyBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The policy after the change", body = PolicyView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn set_policy(
    State(state): State<AppState>,
    SkuOperator(caller): SkuOperator,
    Path(sku): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Json<PolicyView>, ApiError> {
    let sku = Sku::parse(&sku)?;
    if body.seller.is_some() && caller.role != crate::auth::Role::Admin {
        return Err(ApiError::Forbidden);
    }
    seller_may(&state, &caller, &sku).await?;
    let seller = body
        .seller
        .map(|s| s.as_deref().map(SellerId::parse).transpose())
        .transpose()?;
    let update = PolicyUpdate {
        max_per_account: bounded(
            "max_per_account",
            body.max_per_account,
            POLICY_MAX_PER_ACCOUNT_MAX,
        )?,
        opens_at_ms: instant("sale_opens_at", body.sale_opens_at)?,
        closes_at_ms: instant("sale_closes_at", body.sale_closes_at)?,
        ttl_seconds: bounded(
            "reservation_ttl_seconds",
            body.reservation_ttl_seconds,
            POLICY_TTL_SECONDS_MAX,
        )?,
        seller,
        admit_per_second: None,
        admission_ttl_seconds: None,
        buckets: match body.buckets {
            Some(k) if !(1..=crate::service::buckets::BUCKETS_MAX).contains(&k) => {
                return Err(ApiError::Validation(format!(
                    "buckets must be from 1 to {}",
                    crate::service::buckets::BUCKETS_MAX
                )));
            }
            k => k,
        },
    };
    let mut update = update;
    match body.waiting_room {
        None => {}
        Some(None) => {
            update.admit_per_second = Some(PolicyField::Clear);
            update.admission_ttl_seconds = Some(PolicyField::Clear);
        }
        Some(Some(room)) => {
            let rate = Some(Some(room.admit_per_second));
            let ttl = Some(Some(room.admission_ttl_seconds));
            update.admit_per_second = bounded("waiting_room.admit_per_second", rate, 100_000)?;
            update.admission_ttl_seconds =
                bounded("waiting_room.admission_ttl_seconds", ttl, 3_600)?;
        }
    }
    if let (Some(PolicyField::Set(open)), Some(PolicyField::Set(close))) =
        (update.opens_at_ms, update.closes_at_ms)
        && open >= close
    {
        return Err(ApiError::Validation(
            "sale_opens_at must be before sale_closes_at".into(),
        ));
    }
    let request_id = current_request_id();
    let staff = Staff {
        actor: &caller.account,
        request_id: &request_id,
    };
    let view =
        |p: &Policy| serde_json::to_value(PolicyView::of(&sku, p.clone())).unwrap_or_default();
    let policy: Policy = state
        .inventory
        .set_policy(&sku, &update, &staff, view)
        .await?;
    Ok(Json(PolicyView::of(&sku, policy)))
}

impl PolicyView {
    fn of(sku: &Sku, policy: Policy) -> Self {
        let buckets = policy.buckets();
        Self {
            sku: sku.to_string(),
            max_per_account: policy.max,
            sale_opens_at: policy.open.map(rfc3339),
            sale_closes_at: policy.close.map(rfc3339),
            reservation_ttl_seconds: policy.ttl,
            seller: policy.seller,
            waiting_room: policy
                .wra
                .zip(policy.wrt)
                .map(|(rate, ttl)| WaitingRoomBody {
                    admit_per_second: rate,
                    admission_ttl_seconds: ttl,
                }),
            buckets,
        }
    }
}

/// A SKU as an operator reads it: the view and the sale policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSkuView {
    #[serde(flatten)]
    view: InventoryView,
    policy: PolicyView,
}

/// `GET /v1/admin/inventory/{sku}`
#[utoipa::path(get, path = "/v1/admin/inventory/{sku}", operation_id = "getAdminInventory", tag = "admin",
    summary = "A SKU's inventory view with its sale policy, as Redis has them now",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The view and the policy", body = AdminSkuView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn get_sku(
    State(state): State<AppState>,
    SkuReader(caller): SkuReader,
    Path(sku): Path<String>,
) -> Result<Json<AdminSkuView>, ApiError> {
    let sku = Sku::parse(&sku)?;
    seller_may(&state, &caller, &sku).await?;
    let (view, policy) = state
        .inventory
        .view_and_policy(&sku)
        .await?
        .ok_or(ApiError::UnknownSku)?;
    Ok(Json(AdminSkuView {
        view,
        policy: PolicyView::of(&sku, policy),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImportReport)]
struct ImportReportDoc {
    /// Lines applied.
    applied: usize,
    /// Lines not applied, by line number, each with a problem code.
    failed: Vec<crate::service::import::FailedImportLine>,
}

/// `POST /v1/admin/inventory/import`: stock writers (each line's location
/// is checked like `PUT …/locations/{location}`).
#[utoipa::path(post, path = "/v1/admin/inventory/import", operation_id = "importStock", tag = "admin",
    summary = "Set many locations' counts from NDJSON lines, streamed; a bad line fails alone",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "The same key and body answer the first import's result and change nothing \
                       (`Idempotent-Replayed: true`); another body is `idempotency-key-reused`")),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One JSON object per line: `{\"sku\",\"location\",\"on_hand\",\"safety_stock\",\
            \"low_stock_threshold\",\"backorder_limit\"}` (`location` defaults to `default`, the \
            counts but `on_hand` to 0); at most `admin.import_lines_max` (10,000) lines of at most \
            4,096 bytes; blank lines are skipped"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`applied` lines and the `failed` ones (`line`, `code`, `detail`)", body = ImportReportDoc),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 415, description = "`unsupported-media-type`: not `application/x-ndjson`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency-key-reused`, or a bad `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn import(
    State(state): State<AppState>,
    SkuWriter(caller): SkuWriter,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-ndjson"));
    if !ndjson {
        return Err(ApiError::Rejected {
            status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            detail: "the body must be application/x-ndjson".into(),
        });
    }
    let key = super::reservations::idempotency_key(&headers)?;
    let request_id = current_request_id();
    let importer = Importer {
        inventory: &state.inventory,
        caller: &caller,
        request_id: &request_id,
        key: key.as_ref(),
        lines_max: state.limits.import_lines_max,
    };
    let (report, replayed) = match importer.import(body.into_data_stream()).await {
        Ok(Imported::Done(report)) => (report, false),
        Ok(Imported::Replayed(report)) => (report, true),
        Ok(Imported::KeyReused) => return Err(ApiError::IdempotencyKeyReused),
        Err(ImportError::Body(detail)) => {
            return Err(ApiError::Rejected {
                status: axum::http::StatusCode::BAD_REQUEST,
                detail,
            });
        }
        Err(ImportError::Journal(e)) => return Err(ServiceError::Journal(e).into()),
    };
    let mut response = Json(report).into_response();
    if replayed {
        response.headers_mut().insert(
            super::reservations::IDEMPOTENT_REPLAYED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// One transfer a rebalance made: `qty` units of `location` from the
/// bucket in partition `from_bucket` to the one in `to_bucket`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferView {
    id: String,
    location: String,
    qty: i64,
    from_bucket: u32,
    to_bucket: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebalanceView {
    sku: String,
    /// The transfers made, in order (none when the buckets were even).
    transfers: Vec<TransferView>,
}

/// `POST /v1/admin/inventory/{sku}/rebalance`: evens out the free units of
/// a bucketed SKU's buckets now (every instance also does it every
/// `buckets.rebalance_interval_ms`).
#[utoipa::path(post, path = "/v1/admin/inventory/{sku}/rebalance", operation_id = "rebalanceBuckets", tag = "admin",
    summary = "Even out the free units of a bucketed SKU's stock buckets now",
    params(("sku" = String, Path, description = "1-64 characters of `[A-Za-z0-9._-]`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The transfers made", body = RebalanceView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownSku),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn rebalance(
    State(state): State<AppState>,
    crate::http::extract::Admin(_): crate::http::extract::Admin,
    Path(sku): Path<String>,
) -> Result<Json<RebalanceView>, ApiError> {
    let sku = Sku::parse(&sku)?;
    let Some(layout) = state.inventory.layout_of(&sku).await? else {
        return Err(ApiError::UnknownSku);
    };
    let transfers = state.inventory.rebalance_sku(&layout, 0).await?;
    Ok(Json(RebalanceView {
        sku: sku.to_string(),
        transfers: transfers
            .into_iter()
            .map(|t| TransferView {
                id: t.id,
                location: t.location.to_string(),
                qty: t.qty,
                from_bucket: t.from.bucket_partition().map_or(0, |p| p.0),
                to_bucket: t.to.bucket_partition().map_or(0, |p| p.0),
            })
            .collect(),
    }))
}
