//! Changing a live hold: extend its deadline, keep fewer units, or an
//! operator releasing it; each journaled.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    Backend, TestApp, admin_token, journal_db, spawn_app_with, test_settings, token, unique_prefix,
};
use crate::on_both_topologies;

async fn hold(app: &TestApp, t: &str, sku: &str, qty: i64) -> Value {
    let r = app
        .reserve(t, json!({ "sku": sku, "qty": qty }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

async fn extend(app: &TestApp, t: &str, id: &str, seconds: i64) -> crate::harness::Reply {
    app.send(
        Method::POST,
        &format!("/v1/reservations/{id}/extend"),
        Some(t),
        &[],
        Some(json!({ "seconds": seconds }).to_string()),
    )
    .await
}

async fn shrink(app: &TestApp, t: &str, id: &str, qty: i64) -> crate::harness::Reply {
    app.send(
        Method::PATCH,
        &format!("/v1/reservations/{id}"),
        Some(t),
        &[],
        Some(json!({ "qty": qty }).to_string()),
    )
    .await
}

/// Waits until `sql` (one row, one text column) reads `want`.
async fn journal_reads(db: &tokio_postgres::Client, sql: &str, id: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got: Option<String> = db.query_opt(sql, &[&id]).await.unwrap().map(|r| r.get(0));
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the journal reads {got:?}, not {want}, for {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_hold_is_extended_within_its_limit_and_shrunk_with_its_units_back(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    // No hold outlives its first TTL: any extension past it is refused.
    settings.reservation.ttl_seconds = 300;
    settings.reservation.max_hold_seconds = 300;
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    app.stock("HOLD-1", 10).await;
    app.policy("HOLD-1", json!({ "max_per_account": 3 })).await;
    let t = token("holder");
    let held = hold(&app, &t, "HOLD-1", 3).await;
    let id = held["reservation_id"].as_str().unwrap();

    let past = extend(&app, &t, id, 600).await;
    assert_eq!(past.status, StatusCode::CONFLICT);
    assert_eq!(past.code(), "hold-limit");
    assert!(
        past.body["latest_expires_at"].is_string(),
        "{:?}",
        past.body
    );
    for bad in [0, 601, -5] {
        let r = extend(&app, &t, id, bad).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let sooner = extend(&app, &t, id, 120).await;
    assert_eq!(sooner.status, StatusCode::OK, "{:?}", sooner.body);
    assert_ne!(sooner.body["expires_at"], held["expires_at"]);
    let expires = sooner.body["expires_at"].as_str().unwrap().to_owned();
    assert_eq!(
        app.reservation(&t, id, None).await.body["expires_at"],
        expires
    );
    // Another account's token finds nothing to change.
    assert_eq!(
        extend(&app, &token("other"), id, 60).await.status,
        StatusCode::NOT_FOUND
    );

    // Keep 1 of 3: two units are back, for anyone and for the cap.
    let kept = shrink(&app, &t, id, 1).await;
    assert_eq!(kept.status, StatusCode::OK, "{:?}", kept.body);
    assert_eq!(
        (kept.body["qty"].clone(), kept.body["status"].clone()),
        (json!(1), json!("held"))
    );
    let view = app.view("HOLD-1").await.body;
    assert_eq!(
        (view["reserved"].clone(), view["available"].clone()),
        (json!(1), json!(9))
    );
    for bad in [1, 2, 0] {
        let r = shrink(&app, &t, id, bad).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    hold(&app, &t, "HOLD-1", 2).await;
    let over = app
        .reserve(&t, json!({ "sku": "HOLD-1", "qty": 1 }), None)
        .await;
    assert_eq!(over.code(), "purchase-limit");

    // The journal: `extended` with the new deadline, `released` with the
    // two units, and the reservation still held with one.
    journal_reads(
        &db,
        "SELECT string_agg(kind || ':' || qty, ',' ORDER BY version) FROM inventory_events
         WHERE reservation_id = $1",
        id,
        "reserved:3,extended:3,released:2",
    )
    .await;
    journal_reads(
        &db,
        "SELECT state || ':' || qty FROM reservations WHERE reservation_id = $1",
        id,
        "held:1",
    )
    .await;
    let row = db
        .query_one(
            "SELECT (extract(epoch FROM expires_at) * 1000)::int8 FROM reservations
             WHERE reservation_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let journaled = flashgate::http::rfc3339(row.get::<_, i64>(0));
    assert_eq!(journaled, expires);

    // A confirmed hold changes no more.
    assert_eq!(
        app.reservation(&t, id, Some("confirm")).await.status,
        StatusCode::OK
    );
    assert_eq!(app.view("HOLD-1").await.body["on_hand"], 9);
    let r = extend(&app, &t, id, 60).await;
    assert_eq!(r.code(), "reservation-confirmed");
    let r = shrink(&app, &t, id, 1).await;
    assert_eq!(r.code(), "reservation-confirmed");
}

async fn an_operator_releases_any_hold_with_a_reason_in_the_journal(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    app.stock("HOLD-2", 4).await;
    let shopper = token("held-up");
    let held = hold(&app, &shopper, "HOLD-2", 4).await;
    let id = held["reservation_id"].as_str().unwrap();
    let path = format!("/v1/admin/reservations/{id}/release");
    let body = json!({ "reason": "suspected bot" }).to_string();

    let r = app
        .send(Method::POST, &path, Some(&shopper), &[], Some(body.clone()))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .send(
            Method::POST,
            &path,
            Some(&admin_token()),
            &[],
            Some(json!({ "reason": "" }).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .send(
            Method::POST,
            &path,
            Some(&admin_token()),
            &[("x-request-id", "ops-release-1")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "released");
    assert_eq!(app.view("HOLD-2").await.body["available"], 4);
    let again = app
        .send(
            Method::POST,
            &path,
            Some(&admin_token()),
            &[],
            Some(body.clone()),
        )
        .await;
    assert_eq!(again.code(), "reservation-released");
    let unknown = app
        .send(
            Method::POST,
            "/v1/admin/reservations/nope/release",
            Some(&admin_token()),
            &[],
            Some(body),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.reservation(&shopper, id, None).await.body["status"],
        "released"
    );
    journal_reads(
        &db,
        "SELECT kind || '|' || reason || '|' || actor || '|' || request_id FROM inventory_events
         WHERE reservation_id = $1 AND kind = 'released'",
        id,
        "released|suspected bot|ops-admin|ops-release-1",
    )
    .await;
}

on_both_topologies!(
    a_hold_is_extended_within_its_limit_and_shrunk_with_its_units_back,
    an_operator_releases_any_hold_with_a_reason_in_the_journal,
);
