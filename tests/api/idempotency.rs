//! Retries with one Idempotency-Key reserve once.

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, Reply, spawn_app, token};
use crate::on_both_topologies;

async fn fifty_concurrent_retries_with_one_key_make_one_hold(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("IDEM-1", 10).await;
    let t = token("retrying-client");
    let body = json!({ "sku": "IDEM-1", "qty": 2 });
    let replies: Vec<Reply> = stream::iter(0..50)
        .map(|_| app.reserve(&t, body.clone(), Some("order-42{p1}")))
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(
        replies.iter().all(|r| r.status == StatusCode::CREATED),
        "{replies:?}"
    );
    let first = &replies[0].body["reservation_id"];
    assert!(replies.iter().all(|r| &r.body["reservation_id"] == first));
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 49);
    let view = app.view("IDEM-1").await.body;
    assert_eq!(view["reserved"], 2);

    // A later replay still answers the original body.
    let later = app.reserve(&t, body.clone(), Some("order-42{p1}")).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_eq!(later.body, replies[0].body);
    assert_eq!(later.header("idempotent-replayed"), Some("true"));
}

async fn a_key_reused_with_another_body_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("IDEM-2", 10).await;
    app.stock("IDEM-3", 10).await;
    let t = token("sloppy-client");
    let first = app
        .reserve(&t, json!({ "sku": "IDEM-2", "qty": 1 }), Some("k-1"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for other in [
        json!({ "sku": "IDEM-2", "qty": 2 }),
        json!({ "sku": "IDEM-2", "qty": 1, "location": "default" }),
        json!({ "sku": "IDEM-3", "qty": 1 }),
    ] {
        let r = app.reserve(&t, other.clone(), Some("k-1")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
        assert_eq!(r.code(), "idempotency-key-reused");
    }
    assert_eq!(app.view("IDEM-2").await.body["reserved"], 1);
    assert_eq!(app.view("IDEM-3").await.body["reserved"], 0);
    // Keys are scoped by account: another shopper may use the same one.
    let other = app
        .reserve(
            &token("someone-else"),
            json!({ "sku": "IDEM-3", "qty": 1 }),
            Some("k-1"),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
}

async fn a_refused_request_is_decided_again_when_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("IDEM-4", 0).await;
    let t = token("early-bird");
    let body = json!({ "sku": "IDEM-4", "qty": 1 });
    let refused = app.reserve(&t, body.clone(), Some("k-9")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    app.stock("IDEM-4", 1).await;
    let retried = app.reserve(&t, body, Some("k-9")).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert_eq!(retried.header("idempotent-replayed"), None);
}

/// fred re-sends a command that was in flight when its connection dropped;
/// the reserve script must recognise its own second run by the request's
/// reservation id and answer it without holding again.
async fn a_resent_reserve_command_holds_once(backend: Backend) {
    use flashgate::{
        inventory::{AccountId, Qty, ReservationId, Sku},
        redis::{
            Redis,
            calls::{ReserveReply, ReserveRequest},
        },
    };
    let app = spawn_app(backend).await;
    app.stock("RESENT", 10).await;
    let settings = crate::harness::test_settings(backend, &app.prefix);
    let redis = Redis::connect(&settings).await.unwrap();
    let sku = Sku::parse("RESENT").unwrap();
    let id = ReservationId::generate(&sku, redis.keys().partition_of(&sku));
    let account = AccountId::parse("resender").unwrap();
    let request = || ReserveRequest {
        id: id.clone(),
        account: account.clone(),
        qty: Qty::parse(3, 10).unwrap(),
        location: None,
        idempotency_key: None,
        cart: None,
        admission: None,
        claimed: false,
    };
    let first = redis.reserve(request()).await.unwrap();
    let second = redis.reserve(request()).await.unwrap();
    let (ReserveReply::Held(a), ReserveReply::Held(b)) = (first.reply, second.reply) else {
        panic!("both runs should answer with the hold");
    };
    assert_eq!(a, b);
    assert_eq!(a.reservation_id, id.as_str());
    assert_eq!(app.view("RESENT").await.body["reserved"], 3);
}

on_both_topologies!(
    a_resent_reserve_command_holds_once,
    fifty_concurrent_retries_with_one_key_make_one_hold,
    a_key_reused_with_another_body_is_refused,
    a_refused_request_is_decided_again_when_retried,
);
