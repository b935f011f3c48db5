//! One inventory event: a partition stream entry, parsed. The type both the
//! Redis layer (which returns the events its scripts appended) and the
//! journal (which writes them to Postgres) speak; it depends on neither.
//!
//! Scripts append every change to their partition's stream as one packed
//! field `e` (see the event line in lua/prelude.lua) and return the same
//! entries in their reply. Entries written by older gateways carry one
//! stream field per value instead; they are still read.

use std::collections::HashMap;

use crate::inventory::Partition;

/// A partition stream entry as XRANGE returns it: id and fields.
pub type StreamEntry = (String, HashMap<String, String>);

/// The stream field that holds a packed event.
pub const PACKED_FIELD: &str = "e";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Reserved,
    Confirmed,
    Released,
    Expired,
    StockSet,
    Adjusted,
    /// A live hold's deadline moved (`POST /v1/reservations/{id}/extend`).
    Extended,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::StockSet => "stock_set",
            Self::Adjusted => "adjusted",
            Self::Extended => "extended",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "confirmed" => Self::Confirmed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "stock_set" => Self::StockSet,
            "adjusted" => Self::Adjusted,
            "extended" => Self::Extended,
            _ => return None,
        })
    }

    /// The reservation state an event of this kind leaves behind (a
    /// partial release leaves the hold `held`: see `Event::reservation_state`).
    pub fn reservation_state(self) -> Option<&'static str> {
        match self {
            Self::Reserved | Self::Extended => Some("held"),
            Self::Confirmed => Some("confirmed"),
            Self::Released => Some("released"),
            Self::Expired => Some("expired"),
            Self::StockSet | Self::Adjusted => None,
        }
    }
}

/// The reservation an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationPart {
    pub id: String,
    pub account: String,
    pub qty: i64,
    pub backorder: bool,
    pub expires_at_ms: Option<i64>,
    /// Absent on expiries: the hold's member does not carry it.
    pub created_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub partition: Partition,
    pub stream_id: String,
    pub kind: EventKind,
    pub sku: String,
    pub location: String,
    /// The SKU's version after this event; strictly increasing per SKU.
    pub version: i64,
    /// The location's counts after this event.
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub low_stock_threshold: i64,
    pub backorder_limit: i64,
    pub occurred_at_ms: i64,
    pub reservation: Option<ReservationPart>,
    /// On-hand change of a stock_set or adjusted event.
    pub delta: Option<i64>,
    pub reason: Option<String>,
    pub reference: Option<String>,
    /// Who made a stock change (the operator's token `sub`).
    pub actor: Option<String>,
    /// The request that made a stock change (its `X-Request-Id`).
    pub request_id: Option<String>,
    /// Units the reservation still holds after the event, when it changed a
    /// live hold (third layout): a partial release leaves it above 0.
    pub held: Option<i64>,
    /// The cart a reservation is a line of (third layout).
    pub cart_id: Option<String>,
}

/// Every field an event carries, in the packed order of the first layout
/// (see the event line in lua/prelude.lua); `ref`, free text, comes last.
/// `actor` and `req` only come in the second and third, `held` and `cart`
/// in the third.
const FIELDS: [&str; 23] = [
    "kind", "sku", "loc", "ver", "oh", "rs", "ss", "lt", "bl", "ts", "rid", "acct", "qty", "bo",
    "exp", "created", "delta", "reason", "ref", "actor", "req", "held", "cart",
];

/// The first layout: `kind|…|delta|reason|ref`.
const FIRST_LAYOUT: [&str; 19] = [
    "kind", "sku", "loc", "ver", "oh", "rs", "ss", "lt", "bl", "ts", "rid", "acct", "qty", "bo",
    "exp", "created", "delta", "reason", "ref",
];

