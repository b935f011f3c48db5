//! `flashgate rebuild`: restores SKU state in Redis from the journal after
//! Redis lost data (a wipe, or a failover that dropped acknowledged writes).
//!
//! A SKU is restored when Redis lacks it or holds an older version than
//! Postgres. When Redis is as new or newer it is left alone unless the
//! operator forces the rebuild; even then the restored version is the
//! higher of the two, so no version is ever reused. The restore script
//! refuses when the SKU changed after this tool read it.
//!
//! A running gateway does the same on its own (`recover_sku`) when its
//! failover check or its reconciler finds a SKU whose journal version is
//! newer than Redis's: the SKU is fenced in Redis first (every script
//! refuses to change it, on every instance), then rebuilt, which lifts the
//! fence.

use fred::prelude::*;
use serde_json::json;

use super::{
    JournalError,
    reconciler::Drift,
    store::{StockFilter, Store},
};
use crate::{
    clock::now_ms,
    inventory::{ReservationId, Sku},
    metrics as names,
    redis::{
        Caller, Redis,
        calls::{FenceReply, RestoreReply},
    },
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
    // A bucket keeps its SKU's policy; a bucketed SKU may have no stock
    // rows of its own, only its policy and layout.
    let policy = store.policy(sku.parent_str()).await?;
    let Some(pg_version) = stock
        .iter()
        .map(|r| r.version)
        .max()
        .or_else(|| policy.buckets.is_some().then_some(0))
    else {
        return Ok(Outcome::Unknown);
    };
    let p = redis.keys().partition_of(sku);
    let key = &redis.keys().sku(p, sku);
    let current: Option<i64> = redis
        .command(key, "rebuild", Caller::Background, |client| async move {
            client.hget(key, "ver").await
        })
        .await?;
    if let Some(redis_version) = current
        && redis_version >= pg_version
        && overwrite == Overwrite::OnlyOlder
    {
        return Ok(Outcome::Current {
            redis_version,
            postgres_version: pg_version,
        });
    }
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
    let claims = match (&policy.buckets, sku.bucket_partition()) {
        (Some(bk), Some(_)) => {
            let partitions = redis.keys().partitions();
            claims_at(store, sku, bk, partitions, retention_ms).await?
        }
        _ => Vec::new(),
    };
    // Never below what Redis showed, so no version is ever reused.
    let version = pg_version.max(current.unwrap_or(0));
    let doc = json!({
        "expect": current.unwrap_or(-1),
        "ver": version,
        "sku": sku.as_str(),
        "locs": locs,
        "policy": {"max": policy.max_per_account, "open": policy.opens_at_ms,
                   "close": policy.closes_at_ms, "ttl": policy.hold_ttl_seconds,
                   "seller": policy.seller, "wra": policy.admit_per_second,
                   "wrt": policy.admission_ttl_seconds,
                   "bk": if sku.is_bucket() { None } else { policy.buckets.clone() }},
        "records": records,
        "claims": claims,
    });
    Ok(match redis.restore(sku, &ids, &doc).await? {
        RestoreReply::Ok { holds } => {
            if policy.buckets.is_some() && !sku.is_bucket() {
                redis.note_bucketed(sku).await?;
            }
            Outcome::Restored { version, holds }
        }
        RestoreReply::Changed { .. } => Outcome::Changed,
    })
}

/// The cap claims a stock bucket keeps (lua/bucket.lua): the live and
/// confirmed reservations in the SKU's other buckets of accounts whose home
/// bucket is `bucket`.
async fn claims_at(
    store: &Store,
    bucket: &Sku,
    bk: &str,
    partitions: u32,
    retention_ms: i64,
) -> Result<Vec<serde_json::Value>, JournalError> {
    let parent = bucket.parent();
    let Some(layout) = crate::service::buckets::Layout::parse(&parent, bk) else {
        return Ok(Vec::new());
    };
    let mut claims = Vec::new();
    for other in layout.buckets.iter().filter(|b| *b != bucket) {
        for r in store
            .reservations_to_restore(other.as_str(), retention_ms)
            .await?
        {
            let home = &layout.buckets[layout.home(&r.account_id)];
            if home == bucket
                && (r.state == "held" || r.state == "confirmed")
                && let Some(id) = ReservationId::parse(&r.reservation_id, partitions)
            {
                let id = id.random_part();
                claims.push(json!({"id": id, "acct": r.account_id, "qty": r.qty}));
            }
        }
    }
    Ok(claims)
}

/// Whether a SKU found to have lost writes is rebuilt at once
/// (`journal.auto_rebuild`) or left fenced for `flashgate rebuild`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRebuild {
    On,
    Off,
}

