//! Group commit for `sync` confirmations.
//!
//! A `sync` confirm is answered only once Postgres has its event. One
//! transaction per confirmation spends a connection and an fsync on each:
//! at a few thousand confirmations a second the pool is the bottleneck.
//! Here confirmations arriving together share one transaction: a waiting
//! confirmation joins a bounded pending list (`journal.confirm_pending_max`;
//! past it the confirm fails at once, and its event stays in the stream for
//! the reconciler), one task takes whatever is waiting, up to
//! `journal.confirm_group_max`, and writes it with one `Store::apply`; while
//! `journal.confirm_groups_in_flight` groups are being written the next one
//! forms. Every confirmation is answered with its own group's result, after
//! the commit. No linger: a lone confirmation is written at once.
//!
//! The task lives as long as a `GroupCommit` handle does (it ends when the
//! last sender is dropped); groups already taken finish writing.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::store::{Store, StoreError};
use crate::{events::Event, metrics as names};

/// The limits of group commit, from `JournalSettings`.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Confirmations waiting for a group; past it a confirm fails at once.
    pub pending_max: usize,
    /// Most confirmations in one transaction.
    pub group_max: usize,
    /// Groups written at once (each holds one Postgres connection).
    pub in_flight_max: usize,
}

/// Why a confirmation's group did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    #[error("too many confirmations waiting for postgres")]
    Overloaded,
    #[error("group commit: {0}")]
    Failed(Arc<StoreError>),
    #[error("group commit stopped")]
    Stopped,
}

struct Waiting {
    events: Vec<Event>,
    done: oneshot::Sender<Result<(), GroupError>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    pending: mpsc::Sender<Waiting>,
}

impl GroupCommit {
    /// Spawns the committing task on the current runtime.
    pub fn start(store: Store, limits: GroupLimits) -> Self {
        let (pending, waiting) = mpsc::channel(limits.pending_max.max(1));
        tokio::spawn(run(store, limits, waiting));
        Self { pending }
    }

    /// Returns once `events` are committed in Postgres, in a transaction
    /// shared with the confirmations waiting beside them.
    pub async fn commit(&self, events: Vec<Event>) -> Result<(), GroupError> {
        let (done, result) = oneshot::channel();
        self.pending
            .try_send(Waiting { events, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => GroupError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => GroupError::Stopped,
            })?;
        result.await.map_err(|_| GroupError::Stopped)?
    }
}

async fn run(store: Store, limits: GroupLimits, mut waiting: mpsc::Receiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(limits.in_flight_max.max(1)));
    let sizes = metrics::histogram!(names::JOURNAL_CONFIRM_GROUP_REQUESTS);
    loop {
        // A slot first: while every slot is writing, the next group forms.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < limits.group_max {
            match waiting.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        sizes.record(group.len() as f64);
        let store = store.clone();
        tokio::spawn(async move {
            let events: Vec<Event> = group
                .iter_mut()
                .flat_map(|w| std::mem::take(&mut w.events))
                .collect();
            let result = store
                .apply(&events)
                .await
                .map(drop)
                .map_err(|e| GroupError::Failed(Arc::new(e)));
            drop(slot);
            for w in group {
                // A confirmation whose client left no longer listens.
                let _ = w.done.send(result.clone());
            }
        });
    }
}