/// The second layout, an operator's stock change:
/// `v2|kind|…|delta|reason|actor|req|ref`.
const STAFF_LAYOUT: [&str; 21] = [
    "kind", "sku", "loc", "ver", "oh", "rs", "ss", "lt", "bl", "ts", "rid", "acct", "qty", "bo",
    "exp", "created", "delta", "reason", "actor", "req", "ref",
];
/// What starts an event of the second layout (no kind is called `v2`).
const STAFF_MARK: &str = "v2|";

/// The third layout, a change of a live hold or a cart's line:
/// `v3|kind|…|delta|reason|actor|req|held|cart|ref`.
const CHANGE_LAYOUT: [&str; 23] = [
    "kind", "sku", "loc", "ver", "oh", "rs", "ss", "lt", "bl", "ts", "rid", "acct", "qty", "bo",
    "exp", "created", "delta", "reason", "actor", "req", "held", "cart", "ref",
];
/// What starts an event of the third layout.
const CHANGE_MARK: &str = "v3|";

/// An entry's values, indexed like `FIELDS`.
struct Slots<'s, 'a>(&'s [Option<&'a str>; FIELDS.len()]);

impl<'a> Slots<'_, 'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        FIELDS
            .iter()
            .position(|f| *f == key)
            .and_then(|i| self.0[i])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stream entry {stream_id}: {problem}")]
pub struct EventParseError {
    pub stream_id: String,
    pub problem: String,
}

impl Event {
    /// The units the `qty` column of `inventory_events` records: the
    /// reservation's quantity, or the on-hand change of a stock event.
    pub fn qty(&self) -> i64 {
        self.reservation
            .as_ref()
            .map_or(self.delta.unwrap_or(0), |r| r.qty)
    }

