//! The stream entries this process has committed to Postgres and the
//! reconciler has not yet passed.
//!
//! In steady state the writer journals every event the gateway
//! acknowledged, and a reconciler pass finds nothing missing: asking
//! Postgres which of the entries it read are absent was most of what the
//! journal cost Postgres (one lookup per event, ~30 µs of Postgres CPU per
//! reservation on a 2-core machine). `Store::apply` records here what its
//! transaction committed; a pass asks Postgres only about the entries it
//! read that are not recorded (dropped by a full queue, written by another
//! instance, or whose reply never reached this one), and forgets what lies
//! at or below the checkpoint it reaches.
//!
//! A recorded entry is in `inventory_events`: it was committed, and rows
//! are never deleted. Forgetting an entry, or not recording it once the
//! limit is reached, only sends it to Postgres for the check, so the limit
//! bounds memory and nothing else.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use crate::{events::Event, inventory::Partition};

/// Entries remembered across every partition (~40 bytes each): well over
/// the few seconds of a hot gateway's events that lie between two passes.
pub const COMMITTED_ENTRIES_MAX: usize = 262_144;

/// A stream id `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

#[derive(Debug, Default)]
struct Inner {
    partitions: HashMap<u32, BTreeSet<EntryId>>,
    entries: usize,
}

#[derive(Debug, Default)]
pub struct Committed(Mutex<Inner>);

impl Committed {
    /// Records events that a transaction has just committed.
    pub fn record(&self, events: &[Event]) {
        let Ok(mut inner) = self.0.lock() else { return };
        for e in events {
            if inner.entries >= COMMITTED_ENTRIES_MAX {
                return;
            }
            let Some(id) = EntryId::parse(&e.stream_id) else {
                continue;
            };
            if inner
                .partitions
                .entry(e.partition.0)
                .or_default()
                .insert(id)
            {
                inner.entries += 1;
            }
        }
    }

    /// The ids among `ids` (stream ids of partition `p`) not recorded here:
    /// the ones Postgres must be asked about.
    pub fn unrecorded<'a>(&self, p: Partition, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let inner = self.0.lock().ok();
        let known = inner.as_ref().and_then(|i| i.partitions.get(&p.0));
        ids.filter(|id| {
            let recorded = known
                .zip(EntryId::parse(id))
                .is_some_and(|(k, id)| k.contains(&id));
            !recorded
        })
        .map(str::to_owned)
        .collect()
    }

    /// Forgets partition `p`'s entries at or below `checkpoint`: a pass
    /// never reads them again.
    pub fn forget_through(&self, p: Partition, checkpoint: &str) {
        let Some(EntryId(ms, seq)) = EntryId::parse(checkpoint) else {
            return;
        };
        let Ok(mut inner) = self.0.lock() else { return };
        let Some(set) = inner.partitions.get_mut(&p.0) else {
            return;
        };
        let before = set.len();
        let above = set.split_off(&EntryId(ms, seq.saturating_add(1)));
        *set = above;
        let forgotten = before - set.len();
        if set.is_empty() {
            inner.partitions.remove(&p.0);
        }
        inner.entries -= forgotten;
    }

    /// Entries remembered, over every partition.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |inner| inner.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn event(p: u32, id: &str) -> Event {
        Event {
            partition: Partition(p),
            stream_id: id.to_owned(),
            kind: EventKind::Reserved,
            sku: "S".into(),
            location: "default".into(),
            version: 1,
            on_hand: 1,
            reserved: 1,
            safety_stock: 0,
            low_stock_threshold: 0,
            backorder_limit: 0,
            occurred_at_ms: 0,
            reservation: None,
            delta: None,
            reason: None,
            reference: None,
            actor: None,
            request_id: None,
            held: None,
            cart_id: None,
        }
    }

    #[test]
    fn only_recorded_entries_of_the_same_partition_are_spared_the_check() {
        let c = Committed::default();
        c.record(&[event(1, "10-0"), event(1, "10-1"), event(2, "11-0")]);
        let ids = ["9-5", "10-0", "10-1", "11-0"];
        assert_eq!(c.unrecorded(Partition(1), ids.into_iter()), ["9-5", "11-0"]);
        assert_eq!(c.unrecorded(Partition(3), ids.into_iter()).len(), 4);
    }

    #[test]
    fn a_checkpoint_forgets_what_lies_at_or_below_it_in_stream_order() {
        let c = Committed::default();
        // "9-0" sorts after "10-0" as text, not as a stream id.
        c.record(&[
            event(1, "9-0"),
            event(1, "10-0"),
            event(1, "10-2"),
            event(1, "100-0"),
        ]);
        c.forget_through(Partition(1), "10-0");
        assert_eq!(c.len(), 2);
        let ids = ["9-0", "10-0", "10-2", "100-0"];
        assert_eq!(c.unrecorded(Partition(1), ids.into_iter()), ["9-0", "10-0"]);
        c.forget_through(Partition(1), "100-0");
        assert!(c.is_empty());
    }

    #[test]
    fn past_its_limit_nothing_more_is_recorded() {
        let c = Committed::default();
        let events: Vec<Event> = (0..COMMITTED_ENTRIES_MAX as u64 + 10)
            .map(|i| event(0, &format!("{i}-0")))
            .collect();
        c.record(&events);
        assert_eq!(c.len(), COMMITTED_ENTRIES_MAX);
        let last = format!("{}-0", COMMITTED_ENTRIES_MAX + 5);
        assert_eq!(
            c.unrecorded(Partition(0), [last.as_str()].into_iter()),
            [last]
        );
    }
}
