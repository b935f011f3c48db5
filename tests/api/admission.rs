//! Admission control against real Redis: rate limits per account, per
//! address and across instances, the sold-out short-circuit, load shedding,
//! shadow mode, and the listener's connection cap and header timeout.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use flashgate::{
    config::{LimitMode, RateSettings, Settings},
    inventory::{AccountId, Partition, Sku},
    limits::Admission,
    redis::Keys,
};
use flashgate_dev::devstack::redis_cli;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    Backend, GatewayProcess, PrivateRedis, Reply, TestApp, metric_value, spawn_app_with,
    test_settings, token, unique_prefix,
};
use crate::on_both_topologies;

fn rate(mode: LimitMode, per_second: u32, burst: u32) -> RateSettings {
    RateSettings {
        mode,
        per_second,
        burst,
    }
}

async fn stock(app: &TestApp, sku: &str, on_hand: u64) {
    let r = app
        .set_stock(sku, "default", json!({ "on_hand": on_hand }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn one_unit(sku: &str) -> Value {
    json!({ "sku": sku, "qty": 1 })
}

/// Most requests that can pass a rate of `per_second` after a full burst,
/// over `elapsed` (one more for the refill in progress).
fn budget(burst: u32, per_second: u32, elapsed: Duration) -> usize {
    burst as usize + (elapsed.as_secs_f64() * f64::from(per_second)).ceil() as usize + 1
}

fn assert_rate_limited(r: &Reply, limit: &str) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.code(), "rate-limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1);
    let policy = r.header("ratelimit-policy").unwrap_or_default();
    assert!(policy.contains(&format!("\"{limit}\";q=")), "{policy}");
    let state = r.header("ratelimit").unwrap_or_default();
    assert_eq!(state, format!("\"{limit}\";r=0;t={retry}"));
}

async fn one_account_firing_500_at_once_gets_its_burst_and_others_are_served(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    settings.limits.account = rate(LimitMode::Enforce, 10, 20);
    let app = spawn_app_with(settings).await;
    stock(&app, "A-BOT", 10_000).await;
    let bot = token("bot-1");
    let humans: Vec<String> = (0..100).map(|n| token(&format!("human-{n}"))).collect();

    let start = Instant::now();
    let bot_requests = (0..500).map(|_| app.reserve(&bot, one_unit("A-BOT"), None));
    let human_requests = humans
        .iter()
        .map(|t| app.reserve(t, one_unit("A-BOT"), None));
    let (bot_replies, human_replies) =
        tokio::join!(join_all(bot_requests), join_all(human_requests));
    let elapsed = start.elapsed();

    let held = bot_replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert!(held >= 1, "the bot's burst is served");
    assert!(
        held <= budget(20, 10, elapsed),
        "{held} holds in {elapsed:?} for a burst of 20 at 10/s"
    );
    for r in bot_replies
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
    {
        assert_rate_limited(r, "account");
    }
    for r in &human_replies {
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert!(
            r.header("ratelimit")
                .is_some_and(|v| v.starts_with("\"account\";r="))
        );
    }
}

async fn two_instances_with_the_shared_limit_keep_an_account_within_one_budget(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    settings.limits.shared = rate(LimitMode::Enforce, 5, 10);
    let first = spawn_app_with(settings.clone()).await;
    let second = spawn_app_with(settings).await;
    stock(&first, "A-SHARED", 10_000).await;
    let bot = token("bot-2");

    let start = Instant::now();
    let requests = (0..300).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.reserve(&bot, one_unit("A-SHARED"), None)
    });
    let replies = join_all(requests).await;
    let elapsed = start.elapsed();

    let held = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert!(held >= 1);
    assert!(
        held <= budget(10, 5, elapsed),
        "{held} holds across two instances in {elapsed:?} for a shared burst of 10 at 5/s"
    );
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_rate_limited(r, "shared");
    }
}

on_both_topologies!(
    one_account_firing_500_at_once_gets_its_burst_and_others_are_served,
    two_instances_with_the_shared_limit_keep_an_account_within_one_budget,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_limited_only_through_a_trusted_proxy() {
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.limits.ip = rate(LimitMode::Enforce, 1, 5);
    settings.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let app = spawn_app_with(settings.clone()).await;
    stock(&app, "A-IP", 1_000).await;
    let reserve_from = |n: usize, from: &'static str| {
        let t = token(&format!("shopper-{n}"));
        let body = one_unit("A-IP").to_string();
        let app = &app;
        async move {
            app.send(
                reqwest::Method::POST,
                "/v1/reservations",
                Some(&t),
                &[("x-forwarded-for", from)],
                Some(body),
            )
            .await
        }
    };
    // Ten accounts behind one address: the address's burst of 5 is shared.
    let mut same_address = Vec::new();
    for n in 0..10 {
        same_address.push(reserve_from(n, "198.51.100.7").await);
    }
    let held = same_address
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert!((5..=7).contains(&held), "{held} holds for a burst of 5");
    assert_rate_limited(same_address.last().unwrap(), "ip");
    // Another client of the same proxy has its own budget.
    let other = reserve_from(11, "198.51.100.8").await;
    assert_eq!(other.status, StatusCode::CREATED, "{:?}", other.body);

    // A gateway that trusts no proxy ignores the header: one address.
    settings.http.trusted_proxies = vec![];
    let direct = spawn_app_with(settings).await;
    let mut replies = Vec::new();
    for n in 0..8 {
        let t = token(&format!("direct-{n}"));
        let xff = format!("203.0.113.{n}");
        let body = one_unit("A-IP").to_string();
        let headers = [("x-forwarded-for", xff.as_str())];
        let r = direct
            .send(
                reqwest::Method::POST,
                "/v1/reservations",
                Some(&t),
                &headers,
                Some(body),
            )
            .await;
        replies.push(r.status);
    }
    assert!(
        replies.contains(&StatusCode::TOO_MANY_REQUESTS),
        "forged addresses did not escape the limit: {replies:?}"
    );
}

