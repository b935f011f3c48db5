//! Every statement about webhooks and their deliveries (tables of
//! migration V3). Deliveries are claimed with `FOR UPDATE SKIP LOCKED`, so
//! any number of instances share the work without sending one twice at
//! once; a claim is a lease (its `next_attempt_at` moves past the attempt's
//! timeout), so the deliveries of an instance killed mid-way fall due again.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::journal::store::StoreError;

/// A registered webhook (its secret is never read back).
#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub seq: i64,
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub skus: Option<Vec<String>>,
    pub created_at_ms: i64,
}

/// What a new webhook is made of.
pub struct NewWebhook<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub events: &'a [String],
    pub skus: Option<&'a [String]>,
    pub secret: &'a str,
}

/// One delivery as its history shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub seq: i64,
    pub id: String,
    pub webhook_id: String,
    pub notification_id: String,
    pub kind: String,
    pub sku: String,
    pub status: String,
    pub attempts: i32,
    /// Set while pending.
    pub next_attempt_at_ms: Option<i64>,
    pub last_attempt_at_ms: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// A delivery claimed for one attempt, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub url: String,
    pub secret: String,
    pub notification_id: String,
    pub kind: String,
    pub previous_status: String,
    /// The inventory view at the change, as JSON.
    pub view: String,
    pub occurred_at_ms: i64,
}

/// How an attempt ended.
pub enum Outcome<'a> {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: &'a str,
        /// `None`: that was the last attempt.
        retry_in: Option<Duration>,
    },
}

/// A timestamp column as milliseconds since the epoch.
fn ms(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
}

pub async fn count_live(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM webhooks WHERE deleted_at IS NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

pub async fn insert(pool: &Pool, new: &NewWebhook<'_>) -> Result<WebhookRow, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO webhooks (id, url, events, skus, secret, created_at)
                 VALUES ($1, $2, $3, $4, $5, now())
                 RETURNING seq, {}",
                ms("created_at")
            ),
            &[&new.id, &new.url, &new.events, &new.skus, &new.secret],
        )
        .await?;
    Ok(WebhookRow {
        seq: row.try_get(0)?,
        id: new.id.to_owned(),
        url: new.url.to_owned(),
        events: new.events.to_vec(),
        skus: new.skus.map(<[String]>::to_vec),
        created_at_ms: row.try_get(1)?,
    })
}

/// Live webhooks after `after` (a `seq`), oldest first.
pub async fn list(pool: &Pool, after: i64, limit: i64) -> Result<Vec<WebhookRow>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT seq, id, url, events, skus, {} FROM webhooks
                 WHERE deleted_at IS NULL AND seq > $1 ORDER BY seq LIMIT $2",
                ms("created_at")
            ),
            &[&after, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(WebhookRow {
                seq: r.try_get(0)?,
                id: r.try_get(1)?,
                url: r.try_get(2)?,
                events: r.try_get(3)?,
                skus: r.try_get(4)?,
                created_at_ms: r.try_get(5)?,
            })
        })
        .collect()
}

/// Whether the live webhook `id` exists.
pub async fn exists(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT 1 FROM webhooks WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(row.is_some())
}

/// Deletes a webhook: nothing more is made or sent for it (its history
/// stays). False when there was no such live webhook.
pub async fn delete(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE webhooks SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

fn delivery_columns() -> String {
    format!(
        "d.seq, d.id, d.webhook_id, d.notification_id, n.type, n.sku, d.status, d.attempts,
         CASE WHEN d.status = 'pending' THEN {} END, {}, d.last_status, d.last_error, {}, {}",
        ms("d.next_attempt_at"),
        ms("d.last_attempt_at"),
        ms("d.created_at"),
        ms("d.delivered_at")
    )
}

fn delivery_row(r: &tokio_postgres::Row) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        webhook_id: r.try_get(2)?,
        notification_id: r.try_get(3)?,
        kind: r.try_get(4)?,
        sku: r.try_get(5)?,
        status: r.try_get(6)?,
        attempts: r.try_get(7)?,
        next_attempt_at_ms: r.try_get(8)?,
        last_attempt_at_ms: r.try_get(9)?,
        last_status: r.try_get(10)?,
        last_error: r.try_get(11)?,
        created_at_ms: r.try_get(12)?,
        delivered_at_ms: r.try_get(13)?,
    })
}

/// A webhook's deliveries after `after` (a `seq`), oldest first, of one
/// status when given.
pub async fn deliveries(
    pool: &Pool,
    webhook_id: &str,
    status: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM webhook_deliveries d
                 JOIN stock_notifications n ON n.id = d.notification_id
                 WHERE d.webhook_id = $1 AND ($2::text IS NULL OR d.status = $2) AND d.seq > $3
                 ORDER BY d.seq LIMIT $4",
                delivery_columns()
            ),
            &[&webhook_id, &status, &after, &limit],
        )
        .await?;
    rows.iter().map(delivery_row).collect()
}

