//! Use cases: what the HTTP handlers (and the background sweeper) call.
//!
//! Every mutation goes through here: the Redis layer applies it and returns
//! its reply with the events its script appended; this layer offers those
//! events to the journal (or, for a `sync` confirmation, waits for their
//! Postgres commit) and keeps this instance's sold-out answers in step, so
//! no handler can forget either. Dependencies point down: http → service →
//! {redis, journal, limits} → {events, inventory}.

pub mod buckets;
pub mod carts;
pub mod import;
pub mod orphans;
pub mod recovery;
pub mod room;
pub mod sweeper;

use std::sync::Arc;

use crate::{
    config::ConfirmDurability,
    inventory::{Location, Sku},
    journal::{JournalAccess, JournalError},
    limits::sold_out::SoldOut,
    redis::{
        Caller, Redis, RedisError,
        batch::Applied,
        calls::{
            Adjustment, AdminReply, AmendReply, Amendment, ReservationReply, ReserveReply,
            ReserveRequest, SettleRequest, Settlement, Staff, StockCounts,
        },
    },
};

/// Why a use case could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Redis applied the change, but the journal could not take it in time
    /// (a `sync` confirmation, a policy); the client's retry answers the same.
    #[error("journaling the change: {0}")]
    Journal(#[from] JournalError),
    /// A SKU's stock buckets cannot be laid out as asked.
    #[error("{0}")]
    Buckets(String),
}

/// The inventory use cases, shared by every handler.
#[derive(Clone)]
pub struct Inventory {
    pub redis: Arc<Redis>,
    pub journal: JournalAccess,
    pub sold_out: Arc<SoldOut>,
    /// Reservations answered 503 that may hold units nobody knows of.
    pub orphans: Arc<orphans::Orphans>,
    /// The inventory views shoppers' pages poll.
    pub views: Arc<crate::live::views::Views>,
    /// The stock-bucket layouts this instance has met.
    pub layouts: Arc<buckets::Layouts>,
}

impl Inventory {
    /// Hands events to the journal's queue (never waits; see
    /// `JournalQueue::offer`).
    fn offer(&self, events: Vec<crate::events::Event>) {
        if !events.is_empty() {
            if events
                .iter()
                .any(|e| e.sku.contains(crate::inventory::BUCKET_MARK))
            {
                self.end_claims(&events);
            }
            self.journal.queue.offer(events);
        }
    }

    /// Holds units. A refusal that says the whole SKU can hold nothing more
    /// teaches this instance to answer "sold out" locally. A request without
    /// an `Idempotency-Key` answered 503 may still have been applied: it is
    /// remembered and released once Redis answers (`orphans`).
    pub async fn reserve(&self, req: ReserveRequest) -> Result<ReserveReply, RedisError> {
        let orphan = req
            .idempotency_key
            .is_none()
            .then(|| (req.id.clone(), req.account.clone()));
        let result = self.hold(req).await;
        // Maybe applied after all: released once Redis answers.
        if let (Err(RedisError::Unavailable { .. }), Some((id, account))) = (&result, orphan) {
            self.orphans.remember(id, account);
        }
        result
    }

    /// `reserve` without the orphan rule: for a cart's line, whose cart
    /// rolls it back itself when its outcome is unknown. A SKU whose stock
    /// lives in buckets is held there (`buckets`).
    pub async fn hold(&self, req: ReserveRequest) -> Result<ReserveReply, RedisError> {
        // A cart names its lines' reservations itself, in the SKU's
        // partition: lines of a bucketed SKU are refused (not built yet).
        if let Some(layout) = self.layouts.get(req.id.sku()) {
            if req.cart.is_some() {
                return Ok(ReserveReply::Bucketed(Vec::new()));
            }
            return self.hold_in_buckets(layout, req).await;
        }
        // The request comes back with the answer (moved, not copied), for
        // a SKU whose buckets this instance did not know of yet.
        match self.hold_returning(req).await? {
            (ReserveReply::Bucketed(partitions), Some(req)) if req.cart.is_none() => {
                let layout = buckets::Layout::new(req.id.sku(), &partitions);
                let layout = self.layouts.insert(layout);
                self.hold_in_buckets(layout, req).await
            }
            (reply, _) => Ok(reply),
        }
    }

