//! Carts: several SKUs held all or nothing, although their lines live in
//! different partitions (so on different cluster slots, often on different
//! masters) and no one script can hold them together.
//!
//! The protocol (README, "Carts"):
//! 1. `open`: the cart's record is written in the cart's own slot as
//!    `pending`, due for the recovery sweep `cart.recovery_seconds` later.
//!    Its lines' reservation ids are derived from the cart id, so whoever
//!    drives the cart names the same reservations.
//! 2. Every line is held by its partition's reserve script, exactly as a
//!    single reservation (so nothing is ever oversold), its event naming
//!    the cart.
//! 3. All held: the record moves `pending → held` (one deadline: the
//!    earliest line's). Any line refused: every line that was held, or
//!    whose outcome is unknown, is voided (released, or a tombstone left so
//!    that a late command holds nothing), then `pending → failed`.
//! 4. A gateway that dies between 2 and 3 leaves a `pending` record: once
//!    it is due, any instance's sweep moves it to `recovering`, voids every
//!    line and moves it to `failed`. Each move is one atomic step of
//!    lua/cart.lua, so the placing request and the sweep cannot both win:
//!    a request that finds its cart taken over answers `cart-pending`.
//!
//! Invariants: a cart's final status is `held` with every line held, or
//! `failed` with none; a unit is held for a cart that fails at most until
//! its rollback (bounded by `cart.recovery_seconds` plus a sweep); every
//! line's hold and release is journaled like any reservation's.
//! Confirm and release move `held → confirming | releasing` first, so a
//! sweep finishes them when their request stops half-way.

use std::time::Duration;

use futures_util::{StreamExt, future::join_all, stream};
use tokio_util::sync::CancellationToken;

use super::{Inventory, ServiceError};
use crate::{
    config::CartSettings,
    inventory::{AccountId, CartId, IdempotencyKey, Location, Partition, Qty, ReservationId, Sku},
    metrics as names,
    redis::{
        RedisError,
        calls::{
            Amendment, ReservationReply, ReservationStatus, ReserveReply, ReserveRequest,
            SettleRequest, Settlement,
        },
        carts::{CartLine, CartRecord, CartStatus, CartStep, FailedLine, Move},
    },
};

/// How many partitions one sweep reads at once.
const SWEEP_CONCURRENCY: usize = 8;
/// Carts one sweep takes over per partition per pass.
const SWEEP_CARTS_MAX: u32 = 100;
/// Line deadlines further apart than this make the sweep end the later
/// lines at the cart's deadline.
const UNEVEN_DEADLINES_MS: i64 = 1_000;

/// One line of a cart as a shopper asks for it.
#[derive(Debug, Clone)]
pub struct LineRequest {
    pub sku: Sku,
    pub qty: Qty,
    pub location: Option<Location>,
    /// The waiting-room ticket whose admission this line carries (a SKU
    /// with a room needs one; see `service::room`).
    pub admission: Option<String>,
}

/// What placing a cart came to.
#[derive(Debug)]
pub enum Placed {
    /// Every line is held (`replayed`: an earlier request with the same
    /// `Idempotency-Key` placed it).
    Held {
        cart: CartRecord,
        id: CartId,
        replayed: bool,
    },
    /// Nothing is held; these lines were refused.
    Failed { failed: Vec<FailedLine> },
    /// Another request (or the recovery sweep) is placing this cart now.
    Pending,
    /// The `Idempotency-Key` placed another cart.
    KeyReused,
}

/// Why a confirm or release of a cart was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    Pending,
    Expired,
    Released,
    Confirmed,
}

/// The cart use cases.
#[derive(Clone)]
pub struct Carts {
    pub inventory: Inventory,
    pub settings: CartSettings,
}

