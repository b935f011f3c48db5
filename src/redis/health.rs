//! How a Redis node has answered lately, so that background work (the
//! sweeper, the reconciler, rebuilds, the orphan releaser) backs off from a
//! node that does not answer instead of waiting a command timeout on it for
//! every partition of every pass.
//!
//! Every command's outcome is observed, the request path's included: a
//! failure to reach the node starts a backoff, any answer ends it. While it
//! lasts, background calls to the node are refused at once, except one per
//! backoff window, which probes the node; each failed probe doubles the
//! window, from `BACKOFF_MIN` up to `BACKOFF_MAX`. Requests are never
//! refused here: each waits for its node within its own timeout, so
//! shoppers see the node return as soon as it does.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::metrics as names;

/// The first backoff window after a node stops answering.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest: a node that comes back is probed again within this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(4);

#[derive(Debug)]
struct Backoff {
    /// Failed probes since the node last answered (the first failure counts).
    failures: u32,
    /// When the node stopped answering.
    since: Instant,
    /// Background calls are refused until then.
    retry_at: Instant,
    /// A probe was let through since the last failure counted.
    probing: bool,
    /// Background calls refused meanwhile.
    refused: u64,
}

/// One node's health; `node` names it in the two log lines of an outage.
#[derive(Debug)]
pub struct Health {
    node: String,
    /// Set while `backoff` is `Some`: the healthy path never locks.
    troubled: AtomicBool,
    backoff: Mutex<Option<Backoff>>,
}

impl Health {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            troubled: AtomicBool::new(false),
            backoff: Mutex::new(None),
        }
    }

    /// The node's address.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether a background call may go to the node now: always while it
    /// answers; while it does not, once per backoff window (the probe).
    pub fn admit_background(&self) -> bool {
        self.admit_background_at(Instant::now())
    }

    fn admit_background_at(&self, now: Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut backoff) = self.backoff.lock() else {
            return true;
        };
        let Some(b) = backoff.as_mut() else {
            return true;
        };
        if now < b.retry_at {
            b.refused += 1;
            return false;
        }
        // The next probe comes a window later even if this one never
        // reports (its caller gave up before sending it).
        b.retry_at = now + window(b.failures);
        b.probing = true;
        true
    }

    /// Records a command's outcome: `Reached::No` when the node could not
    /// be reached or did not answer in time, `Reached::Yes` for any answer,
    /// an error reply included.
    pub fn observe(&self, reached: Reached) {
        match reached {
            Reached::Yes if self.troubled.load(Ordering::Acquire) => self.answered(),
            Reached::Yes => {}
            Reached::No => self.failed_at(Instant::now()),
        }
    }

    fn failed_at(&self, now: Instant) {
        let Ok(mut backoff) = self.backoff.lock() else {
            return;
        };
        match backoff.as_mut() {
            None => {
                *backoff = Some(Backoff {
                    failures: 1,
                    since: now,
                    retry_at: now + BACKOFF_MIN,
                    probing: false,
                    refused: 0,
                });
                self.troubled.store(true, Ordering::Release);
                metrics::gauge!(names::REDIS_NODES_BACKING_OFF).increment(1.0);
                tracing::warn!(
                    node = %self.node,
                    "a redis node does not answer; background work backs off from it"
                );
            }
            // The probe failed: wait twice as long before the next one.
            // Other failures within a window (requests) change nothing.
            Some(b) if b.probing => {
                b.failures = b.failures.saturating_add(1);
                b.retry_at = now + window(b.failures);
                b.probing = false;
            }
            Some(_) => {}
        }
    }

    fn answered(&self) {
        let Ok(mut backoff) = self.backoff.lock() else {
            return;
        };
        if let Some(b) = backoff.take() {
            self.troubled.store(false, Ordering::Release);
            metrics::gauge!(names::REDIS_NODES_BACKING_OFF).decrement(1.0);
            tracing::info!(
                node = %self.node,
                down_ms = b.since.elapsed().as_millis() as u64,
                failed_probes = b.failures,
                background_calls_skipped = b.refused,
                "a redis node answers again"
            );
        }
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        // A node dropped from the table while backing off (a dead master
        // replaced by its replica) is no longer counted.
        if self.troubled.load(Ordering::Acquire) {
            metrics::gauge!(names::REDIS_NODES_BACKING_OFF).decrement(1.0);
        }
    }
}

/// Whether a command reached its node (see `Health::observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Yes,
    No,
}

impl Reached {
    pub fn of<T>(result: &Result<T, fred::error::Error>) -> Self {
        match result {
            Err(e) if super::unreachable(e) => Self::No,
            _ => Self::Yes,
        }
    }
}

/// The backoff window after `failures` failed probes: doubling from
/// `BACKOFF_MIN`, at most `BACKOFF_MAX`.
fn window(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_windows_double_up_to_the_longest() {
        assert_eq!(window(1), BACKOFF_MIN);
        assert_eq!(window(2), BACKOFF_MIN * 2);
        assert_eq!(window(3), BACKOFF_MIN * 4);
        assert_eq!(window(40), BACKOFF_MAX);
    }

    #[test]
    fn a_node_that_stops_answering_admits_one_probe_per_window_until_it_answers() {
        let health = Health::new("127.0.0.1:7000");
        let t0 = Instant::now();
        let at = |d: Duration| t0 + d;
        assert!(health.admit_background_at(t0));
        health.failed_at(t0);
        assert!(
            !health.admit_background_at(t0),
            "refused within the first window"
        );
        assert!(
            health.admit_background_at(at(BACKOFF_MIN)),
            "the probe goes through"
        );
        assert!(
            !health.admit_background_at(at(BACKOFF_MIN)),
            "one probe per window"
        );
        health.failed_at(at(BACKOFF_MIN));
        assert!(
            !health.admit_background_at(at(BACKOFF_MIN * 2)),
            "the window doubled"
        );
        assert!(health.admit_background_at(at(BACKOFF_MIN * 3)));
        health.observe(Reached::Yes);
        assert!(health.admit_background_at(at(BACKOFF_MIN * 3)));
        assert!(health.admit_background_at(at(BACKOFF_MIN * 3)));
        assert!(health.backoff.lock().unwrap().is_none());
    }

    #[test]
    fn failures_within_a_window_do_not_lengthen_it() {
        let health = Health::new("127.0.0.1:7000");
        let t0 = Instant::now();
        health.failed_at(t0);
        health.failed_at(t0);
        health.failed_at(t0 + BACKOFF_MIN / 2);
        assert!(health.admit_background_at(t0 + BACKOFF_MIN));
    }
}
