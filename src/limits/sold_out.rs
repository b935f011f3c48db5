//! The sold-out short-circuit: SKUs this instance answers 409 for without
//! asking Redis.
//!
//! When the reserve script refuses for lack of stock and says the whole SKU
//! can hold nothing more (backorders included), the SKU is remembered until
//! the earliest of: `limits.sold_out.ttl_ms` from now, its next hold
//! deadline (an expiry may give units back; the script would have expired
//! that hold lazily), or news of a change. News comes two ways: every stock
//! change is announced on the partition's sharded pub/sub channel (followed
//! by `live::announcements::follow`), and changes made through this instance (release, restock,
//! adjustment, policy) forget the SKU at once, before their response leaves.
//!
//! Answers are only given while the subscription is live: before it is
//! established, and from a lost connection or a lagging consumer until the
//! channels are subscribed again, every request goes to Redis and the map
//! is empty. Each entry carries the SKU version it was decided at; an
//! announcement of a newer version with units to hold turns the entry into
//! a marker that stops an older, slower reply from bringing it back.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge};

use crate::{
    config::{LimitMode, SoldOutSettings},
    inventory::Sku,
    live::announcements::{Announcement, Listener},
    metrics as names,
};

#[derive(Debug, Clone, Copy)]
struct Entry {
    version: u64,
    sold_out: bool,
    until: Instant,
}

pub struct SoldOut {
    mode: LimitMode,
    ttl: Duration,
    skus_max: usize,
    live: AtomicBool,
    entries: RwLock<HashMap<String, Entry>>,
    answered: Counter,
    cached: Gauge,
    announced: Counter,
    local: Counter,
    resync: Counter,
}

/// What the cache says about a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Ask Redis.
    Unknown,
    /// Answer 409 here.
    SoldOut,
    /// Shadow mode: it would have answered 409; ask Redis anyway.
    SoldOutInShadow,
}

impl SoldOut {
    pub fn new(settings: &SoldOutSettings) -> Self {
        let mode = match settings.mode {
            LimitMode::Enforce => "enforce",
            _ => "shadow",
        };
        let invalidated = |cause: &'static str| metrics::counter!(names::SOLD_OUT_INVALIDATIONS_TOTAL, "cause" => cause);
        Self {
            mode: settings.mode,
            ttl: Duration::from_millis(settings.ttl_ms),
            skus_max: settings.skus_max,
            live: AtomicBool::new(false),
            entries: RwLock::new(HashMap::new()),
            answered: metrics::counter!(names::SOLD_OUT_SHORT_CIRCUIT_TOTAL, "mode" => mode),
            cached: metrics::gauge!(names::SOLD_OUT_CACHED_SKUS),
            announced: invalidated("announced"),
            local: invalidated("local"),
            resync: invalidated("resync"),
        }
    }

    pub fn check(&self, sku: &Sku) -> Answer {
        if self.mode == LimitMode::Off || !self.live.load(Ordering::Acquire) {
            return Answer::Unknown;
        }
        let sold_out = self
            .entries
            .read()
            .ok()
            .and_then(|map| map.get(sku.as_str()).copied())
            .is_some_and(|e| e.sold_out && e.until > Instant::now());
        if !sold_out {
            return Answer::Unknown;
        }
        self.answered.increment(1);
        match self.mode {
            LimitMode::Enforce => Answer::SoldOut,
            _ => Answer::SoldOutInShadow,
        }
    }

    /// Redis said the SKU can hold nothing more, at `version`; units may
    /// come back at `next_expiry_ms` (ms since the epoch) at the latest.
    pub fn remember(&self, sku: &Sku, version: u64, next_expiry_ms: Option<i64>) {
        if self.mode == LimitMode::Off || !self.live.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut until = now + self.ttl;
        if let Some(deadline) = next_expiry_ms {
            let left = deadline.saturating_sub(crate::clock::now_ms());
            until = until.min(now + Duration::from_millis(u64::try_from(left).unwrap_or(0)));
        }
        if until <= now {
            return;
        }
        let Ok(mut map) = self.entries.write() else {
            return;
        };
        if let Some(known) = map.get(sku.as_str())
            && known.version >= version
            && known.until > now
        {
            return;
        }
        if map.len() >= self.skus_max && !map.contains_key(sku.as_str()) {
            map.retain(|_, e| e.until > now);
            if map.len() >= self.skus_max {
                return;
            }
        }
        let entry = Entry {
            version,
            sold_out: true,
            until,
        };
        map.insert(sku.as_str().to_owned(), entry);
        self.cached.set(map.len() as f64);
    }

