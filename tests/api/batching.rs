//! Batching is an optimisation, never a semantic: the batch reserve script
//! applied to a sequence of requests gives the same replies, events and
//! final Redis state as the same requests sent one at a time (DESIGN.md,
//! "Decisions for the next capabilities"). Every test drives the script
//! itself, as the batcher would, on real Redis.

use std::collections::BTreeMap;

use flashgate::{
    events::Event,
    inventory::{AccountId, IdempotencyKey, Location, Partition, Qty, ReservationId, Sku},
    redis::{
        Caller, Redis, ScriptName,
        batch::{Applied, BatchKind},
        calls::{
            PolicyField, PolicyUpdate, ReserveBatch, ReserveReply, ReserveRequest, StockCounts,
        },
    },
};
use fred::prelude::*;

use crate::harness::{Backend, test_settings, unique_prefix};
use crate::on_both_topologies;

async fn connect(backend: Backend) -> Redis {
    Redis::connect(&test_settings(backend, &unique_prefix()))
        .await
        .expect("redis connects")
}

/// `count` SKU names that all live in one partition, so one batch can hold
/// requests for all of them.
fn skus_in_one_partition(redis: &Redis, count: usize) -> (Partition, Vec<Sku>) {
    let keys = redis.keys();
    let first = Sku::parse("DIFF-0").unwrap();
    let p = keys.partition_of(&first);
    let skus = (0..)
        .map(|i| Sku::parse(&format!("DIFF-{i}")).unwrap())
        .filter(|s| keys.partition_of(s) == p)
        .take(count)
        .collect();
    (p, skus)
}

async fn stock(redis: &Redis, sku: &Sku, loc: &str, on_hand: u64, safety: u64, backorder: u64) {
    let counts = StockCounts {
        on_hand,
        safety_stock: safety,
        low_stock_threshold: 0,
        backorder_limit: backorder,
    };
    let op = uuid::Uuid::new_v4().simple().to_string();
    let loc = Location::parse(loc).unwrap();
    redis
        .set_stock(sku, &loc, counts, None, &crate::harness::test_staff(), &op)
        .await
        .expect("stock is set");
}

