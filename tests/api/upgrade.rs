//! What a gateway of the one-call-per-request layout left in Redis still
//! reads after an upgrade (README, "Upgrading"): reservation records stored
//! as hashes and idempotency records stored as JSON.

use flashgate::{
    inventory::{AccountId, IdempotencyKey, Location, Qty, ReservationId, Sku},
    redis::{
        Caller, Redis,
        calls::{
            Hold, ReservationReply, ReservationStatus, ReserveReply, ReserveRequest, SettleRequest,
            Settlement, StockCounts,
        },
    },
};
use fred::prelude::*;

use crate::harness::{Backend, test_settings, unique_prefix};
use crate::on_both_topologies;

async fn stocked(backend: Backend, sku: &str) -> (Redis, Sku) {
    let redis = Redis::connect(&test_settings(backend, &unique_prefix()))
        .await
        .expect("redis connects");
    let sku = Sku::parse(sku).unwrap();
    let counts = StockCounts {
        on_hand: 10,
        safety_stock: 0,
        low_stock_threshold: 0,
        backorder_limit: 0,
    };
    let loc = Location::parse("default").unwrap();
    redis
        .set_stock(
            &sku,
            &loc,
            counts,
            None,
            &crate::harness::test_staff(),
            "upgrade-seed",
        )
        .await
        .expect("stock is set");
    (redis, sku)
}

fn request(sku: &Sku, redis: &Redis, key: Option<&str>) -> ReserveRequest {
    ReserveRequest {
        id: ReservationId::generate(sku, redis.keys().partition_of(sku)),
        account: AccountId::parse("upgrader").unwrap(),
        qty: Qty::parse(2, 10).unwrap(),
        location: None,
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
        cart: None,
        admission: None,
        claimed: false,
    }
}

async fn hold(redis: &Redis, req: ReserveRequest) -> Hold {
    match redis.reserve(req).await.expect("reserve runs").reply {
        ReserveReply::Held(hold) => hold,
        other => panic!("expected a hold, got {other:?}"),
    }
}

async fn a_reservation_record_stored_as_a_hash_is_read_and_confirmed(backend: Backend) {
    let (redis, sku) = stocked(backend, "UPGRADE-HASH").await;
    let req = request(&sku, &redis, None);
    let (id, account) = (req.id.clone(), req.account.clone());
    let held = hold(&redis, req).await;
    // Rewrite the record as the older gateway stored it: one field per value.
    let key = redis.keys().reservation(&id);
    let fields = [
        ("rid", held.reservation_id.clone()),
        ("sku", held.sku.clone()),
        ("loc", held.location.clone()),
        ("acct", "upgrader".to_owned()),
        ("qty", "2".to_owned()),
        ("state", "held".to_owned()),
        ("exp", held.expires_at_ms.to_string()),
        ("bo", "0".to_owned()),
        ("created", "1".to_owned()),
        ("sid", held.stream_id.clone()),
    ];
    let _: () = redis.pool().del(&key).await.unwrap();
    let _: () = redis.pool().hset(&key, fields.to_vec()).await.unwrap();

    let read = redis.reservation(&id, Some(&account)).await.unwrap();
    assert!(
        matches!(&read, ReservationReply::Ok(r) if r.status == ReservationStatus::Held && r.qty == 2),
        "{read:?}"
    );
    let settled = redis
        .settle(SettleRequest {
            id: id.clone(),
            account,
            settlement: Settlement::Confirm,
        })
        .await
        .unwrap();
    assert!(
        matches!(&settled.reply, ReservationReply::Ok(r) if r.status == ReservationStatus::Confirmed),
        "{:?}",
        settled.reply
    );
    assert_eq!(settled.events.len(), 1, "the confirmation is journaled");
    let view = redis
        .inventory(&sku, Caller::Request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.on_hand, view.reserved), (8, 0));
}

async fn an_idempotency_record_stored_as_json_replays_its_hold(backend: Backend) {
    let (redis, sku) = stocked(backend, "UPGRADE-IDEM").await;
    let first = request(&sku, &redis, Some("old-key"));
    let fingerprint = first.fingerprint();
    let idem_key = redis.keys().idempotency(
        first.id.partition(),
        &sku,
        &first.account,
        first.idempotency_key.as_ref().unwrap(),
    );
    let held = hold(&redis, first).await;
    let old = serde_json::json!({
        "fp": fingerprint,
        "reply": {
            "outcome": "held", "reservation_id": held.reservation_id, "sku": held.sku,
            "location": held.location, "qty": held.qty, "expires_at_ms": held.expires_at_ms,
            "backorder": held.backorder, "stream_id": held.stream_id, "replayed": false,
        },
    });
    let _: () = redis
        .pool()
        .set(&idem_key, old.to_string(), None, None, false)
        .await
        .unwrap();

    let again = redis
        .reserve(request(&sku, &redis, Some("old-key")))
        .await
        .unwrap();
    assert!(again.events.is_empty(), "a replay appends nothing");
    assert_eq!(
        again.reply,
        ReserveReply::Held(Hold {
            replayed: true,
            ..held
        })
    );
    let view = redis
        .inventory(&sku, Caller::Request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.reserved, 2);
}

on_both_topologies!(
    a_reservation_record_stored_as_a_hash_is_read_and_confirmed,
    an_idempotency_record_stored_as_json_replays_its_hold,
);
