//! Stock webhooks' admin endpoints: register, list and delete webhooks,
//! read a webhook's deliveries, retry one. The work is `live::webhooks`.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{Admin, JsonBody, Reader},
    openapi::{Forbidden, Unauthorized, Unavailable, ValidationFailed},
    paging,
    problem::{ApiError, Problem},
    rfc3339,
    state::AppState,
};
use crate::live::webhooks::{
    DELIVERY_STATUSES, Registration, WebhookError,
    store::{DeliveryRow, WebhookRow},
};

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(detail) => ApiError::Validation(detail),
            WebhookError::UnknownWebhook => ApiError::UnknownWebhook,
            WebhookError::UnknownDelivery => ApiError::UnknownDelivery,
            e @ WebhookError::TooMany(_) => ApiError::WebhookLimit(e.to_string()),
            WebhookError::Store(e) => {
                ApiError::Unavailable(format!("the journal cannot be reached: {e}"))
            }
            WebhookError::Random(e) => ApiError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `http` or `https`; loopback, link-local and private addresses are
    /// refused unless `webhooks.allow_private_targets`.
    url: String,
    /// Among `stock.low`, `stock.out`, `stock.back_in`, `stock.backorder`.
    events: Vec<String>,
    /// Only these SKUs (1-1000); every SKU when absent.
    skus: Option<Vec<String>>,
    /// `whsec_` and the base64 of 24-64 bytes; generated when absent.
    secret: Option<String>,
}

/// A registered webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    id: String,
    url: String,
    events: Vec<String>,
    /// Null: every SKU.
    skus: Option<Vec<String>>,
    created_at: String,
}

impl From<WebhookRow> for Webhook {
    fn from(r: WebhookRow) -> Self {
        Self {
            id: r.id,
            url: r.url,
            events: r.events,
            skus: r.skus,
            created_at: rfc3339(r.created_at_ms),
        }
    }
}

/// A webhook just registered, with its signing secret (shown only here).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredWebhook {
    #[serde(flatten)]
    webhook: Webhook,
    secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    webhooks: Vec<Webhook>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// One delivery of one notification to one webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    id: String,
    webhook_id: String,
    /// The notification's id: the `webhook-id` header and the body's `id`.
    notification_id: String,
    #[serde(rename = "type")]
    kind: String,
    sku: String,
    /// `pending`, `delivered` or `dead`.
    status: String,
    attempts: i32,
    /// When a pending delivery is tried next.
    next_attempt_at: Option<String>,
    last_attempt_at: Option<String>,
    /// The receiver's HTTP status at the last attempt; null when it could
    /// not be reached.
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Self {
            id: r.id,
            webhook_id: r.webhook_id,
            notification_id: r.notification_id,
            kind: r.kind,
            sku: r.sku,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at_ms.map(rfc3339),
            last_attempt_at: r.last_attempt_at_ms.map(rfc3339),
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: rfc3339(r.created_at_ms),
            delivered_at: r.delivered_at_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    deliveries: Vec<Delivery>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this status: `pending`, `delivered` or `dead`.
    status: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page, 1-1000 (default 100).
    limit: Option<i64>,
}

/// `(after, limit)` of a page request; cursors are the last item's `seq`.
fn page(cursor: Option<&str>, limit: Option<i64>) -> Result<(i64, i64), ApiError> {
    Ok((
        paging::seq_cursor(cursor)?.unwrap_or(0),
        paging::limit(limit)?,
    ))
}

/// `POST /v1/admin/webhooks`
#[utoipa::path(post, path = "/v1/admin/webhooks", operation_id = "createWebhook", tag = "admin",
    summary = "Register a webhook for stock notifications",
    description = "Every change of a SKU's status the webhook asks for is POSTed to `url`, signed \
        as Standard Webhooks do (`webhook-id`, `webhook-timestamp`, `webhook-signature`). The \
        secret is returned only in this answer.",
    request_body = WebhookBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The webhook, with its secret", body = RegisteredWebhook),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, description = "`webhook-limit`: `webhooks.max_webhooks` are registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<WebhookBody>,
) -> Result<(StatusCode, Json<RegisteredWebhook>), ApiError> {
    let (row, secret) = state
        .webhooks
        .register(Registration {
            url: body.url,
            events: body.events,
            skus: body.skus,
            secret: body.secret,
        })
        .await?;
    let webhook = Webhook::from(row);
    Ok((
        StatusCode::CREATED,
        Json(RegisteredWebhook { webhook, secret }),
    ))
}

/// `GET /v1/admin/webhooks`
#[utoipa::path(get, path = "/v1/admin/webhooks", operation_id = "listWebhooks", tag = "admin",
    summary = "List the registered webhooks, oldest first",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of webhooks", body = WebhookPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _reader: Reader,
    Query(query): Query<PageQuery>,
) -> Result<Json<WebhookPage>, ApiError> {
    let (after, limit) = page(query.cursor.as_deref(), query.limit)?;
    let rows = state.webhooks.list(after, limit).await?;
    let next = paging::next(&rows, limit, |r| r.seq.to_string());
    Ok(Json(WebhookPage {
        webhooks: rows.into_iter().map(Webhook::from).collect(),
        next,
    }))
}

/// `DELETE /v1/admin/webhooks/{id}`
#[utoipa::path(delete, path = "/v1/admin/webhooks/{id}", operation_id = "deleteWebhook", tag = "admin",
    summary = "Delete a webhook: nothing more is sent to it",
    params(("id" = String, Path, description = "The webhook's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`unknown-webhook`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.webhooks.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/webhooks/{id}/deliveries`
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "admin",
    summary = "A webhook's deliveries, oldest first: the delivery history and the dead letters",
    params(("id" = String, Path, description = "The webhook's id"), DeliveryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`unknown-webhook`", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ))]
pub async fn deliveries(
    State(state): State<AppState>,
    _reader: Reader,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let (after, limit) = page(query.cursor.as_deref(), query.limit)?;
    let status = paging::one_of("status", query.status.as_deref(), DELIVERY_STATUSES)?;
    let rows = state.webhooks.deliveries(&id, status, after, limit).await?;
    let next = paging::next(&rows, limit, |r| r.seq.to_string());
    Ok(Json(DeliveryPage {
        deliveries: rows.into_iter().map(Delivery::from).collect(),
        next,
    }))
}

/// `POST /v1/admin/webhook-deliveries/{id}/retry`
#[utoipa::path(post, path = "/v1/admin/webhook-deliveries/{id}/retry", operation_id = "retryWebhookDelivery", tag = "admin",
    summary = "Send a delivery again now, with a fresh set of attempts (a dead one included)",
    params(("id" = String, Path, description = "The delivery's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The delivery, pending and due now", body = Delivery),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "`unknown-delivery`", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = Unavailable),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    let row = state.webhooks.retry(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(Delivery::from(row))))
}
