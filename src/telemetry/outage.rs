//! One log line when a dependency starts failing and one when it is back,
//! instead of a line per partition per pass.
//!
//! Background loops (the reconciler, the sweeper, the journal writer) report
//! each round's failures to an `Outage`: the first failing round logs one
//! WARN with an example error; while it lasts, a reminder every
//! `REMINDER_INTERVAL` with the failures counted since; the first clean
//! round logs one INFO with how long it lasted and how many operations
//! failed. Metrics keep counting every failure.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

/// How often a lasting outage is logged again.
pub const REMINDER_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Outage {
    /// What fails, e.g. "reconciler": the subject of every line.
    what: &'static str,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    reminded: Instant,
    /// Failed operations since the outage began.
    failures: u64,
    /// Failed operations since the last line.
    unlogged: u64,
}

/// What a round's report leads to, for the caller's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    Nothing,
    Began,
    Reminder,
    Recovered,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self { what, down: None }
    }

    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// Reports one round: `failed` of `attempted` operations failed, `error`
    /// being one of their errors.
    pub fn round(&mut self, failed: u64, attempted: u64, error: Option<&dyn Display>) -> Logged {
        self.round_at(Instant::now(), failed, attempted, error)
    }

    fn round_at(
        &mut self,
        now: Instant,
        failed: u64,
        attempted: u64,
        error: Option<&dyn Display>,
    ) -> Logged {
        let what = self.what;
        let error = error.map(ToString::to_string).unwrap_or_default();
        match (&mut self.down, failed) {
            (None, 0) => Logged::Nothing,
            (None, _) => {
                tracing::warn!(
                    failed,
                    attempted,
                    error,
                    "{what} is failing; logging again when it recovers"
                );
                self.down = Some(Down {
                    since: now,
                    reminded: now,
                    failures: failed,
                    unlogged: 0,
                });
                Logged::Began
            }
            (Some(down), 0) => {
                let seconds = now.duration_since(down.since).as_secs_f64();
                tracing::info!(
                    failures = down.failures,
                    seconds = (seconds * 10.0).round() / 10.0,
                    "{what} recovered"
                );
                self.down = None;
                Logged::Recovered
            }
            (Some(down), _) => {
                down.failures += failed;
                down.unlogged += failed;
                if now.duration_since(down.reminded) < REMINDER_INTERVAL {
                    return Logged::Nothing;
                }
                let seconds = now.duration_since(down.since).as_secs();
                tracing::warn!(
                    failures = down.failures,
                    since_last = down.unlogged,
                    seconds,
                    error,
                    "{what} is still failing"
                );
                down.reminded = now;
                down.unlogged = 0;
                Logged::Reminder
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_begins_every_minute_and_when_it_ends() {
        let mut outage = Outage::new("reconciler");
        let t0 = Instant::now();
        let e = "connection refused";
        assert_eq!(outage.round_at(t0, 0, 256, None), Logged::Nothing);
        assert_eq!(outage.round_at(t0, 256, 256, Some(&e)), Logged::Began);
        for s in 1..60 {
            let at = t0 + Duration::from_secs(s);
            assert_eq!(outage.round_at(at, 256, 256, Some(&e)), Logged::Nothing);
        }
        let minute = t0 + REMINDER_INTERVAL;
        assert_eq!(
            outage.round_at(minute, 256, 256, Some(&e)),
            Logged::Reminder
        );
        assert!(outage.is_down());
        let back = minute + Duration::from_secs(1);
        assert_eq!(outage.round_at(back, 0, 256, None), Logged::Recovered);
        assert!(!outage.is_down());
        assert_eq!(outage.round_at(back, 0, 256, None), Logged::Nothing);
    }
}
