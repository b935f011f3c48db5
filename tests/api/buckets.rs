//! Hot-SKU stock buckets: one SKU's stock over several masters, exact
//! holds and caps, `insufficient-stock` only once every bucket is empty,
//! and transfers between buckets that neither lose nor duplicate units.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use flashgate::{
    inventory::{Location, Sku, view::Counts},
    redis::{Caller, Redis, buckets::Transfer},
    service::buckets::Layout,
};
use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, Reply, TestApp, on_every_node, spawn_app, token};
use crate::on_both_topologies;

const STOCK: i64 = 1_000;
const BUCKETS: usize = 8;
const ACCOUNTS: usize = 5_000;
const ATTEMPTS: usize = 20_000;

/// The buckets of `sku` as its hash names them.
async fn buckets_of(redis: &Redis, sku: &Sku) -> Vec<Sku> {
    let key = redis.keys().sku(redis.keys().partition_of(sku), sku);
    let key = &key;
    let bk: String = redis
        .command(key, "test", Caller::Request, |client| async move {
            use fred::prelude::*;
            client.hget(key, "bk").await
        })
        .await
        .unwrap();
    bk.split(',')
        .map(|p| sku.bucket(flashgate::inventory::Partition(p.parse().unwrap())))
        .collect()
}

async fn counts(redis: &Redis, buckets: &[Sku]) -> Vec<Counts> {
    let default = Location::parse("default").unwrap();
    let mut out = Vec::new();
    for b in buckets {
        out.push(redis.bucket_counts(b, &default).await.unwrap().1);
    }
    out
}

/// Which cluster nodes hold a key named `<prefix>:*:sku:<name>` of each
/// bucket.
fn nodes_holding(prefix: &str, buckets: &[Sku]) -> std::collections::HashSet<usize> {
    let mut nodes = std::collections::HashSet::new();
    for b in buckets {
        let pattern = format!("{prefix}:*:sku:{b}");
        for (i, out) in on_every_node(Backend::Cluster, &["--scan", "--pattern", &pattern])
            .iter()
            .enumerate()
        {
            if !out.trim().is_empty() {
                nodes.insert(i);
            }
        }
    }
    nodes
}

