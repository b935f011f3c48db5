//! Live stock for shoppers' pages: a poll storm on `GET /v1/inventory/{sku}`
//! is answered from the in-process view, never older than
//! `live.read_staleness_ms`, with `Cache-Control`, `ETag` and 304s.

use std::time::{Duration, Instant};

use flashgate_dev::devstack::{self, DevStack, redis_cli};
use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, spawn_app_with, test_settings, token, unique_prefix};

/// HGETALL calls (the view's read) the servers on `ports` have run.
fn view_reads(ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|port| {
            redis_cli(*port, &["INFO", "commandstats"])
                .lines()
                .find(|l| l.starts_with("cmdstat_hgetall:"))
                .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

const STALENESS: Duration = Duration::from_millis(100);
const READS: usize = 10_000;

async fn a_poll_storm_reads_the_cached_view(backend: Backend) {
    // Servers of the test's own, so that only its gateway's reads count.
    let mut stack = DevStack::create(&format!("live-{}", unique_prefix())).unwrap();
    let mut settings = test_settings(backend, &unique_prefix());
    let ports = match backend {
        Backend::Standalone => vec![stack.redis().unwrap()],
        Backend::Cluster => stack.redis_cluster(3).unwrap(),
    };
    settings.redis.url = match backend {
        Backend::Standalone => format!("redis://127.0.0.1:{}", ports[0]),
        Backend::Cluster => devstack::cluster_url(&ports),
    }
    .into();
    settings.live.read_staleness_ms = STALENESS.as_millis() as u64;
    // The reconciler's drift check reads views too: not during this test.
    settings.journal.drift_check_every_passes = 1_000_000;
    let app = spawn_app_with(settings).await;
    app.stock("LIVE-1", 1_000).await;
    let url = app.url("/v1/inventory/LIVE-1");

    let before = view_reads(&ports);
    let started = Instant::now();
    let statuses: Vec<StatusCode> = stream::iter(0..READS)
        .map(|_| {
            let (http, url) = (app.http.clone(), url.clone());
            async move { http.get(url).send().await.unwrap().status() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let reads = view_reads(&ports) - before;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    // One read per staleness window at most, and a few for windows cut
    // short by the burst's start and end.
    let windows = (elapsed.as_millis() / STALENESS.as_millis()) as u64 + 1;
    assert!(
        reads <= windows + 3,
        "{READS} reads in {elapsed:?} reached Redis {reads} times ({windows} windows)"
    );
    eprintln!("live: {READS} reads in {elapsed:?}, {reads} of them from Redis");

    // Staleness is bounded: a hold shows once the window has passed.
    let first = app.http.get(&url).send().await.unwrap();
    assert_eq!(
        first.headers()["cache-control"],
        "public, max-age=1",
        "{:?}",
        first.headers()
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let held = app
        .reserve(
            &token("live-shopper"),
            json!({"sku": "LIVE-1", "qty": 3}),
            None,
        )
        .await;
    assert_eq!(held.status, StatusCode::CREATED);
    tokio::time::sleep(STALENESS + Duration::from_millis(20)).await;
    let view = app.view("LIVE-1").await;
    assert_eq!(view.body["reserved"], 3, "{:?}", view.body);

    // If-None-Match: 304 while at that version, 200 once it changed.
    let current = app.http.get(&url).send().await.unwrap();
    let current_tag = current.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(current_tag, etag);
    let unchanged = app
        .http
        .get(&url)
        .header("if-none-match", &current_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"], current_tag.as_str());
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let stale = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    // An unknown SKU's storm is absorbed as well.
    let before = view_reads(&ports);
    for _ in 0..200 {
        let r = app
            .http
            .get(app.url("/v1/inventory/LIVE-NOPE"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert!(view_reads(&ports) - before <= 20);
}

crate::on_both_topologies!(a_poll_storm_reads_the_cached_view);
