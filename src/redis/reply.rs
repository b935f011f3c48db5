//! What partition scripts return, parsed: the envelope of the calling
//! convention (lua/prelude.lua) and each script's reply text.
//!
//! The envelope is a RESP array, `[oversold, item_1, …]`, with one item per
//! request: `[reply, stream id, packed event, …]`. Building it costs Lua a
//! table per request and nothing else; the hot scripts' replies are packed
//! text (`outcome|field|…`), the admin scripts' are JSON.

use fred::types::Value;
use serde::de::DeserializeOwned;

use super::{
    ScriptName,
    calls::{
        AdminReply, AmendReply, Hold, Reservation, ReservationReply, ReservationStatus,
        ReserveReply, RoomReply, TicketStatus,
    },
};

/// A script's reply text, parsed; `Err` says what did not fit.
pub trait ScriptReply: Sized + Send + 'static {
    fn parse(text: &str) -> Result<Self, String>;
}

/// One request's reply text and the `(stream id, packed event)` pairs its
/// script run appended.
pub struct Item {
    pub reply: String,
    pub events: Vec<(String, String)>,
}

/// The envelope: how many holds broke the invariant (0 unless a decision is
/// wrong) and one item per request.
pub struct Envelope {
    pub oversold: u64,
    pub items: Vec<Item>,
}

impl Envelope {
    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Array(values) = value else {
            return Err(format!("not an array: {value:?}"));
        };
        let mut values = values.into_iter();
        let oversold = match values.next() {
            Some(Value::Integer(n)) if n >= 0 => n as u64,
            other => return Err(format!("oversold count: {other:?}")),
        };
        let items = values.map(item).collect::<Result<_, _>>()?;
        Ok(Self { oversold, items })
    }
}

fn item(value: Value) -> Result<Item, String> {
    let Value::Array(values) = value else {
        return Err(format!("item not an array: {value:?}"));
    };
    let mut texts = values.into_iter().map(|v| match v.into_string() {
        Some(s) => Ok(s),
        None => Err("item holds a value that is not text".to_owned()),
    });
    let reply = texts.next().ok_or("empty item")??;
    let mut events = Vec::with_capacity(texts.len() / 2);
    while let Some(id) = texts.next() {
        let packed = texts.next().ok_or("stream id without its event")??;
        events.push((id?, packed));
    }
    Ok(Item { reply, events })
}

/// `|`-separated fields, read in order.
struct Fields<'a>(std::str::Split<'a, char>);

impl<'a> Fields<'a> {
    fn new(text: &'a str) -> Self {
        Self(text.split('|'))
    }

    fn text(&mut self, name: &str) -> Result<&'a str, String> {
        self.0.next().ok_or_else(|| format!("missing {name}"))
    }

    fn int<T: std::str::FromStr>(&mut self, name: &str) -> Result<T, String> {
        let raw = self.text(name)?;
        raw.parse().map_err(|_| format!("{name}: {raw:?}"))
    }

    fn opt_int(&mut self, name: &str) -> Result<Option<i64>, String> {
        match self.text(name)? {
            "" => Ok(None),
            raw => raw
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: {raw:?}")),
        }
    }
}

/// A packed reservation record, `rid|sku|loc|acct|qty|state|exp|bo|created|sid`
/// (lua/prelude.lua).
struct Record<'a> {
    rid: &'a str,
    sku: &'a str,
    loc: &'a str,
    acct: &'a str,
    qty: u32,
    state: &'a str,
    exp: i64,
    backorder: bool,
    sid: &'a str,
}

impl<'a> Record<'a> {
    fn parse(text: &'a str) -> Result<Self, String> {
        let mut f = Fields::new(text);
        let (rid, sku, loc, acct) = (
            f.text("rid")?,
            f.text("sku")?,
            f.text("loc")?,
            f.text("acct")?,
        );
        let (qty, state, exp) = (f.int("qty")?, f.text("state")?, f.int("exp")?);
        let backorder = f.text("bo")? == "1";
        // `created` is not part of any reply.
        f.text("created")?;
        let sid = f.text("sid")?;
        Ok(Self {
            rid,
            sku,
            loc,
            acct,
            qty,
            state,
            exp,
            backorder,
            sid,
        })
    }

    fn hold(&self, replayed: bool) -> Hold {
        Hold {
            reservation_id: self.rid.to_owned(),
            sku: crate::inventory::client_sku(self.sku).to_owned(),
            location: self.loc.to_owned(),
            qty: self.qty,
            expires_at_ms: self.exp,
            backorder: self.backorder,
            stream_id: self.sid.to_owned(),
            replayed,
        }
    }

