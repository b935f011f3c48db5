//! Typed calls: one function per script, turning domain values into `KEYS`
//! and `ARGV` and the script's JSON reply into an enum.

use std::collections::HashMap;

use fred::prelude::*;
use serde::{Deserialize, de::DeserializeOwned};

use super::{Redis, RedisError, ScriptName};
use crate::{
    inventory::{
        AccountId, IdempotencyKey, Location, Partition, Qty, ReservationId, Sku,
        view::InventoryView,
    },
    journal::{Event, event::RawEvents},
    metrics as names,
};

/// A reservation that holds units.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Hold {
    pub reservation_id: String,
    pub sku: String,
    pub location: String,
    pub qty: u32,
    pub expires_at_ms: i64,
    pub backorder: bool,
    pub stream_id: String,
    /// True when this answers a repeated `Idempotency-Key`.
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReserveReply {
    Held(Hold),
    InsufficientStock {
        available: i64,
        /// Units the whole SKU could still hold, backorders included: 0
        /// means sold out, whatever the quantity or location asked for.
        holdable: i64,
        /// The SKU's version when Redis decided.
        version: u64,
        /// The earliest remaining hold deadline (ms since the epoch): units
        /// may come back then.
        #[serde(default)]
        next_expiry_ms: Option<i64>,
    },
    PurchaseLimit {
        limit: i64,
        already: i64,
    },
    SaleNotOpen {
        opens_at_ms: i64,
    },
    SaleClosed,
    UnknownSku,
    UnknownLocation,
    IdempotencyKeyReused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

/// A reservation as stored, with its status derived at Redis time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub sku: String,
    pub location: String,
    pub qty: u32,
    pub status: ReservationStatus,
    pub expires_at_ms: i64,
    pub account_id: String,
    pub backorder: bool,
    /// The stream entry of the reservation's latest event.
    pub stream_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReservationReply {
    Ok(Reservation),
    NotFound,
    /// The transition is forbidden by the reservation's current status.
    ReservationConfirmed,
    ReservationReleased,
    ReservationExpired,
}

/// The end state `settle` moves a live hold to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Confirm,
    Release,
}

