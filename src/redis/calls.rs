//! Typed calls: one function per script, turning domain values into `KEYS`
//! and `ARGV` and the script's reply into an enum (`reply` parses them). Mutating calls
//! return the events their scripts appended, for the caller to journal.

use fred::prelude::*;
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    Caller, Core, Redis, RedisError, ScriptName,
    batch::{Applied, BatchKind},
    reply::{self, Envelope, ScriptReply},
};
use crate::{
    events::{Event, StreamEntry, parse_packed},
    inventory::{
        AccountId, CartId, IdempotencyKey, Location, Partition, Qty, ReservationId, SellerId, Sku,
        view::InventoryView,
    },
    metrics as names,
};

/// A reservation that holds units.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub reservation_id: String,
    pub sku: String,
    pub location: String,
    pub qty: u32,
    pub expires_at_ms: i64,
    pub backorder: bool,
    pub stream_id: String,
    /// True when this answers a repeated `Idempotency-Key`.
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// The cart whose line this is rolled the line back before the
    /// command arrived (a tombstone): nothing was held.
    Voided,
    /// The SKU has a waiting room and the request carries no admission of
    /// its account that is admitted, unused and unexpired.
    AdmissionRequired,
    /// The SKU keeps its stock in buckets in these partitions: the request
    /// goes there instead (see `service::buckets`).
    Bucketed(Vec<crate::inventory::Partition>),
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
#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
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

impl SkuHash {
    pub fn view(&self, sku: &str) -> Option<InventoryView> {
        InventoryView::from_hash(sku, &self.0)
    }
}

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

/// What lua/fence.lua found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReply {
    /// Redis holds an older version than the journal: the SKU is fenced now.
    Fenced { redis_version: i64 },
    /// The SKU was fenced before (by this or another instance).
    AlreadyFenced { redis_version: i64 },
    /// Redis is as new as the journal or newer: nothing was fenced.
    Current { redis_version: i64 },
    /// Redis does not know the SKU (nothing can be sold from it).
    Absent,
}

impl FenceReply {
    fn parse(text: &str) -> Option<Self> {
        let version = |v: &str| v.parse().ok();
        match text.split_once('|') {
            Some(("fenced", v)) => Some(Self::Fenced {
                redis_version: version(v)?,
            }),
            Some(("already", v)) => Some(Self::AlreadyFenced {
                redis_version: version(v)?,
            }),
            Some(("current", v)) => Some(Self::Current {
                redis_version: version(v)?,
            }),
            None if text == "absent" => Some(Self::Absent),
            _ => None,
        }
    }
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

impl StockCounts {
    /// Counts as a request gives them: each from 0 to
    /// `inventory::STOCK_COUNT_MAX`, else a message naming the field.
    pub fn parse(
        on_hand: i64,
        safety_stock: i64,
        low_stock_threshold: i64,
        backorder_limit: i64,
    ) -> Result<Self, String> {
        let count = |name: &str, v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v <= crate::inventory::STOCK_COUNT_MAX as u64)
                .ok_or_else(|| {
                    format!(
                        "{name} must be from 0 to {}",
                        crate::inventory::STOCK_COUNT_MAX
                    )
                })
        };
        Ok(Self {
            on_hand: count("on_hand", on_hand)?,
            safety_stock: count("safety_stock", safety_stock)?,
            low_stock_threshold: count("low_stock_threshold", low_stock_threshold)?,
            backorder_limit: count("backorder_limit", backorder_limit)?,
        })
    }
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
    /// `Some(None)` clears the seller.
    pub seller: Option<Option<SellerId>>,
    /// The waiting room: admissions per second and admission TTL (seconds).
    pub admit_per_second: Option<PolicyField>,
    pub admission_ttl_seconds: Option<PolicyField>,
    /// Stock buckets (1-64): laid out by `service::buckets`, not this
    /// script.
    pub buckets: Option<i64>,
}

/// A signed change of a location's on-hand count, with why.
#[derive(Debug, Clone, Copy)]
pub struct Adjustment<'a> {
    pub delta: i64,
    /// `receipt`, `shrinkage`, `correction` or `return`.
    pub reason: &'a str,
    pub reference: Option<&'a str>,
}