/// What `recover_lost` did, for the one log line of a check.
#[derive(Debug, Default)]
pub struct LostWrites {
    /// SKUs the journal knows newer than Redis.
    pub found: u64,
    pub rebuilt: u64,
    /// Left fenced: `journal.auto_rebuild` is off, or the rebuild is retried.
    pub fenced: u64,
    /// Could not be fenced or rebuilt now (Redis or Postgres did not answer).
    pub failed: u64,
    /// The first few SKUs found, for the log line.
    pub skus: Vec<String>,
    pub error: Option<String>,
}

/// SKUs named in a log line about lost writes; the count says the rest.
const LOST_SKUS_LOGGED_MAX: usize = 10;

impl LostWrites {
    pub fn add(&mut self, other: LostWrites) {
        self.found += other.found;
        self.rebuilt += other.rebuilt;
        self.fenced += other.fenced;
        self.failed += other.failed;
        let room = LOST_SKUS_LOGGED_MAX.saturating_sub(self.skus.len());
        self.skus.extend(other.skus.into_iter().take(room));
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    /// Logs what was found, once, at ERROR: an operator must hear of it.
    pub fn log(&self, found_by: &'static str) {
        if self.found == 0 {
            return;
        }
        tracing::error!(
            found_by,
            skus = self.found,
            rebuilt = self.rebuilt,
            fenced = self.fenced,
            failed = self.failed,
            first_skus = ?self.skus,
            error = self.error.as_deref().unwrap_or(""),
            "redis lost writes the journal has: those skus are fenced (503 sku-recovering) until rebuilt from the journal"
        );
    }
}

/// Fences, and rebuilds when `mode` says so, every SKU of `drift` whose
/// journal version is newer than Redis's (or that Redis lacks).
pub async fn recover_lost(
    redis: &Redis,
    store: &Store,
    drift: &[Drift],
    mode: AutoRebuild,
) -> LostWrites {
    let mut lost = LostWrites::default();
    static OUTCOMES: names::LabelledCounter =
        names::LabelledCounter::new(names::SKU_RECOVERIES_TOTAL, "outcome");
    for d in drift.iter().filter(|d| d.reason.is_lost_write()) {
        let Ok(sku) = Sku::parse_stored(&d.sku) else {
            continue;
        };
        let result = recover_sku(redis, store, &sku, d.postgres_version, mode).await;
        OUTCOMES.increment(result.as_ref().map_or("failed", Recovery::as_str), 1);
        match result {
            Ok(Recovery::Current) => continue,
            Ok(Recovery::Rebuilt { .. }) => lost.rebuilt += 1,
            Ok(Recovery::Fenced | Recovery::Changed) => lost.fenced += 1,
            Err(e) => {
                lost.failed += 1;
                lost.error.get_or_insert_with(|| e.to_string());
            }
        }
        lost.found += 1;
        if lost.skus.len() < LOST_SKUS_LOGGED_MAX {
            lost.skus.push(d.sku.clone());
        }
    }
    lost
}

impl AutoRebuild {
    /// `journal.auto_rebuild`.
    pub fn from_setting(on: bool) -> Self {
        if on { Self::On } else { Self::Off }
    }
}

/// What `recover_sku` did with a SKU the journal knows a newer version of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Fenced, then rebuilt from the journal (which lifted the fence).
    Rebuilt { version: i64, holds: i64 },
    /// Fenced and left so: `journal.auto_rebuild` is off.
    Fenced,
    /// Redis turned out as new as the journal: nothing was lost.
    Current,
    /// The SKU changed while it was rebuilt: it stays fenced, and the next
    /// check tries again.
    Changed,
}

impl Recovery {
    /// The `outcome` label of `flashgate_sku_rebuilds_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rebuilt { .. } => "rebuilt",
            Self::Fenced => "fenced",
            Self::Current => "current",
            Self::Changed => "changed",
        }
    }
}

/// A SKU whose journal version is newer than Redis's (Redis lost writes,
/// or lost the SKU): fenced in Redis first, so no instance sells from the
/// stale state, then rebuilt from the journal when `mode` says so.
pub async fn recover_sku(
    redis: &Redis,
    store: &Store,
    sku: &Sku,
    journal_version: i64,
    mode: AutoRebuild,
) -> Result<Recovery, JournalError> {
    let fenced = redis.fence(sku, journal_version).await?;
    match fenced {
        FenceReply::Current { .. } => return Ok(Recovery::Current),
        FenceReply::Fenced { .. } | FenceReply::Absent => {
            metrics::counter!(names::LOST_WRITE_SKUS_TOTAL).increment(1);
        }
        FenceReply::AlreadyFenced { .. } => {}
    }
    if mode == AutoRebuild::Off {
        return Ok(Recovery::Fenced);
    }
    Ok(
        match rebuild_sku(redis, store, sku, Overwrite::OnlyOlder).await? {
            Outcome::Restored { version, holds } => Recovery::Rebuilt { version, holds },
            Outcome::Current { .. } | Outcome::Unknown => Recovery::Current,
            Outcome::Changed => Recovery::Changed,
        },
    )
}
