//! The change feed: `GET /v1/admin/events` hands out every journal event
//! exactly once, in journal order, page by page, and a long poll returns as
//! soon as the next event is journaled.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    Backend, TestApp, journal_db, spawn_app_with, test_settings, token, unique_prefix,
};

/// One page after `after`.
async fn page(app: &TestApp, after: Option<&str>, query: &str) -> (Vec<Value>, Option<String>) {
    let mut path = format!("/v1/admin/events?{query}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let r = app
        .send(
            Method::GET,
            &path,
            Some(&crate::harness::admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let events = r.body["events"].as_array().unwrap().clone();
    (events, r.body["next"].as_str().map(str::to_owned))
}

fn cursor_key(cursor: &str) -> (u64, i64) {
    let (xid, seq) = cursor.split_once('.').unwrap();
    (xid.parse().unwrap(), seq.parse().unwrap())
}

async fn journal_count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM inventory_events", &[])
        .await
        .unwrap()
        .get(0)
}

async fn paging_through_a_burst_yields_every_event_once_in_order(backend: Backend) {
    // Two gateways on one journal: two writers commit side by side.
    let settings = test_settings(backend, &unique_prefix());
    let apps = [
        spawn_app_with(settings.clone()).await,
        spawn_app_with(settings.clone()).await,
    ];
    let db = journal_db(settings.postgres.url.expose()).await;
    for sku in ["FEED-1", "FEED-2"] {
        apps[0].stock(sku, 1_000).await;
    }

    // A consumer reads small pages while the burst runs.
    let reader = {
        let app = spawn_app_with(settings.clone()).await;
        tokio::spawn(async move {
            let (mut seen, mut next) = (Vec::new(), None::<String>);
            let mut quiet_since = Instant::now();
            while quiet_since.elapsed() < Duration::from_secs(3) {
                let (events, after) = page(&app, next.as_deref(), "limit=7").await;
                if events.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    quiet_since = Instant::now();
                }
                seen.extend(events);
                next = after.or(next);
            }
            seen
        })
    };
    let made = stream::iter(0..400)
        .map(|i| {
            let app = &apps[i % 2];
            async move {
                let sku = if i % 3 == 0 { "FEED-2" } else { "FEED-1" };
                let shopper = token(&format!("feed-{i}"));
                let r = app
                    .reserve(&shopper, json!({"sku": sku, "qty": 1}), None)
                    .await;
                assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
                let id = r.body["reservation_id"].as_str().unwrap().to_owned();
                if i % 4 == 0 {
                    let r = app.reservation(&shopper, &id, Some("release")).await;
                    assert_eq!(r.status, StatusCode::OK);
                }
            }
        })
        .buffer_unordered(12)
        .count()
        .await;
    assert_eq!(made, 400);
    let seen = reader.await.unwrap();

    let journaled = journal_count(&db).await;
    // 2 stock sets, 400 holds, 100 releases.
    assert_eq!(journaled, 502);
    let keys: Vec<(u64, i64)> = seen
        .iter()
        .map(|e| cursor_key(e["cursor"].as_str().unwrap()))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "cursors only increase"
    );
    let events: HashSet<(String, i64)> = seen
        .iter()
        .map(|e| {
            (
                e["sku"].as_str().unwrap().to_owned(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(events.len(), seen.len(), "no event twice");
    assert_eq!(seen.len() as i64, journaled, "every journaled event");
    // The journal's own order, as the feed promises it.
    let ordered: Vec<(String, i64)> = db
        .query(
            "SELECT sku, version FROM inventory_events ORDER BY journal_xid, journal_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let fed: Vec<(String, i64)> = seen
        .iter()
        .map(|e| {
            (
                e["sku"].as_str().unwrap().to_owned(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(fed, ordered);
    let first = &seen[0];
    for field in [
        "cursor",
        "kind",
        "sku",
        "location",
        "reservation_id",
        "account_id",
        "qty",
        "on_hand_after",
        "reserved_after",
        "version",
        "occurred_at",
        "reason",
        "reference",
        "actor",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    assert_eq!(first["kind"], "stock_set");

    // A filter by SKU pages through that SKU's events only.
    let (mut only, mut next) = (Vec::new(), None::<String>);
    loop {
        let (events, after) = page(&apps[1], next.as_deref(), "limit=50&sku=FEED-2").await;
        if events.is_empty() {
            break;
        }
        only.extend(events);
        next = after;
    }
    assert!(only.iter().all(|e| e["sku"] == "FEED-2"));
    let want = seen.iter().filter(|e| e["sku"] == "FEED-2").count();
    assert_eq!(only.len(), want);
}

async fn a_long_poll_returns_when_the_next_event_is_journaled(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    app.stock("FEED-LP", 10).await;
    // The stock event, once it is journaled (the long poll waits for it).
    let (events, next) = page(&app, None, "wait_ms=5000").await;
    assert_eq!(events.len(), 1);
    let next = next.expect("a cursor");

    // Nothing new: it waits the whole wait, and hands the cursor back.
    let started = Instant::now();
    let (events, after) = page(&app, Some(&next), "wait_ms=300").await;
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(after.as_deref(), Some(next.as_str()));

    // Something new: it returns as soon as it is journaled.
    let waiting = {
        let app_url = app.url(&format!("/v1/admin/events?wait_ms=20000&after={next}"));
        let http = app.http.clone();
        tokio::spawn(async move {
            let r = http
                .get(app_url)
                .bearer_auth(crate::harness::admin_token())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            (Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "it waits while nothing happens");
    let reserved_at = Instant::now();
    let r = app
        .reserve(&token("feed-lp"), json!({"sku": "FEED-LP", "qty": 2}), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (answered_at, body) = waiting.await.unwrap();
    let took = answered_at - reserved_at;
    eprintln!("feed: the long poll answered {took:?} after the reservation");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["reservation_id"], r.body["reservation_id"]);
    assert_eq!(events[0]["kind"], "reserved");
    assert_eq!(events[0]["qty"], 2);
}

async fn the_feed_is_for_operators_and_checks_its_arguments(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    let shopper = app
        .send(
            Method::GET,
            "/v1/admin/events",
            Some(&token("nosy")),
            &[],
            None,
        )
        .await;
    assert_eq!(shopper.status, StatusCode::FORBIDDEN);
    let anonymous = app
        .send(Method::GET, "/v1/admin/events", None, &[], None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    for query in [
        "after=nope",
        "after=12",
        "limit=0",
        "limit=1001",
        "wait_ms=30001",
        "sku=bad%20sku",
    ] {
        let r = app
            .send(
                Method::GET,
                &format!("/v1/admin/events?{query}"),
                Some(&crate::harness::admin_token()),
                &[],
                None,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {:?}",
            r.body
        );
        assert_eq!(r.code(), "validation-failed", "{query}");
    }
}

crate::on_both_topologies!(
    paging_through_a_burst_yields_every_event_once_in_order,
    a_long_poll_returns_when_the_next_event_is_journaled,
    the_feed_is_for_operators_and_checks_its_arguments
);
