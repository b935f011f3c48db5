//! Hot-SKU stock buckets: one SKU's stock spread over K partitions on
//! distinct Redis masters where the cluster has them (README, "Stock
//! buckets").
//!
//! A bucket is a SKU of its own to Redis and the journal, named
//! `<sku>~<partition>` (`Sku::bucket`), with a copy of its SKU's policy;
//! the SKU's own hash keeps the policy and the layout (`bk`) and no stock.
//! A reservation tries the account's home bucket (a hash of the account)
//! with the ordinary reserve script, whose cap check counts every unit the
//! account has in the SKU; when the home bucket cannot hold it, the units
//! are first claimed against the cap at home, then held in the other
//! buckets in turn without a cap check, and the claim is given back when
//! none could hold them (or, once held, when the hold is released or
//! expires). So caps stay exact, and `insufficient-stock` is answered only
//! after every bucket has refused.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{Inventory, ServiceError};
use crate::{
    config::BucketSettings,
    events::{Event, EventKind},
    inventory::{AccountId, Location, Partition, ReservationId, Sku, digest_hex},
    metrics as names,
    redis::{
        Caller, RedisError,
        buckets::{BucketPolicy, ClaimReply, LayoutReply, Transfer, WithdrawReply},
        calls::{
            Adjustment, AdminReply, Hold, Policy, ReservationReply, ReserveReply, ReserveRequest,
            Staff, StockCounts,
        },
    },
};

/// Most buckets a SKU may have.
pub const BUCKETS_MAX: i64 = 64;

/// A bucketed SKU's buckets, in layout order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub sku: Sku,
    pub buckets: Vec<Sku>,
}

impl Layout {
    pub fn new(sku: &Sku, partitions: &[Partition]) -> Self {
        Self {
            sku: sku.clone(),
            buckets: partitions.iter().map(|p| sku.bucket(*p)).collect(),
        }
    }

    /// Reads the SKU hash's `bk` field (comma-separated partitions).
    pub fn parse(sku: &Sku, bk: &str) -> Option<Self> {
        let partitions = bk
            .split(',')
            .map(|p| p.parse().ok().map(Partition))
            .collect::<Option<Vec<_>>>()?;
        (!partitions.is_empty()).then(|| Self::new(sku, &partitions))
    }

    /// The index of the account's home bucket, where its cap is counted.
    pub fn home(&self, account: &str) -> usize {
        Partition::of(account, self.buckets.len() as u32).0 as usize
    }
}

/// The layouts this instance has met, so reservations for a bucketed SKU
/// go straight to its buckets. A SKU not here is tried as a plain one; the
/// reserve script answers `bucketed` when it is not.
#[derive(Debug, Default)]
pub struct Layouts(RwLock<HashMap<Sku, Arc<Layout>>>);

impl Layouts {
    pub fn get(&self, sku: &Sku) -> Option<Arc<Layout>> {
        let known = self.0.read().ok()?;
        // Most gateways know no bucketed SKU: no hashing on every hold.
        if known.is_empty() {
            return None;
        }
        known.get(sku).cloned()
    }

    pub fn insert(&self, layout: Layout) -> Arc<Layout> {
        let layout = Arc::new(layout);
        if let Ok(mut known) = self.0.write() {
            known.insert(layout.sku.clone(), layout.clone());
        }
        layout
    }
}

/// Sums per-bucket refusals into the SKU's.
fn sum_refusals(refusals: &[ReserveReply]) -> ReserveReply {
    let (mut available, mut holdable, mut version, mut next) = (0, 0, 0, None::<i64>);
    for r in refusals {
        if let ReserveReply::InsufficientStock {
            available: a,
            holdable: h,
            version: v,
            next_expiry_ms: n,
        } = r
        {
            available += a;
            holdable += h;
            version += v;
            next = match (next, n) {
                (Some(x), Some(y)) => Some(x.min(*y)),
                (x, y) => x.or(*y),
            };
        }
    }
    ReserveReply::InsufficientStock {
        available,
        holdable,
        version,
        next_expiry_ms: next,
    }
}