    /// The state the event leaves its reservation in: a release that leaves
    /// units held (a shrink) leaves it `held`.
    pub fn reservation_state(&self) -> Option<&'static str> {
        match (self.kind, self.held) {
            (EventKind::Released, Some(left)) if left > 0 => Some("held"),
            (kind, _) => kind.reservation_state(),
        }
    }

    /// The units the reservation holds (or held last) after the event: the
    /// `qty` column of `reservations`.
    pub fn reservation_qty(&self) -> Option<i64> {
        let r = self.reservation.as_ref()?;
        Some(match self.held {
            Some(left) if left > 0 => left,
            _ => r.qty,
        })
    }

    /// Parses a stream entry's field/value pairs.
    pub fn from_entry<'a>(
        partition: Partition,
        stream_id: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, EventParseError> {
        let fail = |problem: String| EventParseError {
            stream_id: stream_id.to_owned(),
            problem,
        };
        // A fixed table rather than a map: this runs for every event on the
        // request path. Unknown fields are ignored (a newer writer's extras).
        let mut slots: [Option<&str>; FIELDS.len()] = [None; FIELDS.len()];
        for (k, v) in fields {
            if let Some(i) = FIELDS.iter().position(|f| *f == k) {
                slots[i] = Some(v);
            }
        }
        let f = Slots(&slots);
        let text = |k: &str| {
            f.get(k)
                .map(str::to_owned)
                .ok_or_else(|| fail(format!("missing field {k}")))
        };
        let opt_int = |k: &str| -> Result<Option<i64>, EventParseError> {
            f.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|e| fail(format!("field {k}: {e}")))
                })
                .transpose()
        };
        let int = |k: &str| opt_int(k)?.ok_or_else(|| fail(format!("missing field {k}")));
        let kind_text = text("kind")?;
        let kind = EventKind::parse(&kind_text).ok_or_else(|| fail(format!("kind {kind_text}")))?;
        let reservation = match kind.reservation_state() {
            Some(_) => Some(ReservationPart {
                id: text("rid")?,
                account: text("acct")?,
                qty: int("qty")?,
                backorder: f.get("bo") == Some("1"),
                expires_at_ms: opt_int("exp")?,
                created_at_ms: opt_int("created")?,
            }),
            None => None,
        };
        Ok(Self {
            partition,
            stream_id: stream_id.to_owned(),
            kind,
            sku: text("sku")?,
            location: text("loc")?,
            version: int("ver")?,
            on_hand: int("oh")?,
            reserved: int("rs")?,
            safety_stock: opt_int("ss")?.unwrap_or(0),
            low_stock_threshold: opt_int("lt")?.unwrap_or(0),
            backorder_limit: opt_int("bl")?.unwrap_or(0),
            occurred_at_ms: int("ts")?,
            reservation,
            delta: opt_int("delta")?,
            reason: f.get("reason").map(str::to_owned),
            reference: f.get("ref").filter(|v| !v.is_empty()).map(str::to_owned),
            actor: f.get("actor").map(str::to_owned),
            request_id: f.get("req").map(str::to_owned),
            held: opt_int("held")?,
            cart_id: f.get("cart").map(str::to_owned),
        })
    }

    /// Parses a packed event (`kind|sku|…|ref`, or `v2|kind|…|actor|req|ref`);
    /// empty positions are absent.
    pub fn from_packed(
        partition: Partition,
        stream_id: &str,
        packed: &str,
    ) -> Result<Self, EventParseError> {
        let (layout, packed): (&[&str], &str) = if let Some(rest) = packed.strip_prefix(STAFF_MARK)
        {
            (&STAFF_LAYOUT, rest)
        } else if let Some(rest) = packed.strip_prefix(CHANGE_MARK) {
            (&CHANGE_LAYOUT, rest)
        } else {
            (&FIRST_LAYOUT, packed)
        };
        let pairs = layout
            .iter()
            .zip(packed.splitn(layout.len(), '|'))
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (*k, v));
        Self::from_entry(partition, stream_id, pairs)
    }

    /// Parses an entry as the Redis layer reads it from a stream: packed,
    /// or one field per value (written by an older gateway).
    pub fn from_stream_entry(
        partition: Partition,
        (id, fields): &StreamEntry,
    ) -> Result<Self, EventParseError> {
        if let Some(packed) = fields.get(PACKED_FIELD) {
            return Self::from_packed(partition, id, packed);
        }
        let pairs = fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        Self::from_entry(partition, id, pairs)
    }

    /// Milliseconds part of the stream id: when Redis appended the entry.
    pub fn stream_ms(stream_id: &str) -> Option<i64> {
        stream_id.split('-').next()?.parse().ok()
    }
}