/// Who makes an admin change, and through which request: both ride on the
/// change's event into the journal. Neither holds a `|` (account ids and
/// request ids are parsed at the edge), as the packed event needs.
#[derive(Debug, Clone, Copy)]
pub struct Staff<'a> {
    pub actor: &'a AccountId,
    pub request_id: &'a str,
}

/// A change of one live hold (lua/amend.lua).
#[derive(Debug, Clone, Copy)]
pub enum Amendment<'a> {
    /// Moves the deadline to now + `seconds`, refused past `hold_max_ms`
    /// after the hold was made.
    Extend { seconds: u32, hold_max_ms: u64 },
    /// Keeps `qty` units held and gives the rest back.
    Shrink { qty: Qty },
    /// An operator gives the whole hold back, with why.
    Release { reason: &'a str, staff: Staff<'a> },
    /// A cart gives its line back (or leaves a tombstone when the line was
    /// never held), because the cart failed or ended.
    Void { cart: &'a CartId, reason: &'a str },
}

impl Amendment<'_> {
    fn action(&self) -> &'static str {
        match self {
            Self::Extend { .. } => "extend",
            Self::Shrink { .. } => "shrink",
            Self::Release { .. } => "release",
            Self::Void { .. } => "void",
        }
    }
}

/// What lua/amend.lua answered.
#[derive(Debug, Clone, PartialEq)]
pub enum AmendReply {
    /// Done (`Ok`), or refused as a confirm or release would be.
    Reservation(ReservationReply),
    /// The new deadline would be later than the latest allowed (ms).
    HoldLimit { latest_ms: i64 },
    /// A shrink to as many units as are held, or more.
    QtyNotSmaller { held: u32 },
}

/// What lua/room.lua is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAction {
    Take,
    Read,
}

impl RoomAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Take => "take",
            Self::Read => "read",
        }
    }
}

/// A waiting-room ticket's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStatus {
    /// In the queue, at this 1-based position.
    Waiting {
        position: u64,
    },
    /// Admitted until this deadline (ms since the epoch).
    Admitted {
        deadline_ms: i64,
    },
    /// Admitted, and a reservation used the admission.
    Used {
        deadline_ms: i64,
    },
    Expired,
    SoldOut,
}

/// What lua/room.lua answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomReply {
    Ticket {
        ticket: String,
        status: TicketStatus,
        admit_per_second: i64,
    },
    NotFound,
    NoRoom,
    UnknownSku,
}

/// A SKU's policy after an update; `None` where unset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Policy {
    pub max: Option<i64>,
    pub open: Option<i64>,
    pub close: Option<i64>,
    pub ttl: Option<i64>,
    /// The marketplace seller who owns the SKU.
    #[serde(default)]
    pub seller: Option<String>,
    /// The waiting room's admissions per second, while it is on.
    #[serde(default)]
    pub wra: Option<i64>,
    /// The waiting room's admission TTL (seconds), while it is on.
    #[serde(default)]
    pub wrt: Option<i64>,
    /// The SKU's version when the policy was read or set.
    #[serde(default)]
    pub ver: Option<i64>,
    /// The partitions of the SKU's stock buckets, comma separated, when it
    /// has them.
    #[serde(default)]
    pub bk: Option<String>,
}

impl Policy {
    /// How many stock buckets the SKU's stock is spread over.
    pub fn buckets(&self) -> i64 {
        self.bk
            .as_deref()
            .map_or(1, |bk| bk.split(',').count() as i64)
    }
}

