//! The failover check: after a cluster slot changes master, nothing is
//! sold from it until its SKUs are known to hold every write the journal
//! has.
//!
//! A replica promoted after its master died may lack writes the master
//! acknowledged (replication is asynchronous unless `WAIT` gates them).
//! The slot router fences such slots before routing anything to the new
//! master (`redis::route`); this task then, per fenced slot:
//! 1. waits until the journal has what was acknowledged before the change:
//!    `journal.reconcile_settle_ms` since the fence (the time by which every
//!    instance's writer normally has written), and this instance's own
//!    writer holding nothing older than the fence;
//! 2. compares every SKU of the slot's partitions in `stock_levels` with
//!    Redis (`reconciler::drift_in_partition`); a SKU whose journal version
//!    is newer lost writes: it is fenced in Redis, for every instance, and
//!    rebuilt from the journal when `journal.auto_rebuild` is on
//!    (`rebuild::recover_lost`);
//! 3. lifts the slot's fence. SKUs that lost writes stay fenced in Redis
//!    until rebuilt.
//!
//! A check that cannot reach Redis or Postgres leaves the slot fenced and
//! is retried every `RECHECK_INTERVAL`: a failover during a Postgres
//! outage keeps those slots' SKUs answering 503 `sku-recovering` until
//! Postgres is back, since nothing else can tell what Redis lost.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use crate::{
    inventory::Partition,
    journal::{
        JournalAccess, JournalError,
        rebuild::{LostWrites, recover_lost},
        reconciler::{ReconcileLimits, drift_in_partition},
    },
    metrics as names,
    redis::Redis,
};

/// How often fenced slots are checked again while a check fails or waits.
const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Slots checked at once (each check holds a Postgres connection).
const CHECK_CONCURRENCY: usize = 4;

/// Runs failover checks until `stop`.
pub async fn run(
    redis: Arc<Redis>,
    journal: JournalAccess,
    limits: ReconcileLimits,
    stop: CancellationToken,
) {
    let partitions = partitions_by_slot(&redis);
    for result in ["clean", "lost_writes", "failed"] {
        metrics::counter!(names::FAILOVER_CHECKS_TOTAL, "result" => result).increment(0);
    }
    loop {
        let fenced = redis.fenced_slots();
        metrics::gauge!(names::FENCED_SLOTS).set(fenced.slots.len() as f64);
        if fenced.slots.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = redis.fence_raised() => continue,
            }
        }
        let settled = fenced
            .since
            .is_none_or(|since| since.elapsed() >= limits.settle);
        let fence_ms = fenced.since.map_or(0, |since| {
            crate::clock::now_ms() - since.elapsed().as_millis() as i64
        });
        if settled && journal_caught_up(&journal, fence_ms) {
            let started = tokio::time::Instant::now();
            let lost = check(&redis, &journal, &limits, &partitions, &fenced).await;
            lost.log("failover check");
            let left = redis.fenced_slots().slots.len();
            tracing::info!(
                checked_slots = fenced.slots.len(),
                still_fenced = left,
                fenced_for_ms = fenced.since.map_or(0, |s| s.elapsed().as_millis() as u64),
                check_ms = started.elapsed().as_millis() as u64,
                "failover check done"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
        }
    }
}

/// Checks every fenced slot once, lifting the fences of those whose SKUs
/// are current or were fenced in Redis.
async fn check(
    redis: &Redis,
    journal: &JournalAccess,
    limits: &ReconcileLimits,
    partitions: &HashMap<u16, Vec<Partition>>,
    fenced: &crate::redis::route::FencedSlots,
) -> LostWrites {
    // Slots without partitions hold no flashgate keys: nothing to check.
    let (with, without): (Vec<u16>, Vec<u16>) = fenced
        .slots
        .iter()
        .partition(|slot| partitions.contains_key(slot));
    let results: Vec<_> = stream::iter(with)
        .map(|slot| async move {
            let in_slot = partitions.get(&slot).map_or(&[][..], Vec::as_slice);
            (slot, check_slot(redis, journal, limits, in_slot).await)
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut cleared = without;
    let mut total = LostWrites::default();
    static RESULTS: names::LabelledCounter =
        names::LabelledCounter::new(names::FAILOVER_CHECKS_TOTAL, "result");
    for (slot, result) in results {
        let outcome = match result {
            Ok(lost) if lost.failed == 0 => {
                cleared.push(slot);
                let outcome = if lost.found == 0 {
                    "clean"
                } else {
                    "lost_writes"
                };
                total.add(lost);
                outcome
            }
            Ok(lost) => {
                total.add(lost);
                "failed"
            }
            Err(e) => {
                tracing::debug!(slot, error = %e, "failover check failed; retrying");
                total.error.get_or_insert_with(|| e.to_string());
                "failed"
            }
        };
        RESULTS.increment(outcome, 1);
    }
    redis.unfence(&cleared, fenced.generation);
    total
}

/// Compares the SKUs of one slot's partitions with the journal, fencing
/// (and rebuilding) those that lost writes.
async fn check_slot(
    redis: &Redis,
    journal: &JournalAccess,
    limits: &ReconcileLimits,
    partitions: &[Partition],
) -> Result<LostWrites, JournalError> {
    let mut lost = LostWrites::default();
    for &p in partitions {
        let (_, drift) = drift_in_partition(redis, &journal.store, p, limits).await?;
        lost.add(recover_lost(redis, &journal.store, &drift, limits.on_lost_writes).await);
    }
    Ok(lost)
}

/// Whether this instance's writer holds nothing that occurred before
/// `fence_ms` (its queue is FIFO, so an event it holds from after the
/// fence means every earlier one was written).
fn journal_caught_up(journal: &JournalAccess, fence_ms: i64) -> bool {
    let pending = journal
        .status
        .pending_since_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    (pending == 0 && journal.queue.is_empty()) || pending > fence_ms
}

/// The partitions whose keys live in each slot.
fn partitions_by_slot(redis: &Redis) -> HashMap<u16, Vec<Partition>> {
    let mut map: HashMap<u16, Vec<Partition>> = HashMap::new();
    for p in 0..redis.keys().partitions() {
        map.entry(redis.slot_of(Partition(p)))
            .or_default()
            .push(Partition(p));
    }
    map
}