/// Parses the `[stream id, packed event]` pairs a script's reply carries.
pub fn parse_packed(
    partition: Partition,
    raw: &[(String, String)],
) -> Result<Vec<Event>, EventParseError> {
    raw.iter()
        .map(|(id, packed)| Event::from_packed(partition, id, packed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_reserved(e: &Event) {
        assert_eq!(
            (e.kind, e.version, e.on_hand, e.reserved),
            (EventKind::Reserved, 7, 10, 3)
        );
        assert_eq!(e.qty(), 2);
        let r = e.reservation.as_ref().unwrap();
        assert_eq!(
            (r.id.as_str(), r.backorder, r.expires_at_ms),
            ("3.ab.S", false, Some(1763712600000))
        );
        assert_eq!((e.delta, e.reason.as_deref()), (None, None));
    }

    #[test]
    fn a_packed_reserved_event_parses_with_its_reservation() {
        let packed = "reserved|S|default|7|10|3|1|2|0|1763712000000|3.ab.S|a|2|0|\
                      1763712600000|1763712000000|||";
        let events =
            parse_packed(Partition(3), &[("1763712000000-0".into(), packed.into())]).unwrap();
        assert_reserved(&events[0]);
    }

    #[test]
    fn an_entry_written_one_field_per_value_still_parses() {
        let flat = [
            ("kind", "reserved"),
            ("sku", "S"),
            ("loc", "default"),
            ("ver", "7"),
            ("oh", "10"),
            ("rs", "3"),
            ("ss", "1"),
            ("lt", "2"),
            ("bl", "0"),
            ("ts", "1763712000000"),
            ("rid", "3.ab.S"),
            ("acct", "a"),
            ("qty", "2"),
            ("bo", "0"),
            ("exp", "1763712600000"),
            ("created", "1763712000000"),
        ];
        let fields = flat
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let entry: StreamEntry = ("1763712000000-0".into(), fields);
        assert_reserved(&Event::from_stream_entry(Partition(3), &entry).unwrap());
    }

    #[test]
    fn a_packed_reference_keeps_its_bars() {
        let packed = "adjusted|S|default|8|12|0|0|0|0|1763712000000|||||||2|receipt|po|77|x";
        let e = Event::from_packed(Partition(0), "1-0", packed).unwrap();
        assert_eq!(e.kind, EventKind::Adjusted);
        assert_eq!((e.delta, e.reason.as_deref()), (Some(2), Some("receipt")));
        assert_eq!(e.reference.as_deref(), Some("po|77|x"));
        assert!(e.reservation.is_none());
    }

    #[test]
    fn an_operators_change_carries_its_actor_and_request() {
        let packed =
            "v2|adjusted|S|east|9|11|0|0|0|0|1763712000000|||||||-1|shrinkage|ops@x|req-7|po|1";
        let e = Event::from_packed(Partition(0), "1-0", packed).unwrap();
        assert_eq!(
            (e.kind, e.location.as_str(), e.version),
            (EventKind::Adjusted, "east", 9)
        );
        assert_eq!(
            (e.delta, e.reason.as_deref()),
            (Some(-1), Some("shrinkage"))
        );
        assert_eq!(
            (e.actor.as_deref(), e.request_id.as_deref()),
            (Some("ops@x"), Some("req-7"))
        );
        assert_eq!(e.reference.as_deref(), Some("po|1"));
        // The first layout has neither.
        let old = "stock_set|S|east|8|12|0|0|0|0|1763712000000|||||||12||";
        let e = Event::from_packed(Partition(0), "1-0", old).unwrap();
        assert_eq!((e.actor, e.request_id, e.delta), (None, None, Some(12)));
    }

    #[test]
    fn a_partial_release_leaves_its_reservation_held_with_the_rest() {
        let packed = "v3|released|S|east|10|11|3|0|0|0|1763712000000|3.ab.S|a|2|0|\
                      1763712600000|1763712000000||shrink|||1||";
        let e = Event::from_packed(Partition(3), "1-0", packed).unwrap();
        assert_eq!((e.kind, e.qty(), e.held), (EventKind::Released, 2, Some(1)));
        assert_eq!(
            (e.reservation_state(), e.reservation_qty()),
            (Some("held"), Some(1))
        );
        let line = "v3|reserved|S|east|11|11|4|0|0|0|1763712000000|3.cd.S|a|1|0|\
                    1763712600000|1763712000000|||||1|7.ef|";
        let e = Event::from_packed(Partition(3), "1-1", line).unwrap();
        assert_eq!(e.cart_id.as_deref(), Some("7.ef"));
        assert_eq!(e.reference, None);
        let all = "v3|released|S|east|12|11|3|0|0|0|1763712000000|3.cd.S|a|1|0|\
                   1763712600000||||ops|req-1|0|7.ef|";
        let e = Event::from_packed(Partition(3), "1-2", all).unwrap();
        assert_eq!(
            (e.reservation_state(), e.reservation_qty()),
            (Some("released"), Some(1))
        );
        assert_eq!(e.actor.as_deref(), Some("ops"));
    }

    #[test]
    fn an_entry_without_a_version_is_refused() {
        let err = Event::from_entry(
            Partition(0),
            "1-0",
            [("kind", "adjusted"), ("sku", "S"), ("loc", "l")],
        )
        .unwrap_err();
        assert!(err.problem.contains("ver"), "{err}");
    }
}
