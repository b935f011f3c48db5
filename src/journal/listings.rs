//! The journal's read side for listings: reservations page by page, newest
//! first, and SKUs by status. Both read Postgres, so they are as fresh as
//! the journal (under steady load within a second of the change), and cost
//! Redis nothing.

use deadpool_postgres::Pool;

use super::store::StoreError;

/// What a reservation listing keeps; `None` keeps every value.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReservationFilter<'a> {
    pub account: Option<&'a str>,
    pub sku: Option<&'a str>,
    /// `held` (live holds only: deadline ahead), `expired` (past their
    /// deadline, swept or not), `confirmed` or `released`.
    pub status: Option<&'a str>,
    /// Only reservations of SKUs whose policy names this seller.
    pub seller: Option<&'a str>,
}

/// One listed reservation, times in ms since the epoch.
#[derive(Debug, Clone)]
pub struct ListedReservation {
    /// Its place in listings (newest first); the cursor.
    pub seq: i64,
    pub reservation_id: String,
    pub sku: String,
    pub location: String,
    pub account_id: String,
    pub qty: i32,
    /// `held`, `confirmed`, `released` or `expired` (a hold past its
    /// deadline reads `expired` before the sweeper's event arrives).
    pub status: String,
    pub backorder: bool,
    pub created_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub updated_at_ms: i64,
}

/// Reservations older than `before` (a `seq`; the newest when `None`) that
/// pass `filter`, newest first, at most `limit`.
pub async fn reservations(
    pool: &Pool,
    filter: ReservationFilter<'_>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<ListedReservation>, StoreError> {
    // Only the predicates asked for, so each listing uses its index.
    let mut predicates = vec!["seq < $1".to_owned()];
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    let before = before.unwrap_or(i64::MAX);
    params.push(&before);
    params.push(&limit);
    if let Some(account) = &filter.account {
        params.push(account);
        predicates.push(format!("account_id = ${}", params.len()));
    }
    if let Some(sku) = &filter.sku {
        params.push(sku);
        // Its stock buckets' reservations too.
        let n = params.len();
        predicates.push(format!(
            "(sku = ${n} OR starts_with(sku, ${n} || '{}'))",
            crate::inventory::BUCKET_MARK
        ));
    }
    if let Some(seller) = &filter.seller {
        params.push(seller);
        predicates.push(format!(
            "sku IN (SELECT sku FROM sku_policies WHERE seller = ${})",
            params.len()
        ));
    }
    match filter.status {
        Some("held") => predicates.push("state = 'held' AND expires_at > now()".into()),
        Some("expired") => predicates
            .push("(state = 'expired' OR (state = 'held' AND expires_at <= now()))".into()),
        Some(other) => {
            params.push(&filter.status);
            predicates.push(format!("state = ${}", params.len()));
            debug_assert!(matches!(other, "confirmed" | "released"));
        }
        None => {}
    }
    let sql = format!(
        "SELECT seq, reservation_id, sku, location, account_id, qty,
             CASE WHEN state = 'held' AND expires_at <= now() THEN 'expired' ELSE state END,
             backorder, (extract(epoch FROM created_at) * 1000)::int8,
             (extract(epoch FROM expires_at) * 1000)::int8,
             (extract(epoch FROM updated_at) * 1000)::int8
         FROM reservations WHERE {} ORDER BY seq DESC LIMIT $2",
        predicates.join(" AND ")
    );
    let client = pool.get().await?;
    let rows = client.query(&sql, &params).await?;
    rows.iter()
        .map(|r| {
            Ok(ListedReservation {
                seq: r.try_get(0)?,
                reservation_id: r.try_get(1)?,
                sku: crate::inventory::client_sku(r.try_get(2)?).to_owned(),
                location: r.try_get(3)?,
                account_id: r.try_get(4)?,
                qty: r.try_get(5)?,
                status: r.try_get(6)?,
                backorder: r.try_get(7)?,
                created_at_ms: r.try_get(8)?,
                expires_at_ms: r.try_get(9)?,
                updated_at_ms: r.try_get(10)?,
            })
        })
        .collect()
}

/// One SKU of a status listing: its counts per location at the version the
/// journal's status follower has reached.
#[derive(Debug, Clone)]
pub struct ListedSku {
    pub sku: String,
    pub status: String,
    pub version: i64,
    /// `sku_status.locations`: `{"<location>": [on_hand, reserved,
    /// safety_stock, low_stock_threshold, backorder_limit]}`.
    pub locations: String,
    pub updated_at_ms: i64,
}

