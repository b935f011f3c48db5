//! The per-account rate limit shared by every gateway instance: one GCRA
//! step on Redis per request (lua/rate_limit.lua), with Redis's clock.
//!
//! The in-process limiters stay the cheap first line; this one is what keeps
//! an account within its budget when a load balancer spreads its requests
//! over many instances. When Redis cannot answer, the request is let through
//! and counted: the reservation itself needs Redis and will say so.

use std::time::Duration;

use metrics::Counter;

use super::{
    LimitName,
    rate::{Policy, RateCheck},
};
use crate::{
    config::RateSettings,
    inventory::AccountId,
    metrics as names,
    redis::{Redis, RedisError, ScriptName},
};

pub struct SharedRate {
    policy: Policy,
    interval_us: u64,
    burst: u32,
    errors: Counter,
}

impl SharedRate {
    pub fn new(rate: &RateSettings) -> Self {
        Self {
            policy: Policy::new(LimitName::Shared, rate),
            // Settings::validate refuses a zero rate.
            interval_us: 1_000_000 / u64::from(rate.per_second.max(1)),
            burst: rate.burst,
            errors: metrics::counter!(names::SHARED_LIMIT_ERRORS_TOTAL),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// One step of the account's shared budget; `None` when Redis could not
    /// answer (logged and counted here).
    pub async fn check(&self, redis: &Redis, account: &AccountId) -> Option<RateCheck> {
        match self.step(redis, account).await {
            Ok(check) => Some(check),
            Err(e) => {
                self.errors.increment(1);
                tracing::warn!(error = %e, "shared rate limit unavailable; letting the request through");
                None
            }
        }
    }

    async fn step(&self, redis: &Redis, account: &AccountId) -> Result<RateCheck, RedisError> {
        let key = redis.keys().shared_limit(account);
        let args = vec![self.interval_us.to_string(), self.burst.to_string()];
        let reply: Vec<i64> = redis.eval(ScriptName::RateLimit, vec![key], args).await?;
        let [allowed, remaining, retry_after_us, reset_us] = reply[..] else {
            return Err(RedisError::Reply {
                script: ScriptName::RateLimit.stem(),
                detail: format!("{reply:?}"),
            });
        };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(if allowed == 1 {
            let remaining = u32::try_from(remaining).unwrap_or(0);
            RateCheck {
                reset: micros(reset_us),
                ..RateCheck::allowed(self.policy, remaining)
            }
        } else {
            RateCheck::refused(self.policy, micros(retry_after_us), micros(reset_us))
        })
    }
}
