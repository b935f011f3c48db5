//! Many shoppers, few units: never more held than stocked.

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{
    Backend, Reply, TestApp, spawn_app, spawn_app_with, test_settings, token, unique_prefix,
};
use crate::on_both_topologies;

const ATTEMPTS: usize = 2_000;
const ACCOUNTS: usize = 500;
const STOCK: i64 = 100;
const IN_FLIGHT: usize = 250;

async fn crowd(apps: &[&TestApp], sku: &str) -> Vec<Reply> {
    let tokens: Vec<String> = (0..ACCOUNTS)
        .map(|i| token(&format!("shopper-{i}")))
        .collect();
    stream::iter(0..ATTEMPTS)
        .map(|i| {
            let app = apps[i % apps.len()];
            let token = &tokens[i % ACCOUNTS];
            async move {
                app.reserve(token, json!({ "sku": sku, "qty": 1 }), None)
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

async fn assert_exactly_the_stock_was_sold(apps: &[&TestApp], sku: &str) {
    apps[0].stock(sku, STOCK).await;
    let replies = crowd(apps, sku).await;
    let held = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT && r.code() == "insufficient-stock")
        .count();
    assert_eq!(held, STOCK as usize);
    assert_eq!(refused, ATTEMPTS - STOCK as usize);
    let view = apps[0].view(sku).await.body;
    assert_eq!(view["available"], 0);
    assert_eq!(view["reserved"], STOCK);
    assert_eq!(view["status"], "OUT_OF_STOCK");
}

async fn two_thousand_attempts_on_stock_100_hold_exactly_100(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_exactly_the_stock_was_sold(&[&app], "HOT-1").await;
}

async fn two_gateways_sharing_redis_hold_exactly_100(backend: Backend) {
    let prefix = unique_prefix();
    let a = spawn_app_with(test_settings(backend, &prefix)).await;
    let b = spawn_app_with(test_settings(backend, &prefix)).await;
    assert_exactly_the_stock_was_sold(&[&a, &b], "HOT-2").await;
}

async fn a_cap_of_two_holds_under_twenty_concurrent_attempts(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("CAPPED", 100).await;
    let r = app.policy("CAPPED", json!({ "max_per_account": 2 })).await;
    assert_eq!(r.status, StatusCode::OK);
    let t = token("eager-buyer");
    let replies: Vec<Reply> = stream::iter(0..20)
        .map(|_| app.reserve(&t, json!({ "sku": "CAPPED", "qty": 1 }), None))
        .buffer_unordered(20)
        .collect()
        .await;
    let held = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(held, 2);
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "purchase-limit");
        assert_eq!(r.body["limit"], 2);
        assert_eq!(r.body["already"], 2);
    }
    assert_eq!(app.view("CAPPED").await.body["reserved"], 2);
    // A released unit frees room under the cap again.
    let id = replies
        .iter()
        .find(|r| r.status == StatusCode::CREATED)
        .unwrap()
        .body["reservation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.reservation(&t, &id, Some("release")).await.status,
        StatusCode::OK
    );
    let again = app
        .reserve(&t, json!({ "sku": "CAPPED", "qty": 1 }), None)
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
}

on_both_topologies!(
    two_thousand_attempts_on_stock_100_hold_exactly_100,
    two_gateways_sharing_redis_hold_exactly_100,
    a_cap_of_two_holds_under_twenty_concurrent_attempts,
);
