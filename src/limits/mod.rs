//! Admission control: what stands between a reservation request and Redis.
//!
//! In order, for `POST /v1/reservations` (after the token and the body are
//! checked): the per-IP and per-account rate limits of this instance
//! (`rate`), the per-account limit shared by every instance (`shared`, on
//! Redis), the sold-out short-circuit (`sold_out`), and the cap on Redis
//! calls in flight (`in_flight`, which every shopper route touching Redis
//! passes). Each limit has a mode: `enforce` refuses, `shadow` counts what
//! it would refuse and serves it anyway, `off` skips it.
//!
//! The client IP is the socket's peer, or, when that peer is a trusted
//! proxy, the right-most `X-Forwarded-For` address that is not itself a
//! trusted proxy. IPv6 clients are limited per /64, the block one
//! subscriber usually gets.

pub mod in_flight;
pub mod rate;
pub mod shared;
pub mod sold_out;

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use axum::http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use metrics::Counter;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{LimitMode, LimitsSettings, RateSettings},
    inventory::AccountId,
    metrics as names,
    redis::Redis,
};
use in_flight::{Entry, InFlight, Permit};
use rate::{KeyedRate, Policy, RateCheck};
use shared::SharedRate;
use sold_out::SoldOut;

/// The limits, as named in config, headers and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitName {
    Account,
    Ip,
    Shared,
    InFlight,
}

impl LimitName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Ip => "ip",
            Self::Shared => "shared",
            Self::InFlight => "in_flight",
        }
    }
}

/// Refusal counters of one limit, by mode.
struct Refusals {
    enforced: Counter,
    shadowed: Counter,
}

impl Refusals {
    fn new(limit: LimitName) -> Self {
        let counter = |mode: &'static str| metrics::counter!(names::ADMISSION_REFUSED_TOTAL, "limit" => limit.as_str(), "mode" => mode);
        Self {
            enforced: counter("enforce"),
            shadowed: counter("shadow"),
        }
    }
}

/// A rate limit with its mode and counters.
struct Guarded<L> {
    mode: LimitMode,
    limit: L,
    refusals: Refusals,
}

impl<L> Guarded<L> {
    fn new(mode: LimitMode, name: LimitName, limit: L) -> Self {
        Self {
            mode,
            limit,
            refusals: Refusals::new(name),
        }
    }

    /// Counts a check; `Err` when it must be refused.
    fn judge(&self, check: RateCheck) -> Result<RateCheck, RateCheck> {
        match (check.allowed, self.mode) {
            (true, _) => Ok(check),
            (false, LimitMode::Enforce) => {
                self.refusals.enforced.increment(1);
                Err(check)
            }
            (false, _) => {
                self.refusals.shadowed.increment(1);
                Ok(check)
            }
        }
    }

    fn enabled(&self) -> bool {
        self.mode != LimitMode::Off
    }

    /// Enforced limits are announced to clients; shadow ones are not.
    fn announced(&self) -> bool {
        self.mode == LimitMode::Enforce
    }
}

/// The rate state a response reports (IETF `RateLimit-Policy` and
/// `RateLimit`): every enforced policy, and the check closest to refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateReport {
    /// `RateLimit-Policy`, fixed at start; `None` when no limit is enforced.
    pub policy_header: Option<HeaderValue>,
    pub tightest: Option<RateCheck>,
}

impl RateReport {
    /// Takes in one judged check: a refusal ends admission, an admitted
    /// check of an enforced (`announced`) limit becomes the one reported if
    /// it is the closest to refusal.
    fn apply(
        mut self,
        judged: Result<RateCheck, RateCheck>,
        announced: bool,
    ) -> Result<Self, Refusal> {
        match judged {
            Err(refusing) => {
                self.tightest = Some(refusing);
                Err(Refusal::RateLimited(self))
            }
            Ok(check) => {
                if announced && self.tightest.is_none_or(|t| check.remaining < t.remaining) {
                    self.tightest = Some(check);
                }
                Ok(self)
            }
        }
    }
}

/// `"ip";q=200;w=2, "account";q=10;w=2` for the enforced limits.
fn policy_header(policies: &[Policy]) -> Option<HeaderValue> {
    let items: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "\"{}\";q={};w={}",
                p.name.as_str(),
                p.quota,
                p.window_seconds
            )
        })
        .collect();
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 429 `rate-limited`: `report.tightest` is the refusing check.
    RateLimited(RateReport),
    /// 503 `overloaded`.
    Overloaded,
}

pub struct Admission {
    ip: Guarded<KeyedRate<IpAddr>>,
    account: Guarded<KeyedRate<AccountId>>,
    shared: Guarded<SharedRate>,
    in_flight: InFlight,
    in_flight_refusals: Refusals,
    pub sold_out: Arc<SoldOut>,
    trusted_proxies: Vec<IpNet>,
    housekeeping_interval: Duration,
    policy_header: Option<HeaderValue>,
}

