//! Holds nobody was told about: a reservation answered 503 (Redis did not
//! answer within `redis.command_timeout_ms`) may still have been applied,
//! by a script that ran late or a command the client library re-sent after
//! the gateway gave up. The shopper saw no reservation id, so nothing would
//! ever confirm or release it, and its units would stay held for the whole
//! TTL.
//!
//! The rule: a reservation without an `Idempotency-Key` answered 503 is
//! remembered and released as soon as Redis answers again (journaled as a
//! release, like the shopper's own). One with a key is left alone: the
//! client's retry with that key is answered from the hold (201,
//! `Idempotent-Replayed`), and if it never retries the hold expires at its
//! TTL. A remembered id is tried every `ORPHAN_INTERVAL` until it is
//! released, or until `ORPHAN_GRACE` has passed without finding it (a late
//! command lands within a few command timeouts; after that it was never
//! applied). At most `ORPHANS_MAX` are remembered; past that they are
//! counted and left to expire.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::Inventory;
use crate::{
    inventory::{AccountId, ReservationId},
    metrics as names,
    redis::calls::{ReservationReply, SettleRequest, Settlement},
};

/// How often remembered ids are tried.
pub const ORPHAN_INTERVAL: Duration = Duration::from_millis(250);
/// How long an id that is not found is tried again.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// Ids remembered at most.
pub const ORPHANS_MAX: usize = 65_536;

struct Orphan {
    id: ReservationId,
    account: AccountId,
    since: Instant,
}

#[derive(Default)]
pub struct Orphans {
    pending: Mutex<VecDeque<Orphan>>,
}

/// What a round of releases did, by outcome.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub released: u64,
    pub never_held: u64,
    pub retried: u64,
}

impl Orphans {
    /// Remembers a reservation answered 503.
    pub fn remember(&self, id: ReservationId, account: AccountId) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.len() >= ORPHANS_MAX {
            metrics::counter!(names::ORPHAN_HOLDS_TOTAL, "outcome" => "not_remembered")
                .increment(1);
            return;
        }
        pending.push_back(Orphan {
            id,
            account,
            since: Instant::now(),
        });
    }

    pub fn len(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Vec<Orphan> {
        self.pending
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default()
    }

    fn put_back(&self, orphans: Vec<Orphan>) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.extend(orphans);
        }
    }
}

/// Tries to release every remembered id once.
pub async fn release_round(inventory: &Inventory) -> Round {
    let mut round = Round::default();
    let mut again = Vec::new();
    for orphan in inventory.orphans.take() {
        // Its node does not answer: tried again once it does.
        if !inventory.redis.admits_background(orphan.id.partition()) {
            round.retried += 1;
            again.push(orphan);
            continue;
        }
        let req = SettleRequest {
            id: orphan.id.clone(),
            account: orphan.account.clone(),
            settlement: Settlement::Release,
        };
        match inventory.settle(req).await {
            Ok(ReservationReply::Ok(_)) => {
                round.released += 1;
                metrics::counter!(names::ORPHAN_HOLDS_TOTAL, "outcome" => "released").increment(1);
                tracing::info!(
                    reservation = orphan.id.as_str(),
                    "released a hold whose reservation was answered 503"
                );
            }
            Ok(ReservationReply::NotFound) if orphan.since.elapsed() < ORPHAN_GRACE => {
                round.retried += 1;
                again.push(orphan);
            }
            Ok(ReservationReply::NotFound) => {
                round.never_held += 1;
                metrics::counter!(names::ORPHAN_HOLDS_TOTAL, "outcome" => "never_held")
                    .increment(1);
            }
            // Expired, or already released: nothing is held.
            Ok(_) => {
                round.never_held += 1;
                metrics::counter!(names::ORPHAN_HOLDS_TOTAL, "outcome" => "not_held").increment(1);
            }
            Err(_) => {
                // Redis is still away: try again next round.
                round.retried += 1;
                again.push(orphan);
            }
        }
    }
    inventory.orphans.put_back(again);
    round
}

pub async fn run(inventory: Inventory, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(ORPHAN_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !inventory.orphans.is_empty() {
            release_round(&inventory).await;
        }
    }
}
