//! Journal benchmark: `cargo bench --bench journal`.
//!
//! 1. Throughput of the batch writer's statements (`Store::apply`): synthetic
//!    reserve/confirm events over 1,000 SKUs, written by one writer in
//!    batches of 100 and of 1,000, then the same events replayed (the
//!    reconciler's and a retry's no-op path).
//! 2. Journal lag under a sustained reservation load: an in-process gateway
//!    takes reservations at a constant rate over HTTP for 15 s while the
//!    benchmark samples how far `inventory_events` trails the clock.
//!
//! It uses the Redis and Postgres given by FLASHGATE_BENCH_REDIS_URL and
//! FLASHGATE_BENCH_POSTGRES_URL (defaults: the local services), in a
//! database and a key prefix of its own, both removed at the end.
//! FLASHGATE_BENCH_RATE sets the reservation rate (default 1,000/s).

// A benchmark stops at its first failure, like a test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flashgate::{
    app::App,
    auth::{Auth, Role},
    config::Settings,
    events::{Event, EventKind, ReservationPart},
    inventory::{AccountId, Partition},
    journal::Store,
};
use tokio_postgres::NoTls;

const SKUS: usize = 1_000;
const EVENTS: usize = 200_000;
const LOAD_SECONDS: u64 = 15;
const DEFAULT_LOAD_RATE_PER_S: u64 = 1_000;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

async fn admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("postgres");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
}

fn synthetic_events(n: usize) -> Vec<Event> {
    let base_ms = 1_763_712_000_000_i64;
    let mut versions = vec![0i64; SKUS];
    (0..n)
        .map(|i| {
            let s = (i / 2) % SKUS;
            versions[s] += 1;
            let kind = if i % 2 == 0 {
                EventKind::Reserved
            } else {
                EventKind::Confirmed
            };
            let rid = format!("{}.{:032x}.BENCH-{s}", s % 256, i / 2);
            Event {
                partition: Partition((s % 256) as u32),
                stream_id: format!("{}-{}", base_ms + i as i64, i % 7),
                kind,
                sku: format!("BENCH-{s}"),
                location: "default".into(),
                version: versions[s],
                on_hand: 1_000_000 - (i / 2) as i64,
                reserved: (i % 2) as i64,
                safety_stock: 0,
                low_stock_threshold: 0,
                backorder_limit: 0,
                occurred_at_ms: base_ms + i as i64,
                reservation: Some(ReservationPart {
                    id: rid,
                    account: format!("acct-{}", i % 5_000),
                    qty: 1,
                    backorder: false,
                    expires_at_ms: Some(base_ms + 600_000),
                    created_at_ms: Some(base_ms + i as i64),
                }),
                delta: None,
                reason: None,
                reference: None,
                actor: None,
                request_id: None,
                held: None,
                cart_id: None,
            }
        })
        .collect()
}

async fn write_all(store: &Store, events: &[Event], batch: usize) -> (f64, u64) {
    let start = Instant::now();
    let mut inserted = 0;
    for chunk in events.chunks(batch) {
        inserted += store.apply(chunk).await.expect("apply");
    }
    (
        events.len() as f64 / start.elapsed().as_secs_f64(),
        inserted,
    )
}

async fn throughput(db_url: &str, settings: &Settings) {
    let mut s = settings.postgres.clone();
    s.url = db_url.into();
    let store = Store::new(&s).expect("store");
    store.migrate(256).await.expect("migrate");
    let events = synthetic_events(EVENTS);
    let (half_a, half_b) = events.split_at(EVENTS / 2);
    let (small, n_small) = write_all(&store, half_a, 100).await;
    let (large, n_large) = write_all(&store, half_b, 1_000).await;
    let (replay, n_replay) = write_all(&store, &events, 1_000).await;
    println!(
        "journal throughput (one writer, {} events over {SKUS} SKUs)",
        EVENTS
    );
    println!("  batches of 100:    {small:>9.0} events/s ({n_small} inserted)");
    println!("  batches of 1,000:  {large:>9.0} events/s ({n_large} inserted)");
    println!("  replay, 1,000:     {replay:>9.0} events/s ({n_replay} inserted)");
    println!("  ratio 1,000 / 100: {:.2}", large / small);
}

