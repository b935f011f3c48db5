//! The bounded journal queue between the request path and the batch writer.
//!
//! Created by `App::build`, which hands the sending half to the service layer
//! (every use case offers the events its script returned) and the receiving
//! half to the writer. `offer` never waits: when the queue is
//! full the event is counted as dropped and left to the reconciler, since it
//! is already in its partition stream. The queue closes when the writer
//! stops; later offers count as dropped with reason "closed".

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use crate::events::Event;
use crate::metrics as names;

/// Counters of one queue; they only grow.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub pushed: AtomicU64,
    pub popped: AtomicU64,
    pub dropped_full: AtomicU64,
    pub dropped_closed: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct JournalQueue {
    tx: mpsc::Sender<Event>,
    stats: Arc<QueueStats>,
}

impl JournalQueue {
    /// A queue of `capacity` events (at least 1) and its receiving half.
    pub fn bounded(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let queue = Self {
            tx,
            stats: Arc::new(QueueStats::default()),
        };
        (queue, rx)
    }

    /// Queues the events, dropping (and counting) what does not fit.
    pub fn offer(&self, events: Vec<Event>) {
        for event in events {
            let counter = match self.tx.try_send(event) {
                Ok(()) => &self.stats.pushed,
                Err(mpsc::error::TrySendError::Full(_)) => &self.stats.dropped_full,
                Err(mpsc::error::TrySendError::Closed(_)) => &self.stats.dropped_closed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the writer has taken every event offered so far.
    pub fn is_empty(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    pub fn stats(&self) -> Arc<QueueStats> {
        self.stats.clone()
    }

    /// Copies the queue's state into the metrics (at scrape time, so
    /// `offer` pays for its counters once).
    pub fn publish_metrics(&self) {
        let capacity = self.tx.max_capacity();
        let depth = capacity - self.tx.capacity();
        metrics::gauge!(names::JOURNAL_QUEUE_CAPACITY).set(capacity as f64);
        metrics::gauge!(names::JOURNAL_QUEUE_DEPTH).set(depth as f64);
        let stats = &self.stats;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::counter!(names::JOURNAL_QUEUE_PUSHED_TOTAL).absolute(read(&stats.pushed));
        metrics::counter!(names::JOURNAL_QUEUE_POPPED_TOTAL).absolute(read(&stats.popped));
        for (reason, count) in [
            ("queue_full", &stats.dropped_full),
            ("closed", &stats.dropped_closed),
        ] {
            metrics::counter!(names::JOURNAL_QUEUE_DROPPED_TOTAL, "reason" => reason)
                .absolute(read(count));
        }
    }
}