    fn reservation(&self) -> Result<Reservation, String> {
        let status = match self.state {
            "held" => ReservationStatus::Held,
            "confirmed" => ReservationStatus::Confirmed,
            "released" => ReservationStatus::Released,
            "expired" => ReservationStatus::Expired,
            other => return Err(format!("status {other:?}")),
        };
        Ok(Reservation {
            reservation_id: self.rid.to_owned(),
            sku: crate::inventory::client_sku(self.sku).to_owned(),
            location: self.loc.to_owned(),
            qty: self.qty,
            status,
            expires_at_ms: self.exp,
            account_id: self.acct.to_owned(),
            backorder: self.backorder,
            stream_id: self.sid.to_owned(),
        })
    }
}

impl ScriptReply for ReserveReply {
    fn parse(text: &str) -> Result<Self, String> {
        let (outcome, rest) = text.split_once('|').unwrap_or((text, ""));
        let mut f = Fields::new(rest);
        Ok(match outcome {
            "held" => Self::Held(Record::parse(rest)?.hold(false)),
            "replayed" => Self::Held(Record::parse(rest)?.hold(true)),
            "insufficient_stock" => Self::InsufficientStock {
                available: f.int("available")?,
                holdable: f.int("holdable")?,
                version: f.int("version")?,
                next_expiry_ms: f.opt_int("next_expiry_ms")?,
            },
            "purchase_limit" => Self::PurchaseLimit {
                limit: f.int("limit")?,
                already: f.int("already")?,
            },
            "sale_not_open" => Self::SaleNotOpen {
                opens_at_ms: f.int("opens_at_ms")?,
            },
            "sale_closed" => Self::SaleClosed,
            "unknown_sku" => Self::UnknownSku,
            "unknown_location" => Self::UnknownLocation,
            "idempotency_key_reused" => Self::IdempotencyKeyReused,
            "voided" => Self::Voided,
            "admission_required" => Self::AdmissionRequired,
            "bucketed" => Self::Bucketed(
                rest.split(',')
                    .map(|p| p.parse().map(crate::inventory::Partition))
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("bucket partitions {rest:?}"))?,
            ),
            other => return Err(format!("outcome {other:?}")),
        })
    }
}

impl ScriptReply for ReservationReply {
    fn parse(text: &str) -> Result<Self, String> {
        let (outcome, rest) = text.split_once('|').unwrap_or((text, ""));
        Ok(match outcome {
            "ok" => Self::Ok(Record::parse(rest)?.reservation()?),
            "not_found" => Self::NotFound,
            "reservation_confirmed" => Self::ReservationConfirmed,
            "reservation_released" => Self::ReservationReleased,
            "reservation_expired" => Self::ReservationExpired,
            other => return Err(format!("outcome {other:?}")),
        })
    }
}

impl ScriptReply for AmendReply {
    fn parse(text: &str) -> Result<Self, String> {
        let (outcome, rest) = text.split_once('|').unwrap_or((text, ""));
        let mut f = Fields::new(rest);
        Ok(match outcome {
            "hold_limit" => Self::HoldLimit {
                latest_ms: f.int("latest_ms")?,
            },
            "qty_not_smaller" => Self::QtyNotSmaller {
                held: f.int("held")?,
            },
            _ => Self::Reservation(ReservationReply::parse(text)?),
        })
    }
}

impl ScriptReply for RoomReply {
    fn parse(text: &str) -> Result<Self, String> {
        let (outcome, rest) = text.split_once('|').unwrap_or((text, ""));
        let mut f = Fields::new(rest);
        Ok(match outcome {
            "ticket" => {
                let ticket = f.text("ticket")?.to_owned();
                let status = match f.text("status")? {
                    "waiting" => TicketStatus::Waiting {
                        position: f.int("position")?,
                    },
                    "admitted" => TicketStatus::Admitted {
                        deadline_ms: f.int("deadline")?,
                    },
                    "used" => TicketStatus::Used {
                        deadline_ms: f.int("deadline")?,
                    },
                    "expired" => {
                        f.text("nothing")?;
                        TicketStatus::Expired
                    }
                    "sold_out" => {
                        f.text("nothing")?;
                        TicketStatus::SoldOut
                    }
                    other => return Err(format!("ticket status {other:?}")),
                };
                Self::Ticket {
                    ticket,
                    status,
                    admit_per_second: f.int("rate")?,
                }
            }
            "not_found" => Self::NotFound,
            "no_room" => Self::NoRoom,
            "unknown_sku" => Self::UnknownSku,
            other => return Err(format!("outcome {other:?}")),
        })
    }
}

/// A reply kept as its text (lua/bucket.lua's).
impl ScriptReply for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

