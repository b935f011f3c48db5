//! The waiting room: tickets, admissions never beyond holdable units, a
//! random order for those who queued before the opening and first come
//! first served after it, `sold_out` the moment nothing can be held, and
//! reservations that need an admission of their own account.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use flashgate::{
    inventory::{Sku, view::InventoryView},
    redis::{Caller, Redis},
};
use futures::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, Reply, TestApp, spawn_app, token};
use crate::on_both_topologies;

async fn take(app: &TestApp, account: &str, sku: &str) -> Reply {
    let path = format!("/v1/queue/{sku}/tickets");
    app.send(Method::POST, &path, Some(&token(account)), &[], None)
        .await
}

async fn read(app: &TestApp, account: &str, sku: &str, ticket: &str) -> Reply {
    let path = format!("/v1/queue/{sku}/tickets/{ticket}");
    app.send(Method::GET, &path, Some(&token(account)), &[], None)
        .await
}

async fn reserve_with(app: &TestApp, account: &str, sku: &str, admission: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = admission
        .map(|a| vec![("queue-admission", a)])
        .unwrap_or_default();
    app.send(
        Method::POST,
        "/v1/reservations",
        Some(&token(account)),
        &headers,
        Some(json!({ "sku": sku, "qty": 1 }).to_string()),
    )
    .await
}

/// Outstanding admissions and holdable units of `sku`, read in one script.
async fn outstanding_and_holdable(redis: &Redis, sku: &str) -> (i64, i64) {
    let sku = Sku::parse(sku).unwrap();
    let keys = redis.keys();
    let p = keys.partition_of(&sku);
    let [_, _, _, admissions, _] = keys.room(p, &sku);
    let hash = keys.sku(p, &sku);
    let key = admissions.clone();
    let (outstanding, flat): (i64, Vec<String>) = redis
        .command(&key, "test", Caller::Request, |client| async move {
            use fred::prelude::*;
            client
                .eval(
                    "return {redis.call('ZCARD', KEYS[1]), redis.call('HGETALL', KEYS[2])}",
                    vec![admissions, hash],
                    Vec::<String>::new(),
                )
                .await
        })
        .await
        .unwrap();
    let pairs: Vec<(String, String)> = flat
        .chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    let view = InventoryView::from_hash(sku.as_str(), &pairs).unwrap();
    (outstanding, view.available)
}

/// An instant `ms` from now, as the policy takes it.
fn from_now(ms: i64) -> String {
    flashgate::http::rfc3339(flashgate::clock::now_ms() + ms)
}