impl Policy {
    /// The policy fields of a SKU hash (`lua/prelude.lua`: `max`, `open`,
    /// `close`, `ttl`; and `seller`).
    pub fn from_hash<S: AsRef<str>>(fields: &[(S, S)]) -> Self {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .and_then(|(_, v)| v.as_ref().parse().ok())
        };
        let text = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| v.as_ref().to_owned())
        };
        Self {
            max: field("max"),
            open: field("open"),
            close: field("close"),
            ttl: field("ttl"),
            seller: text("seller"),
            wra: field("wra"),
            wrt: field("wrt"),
            ver: field("ver"),
            bk: text("bk"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub id: ReservationId,
    pub account: AccountId,
    pub qty: Qty,
    pub location: Option<Location>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The cart this hold is a line of: its event names the cart.
    pub cart: Option<CartId>,
    /// The waiting-room ticket whose admission the request carries (its
    /// signature already checked at the edge).
    pub admission: Option<String>,
    /// The account's cap was already counted in its home stock bucket (a
    /// hold spilled over from it, see `service::buckets`): not checked here.
    pub claimed: bool,
}

impl ReserveRequest {
    /// What makes two requests "the same body" for an idempotency key.
    pub fn fingerprint(&self) -> String {
        let loc = self.location.as_ref().map_or("*", |l| l.as_str());
        format!("{}|{}|{}", self.id.sku().parent_str(), loc, self.qty.get())
    }
}

/// One confirm or release of a batch.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    pub id: ReservationId,
    pub account: AccountId,
    pub settlement: Settlement,
}

impl Settlement {
    /// The state the script moves a live hold to.
    fn target(self) -> &'static str {
        match self {
            Self::Confirm => "confirmed",
            Self::Release => "released",
        }
    }
}

/// The distinct SKUs of a batch, in first-seen order, and each request's
/// 1-based index among them (the scripts' SKU index).
fn sku_table<'a>(skus: impl Iterator<Item = &'a Sku>) -> (Vec<&'a Sku>, Vec<usize>) {
    let mut distinct: Vec<&Sku> = Vec::new();
    let indexes = skus
        .map(|sku| match distinct.iter().position(|s| *s == sku) {
            Some(i) => i + 1,
            None => {
                distinct.push(sku);
                distinct.len()
            }
        })
        .collect();
    (distinct, indexes)
}

/// The reserve script over a batch (lua/reserve.lua).
pub struct ReserveBatch;

impl BatchKind for ReserveBatch {
    type Request = ReserveRequest;
    type Reply = ReserveReply;
    const SCRIPT: ScriptName = ScriptName::Reserve;

    fn replicas(core: &Core, _: &ReserveRequest) -> u32 {
        core.limits().hold_wait_replicas
    }

    fn wrote(reply: &ReserveReply) -> bool {
        matches!(reply, ReserveReply::Held(_))
    }

    fn call(core: &Core, p: Partition, batch: &[&ReserveRequest]) -> (Vec<String>, Vec<String>) {
        let (skus, indexes) = sku_table(batch.iter().map(|r| r.id.sku()));
        let (mut keys, mut args) = core.partition_call(p, &skus);
        let limits = core.limits();
        args.push(limits.hold_ttl_ms.to_string());
        args.push(limits.idempotency_ttl_ms.to_string());
        args.push(limits.record_retention_ms.to_string());
        for (req, index) in batch.iter().zip(indexes) {
            keys.push(core.keys().reservation(&req.id));
            args.push(req.id.as_str().to_owned());
            args.push(index.to_string());
            args.push(req.account.as_str().to_owned());
            args.push(req.qty.get().to_string());
            args.push(
                req.location
                    .as_ref()
                    .map_or(String::new(), |l| l.as_str().to_owned()),
            );
            args.push(match &req.idempotency_key {
                Some(_) => req.fingerprint(),
                None => String::new(),
            });
            args.push(
                req.cart
                    .as_ref()
                    .map_or(String::new(), |c| c.as_str().to_owned()),
            );
            args.push(req.admission.clone().unwrap_or_default());
            args.push(if req.claimed { "1" } else { "" }.to_owned());
        }
        // The keyed requests' idempotency records, in request order.
        keys.extend(batch.iter().filter_map(|req| {
            let key = req.idempotency_key.as_ref()?;
            Some(core.keys().idempotency(p, req.id.sku(), &req.account, key))
        }));
        // The admission-carrying requests' room tickets and admissions.
        for req in batch.iter().filter(|r| r.admission.is_some()) {
            let [_, tickets, _, admissions, _] = core.keys().room(p, req.id.sku());
            keys.extend([tickets, admissions]);
        }
        (keys, args)
    }
}