/// SKUs whose status is `status`, after `after` in SKU order, at most
/// `limit`; with `seller`, only that seller's.
pub async fn skus_by_status(
    pool: &Pool,
    status: &str,
    after: &str,
    limit: i64,
    seller: Option<&str>,
) -> Result<Vec<ListedSku>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT sku, status, version, locations::text,
                 (extract(epoch FROM updated_at) * 1000)::int8
             FROM sku_status WHERE status = $1 AND sku > $2
                 AND ($4::text IS NULL
                      OR sku IN (SELECT sku FROM sku_policies WHERE seller = $4))
             ORDER BY sku LIMIT $3",
            &[&status, &after, &limit, &seller],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ListedSku {
                sku: r.try_get(0)?,
                status: r.try_get(1)?,
                version: r.try_get(2)?,
                locations: r.try_get(3)?,
                updated_at_ms: r.try_get(4)?,
            })
        })
        .collect()
}

/// One stock or policy change of a SKU's history.
#[derive(Debug, Clone)]
pub struct StockChange {
    pub version: i64,
    /// 0 for a stock change, the policy change's id otherwise.
    pub sub: i64,
    /// `stock_set`, `adjusted` or `policy`.
    pub kind: String,
    /// Absent on policy changes, as are the counts.
    pub location: Option<String>,
    /// The on-hand change.
    pub delta: Option<i32>,
    pub on_hand_after: Option<i64>,
    pub reserved_after: Option<i64>,
    pub occurred_at_ms: i64,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    /// A policy change: the policy after it.
    pub policy: Option<serde_json::Value>,
}

/// Where a history page starts: below this (version, change) pair. A stock
/// change is `(version, 0)`; a policy change, which keeps the SKU's
/// version, is `(version, its id)`, so it sorts after the stock change that
/// made that version and before the next.
pub type HistoryCursor = (i64, i64);

/// The stock and policy changes of `sku` below `before` (the newest when
/// `None`), newest first, at most `limit`.
pub async fn stock_changes(
    pool: &Pool,
    sku: &str,
    before: Option<HistoryCursor>,
    limit: i64,
) -> Result<Vec<StockChange>, StoreError> {
    let client = pool.get().await?;
    let (version, sub) = before.unwrap_or((i64::MAX, 0));
    let rows = client
        .query(
            "SELECT version, sub, kind, location, qty, on_hand_after, reserved_after, at_ms,
                 reason, reference, actor, request_id, policy
             FROM (
                 (SELECT version, 0::int8 AS sub, kind, location, qty, on_hand_after,
                      reserved_after, (extract(epoch FROM occurred_at) * 1000)::int8 AS at_ms,
                      reason, reference, actor, request_id, NULL::text AS policy
                  FROM inventory_events
                  WHERE sku = $1 AND kind IN ('stock_set', 'adjusted')
                      AND (version, 0::int8) < ($2, $3)
                  ORDER BY version DESC LIMIT $4)
                 UNION ALL
                 (SELECT version, id, 'policy', NULL, NULL, NULL, NULL,
                      (extract(epoch FROM changed_at) * 1000)::int8, NULL, NULL, actor,
                      request_id, policy::text
                  FROM policy_changes
                  WHERE sku = $1 AND (version, id) < ($2, $3)
                  ORDER BY version DESC, id DESC LIMIT $4)
             ) c
             ORDER BY version DESC, sub DESC LIMIT $4",
            &[&sku, &version, &sub, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let policy: Option<String> = r.try_get(12)?;
            Ok(StockChange {
                version: r.try_get(0)?,
                sub: r.try_get(1)?,
                kind: r.try_get(2)?,
                location: r.try_get(3)?,
                delta: r.try_get(4)?,
                on_hand_after: r.try_get(5)?,
                reserved_after: r.try_get(6)?,
                occurred_at_ms: r.try_get(7)?,
                reason: r.try_get(8)?,
                reference: r.try_get(9)?,
                actor: r.try_get(10)?,
                request_id: r.try_get(11)?,
                policy: policy.and_then(|p| serde_json::from_str(&p).ok()),
            })
        })
        .collect()
}
