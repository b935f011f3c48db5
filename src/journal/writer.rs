//! The batch writer: the only consumer of the journal queue.
//!
//! It takes the first waiting event, gathers more for at most
//! `journal.linger_ms` or until `journal.batch_size_max`, and writes the
//! batch with `Store::apply` (one transaction, one statement per table). A
//! failed write is retried every `journal.retry_backoff_ms` until it lands:
//! meanwhile the queue fills and further events are dropped to the
//! reconciler, which is the point of the outbox. On shutdown the queue is
//! closed and drained within `journal.drain_grace_ms`; what is left is in
//! the partition streams and the next start's reconciler writes it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{JournalStatus, queue::QueueStats, store::Store};
use crate::events::Event;
use crate::metrics as names;
use crate::telemetry::outage::Outage;

#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    pub batch_size_max: usize,
    pub linger: Duration,
    pub retry_backoff: Duration,
    pub drain_grace: Duration,
}

pub struct Writer {
    pub rx: mpsc::Receiver<Event>,
    pub store: Store,
    pub status: Arc<JournalStatus>,
    pub stats: Arc<QueueStats>,
    pub limits: WriterLimits,
}

impl Writer {
    pub async fn run(mut self, stop: CancellationToken) {
        let mut pending = Vec::with_capacity(self.limits.batch_size_max);
        let mut outage = Outage::new("journal writer");
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                e = self.rx.recv() => e,
            };
            let Some(first) = first else { break };
            pending.push(first);
            self.gather(&mut pending).await;
            if !self
                .write_until_done(&pending, &stop, None, &mut outage)
                .await
            {
                break;
            }
            pending.clear();
        }
        self.drain(pending, &mut outage).await;
    }

    /// Adds waiting events to the batch, lingering for late ones.
    async fn gather(&mut self, batch: &mut Vec<Event>) {
        let deadline = Instant::now() + self.limits.linger;
        while batch.len() < self.limits.batch_size_max {
            match self.rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        }
    }

    /// Writes the batch, retrying until it lands (true), `stop` fires, or
    /// the deadline passes (false).
    async fn write_until_done(
        &self,
        batch: &[Event],
        stop: &CancellationToken,
        deadline: Option<Instant>,
        outage: &mut Outage,
    ) -> bool {
        let oldest = batch.iter().map(|e| e.occurred_at_ms).min().unwrap_or(0);
        self.status
            .pending_since_ms
            .store(oldest, Ordering::Relaxed);
        loop {
            let started = Instant::now();
            match self.store.apply(batch).await {
                Ok(_) => {
                    metrics::histogram!(names::JOURNAL_WRITE_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(names::JOURNAL_BATCH_EVENTS).record(batch.len() as f64);
                    self.status.pending_since_ms.store(0, Ordering::Relaxed);
                    self.status.postgres_ok.store(true, Ordering::Relaxed);
                    outage.round(0, 1, None);
                    self.stats
                        .popped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    metrics::counter!(names::JOURNAL_WRITE_ERRORS_TOTAL).increment(1);
                    self.status.postgres_ok.store(false, Ordering::Relaxed);
                    tracing::debug!(error = %e, events = batch.len(),
                        "journal write failed; retrying (the reconciler covers dropped events)");
                    outage.round(1, 1, Some(&e));
                }
            }
            let pause = tokio::time::sleep(self.limits.retry_backoff);
            let past_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = pause => {}
                _ = stop.cancelled(), if deadline.is_none() => return false,
                _ = past_deadline => return false,
            }
        }
    }

    /// Closes the queue and writes what it holds, within the grace period.
    async fn drain(mut self, mut batch: Vec<Event>, outage: &mut Outage) {
        self.rx.close();
        let deadline = Instant::now() + self.limits.drain_grace;
        let never = CancellationToken::new();
        loop {
            while batch.len() < self.limits.batch_size_max {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                tracing::info!("journal queue drained");
                return;
            }
            if !self
                .write_until_done(&batch, &never, Some(deadline), outage)
                .await
            {
                let mut left = batch.len();
                while self.rx.try_recv().is_ok() {
                    left += 1;
                }
                tracing::warn!(
                    events = left,
                    "journal drain grace exceeded; the events stay in the partition streams \
                     and the reconciler writes them after the next start"
                );
                return;
            }
            batch.clear();
        }
    }
}
