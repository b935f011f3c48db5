//! `flashgate rebuild`: restores SKU state in Redis from the journal after
//! Redis lost data (a wipe, or a failover that dropped acknowledged writes).
//!
//! A SKU is restored when Redis lacks it or holds an older version than
//! Postgres. When Redis is as new or newer it is left alone unless the
//! operator forces the rebuild; even then the restored version is the
//! higher of the two, so no version is ever reused. The restore script
//! refuses when the SKU changed after this tool read it.

use fred::prelude::*;
use serde_json::json;

use super::{
    JournalError,
    store::{StockFilter, Store},
};
use crate::{
    clock::now_ms,
    inventory::{ReservationId, Sku},
    redis::{Redis, calls::RestoreReply},
};

/// Whether a SKU that Redis holds at the same or a newer version is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    OnlyOlder,
    Force,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Restored {
        version: i64,
        holds: i64,
    },
    /// Redis already holds this version or a newer one.
    Current {
        redis_version: i64,
        postgres_version: i64,
    },
    /// The SKU changed in Redis while it was being rebuilt; run again.
    Changed,
    /// The journal knows no such SKU.
    Unknown,
}

pub async fn rebuild_sku(
    redis: &Redis,
    store: &Store,
    sku: &Sku,
    overwrite: Overwrite,
) -> Result<Outcome, JournalError> {
    let retention_ms = redis.limits().record_retention_ms as i64;
    let stock = store.stock(StockFilter::Sku(sku.as_str())).await?;
    let Some(pg_version) = stock.iter().map(|r| r.version).max() else {
        return Ok(Outcome::Unknown);
    };
    let p = redis.keys().partition_of(sku);
    let key = redis.keys().sku(p, sku);
    let current: Option<i64> = redis
        .routed(&key, "rebuild")?
        .hget(&key, "ver")
        .await
        .map_err(|e| crate::redis::classify("rebuild", e))?;
    if let Some(redis_version) = current
        && redis_version >= pg_version
        && overwrite == Overwrite::OnlyOlder
    {
        return Ok(Outcome::Current {
            redis_version,
            postgres_version: pg_version,
        });
    }
    let policy = store.policy(sku.as_str()).await?;
    let rows = store
        .reservations_to_restore(sku.as_str(), retention_ms)
        .await?;
    let now = now_ms();
    let mut ids = Vec::with_capacity(rows.len());
    let mut records = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(id) = ReservationId::parse(&r.reservation_id, redis.keys().partitions()) else {
            tracing::warn!(reservation = %r.reservation_id, "skipping an unparsable reservation id");
            continue;
        };
        let ends = if r.state == "held" {
            r.expires_at_ms
        } else {
            r.updated_at_ms
        };
        ids.push(id);
        records.push(json!({
            "rid": r.reservation_id, "loc": r.location, "acct": r.account_id, "qty": r.qty,
            "state": r.state, "exp": r.expires_at_ms, "bo": if r.backorder { "1" } else { "0" },
            "created": r.created_at_ms, "sid": r.stream_id,
            "ttl_ms": ends + retention_ms - now,
        }));
    }
    let locs: Vec<_> = stock
        .iter()
        .map(|s| {
            json!({"loc": s.location, "oh": s.on_hand, "rs": s.reserved, "ss": s.safety_stock,
                   "lt": s.low_stock_threshold, "bl": s.backorder_limit})
        })
        .collect();
    // Never below what Redis showed, so no version is ever reused.
    let version = pg_version.max(current.unwrap_or(0));
    let doc = json!({
        "expect": current.unwrap_or(-1),
        "ver": version,
        "sku": sku.as_str(),
        "locs": locs,
        "policy": {"max": policy.max_per_account, "open": policy.opens_at_ms,
                   "close": policy.closes_at_ms, "ttl": policy.hold_ttl_seconds},
        "records": records,
    });
    Ok(match redis.restore(sku, &ids, &doc).await? {
        RestoreReply::Ok { holds } => Outcome::Restored { version, holds },
        RestoreReply::Changed { .. } => Outcome::Changed,
    })
}
