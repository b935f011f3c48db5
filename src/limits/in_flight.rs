//! Load shedding: a cap on Redis calls in flight from requests.
//!
//! When Redis slows down, requests pile up behind it and every client waits.
//! Past `limits.in_flight.max` calls in flight, a request is answered 503
//! `overloaded` at once instead, so the requests already admitted keep a low
//! latency. A `Permit` is taken before a handler's Redis work and dropped
//! with it; the count can never leak past a request.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use metrics::Gauge;

use crate::{config::InFlightSettings, config::LimitMode, metrics as names};

pub struct InFlight {
    mode: LimitMode,
    max: usize,
    count: Arc<AtomicUsize>,
    gauge: Gauge,
}

/// Holds one place among the calls in flight until dropped.
#[must_use = "the place is given back when the permit is dropped"]
pub struct Permit {
    count: Option<(Arc<AtomicUsize>, Gauge)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((count, gauge)) = self.count.take() {
            let now = count.fetch_sub(1, Ordering::AcqRel) - 1;
            gauge.set(now as f64);
        }
    }
}

/// What a request past the cap gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Admitted,
    /// Over the cap in shadow mode: served, but counted as shed.
    AdmittedInShadow,
    Shed,
}

impl InFlight {
    pub fn new(settings: &InFlightSettings) -> Self {
        metrics::gauge!(names::REDIS_IN_FLIGHT_CAPACITY).set(settings.max as f64);
        Self {
            mode: settings.mode,
            max: settings.max,
            count: Arc::new(AtomicUsize::new(0)),
            gauge: metrics::gauge!(names::REDIS_IN_FLIGHT),
        }
    }

    /// Takes a place, or says the request must be shed.
    pub fn enter(&self) -> (Entry, Option<Permit>) {
        if self.mode == LimitMode::Off {
            return (Entry::Admitted, None);
        }
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        let permit = Permit {
            count: Some((self.count.clone(), self.gauge.clone())),
        };
        self.gauge.set((before + 1) as f64);
        match (before < self.max, self.mode) {
            (true, _) => (Entry::Admitted, Some(permit)),
            (false, LimitMode::Shadow) => (Entry::AdmittedInShadow, Some(permit)),
            (false, _) => {
                // A shed request gives its place back at once.
                drop(permit);
                (Entry::Shed, None)
            }
        }
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(mode: LimitMode, max: usize) -> InFlight {
        InFlight::new(&InFlightSettings { mode, max })
    }

    #[test]
    fn past_the_cap_requests_are_shed_and_places_come_back() {
        let limit = cap(LimitMode::Enforce, 2);
        let (a, pa) = limit.enter();
        let (b, _pb) = limit.enter();
        let (c, pc) = limit.enter();
        assert_eq!((a, b, c), (Entry::Admitted, Entry::Admitted, Entry::Shed));
        assert!(pc.is_none());
        assert_eq!(limit.current(), 2, "a shed request holds no place");
        drop(pa);
        assert_eq!(limit.enter().0, Entry::Admitted);
    }

    #[test]
    fn shadow_mode_serves_past_the_cap_and_says_so() {
        let limit = cap(LimitMode::Shadow, 1);
        let _a = limit.enter();
        let (b, permit) = limit.enter();
        assert_eq!(b, Entry::AdmittedInShadow);
        assert!(permit.is_some());
        assert_eq!(limit.current(), 2);
    }
}
