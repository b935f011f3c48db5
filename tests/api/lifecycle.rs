//! Holds become sales, go back, or run out.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestApp, spawn_app, token};
use crate::on_both_topologies;

async fn hold(app: &TestApp, t: &str, sku: &str, qty: i64) -> String {
    let r = app
        .reserve(t, json!({ "sku": sku, "qty": qty }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["reservation_id"].as_str().unwrap().to_owned()
}

async fn confirming_sells_the_units_and_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("LIFE-1", 10).await;
    let t = token("buyer-1");
    let id = hold(&app, &t, "LIFE-1", 3).await;
    let held = app.reservation(&t, &id, None).await;
    assert_eq!(held.body["status"], "held");
    assert_eq!(held.body["account_id"], "buyer-1");

    let confirmed = app.reservation(&t, &id, Some("confirm")).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(confirmed.body["status"], "confirmed");
    let again = app.reservation(&t, &id, Some("confirm")).await;
    assert_eq!(
        (again.status, again.body.clone()),
        (StatusCode::OK, confirmed.body)
    );
    let view = app.view("LIFE-1").await.body;
    assert_eq!(
        (view["on_hand"].clone(), view["reserved"].clone()),
        (json!(7), json!(0))
    );
    assert_eq!(view["available"], 7);

    let release = app.reservation(&t, &id, Some("release")).await;
    assert_eq!(release.status, StatusCode::CONFLICT);
    assert_eq!(release.code(), "reservation-confirmed");
}

async fn releasing_gives_units_back_and_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("LIFE-2", 2).await;
    let t = token("buyer-2");
    let id = hold(&app, &t, "LIFE-2", 2).await;
    assert_eq!(app.view("LIFE-2").await.body["available"], 0);
    let released = app.reservation(&t, &id, Some("release")).await;
    assert_eq!(released.status, StatusCode::OK);
    assert_eq!(released.body["status"], "released");
    assert_eq!(
        app.reservation(&t, &id, Some("release")).await.status,
        StatusCode::OK
    );
    let view = app.view("LIFE-2").await.body;
    assert_eq!(
        (view["available"].clone(), view["reserved"].clone()),
        (json!(2), json!(0))
    );
    let confirm = app.reservation(&t, &id, Some("confirm")).await;
    assert_eq!(confirm.status, StatusCode::CONFLICT);
    assert_eq!(confirm.code(), "reservation-released");
}

async fn an_overdue_hold_never_blocks_and_reads_as_expired(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("LIFE-3", 1).await;
    app.policy("LIFE-3", json!({ "reservation_ttl_seconds": 1 }))
        .await;
    let slow = token("slow-buyer");
    let id = hold(&app, &slow, "LIFE-3", 1).await;
    let refused = app
        .reserve(
            &token("fast-buyer"),
            json!({ "sku": "LIFE-3", "qty": 1 }),
            None,
        )
        .await;
    assert_eq!(refused.code(), "insufficient-stock");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        app.reservation(&slow, &id, None).await.body["status"],
        "expired"
    );
    // Whether or not the sweeper got there first, the unit is free again.
    let fast = app
        .reserve(
            &token("fast-buyer"),
            json!({ "sku": "LIFE-3", "qty": 1 }),
            None,
        )
        .await;
    assert_eq!(fast.status, StatusCode::CREATED, "{:?}", fast.body);
    for action in ["confirm", "release"] {
        let r = app.reservation(&slow, &id, Some(action)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "reservation-expired");
    }
    assert_eq!(app.view("LIFE-3").await.body["reserved"], 1);
}

async fn the_sweeper_returns_units_of_idle_skus(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("LIFE-4", 5).await;
    app.policy("LIFE-4", json!({ "reservation_ttl_seconds": 1 }))
        .await;
    let t = token("idle-buyer");
    for _ in 0..3 {
        hold(&app, &t, "LIFE-4", 1).await;
    }
    assert_eq!(app.view("LIFE-4").await.body["reserved"], 3);
    let mut reserved = json!(3);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reserved = app.view("LIFE-4").await.body["reserved"].clone();
        if reserved == 0 {
            break;
        }
    }
    assert_eq!(reserved, 0, "the sweeper did not expire the holds");
}

on_both_topologies!(
    confirming_sells_the_units_and_is_idempotent,
    releasing_gives_units_back_and_is_idempotent,
    an_overdue_hold_never_blocks_and_reads_as_expired,
    the_sweeper_returns_units_of_idle_skus,
);
