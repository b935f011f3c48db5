//! Redis forgetting its scripts, or going away, is not the client's problem.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{
    Backend, PrivateRedis, on_every_node, spawn_app, spawn_app_with, test_settings, token,
    unique_prefix,
};
use crate::on_both_topologies;

async fn the_gateway_survives_script_flush_on_every_node(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("FLUSH", 10).await;
    let t = token("flushed");
    assert_eq!(
        app.reserve(&t, json!({ "sku": "FLUSH", "qty": 1 }), None)
            .await
            .status,
        StatusCode::CREATED
    );
    for out in on_every_node(backend, &["script", "flush"]) {
        assert_eq!(out.trim(), "OK");
    }
    let r = app
        .reserve(&t, json!({ "sku": "FLUSH", "qty": 1 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["reservation_id"].as_str().unwrap();
    on_every_node(backend, &["script", "flush"]);
    assert_eq!(
        app.reservation(&t, id, Some("confirm")).await.status,
        StatusCode::OK
    );
    assert_eq!(app.view("FLUSH").await.body["on_hand"], 9);
}

async fn a_gateway_with_another_partition_count_refuses_to_start(backend: Backend) {
    let prefix = unique_prefix();
    let _first = spawn_app_with(test_settings(backend, &prefix)).await;
    let mut other = test_settings(backend, &prefix);
    other.redis.partitions = 128;
    let err = flashgate::app::App::build(other)
        .await
        .err()
        .expect("start refused");
    assert!(format!("{err:#}").contains("partitions"), "{err:#}");
}

async fn a_gateway_refuses_to_start_without_redis(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    // Nothing listens on port 1: the start fails fast and says why.
    settings.redis.url = "redis://127.0.0.1:1".into();
    settings.redis.connect_timeout_ms = 500;
    let err = flashgate::app::App::build(settings)
        .await
        .err()
        .expect("start refused");
    assert!(format!("{err:#}").contains("redis"), "{err:#}");
}

/// Redis dies under a running gateway: clients get 503 with Retry-After and
/// no internals, readiness says so, and service resumes when Redis returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_gives_503_then_service_resumes() {
    let mut redis = PrivateRedis::start();
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.redis.url = redis.url().into();
    settings.redis.command_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    app.stock("GONE", 5).await;
    let t = token("patient");
    assert_eq!(
        app.reserve(&t, json!({ "sku": "GONE", "qty": 1 }), None)
            .await
            .status,
        StatusCode::CREATED
    );

    redis.kill();
    let r = app
        .reserve(&t, json!({ "sku": "GONE", "qty": 1 }), None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.body["request_id"], r.header("x-request-id").unwrap());
    let text = r.body.to_string().to_lowercase();
    assert!(
        !text.contains("redis") && !text.contains("io error"),
        "internals leaked: {text}"
    );
    let view = app.view("GONE").await;
    assert_eq!(view.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.send(Method::GET, "/readyz", None, &[], None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    redis.resume();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = app
            .send(Method::GET, "/readyz", None, &[], None)
            .await
            .status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "the gateway did not reconnect");
    // The restarted server kept nothing: the admin restocks, shoppers buy.
    app.stock("GONE", 5).await;
    let r = app
        .reserve(&t, json!({ "sku": "GONE", "qty": 1 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Redis stalls past the command timeout while a reservation waits: the
/// client hears 503, and the hold the script made late does not stay.
/// With an Idempotency-Key the hold stays for the client's retry, which is
/// answered from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_made_after_its_503_is_released_unless_the_client_can_retry_for_it() {
    let redis = PrivateRedis::start();
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.redis.url = redis.url().into();
    settings.redis.command_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    app.stock("LATE", 5).await;
    // Write commands wait (then run) while clients are paused.
    let stall = |port: u16| {
        let paused =
            flashgate_dev::devstack::redis_cli(port, &["client", "pause", "1000", "write"]);
        assert_eq!(paused.trim(), "OK");
    };

    stall(redis.port);
    let r = app
        .reserve(&token("late-1"), json!({ "sku": "LATE", "qty": 2 }), None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // The script runs once the pause ends; then the hold is given back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut reserved = -1;
    for _ in 0..50 {
        reserved = app.view("LATE").await.body["reserved"]
            .as_i64()
            .unwrap_or(-1);
        if reserved == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reserved, 0, "a hold answered 503 stayed held");
    // It was held, and its release is journaled like a shopper's own.
    let db = crate::harness::journal_db(app.settings.postgres.url.expose()).await;
    let mut kinds = Vec::new();
    for _ in 0..50 {
        kinds = db
            .query(
                "SELECT kind FROM inventory_events WHERE sku = 'LATE' AND account_id = 'late-1' \
                 ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>();
        if kinds.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kinds, ["reserved", "released"]);

    // With a key: the hold waits for the retry, which gets it.
    let t = token("late-2");
    stall(redis.port);
    let body = json!({ "sku": "LATE", "qty": 1 });
    let r = app.reserve(&t, body.clone(), Some("retry-me")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let retry = app.reserve(&t, body, Some("retry-me")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    // Nothing releases a keyed hold behind the client's back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(app.view("LATE").await.body["reserved"], 1);
}

on_both_topologies!(
    the_gateway_survives_script_flush_on_every_node,
    a_gateway_with_another_partition_count_refuses_to_start,
    a_gateway_refuses_to_start_without_redis,
);
