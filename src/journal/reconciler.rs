//! The reconciler: makes Postgres hold every event of every partition
//! stream, whatever the queue dropped, and says when Redis and Postgres
//! disagree.
//!
//! Per partition, in one Postgres transaction holding the partition's
//! advisory lock (so instances running at once take turns rather than
//! collide): read the checkpoint, read the stream from it (only entries
//! older than `journal.reconcile_settle_ms`, which the writer normally has
//! already written), insert the ones `inventory_events` lacks, advance the
//! checkpoint, commit (the stream is read in chunks, so a hot partition's
//! pass never blocks Redis for long); then trim the stream below the
//! checkpoint, and only below it. The checkpoint entry itself is kept: when a pass cannot find it,
//! entries were lost before they were journaled (stream cap, Redis data loss)
//! and the pass reports a gap instead of hiding it.
//!
//! A running gateway remembers each partition's checkpoint (`Checkpoints`)
//! and first asks Redis, cheaply, whether anything settled past it: an idle
//! partition costs one `XRANGE … COUNT 1` per pass instead of a Postgres
//! transaction. Of the entries a pass reads, it asks Postgres only about
//! those this process's own writes did not commit (`committed`): in steady
//! state, none.

use std::{collections::HashSet, sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::streams::{XCapKind, XCapTrim},
};
use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use super::{
    JournalError, JournalStatus,
    rebuild::{AutoRebuild, recover_lost},
    store::{self, RECONCILE_LOCK, StockFilter, Store, StoreError},
};
use crate::{
    clock::now_ms,
    events::Event,
    inventory::{Partition, Sku, view::InventoryView},
    redis::{Caller, Redis},
    telemetry::outage::Outage,
};

/// Partitions reconciled at once (each holds one Postgres connection).
const PARTITION_CONCURRENCY: usize = 4;
/// Stream entries read per XRANGE within a pass. A hot partition's pass
/// reads a second of its entries; in one reply that blocked Redis and the
/// pooled connection the reservation batches share for milliseconds (the
/// hot p99 at 5,000/s was 19 ms with it, 3.5 ms with the reconciler off).
const RECONCILE_CHUNK_ENTRIES: u64 = 256;

#[derive(Debug, Clone, Copy)]
pub struct ReconcileLimits {
    /// Stream entries read per partition per pass.
    pub entries_max: u64,
    /// Entries younger than this are left to the writer.
    pub settle: Duration,
    /// `stock_levels` rows compared with Redis per partition per drift check.
    pub drift_rows_max: i64,
    /// What a drift check does with a SKU that lost writes in Redis: fence
    /// it always, rebuild it when on (`journal.auto_rebuild`).
    pub on_lost_writes: AutoRebuild,
}

/// The checkpoint each partition had when this process last reconciled it;
/// one slot per partition, so bounded by `redis.partitions`.
#[derive(Debug, Default)]
pub struct Checkpoints(std::sync::Mutex<std::collections::HashMap<u32, String>>);

impl Checkpoints {
    fn get(&self, p: Partition) -> Option<String> {
        self.0.lock().ok()?.get(&p.0).cloned()
    }

    fn set(&self, p: Partition, stream_id: String) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(p.0, stream_id);
        }
    }
}

/// What one pass over a partition found.
#[derive(Debug, Clone, Default)]
pub struct PartitionPass {
    /// Another instance held the partition's lock; nothing was done.
    pub skipped: bool,
    /// Nothing had settled past the checkpoint this process last saw.
    pub idle: bool,
    pub read: u64,
    /// Entries read that this process had committed itself: not looked up.
    pub recorded: u64,
    /// Entries Postgres lacked, now inserted.
    pub missing: u64,
    /// The checkpoint entry was gone from the stream: entries were lost.
    pub gap: bool,
    /// Age of the oldest entry beyond the checkpoint when the pass began.
    pub checkpoint_lag_ms: i64,
    /// Age of the oldest missing entry found (how late it arrived).
    pub missing_lag_ms: i64,
    /// More entries than one pass reads were waiting.
    pub more: bool,
}