fn fingerprint(lines: &[LineRequest]) -> String {
    lines
        .iter()
        .map(|l| {
            let loc = l.location.as_ref().map_or("*", |l| l.as_str());
            format!("{}|{loc}|{}", l.sku, l.qty.get())
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The problem code and units available of a line's refusal.
fn refusal(reply: &ReserveReply) -> (&'static str, Option<i64>) {
    match reply {
        ReserveReply::Held(_) => ("held", None),
        ReserveReply::InsufficientStock { available, .. } => {
            ("insufficient-stock", Some(*available))
        }
        ReserveReply::PurchaseLimit { .. } => ("purchase-limit", None),
        ReserveReply::SaleNotOpen { .. } => ("sale-not-open", None),
        ReserveReply::SaleClosed => ("sale-closed", None),
        ReserveReply::UnknownSku => ("unknown-sku", None),
        ReserveReply::UnknownLocation => ("unknown-location", None),
        ReserveReply::IdempotencyKeyReused => ("idempotency-key-reused", None),
        ReserveReply::Voided => ("cart-unavailable", None),
        ReserveReply::AdmissionRequired => ("admission-required", None),
        ReserveReply::Bucketed(_) => ("buckets-locked", None),
    }
}

impl Carts {
    fn partitions(&self) -> u32 {
        self.inventory.redis.keys().partitions()
    }

    fn recovery_ms(&self) -> u64 {
        self.settings.recovery_seconds * 1000
    }

    fn retention_ms(&self) -> u64 {
        self.inventory.redis.limits().record_retention_ms
    }

    /// Places a cart: every line held, or none (see the module's protocol).
    pub async fn place(
        &self,
        account: &AccountId,
        lines: &[LineRequest],
        key: Option<&IdempotencyKey>,
    ) -> Result<Placed, RedisError> {
        let partitions = self.partitions();
        let id = key.map_or_else(
            || CartId::generate(partitions),
            |k| CartId::for_key(account, k, partitions),
        );
        let mut record = CartRecord {
            account: account.as_str().to_owned(),
            status: CartStatus::Pending,
            fingerprint: fingerprint(lines),
            created_ms: crate::clock::now_ms(),
            expires_at_ms: None,
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| CartLine {
                    reservation_id: id.line(i, &l.sku, partitions).as_str().to_owned(),
                    sku: l.sku.as_str().to_owned(),
                    qty: l.qty.get(),
                    location: l.location.as_ref().map(|l| l.as_str().to_owned()),
                    backorder: false,
                })
                .collect(),
            failed: Vec::new(),
        };
        let redis = &self.inventory.redis;
        let ttl = self.recovery_ms() + self.retention_ms();
        match redis
            .open_cart(&id, &record, ttl, self.recovery_ms())
            .await?
        {
            CartStep::Done(_) => {}
            CartStep::Exists(found) => return Ok(Self::replay(found, &record, id)),
            other => {
                tracing::error!(cart = id.as_str(), ?other, "opening a cart answered oddly");
                return Ok(Placed::Pending);
            }
        }
        let replies = join_all(lines.iter().enumerate().map(|(i, line)| {
            self.inventory.hold(ReserveRequest {
                id: id.line(i, &line.sku, partitions),
                account: account.clone(),
                qty: line.qty,
                location: line.location.clone(),
                idempotency_key: None,
                cart: Some(id.clone()),
                admission: line.admission.clone(),
                claimed: false,
            })
        }))
        .await;
        let mut failed = Vec::new();
        // Lines that may hold units (held, or outcome unknown), and the
        // first error.
        let (mut maybe_held, mut unknown) = (Vec::new(), None);
        let mut latest = None;
        for (i, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(ReserveReply::Held(hold)) => {
                    let line = &mut record.lines[i];
                    line.location = Some(hold.location);
                    line.backorder = hold.backorder;
                    let exp = hold.expires_at_ms;
                    record.expires_at_ms = Some(record.expires_at_ms.map_or(exp, |e| e.min(exp)));
                    latest = Some(latest.map_or(exp, |l: i64| l.max(exp)));
                    maybe_held.push(i);
                }
                Ok(other) => {
                    let (code, available) = refusal(&other);
                    failed.push(FailedLine {
                        index: i,
                        sku: record.lines[i].sku.clone(),
                        code: code.to_owned(),
                        available,
                    });
                }
                Err(e) => {
                    maybe_held.push(i);
                    unknown.get_or_insert(e);
                }
            }
        }
        if failed.is_empty() && unknown.is_none() {
            return self.commit_held(id, record, latest).await;
        }
        if let Err(e) = self
            .void_lines(&id, &record, &maybe_held, "cart_failed")
            .await
        {
            // The sweep rolls the cart back once it is due.
            return Err(unknown.unwrap_or(e));
        }
        if let Some(e) = unknown {
            // Nothing is held; the record stays pending for the sweep, which
            // marks it failed. The shopper may simply try again.
            return Err(e);
        }
        record.failed = failed.clone();
        let step = Move {
            from: &[CartStatus::Pending],
            to: CartStatus::Failed,
            ttl_ms: redis.limits().idempotency_ttl_ms,
            due_in_ms: None,
            guard_ms: None,
            record: Some(&record),
        };
        // Whatever the move answers, nothing is held any more.
        let _ = redis.move_cart(&id, None, &step).await;
        Ok(Placed::Failed { failed })
    }

    /// Every line held: the cart becomes `held`, unless the sweep took it
    /// over meanwhile (then it rolls the lines back, and this request says
    /// `pending`).
    async fn commit_held(
        &self,
        id: CartId,
        mut record: CartRecord,
        latest_line_ms: Option<i64>,
    ) -> Result<Placed, RedisError> {
        let redis = &self.inventory.redis;
        let now = crate::clock::now_ms();
        let exp = record.expires_at_ms.unwrap_or(now);
        // Lines whose SKUs hold longer than the cart's deadline are ended
        // at that deadline by the sweep. (Lines held on different masters
        // differ by their clocks and the time between them: that is not
        // worth a sweep.)
        let uneven = latest_line_ms.is_some_and(|l| l - exp > UNEVEN_DEADLINES_MS);
        let until_exp = u64::try_from(exp - now).unwrap_or(0);
        record.status = CartStatus::Held;
        let step = Move {
            from: &[CartStatus::Pending],
            to: CartStatus::Held,
            ttl_ms: until_exp + self.retention_ms(),
            due_in_ms: uneven.then_some(until_exp),
            guard_ms: None,
            record: Some(&record),
        };
        match redis.move_cart(&id, None, &step).await? {
            CartStep::Done(cart) => Ok(Placed::Held {
                cart,
                id,
                replayed: false,
            }),
            _ => Ok(Placed::Pending),
        }
    }

    /// What a repeated `Idempotency-Key` is answered.
    fn replay(found: CartRecord, asked: &CartRecord, id: CartId) -> Placed {
        if found.account != asked.account || found.fingerprint != asked.fingerprint {
            return Placed::KeyReused;
        }
        match found.status {
            CartStatus::Pending | CartStatus::Recovering => Placed::Pending,
            CartStatus::Failed => Placed::Failed {
                failed: found.failed,
            },
            _ => Placed::Held {
                cart: found,
                id,
                replayed: true,
            },
        }
    }

    /// The reservation ids of the cart's lines, by index.
    fn line_ids<'r>(
        &self,
        id: &'r CartId,
        record: &'r CartRecord,
    ) -> impl Iterator<Item = (usize, ReservationId)> + 'r {
        let partitions = self.partitions();
        record
            .lines
            .iter()
            .enumerate()
            .filter_map(move |(i, line)| {
                let sku = Sku::parse(&line.sku).ok()?;
                Some((i, id.line(i, &sku, partitions)))
            })
    }

    /// Voids lines `indexes` of the cart (see `Amendment::Void`); the first
    /// error stops nothing, but is returned.
    async fn void_lines(
        &self,
        id: &CartId,
        record: &CartRecord,
        indexes: &[usize],
        reason: &str,
    ) -> Result<(), RedisError> {
        let Ok(account) = AccountId::parse(&record.account) else {
            return Ok(());
        };
        let account = &account;
        let lines = self
            .line_ids(id, record)
            .filter(|(i, _)| indexes.contains(i));
        let results = join_all(lines.map(|(_, line)| async move {
            let void = Amendment::Void { cart: id, reason };
            self.inventory.amend(&line, Some(account), &void).await
        }))
        .await;
        results.into_iter().try_for_each(|r| r.map(drop))
    }

    /// Confirms or releases every line of the cart (idempotently).
    async fn settle_lines(
        &self,
        id: &CartId,
        record: &CartRecord,
        settlement: Settlement,
    ) -> Result<(), ServiceError> {
        let Ok(account) = AccountId::parse(&record.account) else {
            return Ok(());
        };
        let results = join_all(self.line_ids(id, record).map(|(_, line)| {
            self.inventory.settle(SettleRequest {
                id: line,
                account: account.clone(),
                settlement,
            })
        }))
        .await;
        for result in results {
            match result? {
                ReservationReply::Ok(_) => {}
                // A line that ended otherwise (it expired at the deadline
                // while being released) holds nothing: nothing to do.
                other if settlement == Settlement::Confirm => {
                    tracing::error!(
                        cart = id.as_str(),
                        ?other,
                        "a cart line could not be confirmed"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The owner's cart.
    pub async fn get(
        &self,
        id: &CartId,
        owner: &AccountId,
    ) -> Result<Option<CartRecord>, RedisError> {
        self.inventory.redis.cart(id, Some(owner)).await
    }

    /// Confirms (`Settlement::Confirm`) or releases every line of the
    /// owner's cart. Repeating it answers the same.
    pub async fn settle(
        &self,
        id: &CartId,
        owner: &AccountId,
        settlement: Settlement,
    ) -> Result<Result<CartRecord, Refused>, ServiceError> {
        let (during, done, guard) = match settlement {
            Settlement::Confirm => (
                CartStatus::Confirming,
                CartStatus::Confirmed,
                self.settings.confirm_margin_ms,
            ),
            Settlement::Release => (CartStatus::Releasing, CartStatus::Released, 0),
        };
        let redis = &self.inventory.redis;
        if settlement == Settlement::Confirm
            && let Some(refusal) = self.line_ended(id, owner).await?
        {
            return Ok(Err(refusal));
        }
        let step = Move {
            from: &[CartStatus::Held],
            to: during,
            ttl_ms: self.recovery_ms() + self.retention_ms(),
            due_in_ms: Some(self.recovery_ms()),
            guard_ms: Some(guard),
            record: None,
        };
        let record = match redis.move_cart(id, Some(owner), &step).await? {
            CartStep::Done(record) => record,
            CartStep::Conflict(record) if record.status == done => return Ok(Ok(record)),
            CartStep::Conflict(record) => return Ok(Err(refused(record.status))),
            CartStep::TooLate(_) => return Ok(Err(Refused::Expired)),
            CartStep::NotFound | CartStep::Exists(_) => return Ok(Err(Refused::NotFound)),
        };
        self.settle_lines(id, &record, settlement).await?;
        Ok(self.finish(id, during, done).await?)
    }

    /// Why a held cart cannot be confirmed whole: one of its lines was
    /// released or expired on its own (each line is a reservation its
    /// owner may release). `None` when every line is held or confirmed, or
    /// the cart is not held (the move decides then).
    async fn line_ended(
        &self,
        id: &CartId,
        owner: &AccountId,
    ) -> Result<Option<Refused>, RedisError> {
        let Some(record) = self.inventory.redis.cart(id, Some(owner)).await? else {
            return Ok(None);
        };
        if record.status != CartStatus::Held {
            return Ok(None);
        }
        let partitions = self.partitions();
        let lines = record.lines.iter().enumerate().filter_map(|(i, line)| {
            let sku = Sku::parse(&line.sku).ok()?;
            Some(id.line(i, &sku, partitions))
        });
        let replies = join_all(
            lines.map(|rid| async move { self.inventory.reservation(&rid, Some(owner)).await }),
        )
        .await;
        for reply in replies {
            if let ReservationReply::Ok(r) = reply? {
                match r.status {
                    ReservationStatus::Released => return Ok(Some(Refused::Released)),
                    ReservationStatus::Expired => return Ok(Some(Refused::Expired)),
                    ReservationStatus::Held | ReservationStatus::Confirmed => {}
                }
            }
        }
        Ok(None)
    }

    /// `during → done`, out of the due index.
    async fn finish(
        &self,
        id: &CartId,
        during: CartStatus,
        done: CartStatus,
    ) -> Result<Result<CartRecord, Refused>, RedisError> {
        let step = Move {
            from: &[during],
            to: done,
            ttl_ms: self.retention_ms(),
            due_in_ms: None,
            guard_ms: None,
            record: None,
        };
        Ok(
            match self.inventory.redis.move_cart(id, None, &step).await? {
                CartStep::Done(record) => Ok(record),
                CartStep::Conflict(record) => Err(refused(record.status)),
                _ => Err(Refused::NotFound),
            },
        )
    }

    /// One sweep over every partition's due carts; returns how many it
    /// finished.
    pub async fn sweep(&self) -> u64 {
        let partitions = self.partitions();
        stream::iter(0..partitions)
            .map(|p| self.sweep_partition(Partition(p)))
            .buffer_unordered(SWEEP_CONCURRENCY)
            .fold(0, |sum, n| async move { sum + n })
            .await
    }

    async fn sweep_partition(&self, p: Partition) -> u64 {
        let redis = &self.inventory.redis;
        if !redis.admits_background(p) {
            return 0;
        }
        let Ok(due) = redis.due_carts(p, SWEEP_CARTS_MAX).await else {
            return 0;
        };
        let mut finished = 0;
        for raw in due {
            let Some(id) = CartId::parse(&raw, self.partitions()) else {
                continue;
            };
            let outcome = match self.recover(&id).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::debug!(cart = id.as_str(), error = %e, "cart recovery will retry");
                    "retried"
                }
            };
            if outcome != "retried" {
                finished += 1;
            }
            metrics::counter!(names::CART_RECOVERIES_TOTAL, "outcome" => outcome).increment(1);
        }
        finished
    }

    /// Moves a due cart from `from` to `to` (still due, for the next sweep
    /// should this one stop) and voids every line; false when another
    /// driver moved it first.
    async fn take_over(
        &self,
        id: &CartId,
        record: &CartRecord,
        from: &[CartStatus],
        to: CartStatus,
        reason: &str,
    ) -> Result<bool, ServiceError> {
        let step = Move {
            from,
            to,
            ttl_ms: self.recovery_ms() + self.retention_ms(),
            due_in_ms: Some(self.recovery_ms()),
            guard_ms: None,
            record: None,
        };
        let redis = &self.inventory.redis;
        if !matches!(redis.move_cart(id, None, &step).await?, CartStep::Done(_)) {
            return Ok(false);
        }
        let all: Vec<usize> = (0..record.lines.len()).collect();
        self.void_lines(id, record, &all, reason).await?;
        Ok(true)
    }

    /// Finishes one due cart; returns what it did (a metric label).
    async fn recover(&self, id: &CartId) -> Result<&'static str, ServiceError> {
        let redis = &self.inventory.redis;
        let Some(record) = redis.cart(id, None).await? else {
            redis.forget_cart(id).await?;
            return Ok("gone");
        };
        match record.status {
            CartStatus::Pending | CartStatus::Recovering => {
                let from = [CartStatus::Pending];
                if !self
                    .take_over(id, &record, &from, CartStatus::Recovering, "cart_recovered")
                    .await?
                {
                    return Ok("retried");
                }
                tracing::info!(
                    cart = id.as_str(),
                    "rolled back a cart whose gateway stopped placing it"
                );
                self.finish(id, CartStatus::Recovering, CartStatus::Failed)
                    .await?
                    .map_or(Ok("retried"), |_| Ok("rolled_back"))
            }
            CartStatus::Confirming => {
                self.settle_lines(id, &record, Settlement::Confirm).await?;
                self.finish(id, CartStatus::Confirming, CartStatus::Confirmed)
                    .await?
                    .map_or(Ok("retried"), |_| Ok("confirmed"))
            }
            CartStatus::Releasing => {
                self.settle_lines(id, &record, Settlement::Release).await?;
                self.finish(id, CartStatus::Releasing, CartStatus::Released)
                    .await?
                    .map_or(Ok("retried"), |_| Ok("released"))
            }
            CartStatus::Held | CartStatus::Expired => {
                // Held here only when its lines' deadlines differ: at the
                // cart's deadline every line ends.
                let from = [CartStatus::Held];
                if !self
                    .take_over(id, &record, &from, CartStatus::Expired, "cart_expired")
                    .await?
                {
                    return Ok("retried");
                }
                redis.forget_cart(id).await?;
                Ok("expired")
            }
            CartStatus::Failed | CartStatus::Confirmed | CartStatus::Released => {
                redis.forget_cart(id).await?;
                Ok("gone")
            }
        }
    }
}

fn refused(status: CartStatus) -> Refused {
    match status {
        CartStatus::Pending | CartStatus::Recovering => Refused::Pending,
        CartStatus::Confirming | CartStatus::Confirmed => Refused::Confirmed,
        CartStatus::Expired => Refused::Expired,
        CartStatus::Held | CartStatus::Failed | CartStatus::Releasing | CartStatus::Released => {
            Refused::Released
        }
    }
}

/// Runs the cart sweep every `cart.sweep_interval_ms` until shutdown.
pub async fn run(carts: Carts, shutdown: CancellationToken) {
    // Exported at 0 from the start, so rates and the dashboard see the first.
    for outcome in ["held", "failed"] {
        metrics::counter!(names::CARTS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(names::CART_RECOVERIES_TOTAL, "outcome" => "rolled_back").increment(0);
    for kind in ["extend", "shrink", "release"] {
        metrics::counter!(names::HOLD_CHANGES_TOTAL, "kind" => kind, "outcome" => "ok")
            .increment(0);
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(carts.settings.sweep_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        carts.sweep().await;
    }
}