/// The settle script over a batch (lua/settle.lua).
pub struct SettleBatch;

impl BatchKind for SettleBatch {
    type Request = SettleRequest;
    type Reply = ReservationReply;
    const SCRIPT: ScriptName = ScriptName::Settle;

    fn replicas(core: &Core, req: &SettleRequest) -> u32 {
        match req.settlement {
            Settlement::Confirm => core.limits().confirm_wait_replicas,
            Settlement::Release => 0,
        }
    }

    fn wrote(reply: &ReservationReply) -> bool {
        matches!(reply, ReservationReply::Ok(_))
    }

    fn call(core: &Core, p: Partition, batch: &[&SettleRequest]) -> (Vec<String>, Vec<String>) {
        let (skus, indexes) = sku_table(batch.iter().map(|r| r.id.sku()));
        let (mut keys, mut args) = core.partition_call(p, &skus);
        args.push(core.limits().record_retention_ms.to_string());
        for (req, index) in batch.iter().zip(indexes) {
            keys.push(core.keys().reservation(&req.id));
            args.push(index.to_string());
            args.push(req.account.as_str().to_owned());
            args.push(req.settlement.target().to_owned());
        }
        (keys, args)
    }
}

fn decode<T: DeserializeOwned>(script: ScriptName, json: &str) -> Result<T, RedisError> {
    if json == reply::FENCED {
        return Err(reply::fenced(script));
    }
    serde_json::from_str(json).map_err(|e| reply::not_understood(script, format!("{e}: {json}")))
}