async fn bucketed_sku(app: &TestApp, sku: &str, cap: i64) {
    let r = app
        .policy(sku, json!({ "buckets": BUCKETS, "max_per_account": cap }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["buckets"], BUCKETS);
    app.stock(sku, STOCK).await;
}

/// 20,000 attempts from 5,000 accounts, capped at 2, on 1,000 units in 8
/// buckets over a 3-master cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_buckets_hold_exactly_the_stock_and_refuse_only_once_all_are_empty() {
    use crate::harness::{spawn_app_with, test_settings, unique_prefix};
    // Every answer decided, none a 503 timeout: the suite runs many tests
    // at once on two cores, and a request answered 503 may still hold.
    let mut settings = test_settings(Backend::Cluster, &unique_prefix());
    settings.http.request_timeout_ms = 30_000;
    settings.redis.command_timeout_ms = 10_000;
    settings.cart.recovery_seconds = 61;
    let app = spawn_app_with(settings).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let sku = Sku::parse("MEGA-DROP").unwrap();
    bucketed_sku(&app, sku.as_str(), 2).await;
    let buckets = buckets_of(&redis, &sku).await;
    assert_eq!(buckets.len(), BUCKETS);
    let prefix = &app.settings.redis.key_prefix;
    assert_eq!(
        nodes_holding(prefix, &buckets).len(),
        3,
        "the buckets' keys sit on every master"
    );
    let before = counts(&redis, &buckets).await;
    assert_eq!(before.iter().map(|c| c.on_hand).sum::<i64>(), STOCK);
    assert!(
        before.iter().all(|c| c.on_hand == STOCK / BUCKETS as i64),
        "stock split evenly: {before:?}"
    );

    let tokens: Vec<String> = (0..ACCOUNTS)
        .map(|i| token(&format!("crowd-{i}")))
        .collect();
    let sampled = Arc::new(AtomicBool::new(false));
    let replies: Vec<(usize, StatusCode, String, Option<Vec<Counts>>)> = stream::iter(0..ATTEMPTS)
        .map(|i| {
            let (app, redis, buckets, sampled) = (&app, &redis, &buckets, sampled.clone());
            // Each account's four attempts arrive together, so caps
            // and buckets are both contended.
            let account = i / (ATTEMPTS / ACCOUNTS);
            let token = &tokens[account];
            async move {
                let r = app
                    .reserve(token, json!({ "sku": "MEGA-DROP", "qty": 1 }), None)
                    .await;
                let code = r.code().to_owned();
                // At the first insufficient-stock answer: every bucket.
                let sample = (r.status == StatusCode::CONFLICT
                    && code == "insufficient-stock"
                    && !sampled.swap(true, Ordering::SeqCst))
                .then_some(());
                let sample = match sample {
                    Some(()) => Some(counts(redis, buckets).await),
                    None => None,
                };
                (account, r.status, code, sample)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;

    let mut per_account: HashMap<usize, i64> = HashMap::new();
    let (mut held, mut capped, mut sold_out) = (0, 0, 0);
    for (account, status, code, _) in &replies {
        match (*status, code.as_str()) {
            (StatusCode::CREATED, _) => {
                held += 1;
                *per_account.entry(*account).or_default() += 1;
            }
            (StatusCode::CONFLICT, "purchase-limit") => capped += 1,
            (StatusCode::CONFLICT, "insufficient-stock") => sold_out += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(held, STOCK, "exactly the stock is held");
    let most = per_account.values().max().copied().unwrap_or(0);
    assert!(most <= 2, "an account holds {most}");
    assert!(
        capped > 0,
        "no attempt met its cap: the test did not contend caps"
    );
    let at_first_refusal = replies
        .iter()
        .find_map(|(_, _, _, sample)| sample.clone())
        .expect("some attempt was refused for stock");
    for (b, c) in buckets.iter().zip(&at_first_refusal) {
        assert_eq!(
            c.on_hand - c.safety_stock - c.reserved,
            0,
            "bucket {b} still had units when the first insufficient-stock was answered"
        );
    }
    let view = app.view("MEGA-DROP").await.body;
    assert_eq!(view["reserved"], STOCK);
    assert_eq!(view["available"], 0);
    assert_eq!(view["on_hand"], STOCK);
    eprintln!(
        "buckets: {held} held, {capped} capped, {sold_out} refused for stock over {BUCKETS} buckets on {} masters",
        nodes_holding(prefix, &buckets).len()
    );
}

/// A transfer left after any of its steps (as a mover killed there leaves
/// it) is finished once, by whoever finds it pending: the SKU's on hand is
/// whole again and no unit was counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_interrupted_after_each_step_loses_and_duplicates_nothing() {
    use crate::harness::{spawn_app_with, test_settings, unique_prefix};
    // No rebalancing: the buckets keep what these transfers moved.
    let mut settings = test_settings(Backend::Cluster, &unique_prefix());
    settings.buckets.rebalance_interval_ms = 0;
    let app = spawn_app_with(settings).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let sku = Sku::parse("MOVED").unwrap();
    bucketed_sku(&app, sku.as_str(), 5).await;
    let buckets = buckets_of(&redis, &sku).await;
    let default = Location::parse("default").unwrap();
    let total = |c: &[Counts]| c.iter().map(|c| c.on_hand).sum::<i64>();
    for stop_after in 0..3 {
        let t = Transfer::new(buckets[0].clone(), buckets[1].clone(), default.clone(), 7);
        // The steps a mover made before it died.
        if stop_after >= 1 {
            redis.withdraw(&t).await.unwrap();
        }
        if stop_after >= 2 {
            redis.deposit(&t).await.unwrap();
        }
        let mid = counts(&redis, &buckets).await;
        let in_transit = if stop_after == 1 { 7 } else { 0 };
        assert_eq!(total(&mid) + in_transit, STOCK, "after step {stop_after}");
        // Whoever finds it pending (the sweeper of the gateway) finishes
        // it, once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while total(&counts(&redis, &buckets).await) != STOCK {
            assert!(
                std::time::Instant::now() < deadline,
                "the transfer left after step {stop_after} was never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if stop_after >= 1 {
            // Steps sent again (a mover that was only slow) change nothing.
            redis.deposit(&t).await.unwrap();
            redis.withdraw(&t).await.unwrap();
        }
        let after = counts(&redis, &buckets).await;
        assert_eq!(total(&after), STOCK, "after finishing step {stop_after}");
    }
    let after = counts(&redis, &buckets).await;
    assert_eq!(
        after[0].on_hand,
        STOCK / 8 - 14,
        "two transfers left bucket 0"
    );
    assert_eq!(after[1].on_hand, STOCK / 8 + 14, "and reached bucket 1");
    let view = app.view("MOVED").await.body;
    assert_eq!(view["on_hand"], STOCK);
}

/// A SKU laid out with `policy` (which names its buckets), stocked with
/// `stock` units, and its layout as Redis has it.
async fn bucketed(
    app: &TestApp,
    redis: &Redis,
    name: &str,
    policy: serde_json::Value,
    stock: i64,
) -> Layout {
    let r = app.policy(name, policy).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    app.stock(name, stock).await;
    let sku = Sku::parse(name).unwrap();
    let partitions: Vec<_> = buckets_of(redis, &sku)
        .await
        .iter()
        .map(|b| b.bucket_partition().unwrap())
        .collect();
    Layout::new(&sku, &partitions)
}

/// An account whose home bucket (where its cap is counted) is `home`.
fn account_with_home(layout: &Layout, home: usize, stem: &str) -> String {
    (0..)
        .map(|i| format!("{stem}-{i}"))
        .find(|a| layout.home(a) == home)
        .unwrap()
}

/// Retries `attempt` until it answers `status` (a claim ends in the
/// background, just after the answer that ended its hold).
async fn eventually(status: StatusCode, attempt: impl AsyncFn() -> Reply) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = attempt().await;
        if r.status == status || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A hold that spilled over from its account's home bucket counts against
/// the cap at home until it ends: released or expired, the units count no
/// more; confirmed, they count for good.
async fn a_spilled_hold_counts_against_the_cap_until_it_ends(backend: Backend) {
    let app = spawn_app(backend).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let policy = json!({ "buckets": 2, "max_per_account": 2, "reservation_ttl_seconds": 1 });
    let layout = bucketed(&app, &redis, "SPILL", policy, 2).await;
    let shopper = account_with_home(&layout, 0, "spiller");
    let t = token(&shopper);
    let reserve = || app.reserve(&t, json!({ "sku": "SPILL", "qty": 1 }), None);

    let home = reserve().await;
    assert_eq!(home.status, StatusCode::CREATED);
    assert_eq!(
        home.body["sku"], "SPILL",
        "clients see the SKU, not a bucket"
    );
    let spilled = reserve().await;
    assert_eq!(spilled.status, StatusCode::CREATED, "{:?}", spilled.body);
    let spilled_id = spilled.body["reservation_id"].as_str().unwrap().to_owned();
    assert!(
        spilled_id.contains(layout.buckets[1].as_str()),
        "the second hold is in the other bucket: {spilled_id}"
    );
    // The cap counts both, though each bucket saw one.
    let third = reserve().await;
    assert_eq!(
        (third.status, third.code()),
        (StatusCode::CONFLICT, "purchase-limit")
    );

    // Released: its unit and its place under the cap come back.
    let r = app.reservation(&t, &spilled_id, Some("release")).await;
    assert_eq!(r.status, StatusCode::OK);
    let again = eventually(StatusCode::CREATED, &reserve).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);

    // Expired: the same.
    let expiring = again.body["reservation_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let r = app.reservation(&t, &expiring, None).await;
    assert_eq!(r.body["status"], "expired");
    let after_expiry = eventually(StatusCode::CREATED, &reserve).await;
    assert_eq!(after_expiry.status, StatusCode::CREATED);
    let spilled_id = after_expiry.body["reservation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Confirmed: it counts for good, even with stock back.
    let r = app.reservation(&t, &spilled_id, Some("confirm")).await;
    assert_eq!(r.status, StatusCode::OK);
    let first = home.body["reservation_id"].as_str().unwrap();
    let r = app.reservation(&t, first, Some("confirm")).await;
    assert!(
        [StatusCode::OK, StatusCode::CONFLICT].contains(&r.status),
        "the first hold is confirmed or expired: {:?}",
        r.body
    );
    let confirmed = if r.status == StatusCode::OK { 2 } else { 1 };
    app.adjust(
        "SPILL",
        "default",
        json!({ "delta": 4, "reason": "receipt" }),
    )
    .await;
    let mut held = 0;
    for _ in 0..3 {
        if reserve().await.status == StatusCode::CREATED {
            held += 1;
        }
    }
    assert_eq!(held, 2 - confirmed, "confirmed units keep counting");
    let view = app.view("SPILL").await.body;
    assert_eq!(view["on_hand"], 6 - confirmed);
}

on_both_topologies!(a_spilled_hold_counts_against_the_cap_until_it_ends);

/// Rebalancing gateways killed (`kill -9`) in the middle of a transfer,
/// once after each step: the destinations' masters pause writes (`CLIENT
/// PAUSE … WRITE`), so the mover has withdrawn and waits on its deposit when
/// it is killed; then, with the source's master pausing writes once the
/// withdraw is in, the deposit lands and the mover waits on its completion
/// when it is killed. At that moment and after, the buckets' on hand plus
/// the units in transit is the stock, and the next gateway finishes the
/// transfer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalancer_killed_mid_transfer_loses_and_duplicates_nothing() {
    use crate::failover::{master_of, stall_tolerant_cluster};
    use crate::harness::{GatewayProcess, admin_token};
    use flashgate_dev::devstack::{DevStack, redis_cli};

    let mut stack = DevStack::create("xfer-kill").unwrap();
    let (nodes, mut settings) = stall_tolerant_cluster(&mut stack);
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    // Transfers only when the test asks (POST …/rebalance).
    settings.buckets.rebalance_interval_ms = 0;
    let redis = Redis::connect(&settings).await.unwrap();
    let http = reqwest::Client::new();
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let sku = Sku::parse("KILLED-MOVER").unwrap();
    let r = http
        .put(gateway.url("/v1/admin/inventory/KILLED-MOVER"))
        .bearer_auth(admin_token())
        .json(&json!({ "buckets": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    gateway.stock("KILLED-MOVER", 300).await;
    let buckets = buckets_of(&redis, &sku).await;
    let pid_of = |bucket: &Sku| {
        let key = redis.keys().sku(redis.keys().partition_of(bucket), bucket);
        let port = master_of(ports[0], &key);
        nodes.iter().find(|n| n.port == port).unwrap().pid
    };
    let masters: std::collections::HashSet<u32> = buckets.iter().map(pid_of).collect();
    assert_eq!(masters.len(), 3, "one bucket per master");
    // Units withdrawn and not yet deposited, from the transfers' records.
    let in_transit = async || {
        let mut units = 0;
        for b in &buckets {
            let p = b.bucket_partition().unwrap();
            let now = flashgate::clock::now_ms() + 60_000;
            for (id, record) in redis
                .pending_transfers(p, now, 100, Caller::Request)
                .await
                .unwrap()
            {
                let t = Transfer::from_record(&id, &record.unwrap()).unwrap();
                let key = redis
                    .keys()
                    .transfer(redis.keys().partition_of(&t.to), "in", &id);
                let key = &key;
                let deposited: i64 = redis
                    .command(key, "test", Caller::Request, |client| async move {
                        use fred::prelude::*;
                        client.exists(key).await
                    })
                    .await
                    .unwrap();
                if deposited == 0 {
                    units += t.qty;
                }
            }
        }
        units
    };
    let pending = async || {
        let mut n = 0;
        for b in &buckets {
            let p = b.bucket_partition().unwrap();
            let now = flashgate::clock::now_ms() + 60_000;
            n += redis
                .pending_transfers(p, now, 100, Caller::Request)
                .await
                .unwrap()
                .len();
        }
        n
    };
    let mut stock = 300;
    for round in 0..2 {
        // 90 more units arrive in one bucket: the richest.
        let r = http
            .post(gateway.url("/v1/admin/inventory/KILLED-MOVER/locations/default/adjustments"))
            .bearer_auth(admin_token())
            .json(&json!({ "delta": 90, "reason": "receipt" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        stock += 90;
        let now = counts(&redis, &buckets).await;
        let rich = (0..3).max_by_key(|i| now[*i].on_hand).unwrap();
        let paused: Vec<u16> = (0..3)
            .filter(|i| *i != rich)
            .map(|i| {
                let key = redis
                    .keys()
                    .sku(redis.keys().partition_of(&buckets[i]), &buckets[i]);
                master_of(ports[0], &key)
            })
            .collect();
        let rich_master = {
            let key = redis
                .keys()
                .sku(redis.keys().partition_of(&buckets[rich]), &buckets[rich]);
            master_of(ports[0], &key)
        };
        // The mover withdraws from the richest bucket, then waits on its
        // deposit: the destinations' masters pause writes.
        for port in &paused {
            redis_cli(*port, &["client", "pause", "1500", "write"]);
        }
        let url = gateway.url("/v1/admin/inventory/KILLED-MOVER/rebalance");
        let mover = tokio::spawn(
            http.post(url)
                .bearer_auth(admin_token())
                .timeout(std::time::Duration::from_secs(8))
                .send(),
        );
        let deposited = round == 1;
        if deposited {
            // Round 1: once it has withdrawn, the source's master pauses
            // writes too, so the deposit lands (the destinations resume)
            // and the mover waits on its completion when it is killed.
            let since = std::time::Instant::now();
            while pending().await == 0 {
                assert!(
                    since.elapsed() < std::time::Duration::from_secs(1),
                    "no withdraw"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            redis_cli(rich_master, &["client", "pause", "4000", "write"]);
            while in_transit().await > 0 {
                assert!(
                    since.elapsed() < std::time::Duration::from_secs(4),
                    "no deposit"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        gateway.kill_9();
        let _ = mover.await;
        tokio::time::sleep(std::time::Duration::from_millis(if deposited {
            4_000
        } else {
            1_500
        }))
        .await;
        // What the dead mover left: one transfer pending, its units in
        // exactly one place (in transit, or in the destination).
        let left = counts(&redis, &buckets).await;
        let on_hand: i64 = left.iter().map(|c| c.on_hand).sum();
        let moving = in_transit().await;
        assert_eq!(
            pending().await,
            1,
            "the killed mover left its transfer pending"
        );
        assert_eq!(
            on_hand + moving,
            stock,
            "on hand {on_hand} + in transit {moving}"
        );
        if deposited {
            assert_eq!(moving, 0, "killed after its deposit: nothing in transit");
        } else {
            assert!(moving > 0, "killed after its withdraw: units in transit");
        }
        eprintln!(
            "killed mover (after its {}): {on_hand} on hand + {moving} in transit = {stock}",
            if deposited { "deposit" } else { "withdraw" }
        );
        // The next gateway's sweeper finishes it, once.
        gateway = GatewayProcess::start(&settings);
        gateway.wait_ready().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while pending().await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the transfer was never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let after = counts(&redis, &buckets).await;
        assert_eq!(after.iter().map(|c| c.on_hand).sum::<i64>(), stock);
    }
    // A rebalance nobody interrupts evens the buckets out.
    let r: serde_json::Value = http
        .post(gateway.url("/v1/admin/inventory/KILLED-MOVER/rebalance"))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after = counts(&redis, &buckets).await;
    let (most, least) = (
        after.iter().map(|c| c.on_hand).max().unwrap(),
        after.iter().map(|c| c.on_hand).min().unwrap(),
    );
    assert!(most - least <= 1, "buckets even after {r}: {after:?}");
    assert_eq!(after.iter().map(|c| c.on_hand).sum::<i64>(), stock);
    drop(stack);
}

/// A request for more units than any one bucket has, while the buckets
/// together have them, is held: the units are gathered in one bucket first.
async fn units_spread_over_buckets_are_gathered_for_a_larger_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.policy("SPREAD", json!({ "buckets": 4 })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    app.stock("SPREAD", 8).await;
    let t = token("bulk-buyer");
    let r = app
        .reserve(&t, json!({ "sku": "SPREAD", "qty": 5 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["qty"], 5);
    let r = app
        .reserve(&t, json!({ "sku": "SPREAD", "qty": 4 }), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "insufficient-stock"),
        "3 left"
    );
    let r = app
        .reserve(
            &t,
            json!({ "sku": "SPREAD", "qty": 3, "location": "default" }),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the last 3, named location: {:?}",
        r.body
    );
    let view = app.view("SPREAD").await.body;
    assert_eq!(
        (view["on_hand"].clone(), view["reserved"].clone()),
        (json!(8), json!(8))
    );

    // A waiting room and stock buckets do not go together (yet), in either
    // order; changing the layout once laid out is refused too.
    let room = json!({ "waiting_room": { "admit_per_second": 10 } });
    let r = app.policy("SPREAD", room.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "buckets-locked")
    );
    assert_eq!(app.policy("ROOMED", room).await.status, StatusCode::OK);
    let r = app.policy("ROOMED", json!({ "buckets": 2 })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "buckets-locked")
    );
    let r = app.policy("SPREAD", json!({ "buckets": 3 })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "buckets-locked")
    );
    let r = app.policy("SPREAD", json!({ "buckets": 65 })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Nor do carts (yet): a bucketed SKU's line fails its cart whole.
    app.stock("PLAIN-LINE", 5).await;
    let body =
        json!({ "lines": [{ "sku": "PLAIN-LINE", "qty": 1 }, { "sku": "SPREAD", "qty": 1 }] });
    let r = app
        .send(
            reqwest::Method::POST,
            "/v1/carts",
            Some(&t),
            &[],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "cart-unavailable"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["failed_lines"][0]["code"], "buckets-locked",
        "{:?}",
        r.body
    );
    assert_eq!(
        app.view("PLAIN-LINE").await.body["reserved"],
        0,
        "the other line rolled back"
    );
}

on_both_topologies!(units_spread_over_buckets_are_gathered_for_a_larger_request);

/// A bucketed SKU's live stream follows changes in any of its buckets.
async fn a_stock_stream_follows_every_bucket(backend: Backend) {
    use crate::sse::{Until, follow};
    let app = spawn_app(backend).await;
    let r = app.policy("LIVE-BUCKETS", json!({ "buckets": 3 })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    app.stock("LIVE-BUCKETS", 30).await;
    let v0 = app.view("LIVE-BUCKETS").await.body["version"]
        .as_u64()
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Until::Version(v0 + 3));
    let stream = tokio::spawn(follow(
        app.http.clone(),
        app.url("/v1/inventory/LIVE-BUCKETS/events"),
        None,
        rx,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Three shoppers, three home buckets at most: each hold changes one.
    for i in 0..3 {
        let r = app
            .reserve(
                &token(&format!("watcher-{i}")),
                json!({ "sku": "LIVE-BUCKETS", "qty": 1 }),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let (events, _) = tokio::time::timeout(std::time::Duration::from_secs(5), stream)
        .await
        .expect("the stream saw the three holds within 5 s")
        .unwrap();
    drop(tx);
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["reserved"], 3, "{events:?}");
    assert_eq!(last["sku"], "LIVE-BUCKETS");
}

on_both_topologies!(a_stock_stream_follows_every_bucket);

/// Redis loses a bucketed SKU (its own hash, its buckets, their claims):
/// `flashgate rebuild` restores the layout, every bucket's counts and holds,
/// and the caps its accounts had reached, spilled holds included.
async fn a_bucketed_sku_lost_by_redis_is_rebuilt_with_its_caps(backend: Backend) {
    use crate::harness::{run_tool, wipe_prefix};
    let app = spawn_app(backend).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let policy = json!({ "buckets": 2, "max_per_account": 2 });
    let layout = bucketed(&app, &redis, "REBUILT", policy, 4).await;
    // Two shoppers at home in bucket 0 empty it; the second's next hold
    // spills over to bucket 1 and counts at home.
    let first = token(&account_with_home(&layout, 0, "first"));
    let second = token(&account_with_home(&layout, 0, "second"));
    for (t, n) in [(&first, 1), (&second, 2)] {
        for _ in 0..n {
            let r = app
                .reserve(t, json!({ "sku": "REBUILT", "qty": 1 }), None)
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        }
    }
    let before = app.view("REBUILT").await.body;
    assert_eq!(before["reserved"], 3);
    // Once the journal has every change, Redis loses everything.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run_tool(&app.settings, &["reconcile"]).0 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    wipe_prefix(backend, &app.prefix);
    let (code, out) = run_tool(&app.settings, &["rebuild"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("REBUILT:"),
        "the SKU itself is restored: {out}"
    );
    assert_eq!(
        app.view("REBUILT").await.body,
        before,
        "the summed view is the journal's"
    );
    // The cap counted the spilled hold at home before, and still does.
    let r = app
        .reserve(&second, json!({ "sku": "REBUILT", "qty": 1 }), None)
        .await;
    assert_eq!(r.code(), "purchase-limit", "{:?}", r.body);
    let r = app
        .reserve(&first, json!({ "sku": "REBUILT", "qty": 1 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "the last unit: {:?}", r.body);
    let r = app
        .reserve(&token("late"), json!({ "sku": "REBUILT", "qty": 1 }), None)
        .await;
    assert_eq!(r.code(), "insufficient-stock");
}

on_both_topologies!(a_bucketed_sku_lost_by_redis_is_rebuilt_with_its_caps);

/// Listings, the change feed and webhooks speak of the SKU, never of a
/// bucket's name; the feed says which bucket an event happened in.
async fn the_journal_reads_name_the_sku_not_its_buckets(backend: Backend) {
    use crate::harness::{admin_token, journal_db};
    use reqwest::Method;
    let app = spawn_app(backend).await;
    let r = app.policy("NAMED", json!({ "buckets": 3 })).await;
    assert_eq!(r.status, StatusCode::OK);
    app.stock("NAMED", 6).await;
    let shopper = token("named-shopper");
    for _ in 0..3 {
        let r = app
            .reserve(&shopper, json!({ "sku": "NAMED", "qty": 1 }), None)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mine = loop {
        let r = app
            .send(Method::GET, "/v1/reservations", Some(&shopper), &[], None)
            .await;
        let rows = r.body["reservations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if rows.len() == 3 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(mine.len(), 3, "the shopper's three reservations are listed");
    assert!(mine.iter().all(|r| r["sku"] == "NAMED"), "{mine:?}");
    let r = app
        .send(
            Method::GET,
            "/v1/admin/reservations?sku=NAMED",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(
        r.body["reservations"].as_array().map(Vec::len),
        Some(3),
        "{:?}",
        r.body
    );
    let r = app
        .send(
            Method::GET,
            "/v1/admin/events?sku=NAMED&limit=100",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    let events = r.body["events"].as_array().cloned().unwrap_or_default();
    let reserved: Vec<_> = events.iter().filter(|e| e["kind"] == "reserved").collect();
    assert_eq!(reserved.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["sku"] == "NAMED" && e["bucket"].is_u64()),
        "{events:?}"
    );
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let leaked: i64 = db
        .query_one(
            "SELECT count(*) FROM stock_notifications WHERE sku LIKE 'NAMED~%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "buckets notify nothing of their own");
}

on_both_topologies!(the_journal_reads_name_the_sku_not_its_buckets);

/// A gateway that claimed an account's cap for a spill and stopped before
/// holding (or before giving the claim back) leaves a claim; the claims
/// sweep gives it back once it is old enough, so the account may buy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_its_gateway_left_is_given_back_by_the_sweep() {
    use crate::harness::{spawn_app_with, test_settings, unique_prefix};
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.buckets.rebalance_interval_ms = 50;
    settings.buckets.claim_check_after_ms = 300;
    let app = spawn_app_with(settings).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let policy = json!({ "buckets": 2, "max_per_account": 1 });
    let layout = bucketed(&app, &redis, "LEFT-CLAIM", policy, 10).await;
    let name = account_with_home(&layout, 0, "left");
    let account = flashgate::inventory::AccountId::parse(&name).unwrap();
    // What a gateway that died mid-spill leaves: the claim, no hold.
    let claimed = redis
        .claim(&layout.buckets[0], &account, &"ab".repeat(16), 1)
        .await
        .unwrap();
    assert_eq!(claimed, flashgate::redis::buckets::ClaimReply::Claimed);
    let t = token(&name);
    let r = app
        .reserve(&t, json!({ "sku": "LEFT-CLAIM", "qty": 1 }), None)
        .await;
    assert_eq!(r.code(), "purchase-limit", "the claim counts: {:?}", r.body);
    let r = eventually(StatusCode::CREATED, async || {
        app.reserve(&t, json!({ "sku": "LEFT-CLAIM", "qty": 1 }), None)
            .await
    })
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the sweep gave it back: {:?}",
        r.body
    );
    assert!(
        redis
            .claims_of(&layout.buckets[0])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Buckets laid out over a SKU that has stock (and no holds) take it: the
/// view is the same before and after, and every unit is holdable.
async fn a_stocked_sku_moves_its_stock_into_its_buckets(backend: Backend) {
    let app = spawn_app(backend).await;
    let redis = Redis::connect(&app.settings).await.unwrap();
    let r = app
        .set_stock(
            "STOCKED",
            "default",
            json!({ "on_hand": 10, "safety_stock": 2 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let before = app.view("STOCKED").await.body;
    let t = token("stocked-shopper");
    let held = app
        .reserve(&t, json!({ "sku": "STOCKED", "qty": 1 }), None)
        .await;
    assert_eq!(held.status, StatusCode::CREATED);
    // A live hold: no layout.
    let r = app.policy("STOCKED", json!({ "buckets": 2 })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "buckets-locked")
    );
    let id = held.body["reservation_id"].as_str().unwrap();
    assert_eq!(
        app.reservation(&t, id, Some("release")).await.status,
        StatusCode::OK
    );
    let r = app.policy("STOCKED", json!({ "buckets": 2 })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let buckets = buckets_of(&redis, &Sku::parse("STOCKED").unwrap()).await;
    let after = app.view("STOCKED").await.body;
    for field in ["on_hand", "available", "reserved", "status"] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    let each = counts(&redis, &buckets).await;
    assert_eq!(each.iter().map(|c| c.on_hand).collect::<Vec<_>>(), [5, 5]);
    assert_eq!(
        each.iter().map(|c| c.safety_stock).collect::<Vec<_>>(),
        [1, 1]
    );
    let mut held = 0;
    for i in 0..10 {
        let r = app
            .reserve(
                &token(&format!("stocked-{i}")),
                json!({ "sku": "STOCKED", "qty": 1 }),
                None,
            )
            .await;
        held += usize::from(r.status == StatusCode::CREATED);
    }
    assert_eq!(held, 8, "all but the safety stock");
}

on_both_topologies!(a_stocked_sku_moves_its_stock_into_its_buckets);