/// The units a bucket's refusal said were available.
fn available_of(reply: &ReserveReply) -> i64 {
    match reply {
        ReserveReply::InsufficientStock { available, .. } => *available,
        _ => 0,
    }
}

/// `n` split into `k` shares as even as can be, the larger first.
fn shares(n: i64, k: usize) -> Vec<i64> {
    let k = k as i64;
    (0..k).map(|i| n / k + i64::from(i < n % k)).collect()
}

impl Inventory {
    /// The SKU's layout: known here, or read from Redis (`None`: not
    /// bucketed).
    pub async fn layout_of(&self, sku: &Sku) -> Result<Option<Arc<Layout>>, RedisError> {
        if let Some(layout) = self.layouts.get(sku) {
            return Ok(Some(layout));
        }
        let key = self
            .redis
            .keys()
            .sku(self.redis.keys().partition_of(sku), sku);
        let key = &key;
        let bk: Option<String> = self
            .redis
            .command(key, "layout", Caller::Request, |client| async move {
                use fred::interfaces::HashesInterface;
                client.hget(key, "bk").await
            })
            .await?;
        Ok(bk
            .and_then(|bk| Layout::parse(sku, &bk))
            .map(|layout| self.layouts.insert(layout)))
    }

    /// Holds units of a bucketed SKU (see the module's documentation).
    /// `fresh`: the layout was just read, so an answer that it changed is
    /// not retried.
    pub(super) async fn hold_in_buckets(
        &self,
        layout: Arc<Layout>,
        req: ReserveRequest,
    ) -> Result<ReserveReply, RedisError> {
        let partitions = self.redis.keys().partitions();
        let k = layout.buckets.len();
        let home = layout.home(req.account.as_str());
        let base = match &req.idempotency_key {
            Some(key) => {
                let hex = digest_hex(&["bucketed", req.account.as_str(), key.as_str()]);
                ReservationId::with_random(req.id.sku(), partitions, &hex)
                    .unwrap_or_else(|| req.id.clone())
            }
            None => req.id.clone(),
        };
        let attempt = |j: usize, claimed: bool| ReserveRequest {
            id: base.in_bucket(&layout.buckets[j], partitions),
            claimed,
            ..req.clone()
        };
        if req.idempotency_key.is_some() {
            // A retry of a keyed request names the same reservation in every
            // bucket (`base`): one an earlier attempt held is answered.
            for bucket in &layout.buckets {
                let id = base.in_bucket(bucket, partitions);
                if let ReservationReply::Ok(r) =
                    self.redis.reservation(&id, Some(&req.account)).await?
                {
                    return Ok(ReserveReply::Held(Hold {
                        reservation_id: r.reservation_id,
                        sku: r.sku,
                        location: r.location,
                        qty: r.qty,
                        expires_at_ms: r.expires_at_ms,
                        backorder: r.backorder,
                        stream_id: r.stream_id,
                        replayed: true,
                    }));
                }
            }
        }
        // Units a transfer has withdrawn and not yet deposited are in no
        // bucket for a moment: a refusal by every bucket while one is in
        // flight is tried again once it has landed.
        let (mut tries, mut consolidated) = (0, false);
        let refusals = loop {
            let mut refusals = Vec::with_capacity(k);
            match self.hold_once(attempt(home, false)).await? {
                refused @ ReserveReply::InsufficientStock { .. } => refusals.push(refused),
                other => {
                    if matches!(other, ReserveReply::Held(_)) {
                        count_hold("home");
                    }
                    return Ok(other);
                }
            }
            if k > 1 {
                let home_bucket = &layout.buckets[home];
                let claim_id = base.random_part();
                let capped = match self
                    .redis
                    .claim(home_bucket, &req.account, claim_id, req.qty.get())
                    .await?
                {
                    ClaimReply::PurchaseLimit { limit, already } => {
                        return Ok(ReserveReply::PurchaseLimit { limit, already });
                    }
                    ClaimReply::Claimed => true,
                    ClaimReply::Uncapped => false,
                };
                for d in 1..k {
                    // An unknown outcome (an error) keeps the claim: a hold it
                    // may have made still counts against the cap.
                    match self.hold_once(attempt((home + d) % k, true)).await? {
                        refused @ ReserveReply::InsufficientStock { .. } => refusals.push(refused),
                        other => {
                            if matches!(other, ReserveReply::Held(_)) {
                                count_hold("spilled");
                            } else if capped {
                                self.redis.unclaim(home_bucket, claim_id, false).await?;
                            }
                            return Ok(other);
                        }
                    }
                }
                if capped {
                    self.redis.unclaim(home_bucket, claim_id, false).await?;
                }
            }
            tries += 1;
            if tries >= 3 {
                break refusals;
            }
            // Enough units, but no one bucket has them all: gather them in
            // the home bucket and try again.
            let qty = i64::from(req.qty.get());
            if !consolidated && refusals.iter().map(available_of).sum::<i64>() >= qty {
                consolidated = true;
                if self
                    .consolidate(&layout, home, req.location.as_ref(), qty)
                    .await?
                {
                    continue;
                }
            }
            if !self.redis.transfers_in_flight(&layout.buckets).await? {
                break refusals;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        count_hold("refused");
        let refused = sum_refusals(&refusals);
        self.remember_if_sold_out(&layout.sku, &refused);
        Ok(refused)
    }

    /// Moves free units of `location` (or of the location whose buckets
    /// have the most, when the request named none) from the other buckets
    /// into bucket `target` until it has `qty` free. Returns whether it
    /// does.
    async fn consolidate(
        &self,
        layout: &Layout,
        target: usize,
        location: Option<&Location>,
        qty: i64,
    ) -> Result<bool, RedisError> {
        let locations = match location {
            Some(l) => vec![l.clone()],
            None => {
                let fields = self
                    .redis
                    .summed_fields(&layout.sku, Caller::Request)
                    .await?;
                fields
                    .iter()
                    .filter_map(|(f, _)| f.strip_prefix("l:")?.strip_suffix(":oh"))
                    .filter_map(|l| Location::parse(l).ok())
                    .collect()
            }
        };
        for location in locations {
            let mut free = Vec::with_capacity(layout.buckets.len());
            for bucket in &layout.buckets {
                let (_, c) = self.redis.bucket_counts(bucket, &location).await?;
                free.push(c.available());
            }
            if free.iter().sum::<i64>() < qty {
                continue;
            }
            let mut need = qty - free[target];
            let mut donors: Vec<usize> = (0..free.len()).filter(|i| *i != target).collect();
            donors.sort_by_key(|i| std::cmp::Reverse(free[*i]));
            for j in donors {
                if need <= 0 {
                    break;
                }
                let take = need.min(free[j]);
                if take == 0 {
                    continue;
                }
                let t = Transfer::new(
                    layout.buckets[j].clone(),
                    layout.buckets[target].clone(),
                    location.clone(),
                    take,
                );
                if self.transfer(&t).await? == WithdrawReply::Withdrawn {
                    need -= take;
                }
            }
            if need <= 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends the cap claims of spilled-over holds that `events` end: given
    /// back when a hold is released whole or expires, kept when it is
    /// confirmed. In the background: the caller has its answer already.
    pub(super) fn end_claims(&self, events: &[Event]) {
        for e in events {
            let Some(r) = &e.reservation else { continue };
            let keep = match e.kind {
                EventKind::Confirmed => true,
                EventKind::Expired => false,
                EventKind::Released if e.held.unwrap_or(0) == 0 => false,
                _ => continue,
            };
            let Ok(bucket) = Sku::parse_stored(&e.sku) else {
                continue;
            };
            if !bucket.is_bucket() {
                continue;
            }
            // A hold in its account's home bucket has no claim: known here
            // without a task (the layout is known once its SKU was held).
            if let Some(layout) = self.layouts.get(&bucket.parent())
                && layout.buckets[layout.home(&r.account)] == bucket
            {
                continue;
            }
            let (inventory, rid, account) = (self.clone(), r.id.clone(), r.account.clone());
            tokio::spawn(async move {
                if let Err(e) = inventory.end_claim(&bucket, &rid, &account, keep).await {
                    tracing::warn!(error = %e, reservation = %rid, "ending a cap claim failed");
                }
            });
        }
    }

    async fn end_claim(
        &self,
        bucket: &Sku,
        rid: &str,
        account: &str,
        keep: bool,
    ) -> Result<(), RedisError> {
        let Some(layout) = self.layout_of(&bucket.parent()).await? else {
            return Ok(());
        };
        let home = &layout.buckets[layout.home(account)];
        if home == bucket {
            return Ok(());
        }
        let Some(id) = ReservationId::parse(rid, self.redis.keys().partitions()) else {
            return Ok(());
        };
        self.redis.unclaim(home, id.random_part(), keep).await?;
        Ok(())
    }

    /// Lays `sku` out in `k` buckets, on distinct masters where there are
    /// several: partitions are taken in turn from each master's, starting
    /// from the SKU's own hash so SKUs spread differently.
    pub(super) async fn lay_out(&self, sku: &Sku, k: i64) -> Result<(), ServiceError> {
        let current = self.layout_of(sku).await?;
        match (current, k) {
            (None, 1) => return Ok(()),
            (Some(layout), k) if layout.buckets.len() as i64 == k => return Ok(()),
            (Some(_), _) => {
                return Err(ServiceError::Buckets(
                    "the SKU's buckets are laid out already; they cannot be changed yet".into(),
                ));
            }
            (None, _) => {}
        }
        let partitions = self.redis.keys().partitions();
        let start = Partition::of(sku.as_str(), partitions).0;
        let mut by_master: Vec<(String, Vec<Partition>)> = Vec::new();
        for i in 0..partitions {
            let p = Partition((start + i) % partitions);
            let Some(master) = self.redis.master_of(p) else {
                continue;
            };
            match by_master.iter_mut().find(|(m, _)| *m == master) {
                Some((_, ps)) => ps.push(p),
                None => by_master.push((master, vec![p])),
            }
        }
        let mut chosen = Vec::new();
        let mut round = 0;
        while (chosen.len() as i64) < k {
            let before = chosen.len();
            for (_, ps) in &by_master {
                if let Some(p) = ps.get(round)
                    && (chosen.len() as i64) < k
                {
                    chosen.push(*p);
                }
            }
            if chosen.len() == before {
                return Err(ServiceError::Buckets(format!(
                    "only {} partitions for {k} buckets",
                    chosen.len()
                )));
            }
            round += 1;
        }
        match self.redis.set_layout(sku, &chosen).await? {
            LayoutReply::Set => self.redis.note_bucketed(sku).await?,
            LayoutReply::HasHolds => {
                return Err(ServiceError::Buckets(
                    "buckets change only while the SKU has no live holds".into(),
                ));
            }
            LayoutReply::AlreadyBucketed => {
                return Err(ServiceError::Buckets(
                    "the SKU's buckets are laid out already".into(),
                ));
            }
        }
        let layout = self.layouts.insert(Layout::new(sku, &chosen));
        self.drain_own_stock(&layout).await?;
        Ok(())
    }

    /// Moves what a bucketed SKU's own hash still has into its buckets:
    /// each location's on hand, with its safety stock, low-stock threshold
    /// and backorder limit, in even shares, by transfers (each crash-safe,
    /// the settings moving with the units). Runs when the layout is set and
    /// on every rebalancer pass, which finishes a move a crash cut short.
    pub(super) async fn drain_own_stock(&self, layout: &Layout) -> Result<(), RedisError> {
        let own = self.redis.hash_of(&layout.sku, Caller::Request).await?;
        let Some(view) =
            crate::inventory::view::InventoryView::from_hash(layout.sku.as_str(), &own)
        else {
            return Ok(());
        };
        let k = layout.buckets.len();
        for l in view.locations {
            let Ok(location) = Location::parse(&l.location) else {
                continue;
            };
            let (oh, ss, lt, bo) = (
                shares(l.on_hand, k),
                shares(l.safety_stock, k),
                shares(l.low_stock_threshold, k),
                shares(l.backorder_limit, k),
            );
            for (i, bucket) in layout.buckets.iter().enumerate() {
                if oh[i] == 0 && ss[i] == 0 && lt[i] == 0 && bo[i] == 0 {
                    continue;
                }
                let mut t =
                    Transfer::new(layout.sku.clone(), bucket.clone(), location.clone(), oh[i]);
                t.settings = [ss[i], lt[i], bo[i]];
                self.transfer(&t).await?;
            }
        }
        Ok(())
    }

    /// A SKU has a waiting room or stock buckets, not both (the room's
    /// admissions live in the SKU's slot, its buckets' holds elsewhere).
    pub(super) async fn check_room_and_buckets(
        &self,
        sku: &Sku,
        update: &crate::redis::calls::PolicyUpdate,
    ) -> Result<(), ServiceError> {
        use crate::redis::calls::PolicyField;
        let room_on = matches!(update.admit_per_second, Some(PolicyField::Set(_)));
        let buckets_on = update.buckets.is_some_and(|k| k > 1);
        if !room_on && !buckets_on {
            return Ok(());
        }
        let conflict = if room_on {
            buckets_on || self.layout_of(sku).await?.is_some()
        } else {
            let key = self
                .redis
                .keys()
                .sku(self.redis.keys().partition_of(sku), sku);
            let key = &key;
            let room: Option<String> = self
                .redis
                .command(key, "layout", Caller::Request, |client| async move {
                    use fred::interfaces::HashesInterface;
                    client.hget(key, "wra").await
                })
                .await?;
            room.is_some() && update.admit_per_second != Some(PolicyField::Clear)
        };
        if conflict {
            return Err(ServiceError::Buckets(
                "a SKU has a waiting room or stock buckets, not both (yet)".into(),
            ));
        }
        Ok(())
    }

    /// Copies the SKU's policy into every bucket (creating them).
    pub(super) async fn copy_policy(
        &self,
        layout: &Layout,
        policy: &Policy,
    ) -> Result<(), RedisError> {
        let copy = BucketPolicy {
            max: policy.max,
            open: policy.open,
            close: policy.close,
            ttl: policy.ttl,
        };
        for bucket in &layout.buckets {
            self.redis.set_bucket_policy(bucket, &copy).await?;
        }
        Ok(())
    }

    /// Sets a location's counts of a bucketed SKU: safety stock, low-stock
    /// threshold and backorder limit split evenly; on hand split so that
    /// each bucket keeps what it holds and the free units are spread
    /// evenly. Each bucket's write checks its version, and a bucket that
    /// changed meanwhile is read and split again.
    pub(super) async fn set_bucketed_stock(
        &self,
        layout: &Layout,
        location: &Location,
        counts: StockCounts,
        if_match: Option<u64>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        let k = layout.buckets.len();
        for _ in 0..20 {
            let mut current = Vec::with_capacity(k);
            for bucket in &layout.buckets {
                current.push(self.redis.bucket_counts(bucket, location).await?);
            }
            if let Some(expected) = if_match {
                let version = current.iter().map(|(v, _)| v).sum::<u64>();
                if version != expected {
                    return Ok(AdminReply::VersionMismatch { version });
                }
            }
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let (ss, lt, bo) = (
                shares(int(counts.safety_stock), k),
                shares(int(counts.low_stock_threshold), k),
                shares(int(counts.backorder_limit), k),
            );
            // Each bucket's least on hand: what it holds, beyond its
            // backorder room, plus its safety stock.
            let least: Vec<i64> = (0..k)
                .map(|i| (current[i].1.reserved - bo[i]).max(0) + ss[i])
                .collect();
            let spare = int(counts.on_hand) - least.iter().sum::<i64>();
            if spare < 0 {
                let free: i64 = current.iter().map(|(_, c)| c.on_hand - c.reserved).sum();
                let reserved = current.iter().map(|(_, c)| c.reserved).sum();
                return Ok(AdminReply::InsufficientStock {
                    available: free.max(0),
                    reserved,
                });
            }
            let spread = shares(spare, k);
            let mut stale = false;
            for (i, bucket) in layout.buckets.iter().enumerate() {
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                let target = StockCounts {
                    on_hand: count(least[i] + spread[i]),
                    safety_stock: count(ss[i]),
                    low_stock_threshold: count(lt[i]),
                    backorder_limit: count(bo[i]),
                };
                let applied = self
                    .redis
                    .set_stock(
                        bucket,
                        location,
                        target,
                        Some(current[i].0),
                        staff,
                        &format!("{op_id}.{i}"),
                    )
                    .await?;
                self.offer(applied.events);
                if let AdminReply::VersionMismatch { .. } = applied.reply {
                    stale = true;
                    break;
                }
            }
            if !stale {
                self.sold_out.forget(&layout.sku);
                return self.bucketed_reply(layout).await;
            }
        }
        Err(RedisError::Reply {
            script: "bucket",
            detail: "the buckets kept changing while their stock was set".into(),
        })
    }

    /// Adds a signed delta to a location of a bucketed SKU: units in go to
    /// the bucket with the fewest free units, units out come from those with
    /// the most.
    pub(super) async fn adjust_bucketed(
        &self,
        layout: &Layout,
        location: &Location,
        adjustment: &Adjustment<'_>,
        staff: &Staff<'_>,
        op_id: &str,
    ) -> Result<AdminReply, RedisError> {
        let mut free = Vec::new();
        let mut reserved = 0;
        for bucket in &layout.buckets {
            let (_, c) = self.redis.bucket_counts(bucket, location).await?;
            free.push(c.room());
            reserved += c.reserved;
        }
        let mut order: Vec<usize> = (0..free.len()).collect();
        order.sort_by_key(|i| free[*i]);
        let mut parts: Vec<(usize, i64)> = Vec::new();
        if adjustment.delta > 0 {
            parts.push((order[0], adjustment.delta));
        } else {
            let mut left = -adjustment.delta;
            for i in order.into_iter().rev() {
                let take = left.min(free[i].max(0));
                if take > 0 {
                    parts.push((i, -take));
                    left -= take;
                }
            }
            if left > 0 {
                let available = free.iter().map(|f| *f.max(&0)).sum::<i64>();
                return Ok(AdminReply::InsufficientStock {
                    available,
                    reserved,
                });
            }
        }
        for (i, delta) in parts {
            let part = Adjustment {
                delta,
                ..*adjustment
            };
            let applied = self
                .redis
                .adjust(
                    &layout.buckets[i],
                    location,
                    &part,
                    staff,
                    &format!("{op_id}.{i}"),
                )
                .await?;
            self.offer(applied.events);
        }
        self.sold_out.forget(&layout.sku);
        self.bucketed_reply(layout).await
    }

    /// The admin reply for a bucketed SKU: its summed hash.
    async fn bucketed_reply(&self, layout: &Layout) -> Result<AdminReply, RedisError> {
        let fields = self
            .redis
            .summed_fields(&layout.sku, Caller::Request)
            .await?;
        Ok(AdminReply::Ok {
            sku: crate::redis::calls::SkuHash(fields),
        })
    }

    /// Moves `qty` units of `location` from one bucket to another, all
    /// three steps (lua/bucket.lua). A failure after the first leaves the
    /// transfer pending for `finish_transfers`.
    pub async fn transfer(&self, t: &Transfer) -> Result<WithdrawReply, RedisError> {
        let applied = self.redis.withdraw(t).await?;
        self.offer(applied.events);
        if applied.reply != WithdrawReply::Withdrawn {
            count_transfer("refused");
            return Ok(applied.reply);
        }
        self.finish_transfer(t).await?;
        count_transfer("moved");
        Ok(WithdrawReply::Withdrawn)
    }

    /// A withdrawn transfer's last two steps; each is applied once however
    /// often it is sent.
    pub async fn finish_transfer(&self, t: &Transfer) -> Result<(), RedisError> {
        let applied = self.redis.deposit(t).await?;
        self.offer(applied.events);
        self.redis.complete(t).await?;
        self.sold_out.forget(&t.to.parent());
        Ok(())
    }

    /// Finishes the transfers of partition `p` withdrawn more than
    /// `older_than_ms` ago and not completed (their mover died or failed
    /// between the steps). Returns how many.
    pub async fn finish_transfers(
        &self,
        p: Partition,
        older_than_ms: i64,
    ) -> Result<usize, RedisError> {
        let before = crate::clock::now_ms() - older_than_ms;
        let pending = self
            .redis
            .pending_transfers(p, before, 100, Caller::Background)
            .await?;
        let mut finished = 0;
        for (id, record) in pending {
            match record
                .as_deref()
                .and_then(|r| Transfer::from_record(&id, r))
            {
                Some(t) => {
                    self.finish_transfer(&t).await?;
                    count_transfer("finished");
                    finished += 1;
                }
                None => tracing::warn!(transfer = %id, ?record, "a pending transfer has no record"),
            }
        }
        Ok(finished)
    }

    /// Evens out free units among a bucketed SKU's buckets at `location`
    /// (moves from the richest to the poorest while they differ by more
    /// than `slack`). Returns the transfers made.
    pub async fn rebalance(
        &self,
        layout: &Layout,
        location: &Location,
        slack: i64,
    ) -> Result<Vec<Transfer>, RedisError> {
        let mut free = Vec::new();
        for bucket in &layout.buckets {
            let (_, c) = self.redis.bucket_counts(bucket, location).await?;
            free.push(c.available());
        }
        let total: i64 = free.iter().sum();
        let target = shares(total, free.len());
        let mut made = Vec::new();
        loop {
            let (rich, _) = free
                .iter()
                .enumerate()
                .map(|(i, f)| (i, f - target[i]))
                .max_by_key(|(_, d)| *d)
                .unwrap_or((0, 0));
            let (poor, _) = free
                .iter()
                .enumerate()
                .map(|(i, f)| (i, f - target[i]))
                .min_by_key(|(_, d)| *d)
                .unwrap_or((0, 0));
            let surplus = free[rich] - target[rich];
            let deficit = target[poor] - free[poor];
            let qty = surplus.min(deficit);
            if qty <= slack.max(0) || rich == poor {
                return Ok(made);
            }
            let t = Transfer::new(
                layout.buckets[rich].clone(),
                layout.buckets[poor].clone(),
                location.clone(),
                qty,
            );
            match self.transfer(&t).await? {
                WithdrawReply::Withdrawn => {
                    free[rich] -= qty;
                    free[poor] += qty;
                    made.push(t);
                }
                // Held meanwhile: the next pass sees the new counts.
                _ => return Ok(made),
            }
        }
    }
}

fn count_hold(outcome: &'static str) {
    metrics::counter!(names::BUCKET_HOLDS_TOTAL, "outcome" => outcome).increment(1);
}

fn count_transfer(outcome: &'static str) {
    metrics::counter!(names::BUCKET_TRANSFERS_TOTAL, "outcome" => outcome).increment(1);
}

/// Every instance's rebalancer: every `rebalance_interval_ms`, evens out
/// the free units of each bucketed SKU's buckets, location by location.
/// Several instances may do it at once: each transfer's withdraw checks
/// that the source can spare the units.
pub async fn run(inventory: Inventory, settings: BucketSettings, shutdown: CancellationToken) {
    for outcome in ["home", "spilled", "refused"] {
        metrics::counter!(names::BUCKET_HOLDS_TOTAL, "outcome" => outcome).increment(0);
    }
    for outcome in ["moved", "finished", "refused"] {
        metrics::counter!(names::BUCKET_TRANSFERS_TOTAL, "outcome" => outcome).increment(0);
    }
    if settings.rebalance_interval_ms == 0 {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(settings.rebalance_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pass: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        pass += 1;
        if let Err(e) = inventory.rebalance_all(&settings, pass).await {
            tracing::debug!(error = %e, "rebalancing stock buckets failed");
        }
    }
}

/// Claims are checked every this many rebalancer passes.
const CLAIM_SWEEP_EVERY: u64 = 10;

impl Inventory {
    async fn rebalance_all(&self, settings: &BucketSettings, pass: u64) -> Result<(), RedisError> {
        for sku in self.redis.bucketed_skus().await? {
            if let Some(layout) = self.layout_of(&sku).await? {
                self.rebalance_sku(&layout, settings.rebalance_slack)
                    .await?;
                if pass.is_multiple_of(CLAIM_SWEEP_EVERY) {
                    let after = i64::try_from(settings.claim_check_after_ms).unwrap_or(i64::MAX);
                    self.sweep_claims(&layout, after).await?;
                }
            }
        }
        Ok(())
    }

    /// Ends the cap claims whose gateway stopped before ending them: a
    /// claim older than `check_after_ms` is looked up as the hold it
    /// counts in the SKU's other buckets; released or expired, it is given
    /// back, confirmed, kept; live, left. Found nowhere, it is given back
    /// while a hold made with it would still have its record (so it was
    /// never held), and kept after that (the cap stays stricter, never
    /// looser). Returns how many claims it ended.
    pub async fn sweep_claims(
        &self,
        layout: &Layout,
        check_after_ms: i64,
    ) -> Result<usize, RedisError> {
        use crate::redis::calls::ReservationStatus;
        let partitions = self.redis.keys().partitions();
        let retention = self.redis.limits().record_retention_ms as i64;
        let now = crate::clock::now_ms();
        let mut ended = 0;
        for home in &layout.buckets {
            for (id, value) in self.redis.claims_of(home).await? {
                let claimed_at: i64 = value
                    .split('|')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let age = now - claimed_at;
                if age < check_after_ms {
                    continue;
                }
                let mut status = None;
                for other in layout.buckets.iter().filter(|b| *b != home) {
                    let Some(rid) = ReservationId::with_random(other, partitions, &id) else {
                        continue;
                    };
                    if let ReservationReply::Ok(r) = self.redis.reservation(&rid, None).await? {
                        status = Some(r.status);
                        break;
                    }
                }
                let keep = match status {
                    Some(ReservationStatus::Held) => continue,
                    Some(ReservationStatus::Confirmed) => true,
                    Some(_) => false,
                    None if age < retention => false,
                    None => true,
                };
                self.redis.unclaim(home, &id, keep).await?;
                ended += 1;
            }
        }
        if ended > 0 {
            tracing::info!(sku = %layout.sku, ended, "ended cap claims their gateway left");
        }
        Ok(ended)
    }

    /// Evens out every location of a bucketed SKU; returns the transfers.
    pub async fn rebalance_sku(
        &self,
        layout: &Layout,
        slack: i64,
    ) -> Result<Vec<Transfer>, RedisError> {
        self.drain_own_stock(layout).await?;
        let fields = self
            .redis
            .summed_fields(&layout.sku, Caller::Background)
            .await?;
        let locations: std::collections::BTreeSet<&str> = fields
            .iter()
            .filter_map(|(f, _)| f.strip_prefix("l:")?.strip_suffix(":oh"))
            .collect();
        let mut made = Vec::new();
        for loc in locations {
            if let Ok(location) = Location::parse(loc) {
                made.extend(self.rebalance(layout, &location, slack).await?);
            }
        }
        Ok(made)
    }
}

/// The account's home bucket in a layout (for tests and tools).
pub fn home_bucket<'a>(layout: &'a Layout, account: &AccountId) -> &'a Sku {
    &layout.buckets[layout.home(account.as_str())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly_with_the_larger_first() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(shares(0, 2), vec![0, 0]);
    }

    #[test]
    fn a_layout_names_its_buckets_by_partition() {
        let sku = Sku::parse("HOT-1").unwrap();
        let layout = Layout::parse(&sku, "3,17,40").unwrap();
        assert_eq!(layout.buckets[1].as_str(), "HOT-1~17");
        assert_eq!(layout.buckets[1].bucket_partition(), Some(Partition(17)));
        assert_eq!(layout.buckets[1].parent(), sku);
        assert!(Layout::parse(&sku, "3,x").is_none());
        let homes: std::collections::HashSet<usize> = (0..100)
            .map(|i| layout.home(&format!("acct-{i}")))
            .collect();
        assert_eq!(homes.len(), 3, "accounts spread over every bucket");
    }
}