/// EVAL and EVALSHA calls the server has run so far.
fn script_calls(port: u16) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn private_settings(redis: &PrivateRedis) -> Settings {
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.redis.url = redis.url().into();
    settings
}

/// Reserves until the gateway answers "sold out" without a script call
/// (its subscription to stock announcements is live by then).
async fn until_answered_locally(app: &TestApp, port: u16, sku: &str) {
    let t = token("late-shopper");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = script_calls(port);
        let r = app.reserve(&t, one_unit(sku), None).await;
        assert_eq!(r.code(), "insufficient-stock", "{:?}", r.body);
        if script_calls(port) == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never answered locally"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tries to reserve one unit every 20 ms until a 201 or `within` passes;
/// the last refusal's body when none came.
async fn sold_within(
    app: &TestApp,
    account: &str,
    sku: &str,
    within: Duration,
) -> Result<(), Value> {
    let t = token(account);
    let start = Instant::now();
    loop {
        let r = app.reserve(&t, one_unit(sku), None).await;
        if r.status == StatusCode::CREATED {
            return Ok(());
        }
        if start.elapsed() >= within {
            return Err(r.body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sell_out_requests_are_answered_without_redis_until_a_release() {
    let redis = PrivateRedis::start();
    let mut settings = private_settings(&redis);
    // Far longer than the test: only news of the release may end it.
    settings.limits.sold_out.ttl_ms = 600_000;
    let app = spawn_app_with(settings.clone()).await;
    let other_instance = spawn_app_with(settings).await;
    stock(&app, "A-GONE", 2).await;
    let keyed = token("keyed-buyer");
    let first = app.reserve(&keyed, one_unit("A-GONE"), Some("buy-1")).await;
    let second = app
        .reserve(&token("buyer-2"), one_unit("A-GONE"), None)
        .await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    until_answered_locally(&app, redis.port, "A-GONE").await;

    let before = script_calls(redis.port);
    let app = &app;
    let flood = (0..200).map(|n| {
        let t = token(&format!("flood-{n}"));
        async move { app.reserve(&t, one_unit("A-GONE"), None).await }
    });
    for r in join_all(flood).await {
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "insufficient-stock");
        assert_eq!(r.body["available"], 0);
    }
    assert_eq!(script_calls(redis.port), before, "the flood reached Redis");

    // A retried Idempotency-Key still gets its original answer from Redis.
    let replay = app.reserve(&keyed, one_unit("A-GONE"), Some("buy-1")).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{:?}", replay.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    // Released through the other instance: this one hears it on pub/sub.
    let id = second.body["reservation_id"].as_str().unwrap();
    let path = format!("/v1/reservations/{id}/release");
    let released = other_instance
        .send(
            reqwest::Method::POST,
            &path,
            Some(&token("buyer-2")),
            &[],
            None,
        )
        .await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    let sold = sold_within(app, "next-buyer", "A-GONE", Duration::from_secs(3)).await;
    assert!(
        sold.is_ok(),
        "the released unit was not sold again: {sold:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_answer_ends_at_its_bound_without_any_news() {
    let redis = PrivateRedis::start();
    let mut settings = private_settings(&redis);
    settings.limits.sold_out.ttl_ms = 300;
    let app = spawn_app_with(settings.clone()).await;
    stock(&app, "A-QUIET", 0).await;
    until_answered_locally(&app, redis.port, "A-QUIET").await;

    // A unit appears behind the gateway's back: no announcement.
    let keys = Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let sku = Sku::parse("A-QUIET").unwrap();
    let p = Partition::of("A-QUIET", settings.redis.partitions);
    let key = keys.sku(p, &sku);
    redis_cli(redis.port, &["HINCRBY", &key, "l:default:oh", "1"]);
    let sold = sold_within(&app, "patient", "A-QUIET", Duration::from_secs(3)).await;
    assert!(
        sold.is_ok(),
        "the sold-out answer outlived its bound: {sold:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_requests_are_shed_at_once() {
    let redis = PrivateRedis::start();
    let mut settings = private_settings(&redis);
    settings.limits.in_flight.max = 1;
    let app = spawn_app_with(settings).await;
    stock(&app, "A-SHED", 100).await;
    redis_cli(redis.port, &["CLIENT", "PAUSE", "1500", "ALL"]);
    let t = token("first");
    let stuck = app.reserve(&t, one_unit("A-SHED"), None);
    let shed = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut replies = Vec::new();
        for n in 0..5 {
            let t = token(&format!("shed-{n}"));
            replies.push(app.reserve(&t, one_unit("A-SHED"), None).await);
        }
        replies
    };
    let (stuck, shed) = tokio::join!(stuck, shed);
    assert_eq!(stuck.status, StatusCode::SERVICE_UNAVAILABLE);
    for r in &shed {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
        assert_eq!(r.code(), "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = app.reserve(&token("later"), one_unit("A-SHED"), None).await;
    assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
}

/// The value of one counter series in a Prometheus text exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_refuses_nothing_and_counts_what_it_would_have() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = GatewayProcess::start_with(
        &settings,
        &[
            ("FLASHGATE_LIMITS__ACCOUNT__MODE", "shadow"),
            ("FLASHGATE_LIMITS__ACCOUNT__PER_SECOND", "1"),
            ("FLASHGATE_LIMITS__ACCOUNT__BURST", "2"),
            ("FLASHGATE_LIMITS__IP__MODE", "shadow"),
            ("FLASHGATE_LIMITS__IP__PER_SECOND", "1"),
            ("FLASHGATE_LIMITS__IP__BURST", "5"),
        ],
    );
    gateway.wait_ready().await;
    let http = reqwest::Client::new();
    gateway.stock("A-SHADOW", 1000).await;

    let bot = token("shadow-bot");
    let start = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = http
            .post(gateway.url("/v1/reservations"))
            .bearer_auth(&bot)
            .json(&one_unit("A-SHADOW"))
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("ratelimit-policy").is_none(),
            "shadow limits are not announced"
        );
        statuses.push(r.status());
    }
    let elapsed = start.elapsed();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );

    let metrics = http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refill = (elapsed.as_secs_f64()).ceil() as usize;
    for (limit, burst) in [("account", 2usize), ("ip", 5)] {
        let counted = metric_value(
            &metrics,
            "flashgate_admission_refused_total",
            &[("limit", limit), ("mode", "shadow")],
        ) as usize;
        let most = 20 - burst;
        assert!(
            (most.saturating_sub(refill)..=most).contains(&counted),
            "{limit}: {counted} counted, {most} expected (less {refill} refilled)\n{metrics}"
        );
        let enforced = metric_value(
            &metrics,
            "flashgate_admission_refused_total",
            &[("limit", limit), ("mode", "enforce")],
        );
        assert_eq!(enforced, 0.0);
    }
}

#[test]
fn a_million_accounts_leave_almost_no_tracked_keys_after_the_refill_time() {
    let mut limits = Settings::default().limits;
    // A bucket of one refilled every millisecond: idle after 1 ms.
    limits.account = rate(LimitMode::Enforce, 1_000, 1);
    limits.ip.mode = LimitMode::Off;
    let admission = Admission::new(&limits, &[]);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let accounts = 1_000_000;
    for n in 0..accounts {
        let account = AccountId::parse(&format!("acct-{n}")).unwrap();
        assert!(admission.check_local(&account, ip).is_ok());
    }
    assert_eq!(admission.tracked_keys().1, accounts);
    std::thread::sleep(Duration::from_millis(20));
    let (_, tracked) = admission.housekeep_once();
    assert!(tracked < 1_000, "{tracked} keys still tracked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_at_the_timeout_while_others_are_served() {
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.http.header_read_timeout_ms = 2_000;
    let app = spawn_app_with(settings).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let start = Instant::now();
    let trickle = async {
        // One byte a second, as a slowloris client sends its headers.
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break, // disconnected
                Ok(Ok(_)) | Err(_) => {}         // still open
            }
        }
        start.elapsed()
    };
    let others = async {
        let mut served = 0;
        for _ in 0..20 {
            let r = app
                .send(reqwest::Method::GET, "/healthz", None, &[], None)
                .await;
            served += usize::from(r.status == StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    };
    let (cut_after, served) = tokio::join!(trickle, others);
    assert_eq!(served, 20);
    assert!(
        cut_after >= Duration::from_millis(1_900) && cut_after < Duration::from_secs(6),
        "cut after {cut_after:?} for a 2 s header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_new_client_waits_until_one_leaves() {
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.http.max_connections = 2;
    let app = spawn_app_with(settings).await;
    let first = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = app.url("/healthz");
    // Taken before the task starts: the connection is let go 500 ms after it.
    let start = Instant::now();
    let waiting = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let r = client.get(url).send().await;
        (r.map(|r| r.status()).ok(), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served at a cap of two"
    );
    drop(first);
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, Some(StatusCode::OK));
    assert!(waited >= Duration::from_millis(500));
}