/// A SKU whose Redis and Postgres states disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub sku: String,
    pub redis_version: Option<i64>,
    pub postgres_version: i64,
    pub reason: DriftReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftReason {
    /// Postgres has a SKU Redis does not know.
    MissingInRedis,
    /// Postgres has a newer version than Redis: Redis lost acknowledged writes.
    RedisBehind,
    /// Same version, different counts.
    CountsDiffer,
}

impl DriftReason {
    /// Whether Redis lost writes the journal has (never lag: Redis is
    /// always at least as new as Postgres unless it lost data).
    pub fn is_lost_write(self) -> bool {
        matches!(self, Self::MissingInRedis | Self::RedisBehind)
    }

    pub const ALL: [DriftReason; 3] = [Self::MissingInRedis, Self::RedisBehind, Self::CountsDiffer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingInRedis => "missing_in_redis",
            Self::RedisBehind => "redis_behind",
            Self::CountsDiffer => "counts_differ",
        }
    }
}

/// The sum of one pass over every partition.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub partitions: u32,
    pub skipped: u32,
    pub failed: u32,
    pub read: u64,
    pub recorded: u64,
    pub missing: u64,
    pub gaps: u32,
    pub checkpoint_lag_ms: i64,
    pub missing_lag_ms: i64,
    pub more: bool,
    pub skus_checked: u64,
    pub drift: Vec<Drift>,
    /// Failed drift checks.
    pub drift_failed: u32,
    /// One of the pass's errors, for the log line of an outage.
    pub error: Option<String>,
}

impl Report {
    fn add(&mut self, pass: &PartitionPass) {
        self.partitions += 1;
        self.skipped += u32::from(pass.skipped);
        self.read += pass.read;
        self.recorded += pass.recorded;
        self.missing += pass.missing;
        self.gaps += u32::from(pass.gap);
        self.checkpoint_lag_ms = self.checkpoint_lag_ms.max(pass.checkpoint_lag_ms);
        self.missing_lag_ms = self.missing_lag_ms.max(pass.missing_lag_ms);
        self.more |= pass.more;
    }
}

/// Whether a pass also compares Redis and Postgres per SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftCheck {
    Skip,
    Run,
}

