//! The expiry sweeper: gives back overdue holds of SKUs nobody is touching.
//!
//! Every mutating script already expires its own SKU's overdue holds, so the
//! sweeper only bounds how long an idle SKU shows stale `reserved` counts.
//! Each pass reads every partition's due index (SKUs by earliest deadline)
//! and calls `expire` for the SKUs that are due, at most
//! `expiry.sweep_skus_max` per partition. Several instances may sweep at
//! once: the script is atomic and finds nothing left to do.

use std::time::Duration;

use fred::{prelude::*, types::Limit};
use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use super::Inventory;
use crate::{
    inventory::{Partition, Sku},
    metrics as names,
    redis::Caller,
    telemetry::outage::Outage,
};

/// Partitions swept concurrently.
const SWEEP_CONCURRENCY: usize = 8;
/// Every this many passes, a pass also finishes transfers between stock
/// buckets whose mover stopped between the steps (`buckets`).
const TRANSFER_CHECK_EVERY: u32 = 10;
/// A transfer withdrawn this long ago is taken as abandoned: a live mover
/// finishes in milliseconds, and finishing it twice changes nothing.
const ABANDONED_TRANSFER_MS: i64 = 2_000;

pub async fn run(
    inventory: Inventory,
    interval: Duration,
    skus_max: u32,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::counter!(names::EXPIRY_SWEPT_HOLDS_TOTAL).increment(0);
    let mut outage = Outage::new("expiry sweeper");
    let mut pass: u32 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let partitions = inventory.redis.keys().partitions();
        pass = pass.wrapping_add(1);
        if pass.is_multiple_of(TRANSFER_CHECK_EVERY) {
            finish_transfers(&inventory, partitions).await;
        }
        let swept = stream::iter(0..partitions)
            .map(|p| sweep_partition(&inventory, Partition(p), skus_max))
            .buffer_unordered(SWEEP_CONCURRENCY)
            .fold(Swept::default(), |mut sum, one| async move {
                sum.expired += one.expired;
                sum.attempted += one.attempted;
                sum.failed += one.failed;
                if sum.error.is_none() {
                    sum.error = one.error;
                }
                sum
            })
            .await;
        if swept.expired > 0 {
            tracing::debug!(expired = swept.expired, "sweeper expired holds");
        }
        let error = swept.error.as_ref().map(|e| e as &dyn std::fmt::Display);
        outage.round(swept.failed, swept.attempted, error);
    }
}

async fn finish_transfers(inventory: &Inventory, partitions: u32) {
    let finished = stream::iter(0..partitions)
        .map(|p| inventory.finish_transfers(Partition(p), ABANDONED_TRANSFER_MS))
        .buffer_unordered(SWEEP_CONCURRENCY)
        .fold(0, |sum, one| async move {
            match one {
                Ok(n) => sum + n,
                Err(e) => {
                    tracing::debug!(error = %e, "finishing abandoned transfers failed");
                    sum
                }
            }
        })
        .await;
    if finished > 0 {
        tracing::info!(
            finished,
            "finished transfers between stock buckets left pending"
        );
    }
}

/// What a pass, or one partition of it, did.
#[derive(Debug, Default)]
struct Swept {
    expired: i64,
    /// Redis calls made, and how many failed (one of their errors kept).
    attempted: u64,
    failed: u64,
    error: Option<String>,
}

impl Swept {
    fn failure(&mut self, e: impl std::fmt::Display) {
        self.failed += 1;
        self.error.get_or_insert_with(|| e.to_string());
    }
}

async fn sweep_partition(inventory: &Inventory, p: Partition, skus_max: u32) -> Swept {
    let redis = &inventory.redis;
    let now_ms = crate::clock::now_ms();
    let key = redis.keys().due(p);
    let mut swept = Swept {
        attempted: 1,
        ..Swept::default()
    };
    let key = &key;
    let due: Result<Vec<(String, f64)>, _> = redis
        .command(key, "sweeper", Caller::Background, |client| async move {
            client
                .zrangebyscore(
                    key,
                    "-inf",
                    now_ms,
                    true,
                    Some(Limit::from((0, i64::from(skus_max)))),
                )
                .await
        })
        .await;
    let skus = match due {
        Ok(skus) => skus,
        Err(e) => {
            tracing::debug!(partition = p.0, error = %e, "sweeper could not read the due index");
            swept.failure(e);
            return swept;
        }
    };
    let lag = metrics::histogram!(names::EXPIRY_LAG_SECONDS);
    for (raw, deadline_ms) in skus {
        // The score is the SKU's earliest hold deadline.
        lag.record((now_ms as f64 - deadline_ms).max(0.0) / 1000.0);
        let Ok(sku) = Sku::parse_stored(&raw) else {
            continue;
        };
        swept.attempted += 1;
        match inventory.expire(&sku).await {
            Ok(n) => swept.expired += n,
            // Fenced after a failover: its holds wait for the rebuild.
            Err(crate::redis::RedisError::Fenced { .. }) => {}
            Err(e) => {
                tracing::debug!(partition = p.0, error = %e, "sweeper could not expire holds");
                swept.failure(e);
            }
        }
    }
    metrics::counter!(names::EXPIRY_SWEPT_HOLDS_TOTAL).increment(swept.expired.max(0) as u64);
    swept
}
