//! In-process rate limits (governor), one bucket per key, and what a rate
//! check tells the client.
//!
//! A limiter tracks a key from its first request until its budget is full
//! again; `housekeep` (run every `limits.housekeeping_interval_ms`) forgets
//! those keys and gives the map's memory back, so the map is bounded by the
//! keys seen within one refill time, however many accounts come and go.

use std::{hash::Hash, num::NonZeroU32, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use metrics::Gauge;

use super::LimitName;
use crate::{config::RateSettings, metrics as names};

/// A limit as the IETF `RateLimit-Policy` header states it: `quota` requests
/// per `window_seconds`. A bucket of `burst` refilled at `per_second` maps to
/// `burst` per `ceil(burst / per_second)` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub name: LimitName,
    pub quota: u32,
    pub window_seconds: u32,
    per_second: u32,
}

impl Policy {
    pub fn new(name: LimitName, rate: &RateSettings) -> Self {
        Self {
            name,
            quota: rate.burst,
            window_seconds: rate.burst.div_ceil(rate.per_second),
            per_second: rate.per_second,
        }
    }

    /// Time until a bucket with `remaining` requests left is full again.
    pub fn refill_time(&self, remaining: u32) -> Duration {
        let missing = self.quota.saturating_sub(remaining);
        Duration::from_secs_f64(f64::from(missing) / f64::from(self.per_second))
    }
}

/// The outcome of one rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    pub policy: Policy,
    pub allowed: bool,
    /// Requests left in the budget after this one.
    pub remaining: u32,
    /// When refused: how long until one more request would pass.
    pub retry_after: Duration,
    /// How long until the budget is full again.
    pub reset: Duration,
}

impl RateCheck {
    pub fn allowed(policy: Policy, remaining: u32) -> Self {
        Self {
            policy,
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
            reset: policy.refill_time(remaining),
        }
    }

    pub fn refused(policy: Policy, retry_after: Duration, reset: Duration) -> Self {
        Self {
            policy,
            allowed: false,
            remaining: 0,
            retry_after,
            reset,
        }
    }

    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        whole_seconds(self.retry_after)
    }

    /// The IETF `RateLimit` header item for this check.
    pub fn header_item(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.policy.name.as_str(),
            self.remaining,
            if self.allowed {
                self.reset.as_secs_f64().ceil() as u64
            } else {
                self.retry_after_seconds()
            }
        )
    }
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` may carry.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

type Limiter<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One governor limiter keyed by `K` (an account, an IP prefix).
pub struct KeyedRate<K: Hash + Eq + Clone> {
    policy: Policy,
    limiter: Limiter<K>,
    clock: DefaultClock,
    tracked: Gauge,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    pub fn new(name: LimitName, rate: &RateSettings) -> Self {
        // Settings::validate refuses zero rates and bursts.
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let clock = DefaultClock::default();
        Self {
            policy: Policy::new(name, rate),
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            clock,
            tracked: metrics::gauge!(names::LIMITER_TRACKED_KEYS, "limit" => name.as_str()),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn check(&self, key: &K) -> RateCheck {
        match self.limiter.check_key(key) {
            Ok(state) => RateCheck::allowed(self.policy, state.remaining_burst_capacity()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateCheck::refused(self.policy, wait, self.policy.refill_time(0))
            }
        }
    }

    /// Forgets keys whose budget is full again and returns the memory;
    /// returns how many keys are still tracked.
    pub fn housekeep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let tracked = self.limiter.len();
        self.tracked.set(tracked as f64);
        tracked
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitMode;

    fn rate(per_second: u32, burst: u32) -> RateSettings {
        RateSettings {
            mode: LimitMode::Enforce,
            per_second,
            burst,
        }
    }

    #[test]
    fn a_bucket_maps_to_its_burst_per_refill_window() {
        let p = Policy::new(LimitName::Account, &rate(5, 10));
        assert_eq!((p.quota, p.window_seconds), (10, 2));
        let p = Policy::new(LimitName::Ip, &rate(100, 30));
        assert_eq!((p.quota, p.window_seconds), (30, 1));
    }

    #[test]
    fn a_key_gets_its_burst_then_is_told_when_to_come_back() {
        let limit = KeyedRate::new(LimitName::Account, &rate(1, 3));
        let checks: Vec<RateCheck> = (0..4).map(|_| limit.check(&"a")).collect();
        assert_eq!(
            checks
                .iter()
                .map(|c| (c.allowed, c.remaining))
                .collect::<Vec<_>>(),
            vec![(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        let refused = checks[3];
        assert!(refused.retry_after > Duration::from_millis(500));
        assert_eq!(refused.retry_after_seconds(), 1);
        assert_eq!(refused.header_item(), "\"account\";r=0;t=1");
        assert!(limit.check(&"b").allowed, "another key has its own bucket");
    }

    #[test]
    fn retry_after_is_never_below_one_second() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
    }
}
