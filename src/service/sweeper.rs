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
};

/// Partitions swept concurrently.
const SWEEP_CONCURRENCY: usize = 8;

pub async fn run(
    inventory: Inventory,
    interval: Duration,
    skus_max: u32,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::counter!(names::EXPIRY_SWEPT_HOLDS_TOTAL).increment(0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let partitions = inventory.redis.keys().partitions();
        let expired: i64 = stream::iter(0..partitions)
            .map(|p| sweep_partition(&inventory, Partition(p), skus_max))
            .buffer_unordered(SWEEP_CONCURRENCY)
            .fold(0, |sum, n| async move { sum + n })
            .await;
        if expired > 0 {
            tracing::debug!(expired, "sweeper expired holds");
        }
    }
}

async fn sweep_partition(inventory: &Inventory, p: Partition, skus_max: u32) -> i64 {
    let redis = &inventory.redis;
    let now_ms = crate::clock::now_ms();
    let due: Result<Vec<(String, f64)>, _> = redis
        .pool()
        .zrangebyscore(
            redis.keys().due(p),
            "-inf",
            now_ms,
            true,
            Some(Limit::from((0, i64::from(skus_max)))),
        )
        .await;
    let skus = match due {
        Ok(skus) => skus,
        Err(e) => {
            tracing::warn!(partition = p.0, error = %e, "sweeper could not read the due index");
            return 0;
        }
    };
    let mut expired = 0;
    let lag = metrics::histogram!(names::EXPIRY_LAG_SECONDS);
    for (raw, deadline_ms) in skus {
        // The score is the SKU's earliest hold deadline.
        lag.record((now_ms as f64 - deadline_ms).max(0.0) / 1000.0);
        let Ok(sku) = Sku::parse(&raw) else { continue };
        match inventory.expire(&sku).await {
            Ok(n) => expired += n,
            Err(e) => tracing::warn!(partition = p.0, error = %e, "sweeper could not expire holds"),
        }
    }
    metrics::counter!(names::EXPIRY_SWEPT_HOLDS_TOTAL).increment(expired.max(0) as u64);
    expired
}
