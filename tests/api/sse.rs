//! SSE stock streams: `GET /v1/inventory/{sku}/events` fans one Redis
//! subscription out to every stream of an instance, coalesces changes to
//! `live.max_updates_per_second`, always delivers the newest state, and
//! never buffers for a client that stops reading.

use std::time::{Duration, Instant};

use flashgate::{inventory::Sku, redis::Keys};
use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, sync::watch};

use crate::harness::{
    Backend, GatewayProcess, admin_token, on_every_node, test_settings, token, unique_prefix,
};

/// One `stock` event as a client parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: Option<u64>,
    /// The event's JSON, parsed by whoever needs it (a thousand clients
    /// parsing every event would slow the gateway they share two cores with).
    pub data: String,
}

/// When a [`follow`] stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Reading on until told otherwise.
    Told,
    /// Stop now.
    Now,
    /// Stop once an event of this version or newer has arrived.
    Version(u64),
}

impl Until {
    fn reached(self, seen: Option<u64>) -> bool {
        match self {
            Until::Told => false,
            Until::Now => true,
            Until::Version(v) => seen.is_some_and(|seen| seen >= v),
        }
    }
}

/// Reads `url` as an event stream until `until` says so; every `stock`
/// event received, and whether a `retry` field came.
pub async fn follow(
    http: reqwest::Client,
    url: String,
    last_event_id: Option<u64>,
    mut until: watch::Receiver<Until>,
) -> (Vec<Received>, bool) {
    let mut request = http.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (mut buffer, mut events, mut retry) = (String::new(), Vec::new(), false);
    loop {
        if until
            .borrow()
            .reached(events.last().and_then(|e: &Received| e.id))
        {
            break;
        }
        let chunk = tokio::select! {
            changed = until.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            chunk = response.chunk() => chunk.unwrap(),
        };
        let Some(chunk) = chunk else { break };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if line.starts_with("retry:") {
                    retry = true;
                }
            }
            if event == "stock" {
                events.push(Received { id, data });
            }
        }
    }
    (events, retry)
}