/// The expire script's reply: how many holds it expired.
impl ScriptReply for i64 {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| format!("count {text:?}"))
    }
}

fn json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

impl ScriptReply for AdminReply {
    fn parse(text: &str) -> Result<Self, String> {
        json(text)
    }
}

/// What every script answers when asked to change a fenced SKU
/// (`FENCED` in lua/prelude.lua).
pub const FENCED: &str = "sku_recovering";

/// Parses `text` as `script`'s reply, counting a failure as a reply error.
pub fn parse<T: ScriptReply>(script: ScriptName, text: &str) -> Result<T, super::RedisError> {
    if text == FENCED {
        return Err(fenced(script));
    }
    T::parse(text).map_err(|detail| not_understood(script, format!("{detail}: {text}")))
}

/// `script` refused a fenced SKU, counted once here.
pub fn fenced(script: ScriptName) -> super::RedisError {
    super::count_error(script.stem(), "fenced");
    super::RedisError::Fenced {
        script: script.stem(),
    }
}

/// A reply of `script` this gateway does not understand, counted once here.
pub fn not_understood(script: ScriptName, detail: String) -> super::RedisError {
    let error = super::RedisError::Reply {
        script: script.stem(),
        detail,
    };
    super::count_error(script.stem(), error.kind());
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_reserve_replies_parse_into_outcomes() {
        let held = ReserveReply::parse(
            "held|1.a.S|S|default|acct1|2|held|1763712000000|0|1763711400000|1-0",
        )
        .unwrap();
        let ReserveReply::Held(hold) = held else {
            panic!("{held:?}")
        };
        assert_eq!(
            (
                hold.reservation_id.as_str(),
                hold.location.as_str(),
                hold.qty
            ),
            ("1.a.S", "default", 2)
        );
        assert_eq!(
            (hold.expires_at_ms, hold.backorder, hold.stream_id.as_str()),
            (1763712000000, false, "1-0")
        );
        assert!(!hold.replayed);
        let replayed = ReserveReply::parse("replayed|1.a.S|S|w1|acct1|1|held|9|1||3-1").unwrap();
        assert!(matches!(replayed, ReserveReply::Held(h) if h.replayed && h.backorder));
        assert_eq!(
            ReserveReply::parse("insufficient_stock|0|0|12|").unwrap(),
            ReserveReply::InsufficientStock {
                available: 0,
                holdable: 0,
                version: 12,
                next_expiry_ms: None
            }
        );
        assert_eq!(
            ReserveReply::parse("purchase_limit|2|2").unwrap(),
            ReserveReply::PurchaseLimit {
                limit: 2,
                already: 2
            }
        );
        assert_eq!(
            ReserveReply::parse("sale_closed").unwrap(),
            ReserveReply::SaleClosed
        );
        assert!(ReserveReply::parse("what").is_err());
        assert!(ReserveReply::parse("held|1.a.S|S").is_err());
        assert!(ReserveReply::parse("purchase_limit|two|2").is_err());
    }

    #[test]
    fn a_settled_record_reads_with_its_status() {
        let reply =
            ReservationReply::parse("ok|1.a.S|S|default|acct1|1|confirmed|5|0|4|7-0").unwrap();
        let ReservationReply::Ok(r) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            (r.status, r.account_id.as_str(), r.stream_id.as_str()),
            (ReservationStatus::Confirmed, "acct1", "7-0")
        );
        assert!(ReservationReply::parse("ok|1.a.S|S|default|acct1|1|lost|5|0|4|7-0").is_err());
        assert_eq!(
            ReservationReply::parse("reservation_expired").unwrap(),
            ReservationReply::ReservationExpired
        );
    }

    #[test]
    fn the_envelope_splits_items_into_replies_and_events() {
        let text = |s: &str| Value::String(s.into());
        let value = Value::Array(vec![
            Value::Integer(0),
            Value::Array(vec![text("sale_closed")]),
            Value::Array(vec![
                text("held|…"),
                text("1-0"),
                text("e1"),
                text("1-1"),
                text("e2"),
            ]),
        ]);
        let envelope = Envelope::from_value(value).unwrap();
        assert_eq!(envelope.oversold, 0);
        assert_eq!(envelope.items.len(), 2);
        assert!(envelope.items[0].events.is_empty());
        assert_eq!(
            envelope.items[1].events,
            vec![("1-0".into(), "e1".into()), ("1-1".into(), "e2".into())]
        );
        let odd = Value::Array(vec![
            Value::Integer(0),
            Value::Array(vec![text("x"), text("1-0")]),
        ]);
        assert!(Envelope::from_value(odd).is_err());
        assert!(Envelope::from_value(text("{}")).is_err());
    }
}