/// The same starting state on a fresh prefix: a SKU with two locations
/// (one with safety stock, one with backorder room) and a cap of 3, a
/// small SKU, a SKU whose sale has not opened, and one never created.
async fn seed(redis: &Redis, skus: &[Sku], opens_at_ms: i64) {
    stock(redis, &skus[0], "a", 5, 1, 0).await;
    stock(redis, &skus[0], "b", 3, 0, 2).await;
    let cap = PolicyUpdate {
        max_per_account: Some(PolicyField::Set(3)),
        ..PolicyUpdate::default()
    };
    redis.set_policy(&skus[0], &cap).await.unwrap();
    stock(redis, &skus[1], "default", 4, 0, 0).await;
    stock(redis, &skus[2], "default", 10, 0, 0).await;
    let later = PolicyUpdate {
        opens_at_ms: Some(PolicyField::Set(opens_at_ms)),
        ..PolicyUpdate::default()
    };
    redis.set_policy(&skus[2], &later).await.unwrap();
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn random_requests(p: Partition, skus: &[Sku], seed: u64, count: usize) -> Vec<ReserveRequest> {
    let mut rng = Lcg(seed);
    let locations = [
        None,
        None,
        Some("a"),
        Some("b"),
        Some("default"),
        Some("nowhere"),
    ];
    (0..count)
        .map(|_| {
            let sku = &skus[rng.below(skus.len() as u64) as usize];
            let key = match rng.below(6) {
                0 => Some(IdempotencyKey::parse("key-one").unwrap()),
                1 => Some(IdempotencyKey::parse("key-two").unwrap()),
                _ => None,
            };
            ReserveRequest {
                id: ReservationId::generate(sku, p),
                account: AccountId::parse(&format!("acct-{}", rng.below(4))).unwrap(),
                qty: Qty::parse(1 + rng.below(3) as i64, 10).unwrap(),
                location: locations[rng.below(locations.len() as u64) as usize]
                    .map(|l| Location::parse(l).unwrap()),
                idempotency_key: key,
                cart: None,
                admission: None,
                claimed: false,
            }
        })
        .collect()
}

async fn apply(
    redis: &Redis,
    p: Partition,
    batch: &[&ReserveRequest],
) -> Vec<Applied<ReserveReply>> {
    let (keys, args) = ReserveBatch::call(redis.core(), p, batch);
    redis
        .core()
        .eval_partition::<ReserveReply>(ScriptName::Reserve, p, keys, args)
        .await
        .expect("the script runs")
}

/// A reply without what depends on the clock or the stream's ids.
fn timeless(reply: &ReserveReply) -> String {
    let mut reply = reply.clone();
    match &mut reply {
        ReserveReply::Held(h) => {
            h.expires_at_ms = 0;
            h.stream_id.clear();
        }
        ReserveReply::InsufficientStock { next_expiry_ms, .. } => *next_expiry_ms = None,
        _ => {}
    }
    format!("{reply:?}")
}

fn timeless_event(e: &Event) -> String {
    let r = e.reservation.as_ref();
    format!(
        "{} {} {} v{} oh{} rs{} {:?} {:?} {:?} {:?}",
        e.kind.as_str(),
        e.sku,
        e.location,
        e.version,
        e.on_hand,
        e.reserved,
        r.map(|r| &r.id),
        r.map(|r| &r.account),
        r.map(|r| r.qty),
        r.map(|r| r.backorder)
    )
}

/// Everything the scripts keep about the SKUs, without deadlines.
async fn state(redis: &Redis, p: Partition, skus: &[Sku]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for sku in skus {
        let [hash, holds, accounts] = redis.keys().sku_keys(p, sku);
        let fields: BTreeMap<String, String> = redis.pool().hgetall(&hash).await.unwrap();
        let members: Vec<String> = redis
            .pool()
            .zrange(&holds, 0, -1, None, false, None, false)
            .await
            .unwrap();
        let mut members = members;
        members.sort();
        let units: BTreeMap<String, String> = redis.pool().hgetall(&accounts).await.unwrap();
        out.insert(format!("{sku} hash"), format!("{fields:?}"));
        out.insert(format!("{sku} holds"), format!("{members:?}"));
        out.insert(format!("{sku} accounts"), format!("{units:?}"));
    }
    out
}

async fn a_batch_gives_the_replies_and_state_of_one_request_at_a_time(backend: Backend) {
    let (p, skus) = skus_in_one_partition(&connect(backend).await, 4);
    for seed_value in [7, 42, 1_234] {
        let (batched, single) = (connect(backend).await, connect(backend).await);
        let opens_at_ms = flashgate::clock::now_ms() + 3_600_000;
        seed(&batched, &skus, opens_at_ms).await;
        seed(&single, &skus, opens_at_ms).await;
        let requests = random_requests(p, &skus, seed_value, 60);
        let all: Vec<&ReserveRequest> = requests.iter().collect();
        let in_one = apply(&batched, p, &all).await;
        let mut one_by_one = Vec::new();
        for req in &requests {
            one_by_one.extend(apply(&single, p, &[req]).await);
        }
        let outcomes: Vec<String> = in_one.iter().map(|a| timeless(&a.reply)).collect();
        let expected: Vec<String> = one_by_one.iter().map(|a| timeless(&a.reply)).collect();
        assert_eq!(outcomes, expected, "replies differ (seed {seed_value})");
        let kinds: std::collections::BTreeSet<&str> = outcomes
            .iter()
            .map(|o| o.split([' ', '(', '{']).next().unwrap_or(""))
            .collect();
        assert!(
            kinds.len() >= 6,
            "the sequence should mix outcomes: {kinds:?}"
        );
        let events = |applied: &[Applied<ReserveReply>]| -> Vec<Vec<String>> {
            applied
                .iter()
                .map(|a| a.events.iter().map(timeless_event).collect())
                .collect()
        };
        assert_eq!(events(&in_one), events(&one_by_one), "events differ");
        assert_eq!(
            state(&batched, p, &skus).await,
            state(&single, p, &skus).await,
            "final state differs (seed {seed_value})"
        );
    }
}

async fn a_sell_out_in_the_middle_of_a_batch_holds_exactly_the_stock(backend: Backend) {
    let redis = connect(backend).await;
    let (p, skus) = skus_in_one_partition(&redis, 1);
    stock(&redis, &skus[0], "default", 7, 0, 0).await;
    let requests: Vec<ReserveRequest> = (0..20)
        .map(|i| ReserveRequest {
            id: ReservationId::generate(&skus[0], p),
            account: AccountId::parse(&format!("buyer-{i}")).unwrap(),
            qty: Qty::parse(1, 10).unwrap(),
            location: None,
            idempotency_key: None,
            cart: None,
            admission: None,
            claimed: false,
        })
        .collect();
    let replies = apply(&redis, p, &requests.iter().collect::<Vec<_>>()).await;
    let held: Vec<bool> = replies
        .iter()
        .map(|a| matches!(a.reply, ReserveReply::Held(_)))
        .collect();
    let expected: Vec<bool> = (0..20).map(|i| i < 7).collect();
    assert_eq!(held, expected, "the first seven arrivals hold, in order");
    let view = redis
        .inventory(&skus[0], Caller::Request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.reserved, view.available), (7, 0));
    assert!(matches!(
        replies[19].reply,
        ReserveReply::InsufficientStock { holdable: 0, .. }
    ));
}