impl Core {
    /// Runs a script of partition `p` that follows the partition convention
    /// and parses each request's reply and events. An event that does not
    /// parse is a bug between Lua and Rust: it is logged and left to the
    /// reconciler, and the outcome still counts (Redis has applied it).
    pub async fn eval_partition<T: ScriptReply>(
        &self,
        script: ScriptName,
        p: Partition,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Applied<T>>, RedisError> {
        self.eval_partition_replicated(script, p, keys, args, 0)
            .await
            .map(|(applied, _)| applied)
    }

    /// `eval_partition`, then `WAIT replicas` (see `Core::eval_replicated`):
    /// also how many replicas have the call's writes.
    pub async fn eval_partition_replicated<T: ScriptReply>(
        &self,
        script: ScriptName,
        p: Partition,
        keys: Vec<String>,
        args: Vec<String>,
        replicas: u32,
    ) -> Result<(Vec<Applied<T>>, Option<u32>), RedisError> {
        let (value, acked): (fred::types::Value, _) =
            self.eval_replicated(script, keys, args, replicas).await?;
        let Envelope { oversold, items } =
            Envelope::from_value(value).map_err(|detail| reply::not_understood(script, detail))?;
        if oversold > 0 {
            metrics::counter!(names::OVERSOLD_TOTAL).increment(oversold);
            tracing::error!(
                script = script.stem(),
                partition = p.0,
                oversold,
                "OVERSOLD: a location holds more units than it may after this call"
            );
        }
        let applied: Result<Vec<Applied<T>>, RedisError> = items
            .into_iter()
            .map(|item| {
                Ok(Applied {
                    reply: reply::parse(script, &item.reply)?,
                    events: events_of(script, p, &item.events),
                })
            })
            .collect();
        applied.map(|applied| (applied, acked))
    }

    /// A one-request partition script (expire and the admin writes).
    pub(super) async fn eval_one<T: ScriptReply>(
        &self,
        script: ScriptName,
        p: Partition,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Applied<T>, RedisError> {
        let mut replies = self.eval_partition(script, p, keys, args).await?;
        match (replies.pop(), replies.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => Err(RedisError::Reply {
                script: script.stem(),
                detail: "not exactly one reply".into(),
            }),
        }
    }
}

fn events_of(script: ScriptName, p: Partition, raw: &[(String, String)]) -> Vec<Event> {
    if raw.is_empty() {
        return Vec::new();
    }
    let events = parse_packed(p, raw).unwrap_or_else(|e| {
        tracing::error!(script = script.stem(), error = %e, "unparsable journal event");
        Vec::new()
    });
    static EVENTS: names::LabelledCounter =
        names::LabelledCounter::new(names::INVENTORY_EVENTS_TOTAL, "kind");
    for event in &events {
        EVENTS.increment(event.kind.as_str(), 1);
    }
    events
}

impl Redis {
    /// Partition `p`'s stream entries from `start` to `end` (inclusive ids,
    /// or `-`/`+`), at most `count`: a background read (see
    /// `Core::command`).
    pub async fn stream_entries(
        &self,
        p: Partition,
        start: &str,
        end: &str,
        count: u64,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let key = self.keys().events(p);
        let key = &key;
        self.command(
            key,
            "stream_entries",
            Caller::Background,
            |client| async move { client.xrange(key, start, end, Some(count)).await },
        )
        .await
    }

    /// The KEYS and ARGV of the reserve script for `req` alone: the call a
    /// batch of one makes, also handed to `flashgate-dev bench` so that its raw
    /// Redis ceiling measures the same script with the same arguments.
    pub fn reserve_call(&self, req: &ReserveRequest) -> (Vec<String>, Vec<String>) {
        ReserveBatch::call(self.core(), req.id.partition(), &[req])
    }

    /// Holds units for `req`, in its partition's next batch.
    pub async fn reserve(&self, req: ReserveRequest) -> Result<Applied<ReserveReply>, RedisError> {
        self.reserve_returning(req).await.0
    }

    /// As `reserve`, handing the request back (see `Lanes::submit_returning`)
    /// for a caller that may send it again elsewhere.
    pub async fn reserve_returning(
        &self,
        req: ReserveRequest,
    ) -> (
        Result<Applied<ReserveReply>, RedisError>,
        Option<ReserveRequest>,
    ) {
        match self.claim_idempotency_key(&req).await {
            Ok(true) => {
                self.reserves
                    .submit_returning(req.id.partition(), req)
                    .await
            }
            Ok(false) => {
                let reused = Applied {
                    reply: ReserveReply::IdempotencyKeyReused,
                    events: Vec::new(),
                };
                (Ok(reused), Some(req))
            }
            Err(error) => (Err(error), Some(req)),
        }
    }

    /// Ties a keyed request's key to its body whatever SKU a later request
    /// names (the SKU-slot record the script keeps then answers same-body
    /// repeats): false when the key already stands for another body.
    async fn claim_idempotency_key(&self, req: &ReserveRequest) -> Result<bool, RedisError> {
        let Some(key) = &req.idempotency_key else {
            return Ok(true);
        };
        let fingerprint = req.fingerprint();
        let claim_key = self.keys().idempotency_claim(&req.account, key);
        let ttl = Expiration::PX(self.limits().idempotency_ttl_ms as i64);
        let claim_key = &claim_key;
        let fingerprint = fingerprint.as_str();
        let previous: Option<String> = self
            .command(
                claim_key,
                "idempotency_claim",
                Caller::Request,
                |client| async move {
                    let nx = Some(SetOptions::NX);
                    client
                        .set(claim_key, fingerprint, Some(ttl), nx, true)
                        .await
                },
            )
            .await?;
        Ok(previous.is_none_or(|p| p == fingerprint))
    }

    /// Confirms or releases the account's reservation, in its partition's
    /// next batch.
    pub async fn settle(
        &self,
        req: SettleRequest,
    ) -> Result<Applied<ReservationReply>, RedisError> {
        self.settles.submit(req.id.partition(), req).await
    }

    /// Changes one live hold; `owner` limits it to one account (None: an
    /// operator, or a cart voiding its line).
    pub async fn amend(
        &self,
        id: &ReservationId,
        owner: Option<&AccountId>,
        amendment: &Amendment<'_>,
    ) -> Result<Applied<AmendReply>, RedisError> {
        let p = id.partition();
        let (mut keys, mut args) = self.partition_call(p, &[id.sku()]);
        keys.push(self.keys().reservation(id));
        let (mut value, mut hold_max, mut reason) = (String::new(), String::new(), "");
        let (mut actor, mut request, mut cart) = ("", "", "");
        match amendment {
            Amendment::Extend {
                seconds,
                hold_max_ms,
            } => {
                value = seconds.to_string();
                hold_max = hold_max_ms.to_string();
            }
            Amendment::Shrink { qty } => value = qty.get().to_string(),
            Amendment::Release { reason: why, staff } => {
                (reason, actor, request) = (why, staff.actor.as_str(), staff.request_id);
            }
            Amendment::Void {
                cart: c,
                reason: why,
            } => (cart, reason) = (c.as_str(), why),
        }
        args.extend([
            amendment.action().to_owned(),
            id.as_str().to_owned(),
            owner.map_or(String::new(), |a| a.as_str().to_owned()),
            self.limits().record_retention_ms.to_string(),
            value,
            hold_max,
            reason.to_owned(),
            actor.to_owned(),
            request.to_owned(),
            cart.to_owned(),
        ]);
        self.eval_one(ScriptName::Amend, p, keys, args).await
    }

    /// Takes (`RoomAction::Take`) or reads a waiting-room ticket of
    /// `account` (lua/room.lua), admitting what may be admitted first.
    pub async fn room(
        &self,
        sku: &Sku,
        action: RoomAction,
        account: &AccountId,
        ticket: &str,
        draw: u64,
    ) -> Result<Applied<RoomReply>, RedisError> {
        let p = self.keys().partition_of(sku);
        let (mut keys, mut args) = self.partition_call(p, &[sku]);
        keys.extend(self.keys().room(p, sku));
        args.extend([
            action.as_str().to_owned(),
            account.as_str().to_owned(),
            ticket.to_owned(),
            draw.to_string(),
        ]);
        self.eval_one(ScriptName::Room, p, keys, args).await
    }

    /// Reads a reservation; `owner` limits it to one account (None: admin).
    pub async fn reservation(
        &self,
        id: &ReservationId,
        owner: Option<&AccountId>,
    ) -> Result<ReservationReply, RedisError> {
        let keys = vec![self.keys().reservation(id)];
        let args = vec![owner.map_or(String::new(), |a| a.as_str().to_owned())];
        let text: String = self.eval(ScriptName::Reservation, keys, args).await?;
        reply::parse(ScriptName::Reservation, &text)
    }

    /// The inventory view of a SKU, `None` when it does not exist.
    pub async fn inventory(
        &self,
        sku: &Sku,
        caller: Caller,
    ) -> Result<Option<InventoryView>, RedisError> {
        let fields = self.sku_fields(sku, caller).await?;
        Ok(InventoryView::from_hash(sku.as_str(), &fields))
    }

    /// The inventory view of a SKU with its policy, from one read; `None`
    /// when it does not exist.
    pub async fn inventory_and_policy(
        &self,
        sku: &Sku,
    ) -> Result<Option<(InventoryView, Policy)>, RedisError> {
        let fields = self.sku_fields(sku, Caller::Request).await?;
        Ok(InventoryView::from_hash(sku.as_str(), &fields)
            .map(|view| (view, Policy::from_hash(&fields))))
    }

    /// The SKU's `seller` policy field.
    pub async fn seller_of(&self, sku: &Sku) -> Result<Option<String>, RedisError> {
        let key = &self.keys().sku(self.keys().partition_of(sku), sku);
        self.command(key, "seller", Caller::Request, |client| async move {
            client.hget(key, "seller").await
        })
        .await
    }

    async fn sku_fields(
        &self,
        sku: &Sku,
        caller: Caller,
    ) -> Result<Vec<(String, String)>, RedisError> {
        self.summed_fields(sku, caller).await
    }

    pub async fn set_stock(
        &self,
        sku: &Sku,
        location: &Location,
        counts: StockCounts,
        if_match: Option<u64>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<Applied<AdminReply>, RedisError> {
        let p = self.keys().partition_of(sku);
        let (mut keys, mut args) = self.partition_call(p, &[sku]);
        keys.push(self.keys().operation(p, sku, op_id));
        args.extend([
            location.as_str().to_owned(),
            counts.on_hand.to_string(),
            counts.safety_stock.to_string(),
            counts.low_stock_threshold.to_string(),
            counts.backorder_limit.to_string(),
            if_match.map_or(String::new(), |v| v.to_string()),
            self.limits().operation_ttl_ms.to_string(),
            staff.actor.as_str().to_owned(),
            staff.request_id.to_owned(),
        ]);
        self.eval_one(ScriptName::SetStock, p, keys, args).await
    }

    pub async fn adjust(
        &self,
        sku: &Sku,
        location: &Location,
        adjustment: &Adjustment<'_>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<Applied<AdminReply>, RedisError> {
        let p = self.keys().partition_of(sku);
        let (mut keys, mut args) = self.partition_call(p, &[sku]);
        keys.push(self.keys().operation(p, sku, op_id));
        args.extend([
            location.as_str().to_owned(),
            adjustment.delta.to_string(),
            adjustment.reason.to_owned(),
            adjustment.reference.unwrap_or_default().to_owned(),
            self.limits().operation_ttl_ms.to_string(),
            staff.actor.as_str().to_owned(),
            staff.request_id.to_owned(),
        ]);
        self.eval_one(ScriptName::Adjust, p, keys, args).await
    }

    pub async fn set_policy(&self, sku: &Sku, update: &PolicyUpdate) -> Result<Policy, RedisError> {
        let p = self.keys().partition_of(sku);
        let (keys, mut args) = self.partition_call(p, &[sku]);
        let arg = |f: Option<PolicyField>| f.unwrap_or(PolicyField::Keep).arg();
        args.extend([
            arg(update.max_per_account),
            arg(update.opens_at_ms),
            arg(update.closes_at_ms),
            arg(update.ttl_seconds),
            match &update.seller {
                None => String::new(),
                Some(None) => "-".to_owned(),
                Some(Some(seller)) => format!("={seller}"),
            },
            arg(update.admit_per_second),
            arg(update.admission_ttl_seconds),
        ]);
        let json: String = self.eval(ScriptName::SetPolicy, keys, args).await?;
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
        let p = self.keys().partition_of(sku);
        let (mut keys, mut args) = self.partition_call(p, &[sku]);
        keys.extend(ids.iter().map(|id| self.keys().reservation(id)));
        keys.push(self.keys().claims(p, sku));
        args.push(doc.to_string());
        let json: String = self.eval(ScriptName::Restore, keys, args).await?;
        decode(ScriptName::Restore, &json)
    }

    /// Fences the SKU when Redis holds an older version of it than
    /// `journal_version` (see lua/fence.lua).
    pub async fn fence(&self, sku: &Sku, journal_version: i64) -> Result<FenceReply, RedisError> {
        let p = self.keys().partition_of(sku);
        let (keys, mut args) = self.partition_call(p, &[sku]);
        args.extend([
            journal_version.to_string(),
            crate::clock::now_ms().to_string(),
        ]);
        let text: String = self.eval(ScriptName::Fence, keys, args).await?;
        FenceReply::parse(&text)
            .ok_or_else(|| reply::not_understood(ScriptName::Fence, text.clone()))
    }

    /// Expires up to one batch of the SKU's overdue holds; returns how many,
    /// with their events.
    pub async fn expire(&self, sku: &Sku) -> Result<Applied<i64>, RedisError> {
        let p = self.keys().partition_of(sku);
        let (keys, args) = self.partition_call(p, &[sku]);
        self.core()
            .eval_one::<i64>(ScriptName::Expire, p, keys, args)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_replies_decode_from_json() {
        let admin: AdminReply = reply::parse(
            ScriptName::SetStock,
            r#"{"outcome":"ok","sku":["ver","3","l:default:oh","5"]}"#,
        )
        .unwrap();
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
        assert!(reply::parse::<AdminReply>(ScriptName::SetStock, r#"{"outcome":"what"}"#).is_err());
    }
}