async fn lag_under_load(db_url: &str, settings: &Settings, rate_per_s: u64) {
    let mut s = settings.clone();
    s.postgres.url = db_url.into();
    s.http.listen = "127.0.0.1:0".parse().expect("addr");
    s.redis.key_prefix = format!("bench{}", std::process::id());
    s.redis.partitions = 256;
    s.auth.secret = Some("flashgate-bench-secret-0123456789".into());
    s.log.level = "warn".into();
    let auth = Auth::new(s.auth.secret_or_development());
    let admin_token = auth.issue(
        &AccountId::parse("bench-admin").expect("id"),
        Role::Admin,
        3600,
    );
    let app = App::build(s.clone()).await.expect("gateway");
    let base = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let skus = 64;
    for k in 0..skus {
        http.put(format!(
            "{base}/v1/admin/inventory/LAG-{k}/locations/default"
        ))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({ "on_hand": 1_000_000 }))
        .send()
        .await
        .expect("stock");
    }
    let tokens: Vec<String> = (0..1_000)
        .map(|i| {
            auth.issue(
                &AccountId::parse(&format!("lag-{i}")).expect("id"),
                Role::Shopper,
                3600,
            )
        })
        .collect();
    let (pg, conn) = tokio_postgres::connect(db_url, NoTls).await.expect("pg");
    tokio::spawn(conn);
    let started = Instant::now();
    let load = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_s));
            let mut sent = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            while started.elapsed() < Duration::from_secs(LOAD_SECONDS) {
                tick.tick().await;
                let req = http
                    .post(format!("{base}/v1/reservations"))
                    .bearer_auth(&tokens[(sent % 1_000) as usize])
                    .json(&serde_json::json!({ "sku": format!("LAG-{}", sent % skus), "qty": 1 }));
                tasks.spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
                sent += 1;
            }
            let mut ok = 0u64;
            while let Some(r) = tasks.join_next().await {
                if matches!(r, Ok(Ok(201))) {
                    ok += 1;
                }
            }
            (sent, ok)
        })
    };
    let mut samples = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while started.elapsed() < Duration::from_secs(LOAD_SECONDS) {
        let row = pg
            .query_one(
                "SELECT COALESCE(extract(epoch FROM clock_timestamp() - max(occurred_at)), 0)::float8
                 FROM inventory_events",
                &[],
            )
            .await
            .expect("lag");
        samples.push(row.get::<_, f64>(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, ok) = load.await.expect("load");
    let done = Instant::now();
    loop {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM inventory_events WHERE kind = 'reserved'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if n as u64 >= ok || done.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = done.elapsed();
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] * 1000.0;
    println!(
        "journal lag under {rate_per_s} reservations/s for {LOAD_SECONDS} s \
         ({ok} of {sent} reserved, {} samples)",
        samples.len()
    );
    println!(
        "  newest journaled event behind the clock: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    println!(
        "  all events in postgres {:.0} ms after the load stopped",
        drain.as_secs_f64() * 1000.0
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    let redis_url = s.redis.url.expose().to_owned();
    let prefix = s.redis.key_prefix.clone();
    let _ = std::process::Command::new("sh")
        .args(["-c", &format!(
            "redis-cli -u {redis_url} --scan --pattern '{prefix}:*' | xargs -r -n 100 redis-cli -u {redis_url} del >/dev/null"
        )])
        .status();
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: the
    // test suite must not need the local services, so only `cargo bench` runs it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("journal benchmark: run it with `cargo bench --bench journal`");
        return;
    }
    let pg = env_or(
        "FLASHGATE_BENCH_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let mut settings = Settings::default();
    settings.redis.url = env_or("FLASHGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379").into();
    let name = format!("flashgate_bench_{}", std::process::id());
    let (base, _) = pg.rsplit_once('/').expect("a database in the postgres URL");
    let db_url = format!("{base}/{name}");
    admin(&pg, &format!("CREATE DATABASE {name}")).await;
    throughput(&db_url, &settings).await;
    admin(&pg, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
    admin(&pg, &format!("CREATE DATABASE {name}")).await;
    let rate = env_or("FLASHGATE_BENCH_RATE", &DEFAULT_LOAD_RATE_PER_S.to_string())
        .parse()
        .expect("FLASHGATE_BENCH_RATE is reservations per second");
    lag_under_load(&db_url, &settings, rate).await;
    admin(&pg, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