    /// Holds units in the one SKU (or bucket) `req` names.
    async fn hold_once(&self, req: ReserveRequest) -> Result<ReserveReply, RedisError> {
        Ok(self.hold_returning(req).await?.0)
    }

    /// As `hold_once`, handing the request back with the reply.
    async fn hold_returning(
        &self,
        req: ReserveRequest,
    ) -> Result<(ReserveReply, Option<ReserveRequest>), RedisError> {
        let (outcome, returned) = self.redis.reserve_returning(req).await;
        let Applied { reply, events } = outcome?;
        self.offer(events);
        // A bucket's refusal says nothing of its SKU (`buckets` sums them).
        if let Some(req) = &returned
            && !req.id.sku().is_bucket()
        {
            self.remember_if_sold_out(req.id.sku(), &reply);
        }
        Ok((reply, returned))
    }

    /// A refusal that says the whole SKU can hold nothing more teaches this
    /// instance to answer "sold out" locally.
    fn remember_if_sold_out(&self, sku: &Sku, reply: &ReserveReply) {
        if let ReserveReply::InsufficientStock {
            holdable,
            version,
            next_expiry_ms,
            ..
        } = reply
            && *holdable <= 0
        {
            self.sold_out.remember(sku, *version, *next_expiry_ms);
        }
    }

    /// Changes one live hold (see `Amendment`); `owner` limits it to one
    /// account. Units that come back end this instance's "sold out".
    pub async fn amend(
        &self,
        id: &crate::inventory::ReservationId,
        owner: Option<&crate::inventory::AccountId>,
        amendment: &Amendment<'_>,
    ) -> Result<AmendReply, RedisError> {
        let Applied { reply, events } = self.redis.amend(id, owner, amendment).await?;
        if !matches!(amendment, Amendment::Extend { .. }) && !events.is_empty() {
            self.sold_out.forget(&id.sku().parent());
        }
        self.offer(events);
        Ok(reply)
    }

    /// Confirms or releases. With `journal.confirm_durability = sync` a
    /// confirmation is answered only once Postgres has it; a failure leaves
    /// it in Redis, its stream and the queue, and the client's retry
    /// answers the same confirmation and checks again.
    pub async fn settle(&self, req: SettleRequest) -> Result<ReservationReply, ServiceError> {
        let (p, sku, settlement) = (req.id.partition(), req.id.sku().parent(), req.settlement);
        let Applied { reply, events } = self.redis.settle(req).await?;
        let ReservationReply::Ok(reservation) = &reply else {
            self.offer(events);
            return Ok(reply);
        };
        match settlement {
            Settlement::Release => {
                // The units are back: this instance stops answering "sold
                // out" before the client hears the release is done.
                self.sold_out.forget(&sku);
                self.offer(events);
            }
            Settlement::Confirm if self.journal.durability == ConfirmDurability::Sync => {
                let committed = self
                    .journal
                    .ensure_committed(&self.redis, p, &reservation.stream_id, &events)
                    .await;
                if let Err(e) = committed {
                    self.offer(events);
                    return Err(e.into());
                }
            }
            Settlement::Confirm => self.offer(events),
        }
        Ok(reply)
    }

    pub async fn set_stock(
        &self,
        sku: &Sku,
        location: &Location,
        counts: StockCounts,
        if_match: Option<u64>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        if let Some(layout) = self.layout_of(sku).await? {
            return self
                .set_bucketed_stock(&layout, location, counts, if_match, staff, op_id)
                .await;
        }
        let applied = self
            .redis
            .set_stock(sku, location, counts, if_match, staff, op_id)
            .await?;
        Ok(self.admin_written(sku, applied))
    }