pub async fn reconcile_partition(
    redis: &Redis,
    store: &Store,
    p: Partition,
    limits: &ReconcileLimits,
    seen: &Checkpoints,
) -> Result<PartitionPass, JournalError> {
    let mut pass = PartitionPass::default();
    let end = (now_ms() - limits.settle.as_millis() as i64)
        .max(0)
        .to_string();
    if let Some(known) = seen.get(p) {
        let next = redis
            .stream_entries(p, &format!("({known}"), &end, 1)
            .await?;
        if next.is_empty() {
            pass.idle = true;
            return Ok(pass);
        }
    }
    let pi = store::pg_partition(p);
    let mut client = store.pool().get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, $2)",
            &[&RECONCILE_LOCK, &pi],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    if !locked {
        pass.skipped = true;
        return Ok(pass);
    }
    let checkpoint = store::checkpoint(&tx, pi).await?;
    if let Some(cp) = &checkpoint {
        // Another instance may have passed entries this one committed.
        store.committed().forget_through(p, cp);
    }
    let stream = redis.keys().events(p);
    let now = now_ms();
    let mut from = checkpoint.clone().unwrap_or_else(|| "-".to_owned());
    let mut last: Option<String> = None;
    loop {
        let first = last.is_none();
        let want = (limits.entries_max - pass.read).min(RECONCILE_CHUNK_ENTRIES);
        // The first read starts at the checkpoint entry itself: one more.
        let extra = u64::from(first && checkpoint.is_some());
        let mut chunk = redis.stream_entries(p, &from, &end, want + extra).await?;
        if first {
            if let Some(cp) = &checkpoint {
                if chunk.first().is_some_and(|(id, _)| id == cp) {
                    chunk.remove(0);
                } else if !chunk.is_empty() {
                    pass.gap = true;
                }
            }
            chunk.truncate(want as usize);
            if let Some((id, _)) = chunk.first() {
                pass.checkpoint_lag_ms = now - Event::stream_ms(id).unwrap_or(now);
            }
        }
        let Some((id, _)) = chunk.last() else { break };
        from = format!("({id}");
        last = Some(id.clone());
        pass.read += chunk.len() as u64;
        // What this process's writer committed needs no lookup.
        let ids = store
            .committed()
            .unrecorded(p, chunk.iter().map(|(id, _)| id.as_str()));
        pass.recorded += chunk.len() as u64 - ids.len() as u64;
        let missing: HashSet<String> = if ids.is_empty() {
            HashSet::new()
        } else {
            store::missing(&tx, pi, &ids).await?.into_iter().collect()
        };
        let mut events = Vec::with_capacity(missing.len());
        for entry in chunk.iter().filter(|(id, _)| missing.contains(id)) {
            events.push(Event::from_stream_entry(p, entry)?);
        }
        store::apply_in(&tx, &events).await?;
        pass.missing += events.len() as u64;
        let late = events.iter().map(|e| now - e.occurred_at_ms).max();
        pass.missing_lag_ms = pass.missing_lag_ms.max(late.unwrap_or(0));
        if (chunk.len() as u64) < want {
            break;
        }
        if pass.read >= limits.entries_max {
            // At the cap: more may be waiting (or the stream ended exactly here).
            pass.more = true;
            break;
        }
        // Redis, this connection and the runtime serve reservations between chunks.
        tokio::task::yield_now().await;
    }
    let Some(last) = last else {
        // No checkpoint yet: every entry is past "0-0", the least stream id.
        seen.set(p, checkpoint.unwrap_or_else(|| "0-0".to_owned()));
        return Ok(pass);
    };
    store::set_checkpoint(&tx, pi, &last).await?;
    tx.commit().await.map_err(StoreError::from)?;
    store.committed().forget_through(p, &last);
    seen.set(p, last.clone());
    // Everything up to the checkpoint is committed: trim what lies below it.
    let cap = (XCapKind::MinID, XCapTrim::AlmostExact, last);
    let stream = &stream;
    let trimmed: Result<i64, _> = redis
        .command(stream, "trim", Caller::Background, |client| async move {
            client.xtrim(stream, cap).await
        })
        .await;
    if let Err(e) = trimmed {
        tracing::debug!(partition = p.0, error = %e, "could not trim the partition stream");
    }
    Ok(pass)
}

/// Compares one partition's `stock_levels` with Redis.
pub async fn drift_in_partition(
    redis: &Redis,
    store: &Store,
    p: Partition,
    limits: &ReconcileLimits,
) -> Result<(u64, Vec<Drift>), JournalError> {
    let rows = store
        .stock(StockFilter::Partition {
            partition: p,
            limit: limits.drift_rows_max,
        })
        .await?;
    let mut by_sku: Vec<(&str, Vec<&store::StockRow>)> = Vec::new();
    for row in &rows {
        match by_sku.last_mut() {
            Some((sku, list)) if *sku == row.sku => list.push(row),
            _ => by_sku.push((row.sku.as_str(), vec![row])),
        }
    }
    let mut drift = Vec::new();
    for (sku, pg_rows) in &by_sku {
        let Ok(parsed) = Sku::parse_stored(sku) else {
            continue;
        };
        let view = redis.inventory(&parsed, Caller::Background).await?;
        if let Some(reason) = compare(view.as_ref(), pg_rows) {
            drift.push(Drift {
                sku: (*sku).to_owned(),
                redis_version: view.as_ref().map(|v| v.version as i64),
                postgres_version: pg_rows.iter().map(|r| r.version).max().unwrap_or(0),
                reason,
            });
        }
    }
    Ok((by_sku.len() as u64, drift))
}

