//! Reserve script benchmark: `cargo bench --bench reserve_script`.
//!
//! Drives `lua/reserve.lua` straight on Redis, as the batcher would, with
//! fixed batches: FLASHGATE_BENCH_BATCH requests (default 32) from 10,000
//! accounts, FLASHGATE_BENCH_ROUNDS times (default 2,000), every request a
//! new hold of one hot SKU. Prints the holds made and the script's time per
//! reservation from `INFO commandstats` (EVALSHA and each command inside it).
//!
//! Wall-clock time on a shared machine is noisy; for a figure that repeats,
//! run a redis-server of its own under `valgrind --tool=callgrind` and read
//! its instructions per reservation (BENCHMARKS.md, "Reproduce").
//!
//! It uses the Redis at FLASHGATE_BENCH_REDIS_URL (default the local one),
//! under a key prefix of its own, removed at the end.

// A benchmark stops at its first failure, like a test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use flashgate::{
    config::Settings,
    inventory::{AccountId, Location, Qty, ReservationId, Sku},
    redis::{
        Redis, ScriptName,
        batch::BatchKind,
        calls::{ReserveBatch, ReserveReply, ReserveRequest, Staff, StockCounts},
    },
};
use fred::{prelude::*, types::InfoKind};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// `cmdstat_<name>` → (calls, usec) from `INFO commandstats`.
async fn command_stats(redis: &Redis) -> Vec<(String, f64, f64)> {
    let info: String = redis
        .pool()
        .info(Some(InfoKind::CommandStats))
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok())
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("reserve script benchmark: run it with `cargo bench --bench reserve_script`");
        return;
    }
    let batch_size: usize = env_or("FLASHGATE_BENCH_BATCH", "32").parse().unwrap();
    let rounds: usize = env_or("FLASHGATE_BENCH_ROUNDS", "2000").parse().unwrap();
    let mut s = Settings::default();
    s.redis.url = env_or("FLASHGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379").into();
    s.redis.key_prefix = format!("bench{}", std::process::id());
    let redis = Redis::connect(&s).await.unwrap();
    let sku = Sku::parse("BENCH-HOT").unwrap();
    let counts = StockCounts {
        on_hand: 1_000_000_000,
        safety_stock: 0,
        low_stock_threshold: 0,
        backorder_limit: 0,
    };
    let location = Location::parse("default").unwrap();
    let operator = AccountId::parse("bench-operator").unwrap();
    let staff = Staff {
        actor: &operator,
        request_id: "bench-seed",
    };
    redis
        .set_stock(&sku, &location, counts, None, &staff, "seed")
        .await
        .unwrap();
    let p = redis.keys().partition_of(&sku);
    let qty = Qty::parse(1, 10).unwrap();
    let before = command_stats(&redis).await;
    let (mut n, mut held) = (0u64, 0usize);
    for _ in 0..rounds {
        let requests: Vec<ReserveRequest> = (0..batch_size)
            .map(|_| {
                n += 1;
                ReserveRequest {
                    id: ReservationId::generate(&sku, p),
                    account: AccountId::parse(&format!("acct{}", (n * 7919) % 10_000)).unwrap(),
                    qty,
                    location: None,
                    idempotency_key: None,
                    cart: None,
                    admission: None,
                    claimed: false,
                }
            })
            .collect();
        let batch: Vec<&ReserveRequest> = requests.iter().collect();
        let (keys, args) = ReserveBatch::call(redis.core(), p, &batch);
        let replies = redis
            .core()
            .eval_partition::<ReserveReply>(ScriptName::Reserve, p, keys, args)
            .await
            .unwrap();
        held += replies
            .iter()
            .filter(|r| matches!(r.reply, ReserveReply::Held(_)))
            .count();
    }
    let after = command_stats(&redis).await;
    let reservations = (batch_size * rounds) as f64;
    println!("batches of {batch_size}, {rounds} rounds: {held} held of {reservations}");
    for (name, calls, usec) in &after {
        let (c0, u0) = before
            .iter()
            .find(|(b, _, _)| b == name)
            .map_or((0.0, 0.0), |(_, c, u)| (*c, *u));
        if calls - c0 >= rounds as f64 {
            println!(
                "{name:<14} {:>9.0} calls  {:>6.2} µs per reservation",
                calls - c0,
                (usec - u0) / reservations
            );
        }
    }
    let prefix = s.redis.key_prefix.clone();
    let url = s.redis.url.expose().to_owned();
    redis.quit().await;
    let _ = std::process::Command::new("sh")
        .args(["-c", &format!(
            "redis-cli -u {url} --scan --pattern '{prefix}:*' | xargs -r -n 100 redis-cli -u {url} del >/dev/null"
        )])
        .status();
}