/// Makes a delivery of a live webhook due now with a fresh set of
/// attempts, whatever its status (a delivered one is sent again: receivers
/// deduplicate by `webhook-id`). `None` when there is no such delivery.
pub async fn retry(pool: &Pool, id: &str) -> Result<Option<DeliveryRow>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "WITH d AS (
                     UPDATE webhook_deliveries d SET status = 'pending', attempts = 0,
                         next_attempt_at = now(), delivered_at = NULL
                     FROM webhooks w
                     WHERE d.id = $1 AND w.id = d.webhook_id AND w.deleted_at IS NULL
                     RETURNING d.*
                 )
                 SELECT {} FROM d JOIN stock_notifications n ON n.id = d.notification_id",
                delivery_columns()
            ),
            &[&id],
        )
        .await?;
    row.as_ref().map(delivery_row).transpose()
}

/// Claims up to `limit` due deliveries of live webhooks for one attempt
/// each, leased for `lease`.
pub async fn claim(pool: &Pool, limit: i64, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "WITH due AS (
                     SELECT d.id FROM webhook_deliveries d
                     JOIN webhooks w ON w.id = d.webhook_id AND w.deleted_at IS NULL
                     WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                     ORDER BY d.next_attempt_at LIMIT $1
                     FOR UPDATE OF d SKIP LOCKED
                 )
                 UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
                     last_attempt_at = now(),
                     next_attempt_at = now() + make_interval(secs => $2)
                 FROM due, webhooks w, stock_notifications n
                 WHERE d.id = due.id AND w.id = d.webhook_id AND n.id = d.notification_id
                 RETURNING d.id, d.attempts, w.url, w.secret, n.id, n.type,
                     n.previous_status, n.view::text, {}",
                ms("n.occurred_at")
            ),
            &[&limit, &lease.as_secs_f64()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get(0)?,
                attempt: r.try_get(1)?,
                url: r.try_get(2)?,
                secret: r.try_get(3)?,
                notification_id: r.try_get(4)?,
                kind: r.try_get(5)?,
                previous_status: r.try_get(6)?,
                view: r.try_get(7)?,
                occurred_at_ms: r.try_get(8)?,
            })
        })
        .collect()
}

/// Records how the attempt `claimed` ended, unless the delivery has moved
/// on since (its lease ran out and another attempt claimed it, or an
/// operator retried it). For a delivered one, the seconds from the change
/// to now.
pub async fn finish(
    pool: &Pool,
    claimed: &Claimed,
    outcome: Outcome<'_>,
) -> Result<Option<f64>, StoreError> {
    let client = pool.get().await?;
    let row =
        match outcome {
            Outcome::Delivered { status } => client
                .query_opt(
                    "UPDATE webhook_deliveries d SET status = 'delivered', delivered_at = now(),
                         last_status = $3, last_error = NULL
                     FROM stock_notifications n
                     WHERE d.id = $1 AND d.attempts = $2 AND d.status = 'pending'
                         AND n.id = d.notification_id
                     RETURNING extract(epoch FROM now() - n.occurred_at)::float8",
                    &[&claimed.id, &claimed.attempt, &i32::from(status)],
                )
                .await?,
            Outcome::Failed {
                status,
                error,
                retry_in,
            } => {
                let (next, retry) = match retry_in {
                    Some(wait) => ("pending", wait.as_secs_f64()),
                    None => ("dead", 0.0),
                };
                client
                    .query_opt(
                        "UPDATE webhook_deliveries SET status = $3, last_status = $4,
                         last_error = $5, next_attempt_at = now() + make_interval(secs => $6)
                     WHERE id = $1 AND attempts = $2 AND status = 'pending'
                     RETURNING NULL::float8",
                        &[
                            &claimed.id,
                            &claimed.attempt,
                            &next,
                            &status.map(i32::from),
                            &error,
                            &retry,
                        ],
                    )
                    .await?
            }
        };
    Ok(row.and_then(|r| r.get::<_, Option<f64>>(0)))
}

/// How long until the next pending delivery of a live webhook falls due
/// (zero when one is due), `None` when nothing is pending.
pub async fn next_due(pool: &Pool) -> Result<Option<Duration>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT greatest(0, extract(epoch FROM min(d.next_attempt_at) - now()))::float8
             FROM webhook_deliveries d
             JOIN webhooks w ON w.id = d.webhook_id AND w.deleted_at IS NULL
             WHERE d.status = 'pending'",
            &[],
        )
        .await?;
    let seconds: Option<f64> = row.try_get(0)?;
    Ok(seconds.map(Duration::from_secs_f64))
}

/// Dead deliveries, and the age in seconds of the oldest pending one (0
/// when none is), over live webhooks.
pub async fn backlog(pool: &Pool) -> Result<(i64, f64), StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE d.status = 'dead'),
                 coalesce(extract(epoch FROM now() - min(d.created_at)
                     FILTER (WHERE d.status = 'pending')), 0)::float8
             FROM webhook_deliveries d
             JOIN webhooks w ON w.id = d.webhook_id AND w.deleted_at IS NULL
             WHERE d.status <> 'delivered'",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
