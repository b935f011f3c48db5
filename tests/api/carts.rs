//! Carts: every line held, or none, across cluster slots and masters,
//! under contention and across a gateway killed mid-cart.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flashgate::inventory::{AccountId, CartId, IdempotencyKey, Partition};
use futures::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    Backend, GatewayProcess, Reply, TestApp, journal_db, metric_value, on_every_node,
    spawn_app_with, test_settings, token, unique_prefix,
};
use crate::journal::{Acked, CATCH_UP, assert_journal_catches_up};
use crate::on_both_topologies;

/// Three SKUs whose partitions' slots fall in the three thirds of the slot
/// space: on a three-master cluster, one per master.
fn skus_on_three_masters(stem: &str, partitions: u32) -> [String; 3] {
    let mut found: [Option<String>; 3] = [None, None, None];
    for i in 0.. {
        let sku = format!("{stem}-{i}");
        let p = Partition::of(&sku, partitions);
        let slot = fred::util::redis_keyslot(format!("{{p{}}}", p.0).as_bytes());
        let third = usize::from(slot) * 3 / 16_384;
        if found[third].is_none() {
            found[third] = Some(sku);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.map(Option::unwrap)
}

/// Which nodes hold `sku`'s hash (indexes into the cluster's nodes).
fn nodes_of(backend: Backend, prefix: &str, sku: &str) -> Vec<usize> {
    on_every_node(
        backend,
        &["--scan", "--pattern", &format!("{prefix}:*:sku:{sku}")],
    )
    .iter()
    .enumerate()
    .filter(|(_, out)| !out.trim().is_empty())
    .map(|(i, _)| i)
    .collect()
}

async fn post_cart(
    app_url: &str,
    http: &reqwest::Client,
    t: &str,
    body: &Value,
    key: Option<&str>,
) -> Reply {
    let mut req = http
        .post(format!("{app_url}/v1/carts"))
        .bearer_auth(t)
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn cart_action(app: &TestApp, t: &str, id: &str, action: Option<&str>) -> Reply {
    match action {
        None => {
            app.send(Method::GET, &format!("/v1/carts/{id}"), Some(t), &[], None)
                .await
        }
        Some(a) => {
            let path = format!("/v1/carts/{id}/{a}");
            app.send(Method::POST, &path, Some(t), &[], None).await
        }
    }
}

fn reserved(view: &Value) -> (i64, i64) {
    (
        view["reserved"].as_i64().unwrap(),
        view["on_hand"].as_i64().unwrap(),
    )
}

/// A held cart as the test remembers it: id, owner's token, lines.
struct HeldCart {
    id: String,
    token: String,
    lines: Vec<(String, String, i64)>,
}

impl HeldCart {
    fn from_reply(r: &Reply, token: &str) -> Self {
        Self {
            id: r.body["cart_id"].as_str().unwrap().to_owned(),
            token: token.to_owned(),
            lines: r.body["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["reservation_id"].as_str().unwrap().to_owned(),
                        l["sku"].as_str().unwrap().to_owned(),
                        l["qty"].as_i64().unwrap(),
                    )
                })
                .collect(),
        }
    }
}

async fn every_cart_is_held_whole_or_not_at_all_under_contention(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let [a, b, c] = skus_on_three_masters("CART", app.settings.redis.partitions);
    // B runs out first; A and C also run short while carts that will fail
    // hold them for a moment.
    for (sku, units) in [(&a, 120), (&b, 60), (&c, 150)] {
        app.stock(sku, units).await;
    }
    if backend == Backend::Cluster {
        let masters: HashSet<usize> = [&a, &b, &c]
            .iter()
            .flat_map(|s| nodes_of(backend, &app.prefix, s))
            .collect();
        assert_eq!(masters.len(), 3, "the three SKUs are not on three masters");
    }

    // Sample every SKU while the carts race: never more held than stock.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, http, url) = (done.clone(), app.http.clone(), app.url(""));
        let skus = [a.clone(), b.clone(), c.clone()];
        tokio::spawn(async move {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                for sku in &skus {
                    let view: Value = http
                        .get(format!("{url}/v1/inventory/{sku}"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let (held, on_hand) = reserved(&view);
                    assert!(held <= on_hand, "{sku}: {held} held of {on_hand}");
                    samples += 1;
                }
            }
            samples
        })
    };
    let url = app.url("");
    let results: Vec<(String, Reply)> = stream::iter(0..300)
        .map(|i| {
            let (http, url) = (app.http.clone(), url.clone());
            let t = token(&format!("cart-buyer-{i}"));
            let body = json!({ "lines": [
                { "sku": a, "qty": 1 + i % 2 },
                { "sku": b, "qty": 1 },
                { "sku": c, "qty": 1 },
            ]});
            async move {
                let r = post_cart(&url, &http, &t, &body, None).await;
                (t, r)
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    done.store(true, Ordering::Relaxed);
    assert!(sampler.await.unwrap() > 0);

    let mut held = Vec::new();
    for (t, r) in &results {
        match r.status {
            StatusCode::CREATED => {
                assert_eq!(r.body["status"], "held");
                held.push(HeldCart::from_reply(r, t));
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.code(), "cart-unavailable", "{:?}", r.body);
                let failed = r.body["failed_lines"].as_array().unwrap();
                assert!(!failed.is_empty());
                for line in failed {
                    assert_eq!(line["code"], "insufficient-stock", "{line}");
                }
            }
            other => panic!("a cart answered {other}: {:?}", r.body),
        }
    }
    assert!(
        (1..=60).contains(&held.len()),
        "{} carts held, with 60 units of {b}",
        held.len()
    );
    // Every held cart holds every line; nothing else is held.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for cart in &held {
        assert_eq!(cart.lines.len(), 3);
        for (rid, sku, qty) in &cart.lines {
            let r = app.reservation(&cart.token, rid, None).await;
            assert_eq!(r.body["status"], "held", "{rid}");
            *expected.entry(sku.clone()).or_default() += qty;
        }
    }
    for sku in [&a, &b, &c] {
        let view = app.view(sku).await.body;
        assert_eq!(
            view["reserved"].as_i64().unwrap(),
            expected.get(sku.as_str()).copied().unwrap_or(0),
            "{sku}: units held beyond the held carts"
        );
    }
    // Another account cannot see, confirm or release a cart.
    let stranger = token("cart-stranger");
    for action in [None, Some("confirm"), Some("release")] {
        let r = cart_action(&app, &stranger, &held[0].id, action).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{action:?}");
        assert_eq!(r.code(), "cart-not-found");
    }

    // Confirm every other cart, release the rest; both are idempotent.
    let mut acked = Vec::new();
    let mut sold: HashMap<String, i64> = HashMap::new();
    for (i, cart) in held.iter().enumerate() {
        let action = if i % 2 == 0 { "confirm" } else { "release" };
        let r = cart_action(&app, &cart.token, &cart.id, Some(action)).await;
        assert_eq!(r.status, StatusCode::OK, "{action}: {:?}", r.body);
        let again = cart_action(&app, &cart.token, &cart.id, Some(action)).await;
        assert_eq!(
            (again.status, again.body.clone()),
            (StatusCode::OK, r.body.clone())
        );
        let end = if action == "confirm" {
            "confirmed"
        } else {
            "released"
        };
        assert_eq!(r.body["status"], end);
        for (rid, sku, qty) in &cart.lines {
            if action == "confirm" {
                *sold.entry(sku.clone()).or_default() += qty;
            }
            let line = app.reservation(&cart.token, rid, None).await;
            assert_eq!(line.body["status"], end);
            acked.push(Acked {
                id: rid.clone(),
                token: cart.token.clone(),
            });
        }
    }
    for (sku, units) in [(&a, 120), (&b, 60), (&c, 150)] {
        let view = app.view(sku).await.body;
        let sold = sold.get(sku.as_str()).copied().unwrap_or(0);
        assert_eq!(reserved(&view), (0, units - sold), "{sku}");
    }
    // Redis and the journal agree; every line of a failed cart shows its
    // hold and its release there.
    assert_journal_catches_up(&app, &db, &[&a, &b, &c], &acked).await;
    let held_ids: Vec<&str> = held.iter().map(|c| c.id.as_str()).collect();
    let rolled_back = db
        .query(
            "SELECT r.cart_id, r.state, count(e.*) FILTER (WHERE e.kind = 'reserved'),
                    count(e.*) FILTER (WHERE e.kind = 'released')
             FROM reservations r JOIN inventory_events e USING (reservation_id)
             WHERE r.cart_id IS NOT NULL AND NOT r.cart_id = ANY($1)
             GROUP BY r.reservation_id, r.cart_id, r.state",
            &[&held_ids],
        )
        .await
        .unwrap();
    assert!(!rolled_back.is_empty(), "no failed cart held a line first");
    eprintln!(
        "carts: {} of 300 held whole, {} lines of failed carts held and rolled back",
        held.len(),
        rolled_back.len()
    );
    for row in &rolled_back {
        let (state, holds, releases): (String, i64, i64) = (row.get(1), row.get(2), row.get(3));
        assert_eq!(
            (state.as_str(), holds, releases),
            ("released", 1, 1),
            "a line of failed cart {}",
            row.get::<_, String>(0)
        );
    }
}

async fn a_cart_answers_its_idempotency_key_and_refuses_bad_carts(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    let [a, b, _] = skus_on_three_masters("CARTK", app.settings.redis.partitions);
    app.stock(&a, 5).await;
    app.stock(&b, 1).await;
    let t = token("cart-keyed");
    let url = app.url("");
    let body = json!({ "lines": [{ "sku": a, "qty": 2 }, { "sku": b, "qty": 1 }] });
    let first = post_cart(&url, &app.http, &t, &body, Some("k-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = post_cart(&url, &app.http, &t, &body, Some("k-1")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["cart_id"], first.body["cart_id"]);
    assert_eq!(app.view(&a).await.body["reserved"], 2);
    let other = json!({ "lines": [{ "sku": a, "qty": 1 }] });
    let reused = post_cart(&url, &app.http, &t, &other, Some("k-1")).await;
    assert_eq!(reused.code(), "idempotency-key-reused");

    // B is held by the first cart: a second fails whole, and says so again.
    let failed = post_cart(&url, &app.http, &t, &body, Some("k-2")).await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    assert_eq!(
        failed.body["failed_lines"],
        json!([{ "index": 1, "sku": b, "code": "insufficient-stock", "available": 0 }])
    );
    let replay = post_cart(&url, &app.http, &t, &body, Some("k-2")).await;
    assert_eq!(replay.body["failed_lines"], failed.body["failed_lines"]);
    assert_eq!(
        app.view(&a).await.body["reserved"],
        2,
        "the failed cart holds A"
    );

    for bad in [
        json!({ "lines": [] }),
        json!({ "lines": [{ "sku": a, "qty": 1 }, { "sku": a, "qty": 1 }] }),
        json!({ "lines": [{ "sku": "no spaces", "qty": 1 }] }),
        json!({ "lines": [{ "sku": a, "qty": 0 }] }),
        json!({ "lines": [{ "sku": a, "qty": 1, "extra": 1 }] }),
        json!({ "lines": (0..21).map(|i| json!({ "sku": format!("S{i}"), "qty": 1 })).collect::<Vec<_>>() }),
    ] {
        let r = post_cart(&url, &app.http, &t, &bad, None).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let unknown = json!({ "lines": [{ "sku": a, "qty": 1 }, { "sku": "CART-NOPE", "qty": 1 }] });
    let r = post_cart(&url, &app.http, &t, &unknown, None).await;
    assert_eq!(r.body["failed_lines"][0]["code"], "unknown-sku");
    assert_eq!(app.view(&a).await.body["reserved"], 2);

    // Released: the units are back, and the cart cannot be confirmed.
    let id = first.body["cart_id"].as_str().unwrap();
    let r = cart_action(&app, &t, id, Some("release")).await;
    assert_eq!(r.body["status"], "released");
    let r = cart_action(&app, &t, id, Some("confirm")).await;
    assert_eq!(r.code(), "reservation-released");
    assert_eq!(app.view(&b).await.body["available"], 1);
    let r = cart_action(&app, &t, "12.nothex", None).await;
    assert_eq!(r.code(), "cart-not-found");

    // A line released on its own: the cart can no longer be confirmed
    // whole, and nothing of it is confirmed.
    let cart = post_cart(&url, &app.http, &t, &body, Some("k-3")).await;
    assert_eq!(cart.status, StatusCode::CREATED, "{:?}", cart.body);
    let line = cart.body["lines"][1]["reservation_id"].as_str().unwrap();
    assert_eq!(
        app.reservation(&t, line, Some("release")).await.status,
        StatusCode::OK
    );
    let id = cart.body["cart_id"].as_str().unwrap();
    let r = cart_action(&app, &t, id, Some("confirm")).await;
    assert_eq!(r.code(), "reservation-released");
    let first = cart.body["lines"][0]["reservation_id"].as_str().unwrap();
    assert_eq!(
        app.reservation(&t, first, None).await.body["status"],
        "held"
    );
    let r = cart_action(&app, &t, id, Some("release")).await;
    assert_eq!(r.body["status"], "released");
    assert_eq!(app.view(&a).await.body["reserved"], 0);
}

/// Every cart's `GET` answer: id, owner's token, reply.
async fn statuses(app: &TestApp, carts: &[(String, String)]) -> Vec<(String, String, Reply)> {
    stream::iter(carts.iter())
        .map(|(id, t)| async move {
            let r = cart_action(app, t, id, None).await;
            (id.clone(), t.clone(), r)
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn a_gateway_killed_between_the_lines_leaves_no_half_held_cart(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    settings.http.request_timeout_ms = 1_000;
    settings.cart.recovery_seconds = 3;
    let mut gateway = GatewayProcess::start_with(
        &settings,
        &[
            ("FLASHGATE_HTTP__REQUEST_TIMEOUT_MS", "1000"),
            ("FLASHGATE_CART__RECOVERY_SECONDS", "3"),
        ],
    );
    gateway.wait_ready().await;
    let [a, b, c] = skus_on_three_masters("CARTX", settings.redis.partitions);
    for sku in [&a, &b, &c] {
        gateway.stock(sku, 100_000).await;
    }
    let base = gateway.url("");
    let http = reqwest::Client::new();
    let held = Arc::new(std::sync::Mutex::new(0usize));
    let load = {
        let (held, http, base) = (held.clone(), http.clone(), base.clone());
        let body = json!({ "lines": [{ "sku": a, "qty": 1 }, { "sku": b, "qty": 1 }, { "sku": c, "qty": 1 }] });
        tokio::spawn(async move {
            stream::iter(0..4_000)
                .for_each_concurrent(64, |i| {
                    let (held, http, base, body) =
                        (held.clone(), http.clone(), base.clone(), body.clone());
                    async move {
                        let t = token(&format!("killed-{}", i % 50));
                        let key = format!("cart-{i}");
                        let r = http
                            .post(format!("{base}/v1/carts"))
                            .bearer_auth(&t)
                            .header("idempotency-key", key)
                            .json(&body)
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status() == StatusCode::CREATED) {
                            *held.lock().unwrap() += 1;
                        }
                    }
                })
                .await;
        })
    };
    let start = Instant::now();
    while *held.lock().unwrap() < 200 {
        assert!(start.elapsed() < CATCH_UP * 2, "the load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.kill_9();
    load.await.unwrap();

    // Every cart the load may have begun, by its key's derived id.
    let partitions = settings.redis.partitions;
    let carts: Vec<(String, String)> = (0..4_000)
        .map(|i| {
            let account = format!("killed-{}", i % 50);
            let id = CartId::for_key(
                &AccountId::parse(&account).unwrap(),
                &IdempotencyKey::parse(&format!("cart-{i}")).unwrap(),
                partitions,
            );
            (id.as_str().to_owned(), token(&account))
        })
        .collect();
    let app = spawn_app_with(settings).await;
    let pending = statuses(&app, &carts)
        .await
        .iter()
        .filter(|(_, _, r)| r.body["status"] == "pending")
        .count();
    assert!(
        pending > 0,
        "the kill left no cart half-way: nothing was tested"
    );
    eprintln!(
        "carts: {} held before the kill, {pending} left pending by it",
        *held.lock().unwrap()
    );

    // After cart.recovery_seconds and a sweep: held whole, or nothing held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deadline = Instant::now() + CATCH_UP;
    let (acked, expected) = loop {
        let mut acked = Vec::new();
        let mut expected: HashMap<String, i64> = HashMap::new();
        let mut half = None;
        for (id, t, r) in statuses(&app, &carts).await {
            if r.status == StatusCode::NOT_FOUND {
                continue;
            }
            let status = r.body["status"].as_str().unwrap().to_owned();
            for line in r.body["lines"].as_array().unwrap() {
                let rid = line["reservation_id"].as_str().unwrap();
                let l = app.reservation(&t, rid, None).await;
                let line_held = l.body["status"] == "held";
                if line_held != (status == "held") {
                    half = Some(format!("cart {id} is {status}, its line {rid} {}", l.body));
                }
                if line_held {
                    *expected
                        .entry(line["sku"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
                if l.status == StatusCode::OK {
                    acked.push(Acked {
                        id: rid.to_owned(),
                        token: t.clone(),
                    });
                }
            }
        }
        match half {
            None => break (acked, expected),
            Some(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(
            &text,
            "flashgate_cart_recoveries_total",
            &[("outcome", "rolled_back")]
        ) >= 1.0,
        "no cart was rolled back by the sweep"
    );
    for sku in [&a, &b, &c] {
        let view = app.view(sku).await.body;
        assert_eq!(
            view["reserved"].as_i64().unwrap(),
            expected.get(sku.as_str()).copied().unwrap_or(0),
            "{sku}: units held that no held cart owns"
        );
    }
    let db = journal_db(app.settings.postgres.url.expose()).await;
    assert_journal_catches_up(&app, &db, &[&a, &b, &c], &acked).await;
}

on_both_topologies!(
    every_cart_is_held_whole_or_not_at_all_under_contention,
    a_cart_answers_its_idempotency_key_and_refuses_bad_carts,
    a_gateway_killed_between_the_lines_leaves_no_half_held_cart,
);