    /// A stock change announced on pub/sub: `holdable` units can be held
    /// at `version`.
    pub fn announced(&self, sku: &str, version: u64, holdable: i64) {
        let Ok(mut map) = self.entries.write() else {
            return;
        };
        let Some(entry) = map.get_mut(sku) else {
            return;
        };
        if version > entry.version {
            entry.version = version;
            if entry.sold_out && holdable > 0 {
                entry.sold_out = false;
                self.announced.increment(1);
            }
        }
    }

    /// A change made through this instance: forget the SKU before answering.
    pub fn forget(&self, sku: &Sku) {
        let removed = self
            .entries
            .write()
            .ok()
            .and_then(|mut map| map.remove(sku.as_str()));
        if removed.is_some_and(|e| e.sold_out) {
            self.local.increment(1);
        }
    }

    /// Drops expired entries; returns how many SKUs are answered locally.
    pub fn housekeep(&self) -> usize {
        let now = Instant::now();
        let Ok(mut map) = self.entries.write() else {
            return 0;
        };
        map.retain(|_, e| e.until > now);
        map.shrink_to_fit();
        self.cached.set(map.len() as f64);
        map.values().filter(|e| e.sold_out).count()
    }

    /// The subscription is live (or lost): only a live one may be trusted.
    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        if !live && let Ok(mut map) = self.entries.write() {
            if !map.is_empty() {
                self.resync.increment(1);
            }
            map.clear();
            self.cached.set(0.0);
        }
    }
}

impl Listener for SoldOut {
    fn announced(&self, a: &Announcement<'_>) {
        if self.mode == LimitMode::Off {
            return;
        }
        if a.bucket {
            // One bucket's units: any means the SKU has some again.
            if a.holdable > 0
                && let Ok(sku) = Sku::parse(a.sku)
            {
                self.forget(&sku);
            }
        } else {
            self.announced(a.sku, a.version, a.holdable);
        }
    }

    fn subscribed(&self, live: bool) {
        self.set_live(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl_ms: u64, skus_max: usize) -> SoldOut {
        let cache = SoldOut::new(&SoldOutSettings {
            mode: LimitMode::Enforce,
            ttl_ms,
            skus_max,
        });
        cache.set_live(true);
        cache
    }

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    #[test]
    fn a_sold_out_sku_is_answered_until_a_newer_version_has_units() {
        let c = cache(60_000, 10);
        c.remember(&sku("A"), 7, None);
        assert_eq!(c.check(&sku("A")), Answer::SoldOut);
        c.announced("A", 8, 0);
        assert_eq!(c.check(&sku("A")), Answer::SoldOut, "still nothing to hold");
        c.announced("A", 9, 2);
        assert_eq!(c.check(&sku("A")), Answer::Unknown);
        c.remember(&sku("A"), 8, None);
        assert_eq!(
            c.check(&sku("A")),
            Answer::Unknown,
            "a reply older than the announcement does not bring it back"
        );
        c.remember(&sku("A"), 10, None);
        assert_eq!(c.check(&sku("A")), Answer::SoldOut);
    }

    #[test]
    fn an_entry_ends_at_the_next_hold_deadline() {
        let c = cache(60_000, 10);
        c.remember(&sku("A"), 1, Some(crate::clock::now_ms() - 1));
        assert_eq!(c.check(&sku("A")), Answer::Unknown, "a hold is already due");
        c.remember(&sku("B"), 1, Some(crate::clock::now_ms() + 60_000));
        assert_eq!(c.check(&sku("B")), Answer::SoldOut);
    }

    #[test]
    fn nothing_is_answered_without_a_live_subscription() {
        let c = cache(60_000, 10);
        c.remember(&sku("A"), 1, None);
        c.set_live(false);
        assert_eq!(c.check(&sku("A")), Answer::Unknown);
        c.set_live(true);
        assert_eq!(c.check(&sku("A")), Answer::Unknown, "the map was cleared");
    }

    #[test]
    fn the_map_is_bounded() {
        let c = cache(60_000, 2);
        for (i, s) in ["A", "B", "C"].iter().enumerate() {
            c.remember(&sku(s), i as u64, None);
        }
        assert_eq!(c.check(&sku("C")), Answer::Unknown);
        assert_eq!(c.housekeep(), 2);
    }
}