/// Redis ahead of Postgres is lag, not drift: the reconciler brings it.
fn compare(redis: Option<&InventoryView>, pg: &[&store::StockRow]) -> Option<DriftReason> {
    let pg_version = pg.iter().map(|r| r.version).max().unwrap_or(0);
    let Some(view) = redis else {
        return Some(DriftReason::MissingInRedis);
    };
    let redis_version = view.version as i64;
    if pg_version > redis_version {
        return Some(DriftReason::RedisBehind);
    }
    if pg_version < redis_version {
        return None;
    }
    let differs = pg.iter().any(|row| {
        view.locations
            .iter()
            .find(|l| l.location == row.location)
            .is_none_or(|l| l.on_hand != row.on_hand || l.reserved != row.reserved)
    });
    differs.then_some(DriftReason::CountsDiffer)
}

/// One pass over every partition.
pub async fn pass(
    redis: &Redis,
    store: &Store,
    limits: &ReconcileLimits,
    drift: DriftCheck,
    seen: &Checkpoints,
) -> Report {
    let partitions = redis.keys().partitions();
    let results: Vec<_> = stream::iter(0..partitions)
        .map(|p| async move {
            let p = Partition(p);
            let pass = reconcile_partition(redis, store, p, limits, seen).await;
            let drift = match (drift, &pass) {
                (DriftCheck::Run, Ok(pass)) if !pass.more => {
                    Some(drift_in_partition(redis, store, p, limits).await)
                }
                _ => None,
            };
            (p, pass, drift)
        })
        .buffer_unordered(PARTITION_CONCURRENCY)
        .collect()
        .await;
    let mut report = Report::default();
    for (p, pass, drift) in results {
        match pass {
            Ok(pass) => {
                if pass.gap {
                    tracing::error!(
                        partition = p.0,
                        "journal gap: stream entries were lost before they reached Postgres"
                    );
                }
                report.add(&pass);
            }
            Err(e) => {
                report.failed += 1;
                tracing::debug!(partition = p.0, error = %e, "reconcile pass failed");
                report.error.get_or_insert_with(|| e.to_string());
            }
        }
        match drift {
            Some(Ok((checked, found))) => {
                report.skus_checked += checked;
                report.drift.extend(found);
            }
            Some(Err(e)) => {
                report.drift_failed += 1;
                tracing::debug!(partition = p.0, error = %e, "drift check failed");
                report.error.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
    }
    report.drift.sort_by(|a, b| a.sku.cmp(&b.sku));
    report
}

/// Runs passes every `interval` until `stop`, a drift check every
/// `drift_every` passes, publishing what it finds in `status`.
pub async fn run(
    redis: Arc<Redis>,
    store: Store,
    status: Arc<JournalStatus>,
    limits: ReconcileLimits,
    interval: Duration,
    drift_every: u32,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: u32 = 0;
    let seen = Checkpoints::default();
    let mut outage = Outage::new("journal reconciler");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        passes = passes.wrapping_add(1);
        let drift = if passes.is_multiple_of(drift_every.max(1)) {
            DriftCheck::Run
        } else {
            DriftCheck::Skip
        };
        let report = tokio::select! {
            _ = stop.cancelled() => return,
            r = pass(&redis, &store, &limits, drift, &seen) => r,
        };
        status.record_pass(&report, drift);
        let error = report.error.as_ref().map(|e| e as &dyn std::fmt::Display);
        outage.round(
            u64::from(report.failed + report.drift_failed),
            u64::from(redis.keys().partitions()),
            error,
        );
        for d in report.drift.iter().filter(|d| !d.reason.is_lost_write()) {
            tracing::warn!(sku = %d.sku, reason = d.reason.as_str(),
                redis_version = ?d.redis_version, postgres_version = d.postgres_version,
                "redis and postgres disagree");
        }
        let lost = tokio::select! {
            _ = stop.cancelled() => return,
            lost = recover_lost(&redis, &store, &report.drift, limits.on_lost_writes) => lost,
        };
        lost.log("reconciler drift check");
    }
}