/// A SKU hash as field/value pairs, as a script returns it (a flat array).
#[derive(Debug, Clone, PartialEq)]
pub struct SkuHash(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for SkuHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut flat = Vec::<String>::deserialize(d)?.into_iter();
        Ok(Self(
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect(),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AdminReply {
    Ok { sku: SkuHash },
    VersionMismatch { version: u64 },
    InsufficientStock { available: i64, reserved: i64 },
    UnknownSku,
    UnknownLocation,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreReply {
    Ok {
        holds: i64,
    },
    /// The SKU was at another version than the caller saw.
    Changed {
        version: i64,
    },
}

/// One location's counts, as an admin sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockCounts {
    pub on_hand: u64,
    pub safety_stock: u64,
    pub low_stock_threshold: u64,
    pub backorder_limit: u64,
}

/// A policy field in a `set_policy` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    Keep,
    Clear,
    Set(i64),
}

impl PolicyField {
    fn arg(self) -> String {
        match self {
            Self::Keep => String::new(),
            Self::Clear => "-".into(),
            Self::Set(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub max_per_account: Option<PolicyField>,
    pub opens_at_ms: Option<PolicyField>,
    pub closes_at_ms: Option<PolicyField>,
    pub ttl_seconds: Option<PolicyField>,
}

/// A SKU's policy after an update; `None` where unset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Policy {
    pub max: Option<i64>,
    pub open: Option<i64>,
    pub close: Option<i64>,
    pub ttl: Option<i64>,
}

pub struct ReserveRequest<'a> {
    pub id: &'a ReservationId,
    pub account: &'a AccountId,
    pub qty: Qty,
    pub location: Option<&'a Location>,
    pub idempotency_key: Option<&'a IdempotencyKey>,
}

impl ReserveRequest<'_> {
    /// What makes two requests "the same body" for an idempotency key.
    pub fn fingerprint(&self) -> String {
        let loc = self.location.map_or("*", |l| l.as_str());
        format!("{}|{}|{}", self.id.sku(), loc, self.qty.get())
    }
}

fn decode<T: DeserializeOwned>(script: ScriptName, json: &str) -> Result<T, RedisError> {
    serde_json::from_str(json).map_err(|e| {
        let error = RedisError::Reply {
            script: script.stem(),
            detail: format!("{e}: {json}"),
        };
        super::count_error(script.stem(), error.kind());
        error
    })
}

/// A partition stream entry as XRANGE returns it: id and fields.
pub type StreamEntry = (String, HashMap<String, String>);

/// A mutating script's reply: its outcome, the stream entries it appended,
/// and how many locations it saw holding more than they may (always 0 unless
/// an invariant broke).
#[derive(Deserialize)]
struct Scripted<T> {
    reply: T,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    oversold: u64,
}

/// The expire script's outcome.
#[derive(Deserialize)]
struct Expired {
    expired: i64,
}

impl Redis {
    /// Runs a mutating script of partition `p` and parses the events it
    /// appended. An event that does not parse is a bug between Lua and Rust:
    /// it is logged and left to the reconciler, and the outcome still counts
    /// (Redis has applied it).
    async fn eval_mut<T: DeserializeOwned>(
        &self,
        script: ScriptName,
        p: Partition,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(T, Vec<Event>), RedisError> {
        let json: String = self.eval(script, keys, args).await?;
        let Scripted {
            reply,
            events,
            oversold,
        } = decode::<Scripted<T>>(script, &json)?;
        if oversold > 0 {
            metrics::counter!(names::OVERSOLD_TOTAL).increment(oversold);
            tracing::error!(
                script = script.stem(),
                partition = p.0,
                oversold,
                "OVERSOLD: a location holds more units than it may after this call"
            );
        }
        if events.is_empty() {
            return Ok((reply, Vec::new()));
        }
        let events = events.parse(p).unwrap_or_else(|e| {
            tracing::error!(script = script.stem(), error = %e, "unparsable journal event");
            Vec::new()
        });
        for event in &events {
            metrics::counter!(names::INVENTORY_EVENTS_TOTAL, "kind" => event.kind.as_str())
                .increment(1);
        }
        Ok((reply, events))
    }

    /// Partition `p`'s stream entries from `start` to `end` (inclusive ids,
    /// or `-`/`+`), at most `count`.
    pub async fn stream_entries(
        &self,
        p: Partition,
        start: &str,
        end: &str,
        count: u64,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        self.pool()
            .xrange(self.keys().events(p), start, end, Some(count))
            .await
            .map_err(|e| super::classify("stream_entries", e))
    }

    /// Offers events to the journal queue, when this process runs one.
    pub fn offer_to_journal(&self, events: Vec<Event>) {
        if let Some(queue) = &self.journal
            && !events.is_empty()
        {
            queue.offer(events);
        }
    }

    /// The KEYS and ARGV of the reserve script for `req`: the exact call
    /// `reserve` makes, also handed to `flashgate bench` so that its raw
    /// Redis ceiling measures the same script with the same arguments.
    pub fn reserve_call(
        &self,
        req: &ReserveRequest<'_>,
        fingerprint: String,
    ) -> (Vec<String>, Vec<String>) {
        let limits = self.limits();
        let p = req.id.partition();
        let keys = self
            .keys()
            .reserve_keys(req.id, req.idempotency_key.map(|k| (req.account, k)));
        let args = vec![
            req.id.as_str().to_owned(),
            req.account.as_str().to_owned(),
            req.qty.get().to_string(),
            req.location
                .map_or(String::new(), |l| l.as_str().to_owned()),
            limits.hold_ttl_ms.to_string(),
            if req.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            fingerprint,
            limits.idempotency_ttl_ms.to_string(),
            limits.expiry_batch.to_string(),
            limits.stream_max_len.to_string(),
            limits.record_retention_ms.to_string(),
            self.keys().stock_channel(p),
            req.id.sku().as_str().to_owned(),
        ];
        (keys, args)
    }

    pub async fn reserve(&self, req: ReserveRequest<'_>) -> Result<ReserveReply, RedisError> {
        let fingerprint = req.fingerprint();
        let limits = self.limits();
        if let Some(key) = req.idempotency_key {
            // Ties the key to this body whatever SKU a later request names;
            // the SKU-slot record below then answers same-body repeats.
            let claim_key = self.keys().idempotency_claim(req.account, key);
            let ttl = Expiration::PX(limits.idempotency_ttl_ms as i64);
            let previous: Option<String> = self
                .pool()
                .set(
                    claim_key,
                    fingerprint.as_str(),
                    Some(ttl),
                    Some(SetOptions::NX),
                    true,
                )
                .await
                .map_err(|e| super::classify("idempotency_claim", e))?;
            if previous.is_some_and(|p| p != fingerprint) {
                return Ok(ReserveReply::IdempotencyKeyReused);
            }
        }
        let (keys, args) = self.reserve_call(&req, fingerprint);
        let p = req.id.partition();
        let (reply, events) = self.eval_mut(ScriptName::Reserve, p, keys, args).await?;
        self.offer_to_journal(events);
        Ok(reply)
    }

    /// Confirms or releases the account's reservation. Unlike the other
    /// calls it hands the events it appended to the caller, who writes them
    /// synchronously or offers them to the journal (`offer_to_journal`).
    pub async fn settle(
        &self,
        id: &ReservationId,
        account: &AccountId,
        settlement: Settlement,
    ) -> Result<(ReservationReply, Vec<Event>), RedisError> {
        let script = match settlement {
            Settlement::Confirm => ScriptName::Confirm,
            Settlement::Release => ScriptName::Release,
        };
        let limits = self.limits();
        let args = vec![
            account.as_str().to_owned(),
            limits.expiry_batch.to_string(),
            limits.stream_max_len.to_string(),
            limits.record_retention_ms.to_string(),
            self.keys().stock_channel(id.partition()),
            id.sku().as_str().to_owned(),
        ];
        let keys = self.keys().settle_keys(id);
        self.eval_mut(script, id.partition(), keys, args).await
    }

    /// Reads a reservation; `owner` limits it to one account (None: admin).
    pub async fn reservation(
        &self,
        id: &ReservationId,
        owner: Option<&AccountId>,
    ) -> Result<ReservationReply, RedisError> {
        let keys = vec![self.keys().reservation(id)];
        let args = vec![owner.map_or(String::new(), |a| a.as_str().to_owned())];
        let json: String = self.eval(ScriptName::Reservation, keys, args).await?;
        decode(ScriptName::Reservation, &json)
    }

    /// The inventory view of a SKU, `None` when it does not exist.
    pub async fn inventory(&self, sku: &Sku) -> Result<Option<InventoryView>, RedisError> {
        let key = self.keys().sku(self.keys().partition_of(sku), sku);
        let fields: HashMap<String, String> = self
            .pool()
            .hgetall(key)
            .await
            .map_err(|e| super::classify("inventory", e))?;
        let fields: Vec<(String, String)> = fields.into_iter().collect();
        Ok(InventoryView::from_hash(sku.as_str(), &fields))
    }

    pub async fn set_stock(
        &self,
        sku: &Sku,
        location: &Location,
        counts: StockCounts,
        if_match: Option<u64>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        let limits = self.limits();
        let p = self.keys().partition_of(sku);
        let args = vec![
            location.as_str().to_owned(),
            counts.on_hand.to_string(),
            counts.safety_stock.to_string(),
            counts.low_stock_threshold.to_string(),
            counts.backorder_limit.to_string(),
            if_match.map_or(String::new(), |v| v.to_string()),
            limits.expiry_batch.to_string(),
            limits.stream_max_len.to_string(),
            self.keys().stock_channel(p),
            limits.operation_ttl_ms.to_string(),
            sku.as_str().to_owned(),
        ];
        let keys = self.keys().admin_keys(sku, op_id);
        let (reply, events) = self.eval_mut(ScriptName::SetStock, p, keys, args).await?;
        self.offer_to_journal(events);
        Ok(reply)
    }

    pub async fn adjust(
        &self,
        sku: &Sku,
        location: &Location,
        delta: i64,
        reason: &str,
        reference: Option<&str>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        let limits = self.limits();
        let p = self.keys().partition_of(sku);
        let args = vec![
            location.as_str().to_owned(),
            delta.to_string(),
            reason.to_owned(),
            reference.unwrap_or_default().to_owned(),
            limits.expiry_batch.to_string(),
            limits.stream_max_len.to_string(),
            self.keys().stock_channel(p),
            limits.operation_ttl_ms.to_string(),
            sku.as_str().to_owned(),
        ];
        let keys = self.keys().admin_keys(sku, op_id);
        let (reply, events) = self.eval_mut(ScriptName::Adjust, p, keys, args).await?;
        self.offer_to_journal(events);
        Ok(reply)
    }

    pub async fn set_policy(&self, sku: &Sku, update: &PolicyUpdate) -> Result<Policy, RedisError> {
        let key = self.keys().sku(self.keys().partition_of(sku), sku);
        let arg = |f: Option<PolicyField>| f.unwrap_or(PolicyField::Keep).arg();
        let args = vec![
            arg(update.max_per_account),
            arg(update.opens_at_ms),
            arg(update.closes_at_ms),
            arg(update.ttl_seconds),
        ];
        let json: String = self.eval(ScriptName::SetPolicy, vec![key], args).await?;
        decode(ScriptName::SetPolicy, &json)
    }

    /// Rewrites a SKU from a journal document (see lua/restore.lua), with
    /// the records of the reservations `ids`, in the document's order.
    pub async fn restore(
        &self,
        sku: &Sku,
        ids: &[ReservationId],
        doc: &serde_json::Value,
    ) -> Result<RestoreReply, RedisError> {
        let keys = self.keys().restore_keys(sku, ids);
        let json: String = self
            .eval(ScriptName::Restore, keys, vec![doc.to_string()])
            .await?;
        decode(ScriptName::Restore, &json)
    }

    /// Expires up to one batch of the SKU's overdue holds; returns how many.
    pub async fn expire(&self, sku: &Sku) -> Result<i64, RedisError> {
        let limits = self.limits();
        let p = self.keys().partition_of(sku);
        let args = vec![
            limits.expiry_batch.to_string(),
            limits.stream_max_len.to_string(),
            self.keys().stock_channel(p),
            sku.as_str().to_owned(),
        ];
        let keys = self.keys().expire_keys(sku);
        let (reply, events) = self
            .eval_mut::<Expired>(ScriptName::Expire, p, keys, args)
            .await?;
        self.offer_to_journal(events);
        Ok(reply.expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replies_decode_into_outcomes() {
        let held: ReserveReply = decode(
            ScriptName::Reserve,
            r#"{"outcome":"held","reservation_id":"1.a.S","sku":"S","location":"default","qty":2,
               "expires_at_ms":1763712000000,"backorder":false,"stream_id":"1-0","replayed":false}"#,
        )
        .unwrap();
        assert!(matches!(held, ReserveReply::Held(h) if h.qty == 2));
        let limit: ReserveReply = decode(
            ScriptName::Reserve,
            r#"{"outcome":"purchase_limit","limit":2,"already":2}"#,
        )
        .unwrap();
        assert_eq!(
            limit,
            ReserveReply::PurchaseLimit {
                limit: 2,
                already: 2
            }
        );
        assert!(decode::<ReserveReply>(ScriptName::Reserve, r#"{"outcome":"what"}"#).is_err());
        let admin: AdminReply = decode::<Scripted<AdminReply>>(
            ScriptName::SetStock,
            r#"{"reply":{"outcome":"ok","sku":["ver","3","l:default:oh","5"]}}"#,
        )
        .unwrap()
        .reply;
        let pairs = vec![
            ("ver".into(), "3".into()),
            ("l:default:oh".into(), "5".into()),
        ];
        assert_eq!(
            admin,
            AdminReply::Ok {
                sku: SkuHash(pairs)
            }
        );
    }
}
