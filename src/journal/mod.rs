//! The Postgres journal behind the hot path.
//!
//! Scripts append every change to their partition's Redis stream (the
//! outbox) and return the same events; the service layer offers them to the
//! bounded `queue`, the `writer` batches them into Postgres, and the
//! `reconciler` brings whatever the queue dropped or a crash lost from the
//! streams, advancing a per-partition checkpoint. `rebuild` goes the other
//! way, restoring Redis from Postgres after Redis lost data.
//!
//! `Journal::start` spawns the writer and the reconciler and returns the
//! handle the gateway keeps; `Journal::stop` drains within the grace period.

pub mod commits;
pub mod committed;
pub mod listings;
pub mod notifications;
pub mod queue;
pub mod rebuild;
pub mod reconciler;
pub mod store;
pub mod writer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use queue::JournalQueue;
pub use store::Store;

use crate::{
    clock::now_ms,
    config::{ConfirmDurability, JournalSettings},
    events::Event,
    inventory::Partition,
    metrics as names,
    redis::{Redis, RedisError},
};
use reconciler::{DriftCheck, DriftReason, ReconcileLimits, Report};
use store::StoreError;
use writer::{Writer, WriterLimits};

/// What can stop a journal operation that spans Redis and Postgres.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("{0}")]
    Event(#[from] crate::events::EventParseError),
    #[error(transparent)]
    Group(#[from] commits::GroupError),
}

/// What the writer and the reconciler last saw, for readiness and reports.
#[derive(Debug, Default)]
pub struct JournalStatus {
    /// Occurrence time (ms) of the oldest event the writer holds unwritten;
    /// 0 when it holds none.
    pub pending_since_ms: AtomicI64,
    /// How late the last pass found missing events, or how far its
    /// checkpoint trailed when it could not finish (ms).
    pub reconcile_lag_ms: AtomicI64,
    /// The last write or pass reached Postgres.
    pub postgres_ok: AtomicBool,
}

impl JournalStatus {
    /// Seconds the journal trails the events Redis acknowledged.
    pub fn lag_seconds(&self) -> f64 {
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let writer_lag = if pending > 0 {
            (now_ms() - pending).max(0)
        } else {
            0
        };
        let lag = writer_lag.max(self.reconcile_lag_ms.load(Ordering::Relaxed));
        lag as f64 / 1000.0
    }

    fn record_pass(&self, report: &Report, drift: DriftCheck) {
        let lag = if report.failed > 0 {
            report.checkpoint_lag_ms.max(report.missing_lag_ms)
        } else {
            report.missing_lag_ms
        };
        self.reconcile_lag_ms.store(lag, Ordering::Relaxed);
        if report.failed == 0 {
            self.postgres_ok.store(true, Ordering::Relaxed);
        }
        let result = if report.failed == 0 { "ok" } else { "failed" };
        metrics::counter!(names::RECONCILE_PASSES_TOTAL, "result" => result).increment(1);
        metrics::counter!(names::RECONCILE_REPAIRED_EVENTS_TOTAL).increment(report.missing);
        metrics::counter!(names::RECONCILE_GAPS_TOTAL).increment(u64::from(report.gaps));
        if drift == DriftCheck::Run {
            for reason in DriftReason::ALL {
                let skus = report.drift.iter().filter(|d| d.reason == reason).count();
                metrics::gauge!(names::DRIFT_SKUS, "reason" => reason.as_str()).set(skus as f64);
            }
        }
    }
}

/// What request handlers need of the journal.
#[derive(Clone)]
pub struct JournalAccess {
    pub store: Store,
    pub status: Arc<JournalStatus>,
    pub durability: ConfirmDurability,
    /// Where `sync` confirmations wait for their shared commit.
    pub commits: commits::GroupCommit,
    /// The queue's sending half, read for its metrics.
    pub queue: JournalQueue,
}

impl JournalAccess {
    /// Copies the queue's state and the journal lag into the metrics.
    pub fn publish_metrics(&self) {
        self.queue.publish_metrics();
        metrics::gauge!(names::JOURNAL_LAG_SECONDS).set(self.status.lag_seconds());
        let up = self.status.postgres_ok.load(Ordering::Relaxed);
        metrics::gauge!(names::JOURNAL_POSTGRES_UP).set(if up { 1.0 } else { 0.0 });
    }

    /// Returns once the event at `stream_id` of partition `p` is committed in
    /// Postgres: `events` are the ones the call just appended (written by a
    /// group commit, with the confirmations beside them); a repeated call
    /// appended none, so the entry is looked up, and fetched from the stream
    /// when Postgres lacks it.
    pub async fn ensure_committed(
        &self,
        redis: &Redis,
        p: Partition,
        stream_id: &str,
        events: &[Event],
    ) -> Result<(), JournalError> {
        if !events.is_empty() {
            self.commits.commit(events.to_vec()).await?;
            return Ok(());
        }
        let pi = store::pg_partition(p);
        let client = self.store.pool().get().await.map_err(StoreError::from)?;
        let ids = [stream_id.to_owned()];
        if store::missing(&client, pi, &ids).await?.is_empty() {
            return Ok(());
        }
        drop(client);
        let found = redis
            .stream_entries(p, stream_id, stream_id, 1)
            .await?
            .iter()
            .map(|entry| Event::from_stream_entry(p, entry))
            .collect::<Result<Vec<_>, _>>()?;
        if found.is_empty() {
            tracing::error!(
                partition = p.0,
                stream_id,
                "a confirmation's event is neither in Postgres nor in its stream"
            );
        }
        self.store.apply(&found).await?;
        Ok(())
    }
}

/// The running journal's tasks: the queue's sending half lives in the
/// service layer, which reaches the store through `JournalAccess`.
pub struct Journal {
    stop: CancellationToken,
    writer: JoinHandle<()>,
    reconciler: JoinHandle<()>,
}

impl Journal {
    pub fn reconcile_limits(settings: &JournalSettings) -> ReconcileLimits {
        ReconcileLimits {
            entries_max: settings.reconcile_entries_max,
            settle: Duration::from_millis(settings.reconcile_settle_ms),
            drift_rows_max: settings.drift_rows_max,
            on_lost_writes: rebuild::AutoRebuild::from_setting(settings.auto_rebuild),
        }
    }

    pub fn start(
        settings: &JournalSettings,
        access: &JournalAccess,
        redis: Arc<Redis>,
        queue: &JournalQueue,
        rx: tokio::sync::mpsc::Receiver<Event>,
    ) -> Self {
        let JournalAccess { store, status, .. } = access.clone();
        // Exported at 0 from the start, so alerts and rates see the first one.
        for result in ["ok", "failed"] {
            metrics::counter!(names::RECONCILE_PASSES_TOTAL, "result" => result).increment(0);
        }
        for name in [
            names::RECONCILE_REPAIRED_EVENTS_TOTAL,
            names::RECONCILE_GAPS_TOTAL,
            names::JOURNAL_WRITE_ERRORS_TOTAL,
        ] {
            metrics::counter!(name).increment(0);
        }
        let stop = CancellationToken::new();
        let writer = Writer {
            rx,
            store: store.clone(),
            status: status.clone(),
            stats: queue.stats(),
            limits: WriterLimits {
                batch_size_max: settings.batch_size_max,
                linger: Duration::from_millis(settings.linger_ms),
                retry_backoff: Duration::from_millis(settings.retry_backoff_ms),
                drain_grace: Duration::from_millis(settings.drain_grace_ms),
            },
        };
        let writer = tokio::spawn(writer.run(stop.clone()));
        let reconciler = tokio::spawn(reconciler::run(
            redis,
            store,
            status,
            Self::reconcile_limits(settings),
            Duration::from_millis(settings.reconcile_interval_ms),
            settings.drift_check_every_passes,
            stop.clone(),
        ));
        Self {
            stop,
            writer,
            reconciler,
        }
    }

    /// Stops the reconciler and drains the queue (within the writer's grace
    /// period). Call after the HTTP server and the sweeper have stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.reconciler.await {
            tracing::warn!(error = %e, "journal reconciler ended abnormally");
        }
        if let Err(e) = self.writer.await {
            tracing::warn!(error = %e, "journal writer ended abnormally");
        }
    }
}