    pub async fn adjust(
        &self,
        sku: &Sku,
        location: &Location,
        adjustment: &Adjustment<'_>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        if let Some(layout) = self.layout_of(sku).await? {
            return self
                .adjust_bucketed(&layout, location, adjustment, staff, op_id)
                .await;
        }
        let applied = self
            .redis
            .adjust(sku, location, adjustment, staff, op_id)
            .await?;
        Ok(self.admin_written(sku, applied))
    }

    /// After an admin write: journal it, and since units may have come
    /// back, stop answering "sold out" before the admin hears of it.
    fn admin_written(&self, sku: &Sku, applied: Applied<AdminReply>) -> AdminReply {
        self.offer(applied.events);
        self.sold_out.forget(sku);
        applied.reply
    }

    /// Gives back up to one batch of the SKU's overdue holds.
    pub async fn expire(&self, sku: &Sku) -> Result<i64, RedisError> {
        let Applied { reply, events } = self.redis.expire(sku).await?;
        self.offer(events);
        Ok(reply)
    }
}

impl Inventory {
    /// Reads a reservation; `owner` limits it to one account (None: admin).
    pub async fn reservation(
        &self,
        id: &crate::inventory::ReservationId,
        owner: Option<&crate::inventory::AccountId>,
    ) -> Result<ReservationReply, RedisError> {
        self.redis.reservation(id, owner).await
    }

    /// The SKU's inventory view, `None` when it does not exist, at most
    /// `live.read_staleness_ms` old (see `live::views`).
    pub async fn view(
        &self,
        sku: &Sku,
    ) -> Result<Option<crate::inventory::view::InventoryView>, RedisError> {
        let read = self.redis.inventory(sku, Caller::Request);
        self.views.get_or_read(sku, read).await
    }

    /// The SKU's view and policy as Redis has them now (never cached: an
    /// operator reads what the scripts see).
    pub async fn view_and_policy(
        &self,
        sku: &Sku,
    ) -> Result<
        Option<(
            crate::inventory::view::InventoryView,
            crate::redis::calls::Policy,
        )>,
        RedisError,
    > {
        self.redis.inventory_and_policy(sku).await
    }

    /// Sets or clears the SKU's sale policy. Policy is configuration, not
    /// an event: it is acknowledged only once the journal has it and the
    /// change (with `staff` and `view`, the policy as the API shows it) is
    /// in the SKU's history, so `flashgate rebuild` can restore caps,
    /// windows and sellers.
    pub async fn set_policy(
        &self,
        sku: &Sku,
        update: &crate::redis::calls::PolicyUpdate,
        staff: &Staff<'_>,
        view: impl FnOnce(&crate::redis::calls::Policy) -> serde_json::Value,
    ) -> Result<crate::redis::calls::Policy, ServiceError> {
        self.check_room_and_buckets(sku, update).await?;
        if let Some(k) = update.buckets {
            self.lay_out(sku, k).await?;
        }
        let policy = self.redis.set_policy(sku, update).await?;
        if let Some(layout) = self.layout_of(sku).await? {
            self.copy_policy(&layout, &policy).await?;
        }
        let row = crate::journal::store::PolicyRow {
            max_per_account: policy.max,
            opens_at_ms: policy.open,
            closes_at_ms: policy.close,
            hold_ttl_seconds: policy.ttl,
            seller: policy.seller.clone(),
            admit_per_second: policy.wra,
            admission_ttl_seconds: policy.wrt,
            buckets: policy.bk.clone(),
        };
        let change = crate::journal::store::PolicyChange {
            version: policy.ver.unwrap_or(0),
            actor: staff.actor.as_str(),
            request_id: staff.request_id,
            policy: &view(&policy),
        };
        self.journal
            .store
            .save_policy(sku.as_str(), &row, &change)
            .await
            .map_err(JournalError::from)?;
        Ok(policy)
    }

    /// The seller that owns the SKU (its policy's `seller`), read from
    /// Redis; `None` when it has none or does not exist.
    pub async fn seller_of(&self, sku: &Sku) -> Result<Option<String>, RedisError> {
        self.redis.seller_of(sku).await
    }
}