impl Admission {
    pub fn new(limits: &LimitsSettings, trusted_proxies: &[IpNet]) -> Self {
        let ip = keyed(LimitName::Ip, &limits.ip);
        let account = keyed(LimitName::Account, &limits.account);
        let shared = Guarded::new(
            limits.shared.mode,
            LimitName::Shared,
            SharedRate::new(&limits.shared),
        );
        let enforced: Vec<Policy> = [
            (ip.announced(), ip.limit.policy()),
            (account.announced(), account.limit.policy()),
            (shared.announced(), shared.limit.policy()),
        ]
        .into_iter()
        .filter_map(|(announced, policy)| announced.then_some(policy))
        .collect();
        Self {
            policy_header: policy_header(&enforced),
            ip,
            account,
            shared,
            in_flight: InFlight::new(&limits.in_flight),
            in_flight_refusals: Refusals::new(LimitName::InFlight),
            sold_out: Arc::new(SoldOut::new(&limits.sold_out)),
            trusted_proxies: trusted_proxies.to_vec(),
            housekeeping_interval: Duration::from_millis(limits.housekeeping_interval_ms),
        }
    }

    /// The in-process rate limits, for one reservation request from
    /// `account` at `ip`.
    pub fn check_local(&self, account: &AccountId, ip: IpAddr) -> Result<RateReport, Refusal> {
        let mut report = RateReport {
            policy_header: self.policy_header.clone(),
            tightest: None,
        };
        if self.ip.enabled() {
            let check = self.ip.judge(self.ip.limit.check(&ip_key(ip)));
            report = report.apply(check, self.ip.announced())?;
        }
        if self.account.enabled() {
            let check = self.account.judge(self.account.limit.check(account));
            report = report.apply(check, self.account.announced())?;
        }
        Ok(report)
    }

    /// The limit shared by every instance (one Redis call), after
    /// `check_local`; a Redis failure lets the request through.
    pub async fn check_shared(
        &self,
        redis: &Redis,
        account: &AccountId,
        report: RateReport,
    ) -> Result<RateReport, Refusal> {
        if !self.shared.enabled() {
            return Ok(report);
        }
        match self.shared.limit.check(redis, account).await {
            Some(check) => report.apply(self.shared.judge(check), self.shared.announced()),
            None => Ok(report),
        }
    }

    /// A place among the Redis calls in flight, held until dropped.
    pub fn enter_redis(&self) -> Result<Option<Permit>, Refusal> {
        match self.in_flight.enter() {
            (Entry::Admitted, permit) => Ok(permit),
            (Entry::AdmittedInShadow, permit) => {
                self.in_flight_refusals.shadowed.increment(1);
                Ok(permit)
            }
            (Entry::Shed, _) => {
                self.in_flight_refusals.enforced.increment(1);
                Err(Refusal::Overloaded)
            }
        }
    }

    /// The client's address: the peer, or what a trusted proxy says.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted_proxies)
    }

    /// Forgets idle limiter keys and stale sold-out SKUs until `stop`.
    pub async fn housekeep(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.housekeeping_interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {
                    self.housekeep_once();
                }
            }
        }
    }

    /// One housekeeping pass; returns the keys each limiter still tracks
    /// (ip, account).
    pub fn housekeep_once(&self) -> (usize, usize) {
        self.sold_out.housekeep();
        (self.ip.limit.housekeep(), self.account.limit.housekeep())
    }

    /// Keys each in-process limiter tracks now (ip, account).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (
            self.ip.limit.tracked_keys(),
            self.account.limit.tracked_keys(),
        )
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone>(
    name: LimitName,
    rate: &RateSettings,
) -> Guarded<KeyedRate<K>> {
    Guarded::new(rate.mode, name, KeyedRate::new(name, rate))
}

/// The key an IP is limited by: IPv4 as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client of a request that reached us from `peer`: `X-Forwarded-For`
/// is read only when `peer` is a trusted proxy, right to left, skipping
/// trusted proxies; an unreadable entry stops the walk (what lies left of
/// it cannot be trusted either).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip, proxies) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["203.0.113.9, 198.51.100.7"]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &proxies), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &proxies), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_hops_are_skipped_and_a_forged_left_part_is_ignored() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client forged "1.1.1.1"; the edge proxy appended the real peer.
        let h = headers(&["1.1.1.1, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(client_ip(ip("10.0.0.6"), &h, &proxies), ip("203.0.113.9"));
        let garbage = headers(&["1.1.1.1, not-an-ip, 10.0.0.5"]);
        assert_eq!(
            client_ip(ip("10.0.0.6"), &garbage, &proxies),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.6"), &headers(&[]), &proxies),
            ip("10.0.0.6")
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(ip_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