async fn a_drop_admits_queued_shoppers_at_random_never_past_the_stock_then_sells_out(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let sku = "ROOM-DROP";
    app.stock(sku, 500).await;
    let r = app
        .policy(
            sku,
            json!({ "max_per_account": 1, "sale_opens_at": from_now(600_000),
                    "waiting_room": { "admit_per_second": 400, "admission_ttl_seconds": 60 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["waiting_room"]["admit_per_second"], 400);

    // 5,000 shoppers queue before the opening, in this arrival order.
    let arrivals: Vec<(usize, String)> = stream::iter(0..5_000)
        .map(|i| {
            let app = &app;
            async move {
                let r = take(app, &format!("q{i}"), sku).await;
                assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
                assert_eq!(r.body["status"], "waiting");
                (i, r.body["ticket"].as_str().unwrap().to_owned())
            }
        })
        .buffered(32)
        .collect()
        .await;
    // A second take answers the same ticket.
    let again = take(&app, "q0", sku).await;
    assert_eq!(
        (again.status, again.body["ticket"].as_str()),
        (StatusCode::OK, Some(arrivals[0].1.as_str()))
    );
    // Nothing is admitted, and nobody reserves, before the opening.
    let early = reserve_with(&app, "q0", sku, None).await;
    assert_eq!(early.status, StatusCode::FORBIDDEN);
    assert_eq!(early.code(), "admission-required");
    let r = read(&app, "q0", sku, &arrivals[0].1).await;
    assert_eq!(r.body["status"], "waiting");
    assert_eq!(outstanding_and_holdable(&redis, sku).await.0, 0);
    // The sale opens.
    let r = app
        .policy(sku, json!({ "sale_opens_at": from_now(-1_000) }))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Rounds: every waiting ticket is read; the admitted reserve and confirm.
    let mut waiting: Vec<(usize, String)> = arrivals.clone();
    let mut admitted_order: Vec<usize> = Vec::new();
    let mut confirmed = 0;
    let started = Instant::now();
    while confirmed < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{confirmed} confirmed"
        );
        let reads: Vec<((usize, String), Value)> = stream::iter(waiting.clone())
            .map(|(i, ticket)| {
                let app = &app;
                async move {
                    let r = read(app, &format!("q{i}"), sku, &ticket).await;
                    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
                    ((i, ticket), r.body)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let (outstanding, holdable) = outstanding_and_holdable(&redis, sku).await;
        assert!(
            outstanding <= holdable,
            "{outstanding} admissions outstanding for {holdable} holdable units"
        );
        let mut admitted = Vec::new();
        waiting.clear();
        for ((i, ticket), body) in reads {
            match body["status"].as_str().unwrap() {
                "admitted" => admitted.push((i, body["admission"].as_str().unwrap().to_owned())),
                "waiting" => waiting.push((i, ticket)),
                other => panic!("ticket {i} is {other} with {confirmed} confirmed: {body}"),
            }
        }
        waiting.sort();
        for (i, admission) in admitted {
            admitted_order.push(i);
            let account = format!("q{i}");
            let r = reserve_with(&app, &account, sku, Some(&admission)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            // An admission is good for one reservation.
            let twice = reserve_with(&app, &account, sku, Some(&admission)).await;
            assert_eq!(twice.code(), "admission-required");
            let id = r.body["reservation_id"].as_str().unwrap();
            let t = token(&account);
            assert_eq!(
                app.reservation(&t, id, Some("confirm")).await.status,
                StatusCode::OK
            );
            confirmed += 1;
        }
    }
    assert_eq!(admitted_order.len(), 500);
    // Not the arrival order: a first-come queue would have admitted the
    // first 500 arrivals; a random one shares about a tenth with them.
    let first: HashSet<usize> = (0..500).collect();
    let shared = admitted_order.iter().filter(|i| first.contains(i)).count();
    assert!(
        shared < 250,
        "{shared} of the first 500 arrivals were admitted first"
    );

    // Sold out: every remaining ticket says so, from the first read after
    // the last confirmation (the status is decided by the read itself).
    let at = Instant::now();
    let (i, ticket) = waiting[waiting.len() / 2].clone();
    let first = read(&app, &format!("q{i}"), sku, &ticket).await;
    assert_eq!(first.body["status"], "sold_out", "{:?}", first.body);
    let first_after = at.elapsed();
    let statuses: HashSet<String> = stream::iter(waiting)
        .map(|(i, ticket)| {
            let app = &app;
            async move {
                let r = read(app, &format!("q{i}"), sku, &ticket).await;
                r.body["status"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(statuses, HashSet::from(["sold_out".to_owned()]));
    eprintln!(
        "waiting room: 500 of 5,000 admitted, {shared} of them among the first 500 arrivals; \
         the first read after the 500th confirmation said sold_out {first_after:?} after it, \
         and so did all 4,500"
    );
}

async fn after_the_opening_tickets_queue_in_order_and_a_release_readmits(backend: Backend) {
    let app = spawn_app(backend).await;
    let sku = "ROOM-FIFO";
    app.stock(sku, 3).await;
    let r = app
        .policy(
            sku,
            json!({ "waiting_room": { "admit_per_second": 100, "admission_ttl_seconds": 60 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut tickets = Vec::new();
    for i in 0..6 {
        let r = take(&app, &format!("f{i}"), sku).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        tickets.push(r.body["ticket"].as_str().unwrap().to_owned());
    }
    let status = |i: usize| {
        let app = &app;
        let ticket = tickets[i].clone();
        async move { read(app, &format!("f{i}"), sku, &ticket).await.body }
    };
    // The first three in arrival order: never more admissions than units.
    for i in 0..6 {
        let body = status(i).await;
        let want = if i < 3 { "admitted" } else { "waiting" };
        assert_eq!(body["status"], want, "ticket {i}: {body}");
    }
    assert_eq!(status(4).await["position"], 2);
    // Refused: no admission, another account's, a forged one.
    let mine = status(0).await["admission"].as_str().unwrap().to_owned();
    assert_eq!(
        reserve_with(&app, "f0", sku, None).await.code(),
        "admission-required"
    );
    assert_eq!(
        reserve_with(&app, "f1", sku, Some(&mine)).await.code(),
        "admission-required"
    );
    let flipped = if mine.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &mine[..mine.len() - 1]);
    assert_eq!(
        reserve_with(&app, "f0", sku, Some(&forged)).await.code(),
        "admission-required"
    );
    // Another account cannot read the ticket.
    let r = read(&app, "f5", sku, &tickets[0]).await;
    assert_eq!(r.code(), "ticket-not-found");

    // Held, then released: the unit comes back and the next ticket is in.
    let held = reserve_with(&app, "f0", sku, Some(&mine)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(status(3).await["status"], "waiting");
    let id = held.body["reservation_id"].as_str().unwrap();
    let t = token("f0");
    assert_eq!(
        app.reservation(&t, id, Some("release")).await.status,
        StatusCode::OK
    );
    assert_eq!(status(3).await["status"], "admitted");
    assert_eq!(status(4).await["status"], "waiting");

    // Sold: f1, f2, f3 hold and confirm; f4 and f5 are told at once.
    for i in 1..4 {
        let admission = status(i).await["admission"].as_str().unwrap().to_owned();
        let account = format!("f{i}");
        let r = reserve_with(&app, &account, sku, Some(&admission)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let id = r.body["reservation_id"].as_str().unwrap();
        let t = token(&account);
        assert_eq!(
            app.reservation(&t, id, Some("confirm")).await.status,
            StatusCode::OK
        );
    }
    for i in 4..6 {
        assert_eq!(status(i).await["status"], "sold_out");
    }
    // One unit restocked: admission resumes in order, for one ticket.
    app.stock(sku, 1).await;
    assert_eq!(status(4).await["status"], "admitted");
    assert_eq!(status(5).await["status"], "waiting");
}

async fn an_admission_expires_and_a_sku_without_a_room_has_no_tickets(backend: Backend) {
    let app = spawn_app(backend).await;
    let sku = "ROOM-TTL";
    app.stock(sku, 5).await;
    let r = app
        .policy(
            sku,
            json!({ "waiting_room": { "admit_per_second": 10, "admission_ttl_seconds": 1 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = take(&app, "late", sku).await;
    let ticket = r.body["ticket"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "admitted");
    let admission = r.body["admission"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        reserve_with(&app, "late", sku, Some(&admission))
            .await
            .code(),
        "admission-required"
    );
    assert_eq!(
        read(&app, "late", sku, &ticket).await.body["status"],
        "expired"
    );
    // The room off: reservations need nothing, tickets are not taken.
    let r = app.policy(sku, json!({ "waiting_room": null })).await;
    assert_eq!(r.body["waiting_room"], Value::Null);
    assert_eq!(
        reserve_with(&app, "late", sku, None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(take(&app, "late", sku).await.code(), "no-waiting-room");
    assert_eq!(take(&app, "late", "ROOM-NONE").await.code(), "unknown-sku");
}

/// The `ticket` events of a stream, read until one says `status`.
async fn ticket_events_until(mut response: reqwest::Response, status: &str) -> Vec<Value> {
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while let Some(chunk) = response.chunk().await.unwrap() {
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if block.lines().any(|l| l == "event: ticket") {
                let event: Value = serde_json::from_str(&data).unwrap();
                let done = event["status"] == status;
                events.push(event);
                if done {
                    return events;
                }
            }
        }
    }
    panic!("the stream ended before {status}: {events:?}")
}

async fn a_ticket_stream_tells_its_shopper_when_a_release_admits_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let sku = "ROOM-SSE";
    app.stock(sku, 1).await;
    let r = app
        .policy(
            sku,
            json!({ "waiting_room": { "admit_per_second": 100, "admission_ttl_seconds": 60 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let first = take(&app, "s0", sku).await;
    assert_eq!(first.body["status"], "admitted");
    let second = take(&app, "s1", sku).await;
    let ticket = second.body["ticket"].as_str().unwrap().to_owned();
    let response = app
        .http
        .get(app.url(&format!("/v1/queue/{sku}/tickets/{ticket}/events")))
        .bearer_auth(token("s1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let stranger = app
        .http
        .get(app.url(&format!("/v1/queue/{sku}/tickets/{ticket}/events")))
        .bearer_auth(token("s0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::NOT_FOUND);
    let reader = tokio::spawn(ticket_events_until(response, "admitted"));
    // s0 holds its unit and gives it back: s1's stream says it is admitted.
    let admission = first.body["admission"].as_str().unwrap();
    let held = reserve_with(&app, "s0", sku, Some(admission)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let id = held.body["reservation_id"].as_str().unwrap();
    let t = token("s0");
    assert_eq!(
        app.reservation(&t, id, Some("release")).await.status,
        StatusCode::OK
    );
    let events = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the stream said admitted")
        .unwrap();
    assert_eq!(events[0]["status"], "waiting");
    assert_eq!(events[0]["position"], 1);
    let last = events.last().unwrap();
    assert!(last["admission"].is_string(), "{last}");
}

async fn a_cart_line_of_a_room_sku_needs_its_admission(backend: Backend) {
    let app = spawn_app(backend).await;
    let (room_sku, plain) = ("ROOM-CART", "ROOM-PLAIN");
    app.stock(room_sku, 2).await;
    app.stock(plain, 2).await;
    let r = app
        .policy(
            room_sku,
            json!({ "waiting_room": { "admit_per_second": 10, "admission_ttl_seconds": 60 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body =
        json!({ "lines": [{ "sku": plain, "qty": 1 }, { "sku": room_sku, "qty": 1 }] }).to_string();
    let cart = |account: &str, admission: Option<String>| {
        let app = &app;
        let (t, body) = (token(account), body.clone());
        async move {
            let headers: Vec<(&str, &str)> = admission
                .as_deref()
                .map(|a| vec![("queue-admission", a)])
                .unwrap_or_default();
            app.send(Method::POST, "/v1/carts", Some(&t), &headers, Some(body))
                .await
        }
    };
    let without = cart("c0", None).await;
    assert_eq!(without.code(), "cart-unavailable");
    assert_eq!(
        without.body["failed_lines"][0]["code"],
        "admission-required"
    );
    assert_eq!(app.view(plain).await.body["reserved"], 0);
    let admission = take(&app, "c0", room_sku).await.body["admission"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another account's admission is good for no line.
    assert_eq!(
        cart("c1", Some(admission.clone())).await.code(),
        "admission-required"
    );
    let held = cart("c0", Some(admission)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(app.view(room_sku).await.body["reserved"], 1);
}

on_both_topologies!(
    a_cart_line_of_a_room_sku_needs_its_admission,
    a_ticket_stream_tells_its_shopper_when_a_release_admits_it,
    a_drop_admits_queued_shoppers_at_random_never_past_the_stock_then_sells_out,
    after_the_opening_tickets_queue_in_order_and_a_release_readmits,
    an_admission_expires_and_a_sku_without_a_room_has_no_tickets,
);
