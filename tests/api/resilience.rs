//! Redis forgetting its scripts, or going away, is not the client's problem.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, on_every_node, spawn_app, spawn_app_with, test_settings, token, unique_prefix};
use crate::on_both_topologies;

async fn the_gateway_survives_script_flush_on_every_node(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("FLUSH", 10).await;
    let t = token("flushed");
    assert_eq!(app.reserve(&t, json!({ "sku": "FLUSH", "qty": 1 }), None).await.status, StatusCode::CREATED);
    for out in on_every_node(backend, &["script", "flush"]) {
        assert_eq!(out.trim(), "OK");
    }
    let r = app.reserve(&t, json!({ "sku": "FLUSH", "qty": 1 }), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["reservation_id"].as_str().unwrap();
    on_every_node(backend, &["script", "flush"]);
    assert_eq!(app.reservation(&t, id, Some("confirm")).await.status, StatusCode::OK);
    assert_eq!(app.view("FLUSH").await.body["on_hand"], 9);
}

async fn a_gateway_with_another_partition_count_refuses_to_start(backend: Backend) {
    let prefix = unique_prefix();
    let _first = spawn_app_with(test_settings(backend, &prefix), backend).await;
    let mut other = test_settings(backend, &prefix);
    other.redis.partitions = 128;
    let err = flashgate::app::App::build(other).await.err().expect("start refused");
    assert!(format!("{err:#}").contains("partitions"), "{err:#}");
}

async fn an_unreachable_redis_answers_503_with_retry_after(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut settings = test_settings(backend, &unique_prefix());
    // Nothing listens on port 1: the start must fail fast and say why.
    settings.redis.url = "redis://127.0.0.1:1".into();
    settings.redis.connect_timeout_ms = 500;
    assert!(flashgate::app::App::build(settings).await.is_err());
    // The running gateway still answers.
    assert_eq!(app.view("NONE").await.status, StatusCode::NOT_FOUND);
}

on_both_topologies!(
    the_gateway_survives_script_flush_on_every_node,
    a_gateway_with_another_partition_count_refuses_to_start,
    an_unreachable_redis_answers_503_with_retry_after,
);