async fn one_idempotency_key_twice_in_a_batch_holds_once_and_replays_once(backend: Backend) {
    let redis = connect(backend).await;
    let (p, skus) = skus_in_one_partition(&redis, 1);
    stock(&redis, &skus[0], "default", 10, 0, 0).await;
    let request = || ReserveRequest {
        id: ReservationId::generate(&skus[0], p),
        account: AccountId::parse("twice").unwrap(),
        qty: Qty::parse(2, 10).unwrap(),
        location: None,
        idempotency_key: Some(IdempotencyKey::parse("same-key").unwrap()),
        cart: None,
        admission: None,
        claimed: false,
    };
    let (first, second) = (request(), request());
    let replies = apply(&redis, p, &[&first, &second]).await;
    let (ReserveReply::Held(a), ReserveReply::Held(b)) = (&replies[0].reply, &replies[1].reply)
    else {
        panic!("both answer with the hold: {replies:?}");
    };
    assert_eq!((a.replayed, b.replayed), (false, true));
    assert_eq!(a.reservation_id, b.reservation_id);
    assert_eq!(replies[1].events.len(), 0, "a replay appends nothing");
    assert_eq!(
        redis
            .inventory(&skus[0], Caller::Request)
            .await
            .unwrap()
            .unwrap()
            .reserved,
        2
    );
}

/// fred re-sends a command that was in flight when its connection dropped:
/// the same batch arrives twice, and each request recognises its own run.
async fn a_resent_batch_holds_nothing_twice(backend: Backend) {
    let redis = connect(backend).await;
    let (p, skus) = skus_in_one_partition(&redis, 2);
    stock(&redis, &skus[0], "default", 5, 0, 0).await;
    stock(&redis, &skus[1], "default", 5, 0, 0).await;
    let requests: Vec<ReserveRequest> = (0..6)
        .map(|i| ReserveRequest {
            id: ReservationId::generate(&skus[i % 2], p),
            account: AccountId::parse(&format!("resend-{i}")).unwrap(),
            qty: Qty::parse(1, 10).unwrap(),
            location: None,
            idempotency_key: None,
            cart: None,
            admission: None,
            claimed: false,
        })
        .collect();
    let batch: Vec<&ReserveRequest> = requests.iter().collect();
    let first = apply(&redis, p, &batch).await;
    let before = state(&redis, p, &skus).await;
    let again = apply(&redis, p, &batch).await;
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.reply, b.reply, "a re-sent request answers its own hold");
        assert!(b.events.is_empty(), "and appends nothing");
    }
    assert_eq!(state(&redis, p, &skus).await, before);
    assert_eq!(
        redis
            .inventory(&skus[0], Caller::Request)
            .await
            .unwrap()
            .unwrap()
            .reserved,
        3
    );
}

on_both_topologies!(
    a_batch_gives_the_replies_and_state_of_one_request_at_a_time,
    a_sell_out_in_the_middle_of_a_batch_holds_exactly_the_stock,
    one_idempotency_key_twice_in_a_batch_holds_once_and_replays_once,
    a_resent_batch_holds_nothing_twice,
);