/// Shard subscriptions to `sku`'s partition channel, over every node.
fn channel_subscribers(backend: Backend, prefix: &str, partitions: u32, sku: &str) -> u64 {
    let keys = Keys::new(prefix, partitions);
    let channel = keys.stock_channel(keys.partition_of(&Sku::parse(sku).unwrap()));
    on_every_node(backend, &["PUBSUB", "SHARDNUMSUB", &channel])
        .iter()
        .filter_map(|out| out.lines().nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

const STREAMS: usize = 1_000;
const RESERVATIONS: usize = 500;
const RATE: usize = 10;

async fn a_thousand_streams_follow_five_hundred_reservations(backend: Backend) {
    // A thousand client sockets here and a thousand in the gateway (which
    // inherits this limit and raises its own): more than the usual soft
    // default of 1,024 descriptors.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= STREAMS as u64 + 512,
        "the open-files limit ({limit}) is too low for {STREAMS} streams: raise the hard limit"
    );
    let mut settings = test_settings(backend, &unique_prefix());
    // A thousand streams opening at once share their first read, as they
    // would in production (the harness turns the cached view off).
    settings.live.read_staleness_ms = 100;
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    gateway.stock("SSE-1", 10_000).await;
    let url = gateway.url("/v1/inventory/SSE-1/events");

    let (until, following) = watch::channel(Until::Told);
    let http = reqwest::Client::new();
    let clients: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(follow(http.clone(), url.clone(), None, following.clone())))
        .collect();
    // Every stream is open once the gateway counts them.
    let metrics_url = gateway.url("/metrics");
    let opened = Instant::now();
    loop {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if crate::harness::metric_value(&text, "flashgate_live_subscribers", &[]) as usize
            == STREAMS
        {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(60),
            "the streams never all opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        channel_subscribers(
            backend,
            &settings.redis.key_prefix,
            settings.redis.partitions,
            "SSE-1"
        ),
        1,
        "one subscription to the partition's channel for {STREAMS} streams"
    );

    let reserve_url = gateway.url("/v1/reservations");
    let started = Instant::now();
    let held = stream::iter(0..RESERVATIONS)
        .map(|i| {
            let (http, url) = (http.clone(), reserve_url.clone());
            async move {
                http.post(url)
                    .bearer_auth(token(&format!("sse-shopper-{i}")))
                    .json(&json!({"sku": "SSE-1", "qty": 1}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(8)
        .filter(|s| std::future::ready(*s == StatusCode::CREATED))
        .count()
        .await;
    let burst = started.elapsed();
    assert_eq!(held, RESERVATIONS);
    // The final view, once the cached one (at most 100 ms old) has it.
    let last: Value = loop {
        let view: Value = http
            .get(gateway.url("/v1/inventory/SSE-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["reserved"] == RESERVATIONS {
            break view;
        }
        assert!(started.elapsed() < burst + Duration::from_secs(5), "{view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let final_version = last["version"].as_u64().unwrap();
    // Each client reads until the final view arrives; on a loaded machine
    // that can take a while, but it must come.
    until.send(Until::Version(final_version)).unwrap();
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(clients))
        .await
        .expect("every stream receives the final view");
    let window = started.elapsed();

    let mut delivered = 0;
    for result in results {
        let (events, retry) = result.unwrap();
        assert!(retry, "the first event carries retry");
        let newest = events.last().expect("a first event at least");
        let data: Value = serde_json::from_str(&newest.data).unwrap();
        assert_eq!(data, last, "every client's last event is the final view");
        assert_eq!(newest.id, Some(final_version));
        assert!(
            events.windows(2).all(|w| w[0].id < w[1].id),
            "versions only increase"
        );
        // Every event after the first reports a change made since `started`;
        // at RATE per second they fit in the window with one to spare.
        // (Counted over the window, not per second of arrival: a test
        // process starved for a moment reads several events at once.)
        let updates = events.len() - 1;
        let allowed = (RATE as f64 * window.as_secs_f64()).floor() as usize + 1;
        assert!(
            updates <= allowed,
            "{updates} updates in {window:?} (at most {RATE} per second)"
        );
        delivered += events.len();
    }
    eprintln!(
        "sse: {STREAMS} streams, {RESERVATIONS} reservations in {burst:?}, \
         {delivered} events delivered in {window:?} ({} per stream)",
        delivered / STREAMS
    );
    assert!(
        delivered < STREAMS * RESERVATIONS / 4,
        "changes were coalesced"
    );

    // Reconnecting at the current version: no duplicate first event.
    let (until, following) = watch::channel(Until::Told);
    let again = tokio::spawn(follow(
        http.clone(),
        url.clone(),
        Some(final_version),
        following,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    until.send(Until::Now).unwrap();
    let (events, retry) = again.await.unwrap();
    assert!(events.is_empty() && retry, "{events:?}");

    // Streams end with their clients: the gateway forgets them.
    let closed = Instant::now();
    loop {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if crate::harness::metric_value(&text, "flashgate_live_subscribers", &[]) == 0.0
            && crate::harness::metric_value(&text, "flashgate_live_watched_skus", &[]) == 0.0
        {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "streams never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients that open a stream and never read a byte of it.
async fn stuck_clients(addr: &str, path: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut stuck = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let head =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stuck.push(stream);
    }
    stuck
}

async fn a_client_that_stops_reading_does_not_grow_the_gateway(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    let mut gateway = GatewayProcess::start_with(
        &settings,
        &[("FLASHGATE_LIVE__MAX_UPDATES_PER_SECOND", "100")],
    );
    gateway.wait_ready().await;
    let http = reqwest::Client::new();
    // Two hundred locations make each event some 40 KB: a gateway that
    // queued events for a client that does not read would show it at once.
    let admin = stream::iter(0..200)
        .map(|i| {
            let url = gateway.url(&format!("/v1/admin/inventory/SSE-BIG/locations/site-{i}"));
            let http = http.clone();
            async move {
                http.put(url)
                    .bearer_auth(admin_token())
                    .json(&json!({"on_hand": 1_000_000}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    assert!(admin.iter().all(|s| *s == StatusCode::OK));
    let stuck = stuck_clients(&gateway.addr, "/v1/inventory/SSE-BIG/events", 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gateway.child.id();
    let before = rss_bytes(pid);

    // Ten seconds of changes at 100 events per second per stream: some
    // 1,000 events of 40 KB each for 50 clients, 2 GB if it were queued.
    let started = Instant::now();
    let reserve_url = gateway.url("/v1/reservations");
    let (mut made, mut midway) = (0, None);
    while started.elapsed() < Duration::from_secs(10) {
        if midway.is_none() && started.elapsed() >= Duration::from_secs(5) {
            midway = Some(rss_bytes(pid));
        }

        let replies = stream::iter(0..16)
            .map(|i| {
                let (http, url) = (http.clone(), reserve_url.clone());
                async move {
                    http.post(url)
                        .bearer_auth(token(&format!("stuck-{i}")))
                        .json(&json!({"sku": "SSE-BIG", "qty": 1}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        made += replies
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
    }
    let after = rss_bytes(pid);
    let midway = midway.unwrap();
    eprintln!(
        "sse: {made} changes with 50 stuck clients: rss {} MiB, {} MiB after 5 s, {} MiB after 10 s",
        before >> 20,
        midway >> 20,
        after >> 20
    );
    assert!(made > 600, "only {made} changes were made");
    // Each stuck connection may hold one write buffer (128 KiB) and
    // nothing more: the growth stops once those are full.
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "the gateway grew by {} MiB for clients that do not read",
        after.saturating_sub(before) >> 20
    );
    assert!(
        after.saturating_sub(midway) < 32 << 20,
        "the gateway kept growing: {} MiB in the last 5 s",
        after.saturating_sub(midway) >> 20
    );
    drop(stuck);
}

/// The subscriber cap: past `live.max_subscribers`, 503 overloaded.
async fn streams_past_the_cap_are_refused(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    let mut gateway =
        GatewayProcess::start_with(&settings, &[("FLASHGATE_LIVE__MAX_SUBSCRIBERS", "3")]);
    gateway.wait_ready().await;
    gateway.stock("SSE-CAP", 5).await;
    let http = reqwest::Client::new();
    let url = gateway.url("/v1/inventory/SSE-CAP/events");
    let mut open = Vec::new();
    for _ in 0..3 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["type"].as_str().unwrap().ends_with("/overloaded"),
        "{body}"
    );
    // Unknown SKUs and bad ones are answered before a stream opens.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let unknown = http
        .get(gateway.url("/v1/inventory/SSE-NOPE/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad = http
        .get(gateway.url("/v1/inventory/bad%20sku/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A place given back (the 404s gave theirs back too) is taken again.
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

crate::on_both_topologies!(
    a_thousand_streams_follow_five_hundred_reservations,
    a_client_that_stops_reading_does_not_grow_the_gateway,
    streams_past_the_cap_are_refused
);
