//! `flashgate-dev bench --scenario compare`: the ceilings flashgate is judged
//! against, measured in one run on this machine, and the ratios.
//!
//! - The raw Redis ceiling of the very reserve script call the gateway
//!   makes (`redis-benchmark` EVALSHA, one at a time and pipelined by 16).
//! - The HTTP ceiling: a hello-world axum route in its own process
//!   (`flashgate-dev hello-server`, a hidden command), driven like the gateway.
//! - What most teams start with: a conditional `UPDATE … WHERE on_hand -
//!   reserved >= qty` of one hot row plus an insert per reservation, in
//!   PostgreSQL (`pgbench` with a custom script), on the bench's PostgreSQL
//!   with its default durability, as in production.
//! - flashgate itself: the hot and sold-out maximums (closed model) and the
//!   hot p99 at half the maximum (open model), with the gateway's CPU time
//!   per reservation.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, ExitCode},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use axum::{Router, routing::get};
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;

use super::{BenchOptions, HOT_SKU, Scenario, Target, emit};
use flashgate::{
    config::Settings,
    inventory::{AccountId, Qty, ReservationId, Sku},
    redis::{Caller, Redis, ScriptName, Scripts, calls::ReserveRequest},
};

use crate::{
    devstack::{self, psql},
    loadgen::{self, Conn, Latency, Outcome, Pace, Plan, Workload},
};

/// Clients redis-benchmark opens (as many as the gateway's crowd would).
const REDIS_BENCH_CLIENTS: &str = "50";
/// redis-benchmark's `-r`: `__rand_int__` becomes a random number below it.
/// It must fit a C `int` (redis-benchmark parses it with `atoi`): past it,
/// every "random" id is 0 and each call after the first is a re-send of one
/// reservation, answered from its record without holding anything.
const RANDOM_IDS: &str = "2000000000";
/// Reservations pgbench's clients make concurrently.
const PGBENCH_CLIENTS: &str = "32";

/// The ratios BENCHMARKS.md tracks, with the figures behind them.
#[derive(Debug, Serialize)]
struct Comparison {
    scenario: &'static str,
    raw_script_per_s: f64,
    raw_script_pipelined_per_s: f64,
    /// Units held per raw script call (1 when every call held, as the
    /// gateway's reservations do; less would mean the ceiling measured a
    /// refusal).
    raw_script_holds_per_call: f64,
    hello_world_per_s: f64,
    postgres_hot_row_per_s: f64,
    postgres_hot_row_latency_ms: Latency,
    flashgate_hot_max_per_s: f64,
    flashgate_hot_max_p99_ms: f64,
    flashgate_hot_half_max_p99_ms: f64,
    flashgate_sold_out_max_per_s: f64,
    /// `GET /v1/inventory/{sku}` of one SKU, flat out (the cached view).
    flashgate_cached_read_max_per_s: f64,
    gateway_cpu_us_per_cached_read: Option<f64>,
    sse_streams: usize,
    sse_events_per_s: f64,
    gateway_cpu_us_per_sse_event: Option<f64>,
    gateway_cpu_us_per_reservation: Option<f64>,
    /// What Redis spent during the hot maximum and the hot half-maximum runs.
    redis_at_hot_max: RedisUse,
    redis_at_hot_half_max: RedisUse,
    /// Goal ≥ 0.5.
    hot_vs_pipelined_script: f64,
    /// Goal ≥ 20.
    hot_vs_postgres_throughput: f64,
    /// Goal ≤ 1/20: flashgate's p99 at its maximum over Postgres's at its own.
    hot_p99_vs_postgres_p99: f64,
    /// Goal ≥ 0.8.
    sold_out_vs_hello_world: f64,
    /// What a poll storm costs against the HTTP ceiling.
    cached_read_vs_hello_world: f64,
    /// Latency of the 429s of one account far over its limit, at --rate.
    rate_limited_latency_ms: Option<Latency>,
    /// Latency of the 503 `overloaded` answers, at --rate. Goal: p99 < 1 ms.
    overloaded_latency_ms: Option<Latency>,
}

/// redis-server's work over one run, from `INFO` before and after.
#[derive(Debug, Clone, Copy, Serialize)]
struct RedisUse {
    /// redis-server CPU time (user + system) per request sent.
    cpu_us_per_reservation: f64,
    /// Mean time of one EVALSHA (batch script call) inside Redis.
    script_us_per_call: f64,
    /// Requests sent per EVALSHA: the mean batch size.
    mean_batch: f64,
}

/// The counters `RedisUse` is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCounters {
    cpu_s: f64,
    evalsha_calls: f64,
    evalsha_us: f64,
}

impl RedisCounters {
    fn read(port: u16) -> Self {
        let info = devstack::redis_cli(port, &["INFO", "ALL"]);
        let field = |line: &str, name: &str| {
            line.split([':', ',']).find_map(|kv| {
                kv.strip_prefix(name)?
                    .strip_prefix('=')?
                    .parse::<f64>()
                    .ok()
            })
        };
        let mut c = Self::default();
        for line in info.lines() {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or(line.strip_prefix("used_cpu_user:"))
            {
                c.cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
            }
            if line.starts_with("cmdstat_evalsha:") {
                c.evalsha_calls = field(line, "calls").unwrap_or(0.0);
                c.evalsha_us = field(line, "usec").unwrap_or(0.0);
            }
        }
        c
    }

    fn used_since(self, before: Self, requests: u64) -> RedisUse {
        let calls = (self.evalsha_calls - before.evalsha_calls).max(1.0);
        RedisUse {
            cpu_us_per_reservation: (self.cpu_s - before.cpu_s) * 1e6 / requests.max(1) as f64,
            script_us_per_call: (self.evalsha_us - before.evalsha_us) / calls,
            mean_batch: requests as f64 / calls,
        }
    }
}

pub async fn run(target: &Target, options: &BenchOptions) -> anyhow::Result<()> {
    let duration = Duration::from_secs(options.duration_seconds);
    let flat_out = Plan {
        pace: Pace::BackToBack,
        duration,
        connections: options.connections,
    };
    let (raw_script_per_s, holds_alone) = redis_benchmark(target, 1).await?;
    eprintln!("raw reserve script, one at a time     {raw_script_per_s:>9.0} /s");
    let (raw_script_pipelined_per_s, holds_pipelined) = redis_benchmark(target, 16).await?;
    eprintln!("raw reserve script, pipelined by 16   {raw_script_pipelined_per_s:>9.0} /s");
    let raw_script_holds_per_call = holds_alone.min(holds_pipelined);
    eprintln!("raw reserve script, units held per call {raw_script_holds_per_call:>7.3}");

    let hello = hello_world(flat_out).await?;
    emit(&hello)?;
    let (postgres_hot_row_per_s, postgres_hot_row_latency_ms) = pgbench(target, duration)?;
    eprintln!(
        "postgres hot row (pgbench)            {postgres_hot_row_per_s:>9.0} /s  p99 {:.2} ms",
        postgres_hot_row_latency_ms.p99
    );

    let before = RedisCounters::read(target.redis_port);
    let hot_max = target.measure(Scenario::Hot, flat_out).await?;
    let redis_at_hot_max = RedisCounters::read(target.redis_port).used_since(before, hot_max.sent);
    emit(&hot_max)?;
    let sold_out_max = target.measure(Scenario::SoldOut, flat_out).await?;
    emit(&sold_out_max)?;
    let cached_read_max = target.measure(Scenario::CachedRead, flat_out).await?;
    emit(&cached_read_max)?;
    let fan_out = super::fanout::measure(target, duration).await?;
    super::fanout::emit(&fan_out)?;
    let half = Plan {
        pace: Pace::Rate((hot_max.achieved_per_s / 2.0).max(1.0)),
        duration,
        connections: options.connections,
    };
    let before = RedisCounters::read(target.redis_port);
    let mut hot_half = target.measure(Scenario::Hot, half).await?;
    let redis_at_hot_half_max =
        RedisCounters::read(target.redis_port).used_since(before, hot_half.sent);
    hot_half.scenario = "hot-at-half-max".into();
    emit(&hot_half)?;

    let at_rate = Plan {
        pace: Pace::Rate(options.rate),
        duration,
        connections: options.connections,
    };
    let rate_limited = target.measure(Scenario::RateLimited, at_rate).await?;
    emit(&rate_limited)?;
    let overloaded = target.measure(Scenario::Overloaded, at_rate).await?;
    emit(&overloaded)?;

    let comparison = Comparison {
        scenario: "comparison",
        raw_script_per_s,
        raw_script_pipelined_per_s,
        raw_script_holds_per_call,
        hello_world_per_s: hello.achieved_per_s,
        postgres_hot_row_per_s,
        postgres_hot_row_latency_ms,
        flashgate_hot_max_per_s: hot_max.achieved_per_s,
        flashgate_hot_max_p99_ms: hot_max.latency_ms.p99,
        flashgate_hot_half_max_p99_ms: hot_half.latency_ms.p99,
        flashgate_sold_out_max_per_s: sold_out_max.achieved_per_s,
        flashgate_cached_read_max_per_s: cached_read_max.achieved_per_s,
        gateway_cpu_us_per_cached_read: cached_read_max.gateway_cpu_us_per_op,
        sse_streams: fan_out.streams,
        sse_events_per_s: fan_out.events_per_s,
        gateway_cpu_us_per_sse_event: fan_out.gateway_cpu_us_per_event,
        gateway_cpu_us_per_reservation: hot_half.gateway_cpu_us_per_op,
        redis_at_hot_max,
        redis_at_hot_half_max,
        hot_vs_pipelined_script: hot_max.achieved_per_s / raw_script_pipelined_per_s,
        hot_vs_postgres_throughput: hot_max.achieved_per_s / postgres_hot_row_per_s,
        hot_p99_vs_postgres_p99: hot_max.latency_ms.p99 / postgres_hot_row_latency_ms.p99,
        sold_out_vs_hello_world: sold_out_max.achieved_per_s / hello.achieved_per_s,
        cached_read_vs_hello_world: cached_read_max.achieved_per_s / hello.achieved_per_s,
        rate_limited_latency_ms: rate_limited
            .latency_by_outcome_ms
            .get("rate-limited")
            .copied(),
        overloaded_latency_ms: overloaded.latency_by_outcome_ms.get("overloaded").copied(),
    };
    println!(
        "{}",
        serde_json::to_string(&comparison).context("encoding the comparison")?
    );
    print_goals(&comparison);
    Ok(())
}

fn print_goals(c: &Comparison) {
    let verdict = |met: bool| if met { "met" } else { "not met" };
    eprintln!("\ngoal                                              measured    goal");
    eprintln!(
        "hot reservations / pipelined raw script           {:>8.2}×   ≥ 0.5×   {}",
        c.hot_vs_pipelined_script,
        verdict(c.hot_vs_pipelined_script >= 0.5)
    );
    eprintln!(
        "hot reservations / postgres hot row               {:>8.1}×   ≥ 20×    {}",
        c.hot_vs_postgres_throughput,
        verdict(c.hot_vs_postgres_throughput >= 20.0)
    );
    eprintln!(
        "hot p99 / postgres hot row p99                    {:>8.3}    ≤ 0.05   {}",
        c.hot_p99_vs_postgres_p99,
        verdict(c.hot_p99_vs_postgres_p99 <= 0.05)
    );
    eprintln!(
        "hot p99 at half the maximum rate                  {:>6.2} ms   ≤ 5 ms   {}",
        c.flashgate_hot_half_max_p99_ms,
        verdict(c.flashgate_hot_half_max_p99_ms <= 5.0)
    );
    eprintln!(
        "sold-out 409s / hello-world HTTP                  {:>8.2}×   ≥ 0.8×   {}",
        c.sold_out_vs_hello_world,
        verdict(c.sold_out_vs_hello_world >= 0.8)
    );
    eprintln!(
        "cached reads / hello-world HTTP                   {:>8.2}×   (no goal yet)",
        c.cached_read_vs_hello_world
    );
    if let Some(cpu) = c.gateway_cpu_us_per_sse_event {
        eprintln!(
            "gateway CPU per SSE event ({} streams, {:.0}/s)  {cpu:>6.1} µs   (no goal yet)",
            c.sse_streams, c.sse_events_per_s
        );
    }
    if let Some(l) = c.rate_limited_latency_ms {
        eprintln!(
            "429 rate-limited latency                 p50 {:>5.3} p99 {:>5.3} ms",
            l.p50, l.p99
        );
    }
    if let Some(l) = c.overloaded_latency_ms {
        eprintln!(
            "503 overloaded p99                                {:>6.3} ms   < 1 ms   {}",
            l.p99,
            verdict(l.p99 < 1.0)
        );
    }
    for (run, r) in [
        ("hot max", c.redis_at_hot_max),
        ("hot half max", c.redis_at_hot_half_max),
    ] {
        eprintln!(
            "redis at {run:<13} {:>6.1} µs CPU per reservation, {:>7.1} µs per script call, \
             mean batch {:.1}",
            r.cpu_us_per_reservation, r.script_us_per_call, r.mean_batch
        );
    }
    if let Some(cpu) = c.gateway_cpu_us_per_reservation {
        eprintln!(
            "gateway CPU per reservation                       {cpu:>6.1} µs   ≤ 20 µs  {}",
            verdict(cpu <= 20.0)
        );
    }
}

/// The reserve script's throughput straight on Redis, with the arguments
/// the gateway passes for a hot-SKU reservation; each call gets a new
/// reservation id (redis-benchmark's `__rand_int__`), so each one holds.
/// Also returns the units held per call, read from the SKU's `reserved`
/// count before and after, which says whether it really did.
async fn redis_benchmark(target: &Target, pipeline: u32) -> anyhow::Result<(f64, f64)> {
    devstack::require("redis-benchmark", "redis-tools")?;
    let mut settings = Settings::default();
    settings.redis.url = format!("redis://127.0.0.1:{}", target.redis_port).into();
    let redis = Redis::connect(&settings)
        .await
        .context("connecting to the bench's redis")?;
    let sku = Sku::parse(HOT_SKU)?;
    let id = ReservationId::generate(&sku, redis.keys().partition_of(&sku));
    let account = AccountId::parse("bench-raw")?;
    let request = ReserveRequest {
        id: id.clone(),
        account,
        qty: Qty::parse(1, settings.reservation.max_qty_per_request)?,
        location: None,
        idempotency_key: None,
        cart: None,
        admission: None,
        claimed: false,
    };
    let (keys, args) = redis.reserve_call(&request);
    let reserved = || async {
        let view = redis
            .inventory(&sku, Caller::Request)
            .await
            .context("reading the hot SKU's reserved count")?;
        anyhow::Ok(view.map_or(0, |v| v.reserved))
    };
    let reserved_before = reserved().await?;
    // The id's random part; every occurrence becomes a fresh random number.
    let unique = id
        .as_str()
        .split('.')
        .nth(1)
        .context("a reservation id has a random part")?
        .to_owned();
    let sha = Scripts::default()
        .get(ScriptName::Reserve)
        .sha1()
        .to_string();
    let requests = if pipeline > 1 { "400000" } else { "100000" };
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &target.redis_port.to_string(),
            "-c",
            REDIS_BENCH_CLIENTS,
        ])
        .args(["-n", requests, "-P", &pipeline.to_string()])
        .args(["-r", RANDOM_IDS, "--csv", "EVALSHA", &sha])
        .arg(keys.len().to_string())
        .args(
            keys.iter()
                .chain(&args)
                .map(|a| a.replace(&unique, "__rand_int__")),
        )
        .output()
        .context("running redis-benchmark")?;
    let held = (reserved().await? - reserved_before) as f64;
    redis.quit().await;
    let csv = String::from_utf8_lossy(&out.stdout);
    let rate = csv
        .lines()
        .filter_map(|line| line.split("\",\"").nth(1))
        .find_map(|rps| rps.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no rate in redis-benchmark's output: {csv}"))?;
    Ok((rate, held / requests.parse::<f64>()?))
}

struct Hello;

impl Workload for Hello {
    async fn run(&self, conn: &mut Conn, _i: u64) -> Outcome {
        Outcome::of_result(&conn.send(Method::GET, "/hello", None, None).await)
    }
}

/// The HTTP ceiling: `flashgate-dev hello-server` (same runtime, same axum, no
/// work) at full speed.
async fn hello_world(plan: Plan) -> anyhow::Result<loadgen::Report> {
    let mut stack = devstack::DevStack::create("bench-hello")?;
    let port = stack.free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let exe = std::env::current_exe().context("locating the flashgate binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["hello-server", "--listen", &addr.to_string()]);
    stack.spawn("hello-server", cmd)?;
    let mut conn = Conn::new(addr);
    let mut tries = 0;
    while conn.send(Method::GET, "/hello", None, None).await.is_err() {
        tries += 1;
        if tries > 100 {
            bail!("hello-server did not answer");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loadgen::run("hello-world", addr, plan, Arc::new(Hello), None).await
}

/// Serves `GET /hello` until stopped: the HTTP ceiling for `compare`.
pub async fn serve_hello(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let app = Router::new().route("/hello", get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(flashgate::app::shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// The hot-row approach in PostgreSQL: throughput and latency (from
/// pgbench's per-transaction log).
fn pgbench(target: &Target, duration: Duration) -> anyhow::Result<(f64, Latency)> {
    let pgbench = devstack::postgres_bin()?.join("pgbench");
    if !pgbench.exists() {
        bail!("pgbench is not installed: run `sudo apt-get install postgresql-contrib`");
    }
    let port = target.postgres_port;
    let setup = "DROP TABLE IF EXISTS bench_stock, bench_holds; \
         CREATE TABLE bench_stock (sku text PRIMARY KEY, on_hand bigint NOT NULL, reserved bigint NOT NULL); \
         CREATE TABLE bench_holds (id bigserial PRIMARY KEY, sku text NOT NULL, account_id text NOT NULL, \
           qty int NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO bench_stock VALUES ('BENCH-HOT', 1000000000, 0);";
    psql(port, "flashgate", setup).context("creating the hot-row tables")?;
    let dir = target.stack.dir().join("pgbench");
    std::fs::create_dir_all(&dir).context("creating the pgbench directory")?;
    let script = dir.join("hot-row.sql");
    std::fs::write(
        &script,
        "\\set account random(1, 1000)\n\
         WITH taken AS (UPDATE bench_stock SET reserved = reserved + 1 \
         WHERE sku = 'BENCH-HOT' AND on_hand - reserved >= 1 RETURNING sku) \
         INSERT INTO bench_holds (sku, account_id, qty) SELECT sku, 'bench-' || :account, 1 FROM taken;\n",
    )
    .context("writing the pgbench script")?;
    let out = Command::new(pgbench)
        .current_dir(&dir)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-n", "-M", "prepared", "-c", PGBENCH_CLIENTS, "-j", "2"])
        .args([
            "-T",
            &duration.as_secs().to_string(),
            "-l",
            "--log-prefix=hot",
        ])
        .arg("-f")
        .arg(&script)
        .arg("flashgate")
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))?;
    Ok((tps, pgbench_latency(&dir)?))
}

/// Latency percentiles from pgbench's logs (`hot.<pid>[.<thread>]`), whose
/// third field is each transaction's latency in microseconds.
fn pgbench_latency(dir: &Path) -> anyhow::Result<Latency> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for entry in std::fs::read_dir(dir).context("reading pgbench's logs")? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("hot."))
        {
            continue;
        }
        let log = std::fs::read_to_string(&path).context("reading a pgbench log")?;
        for us in log
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        {
            h.saturating_record(us);
        }
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50: ms(0.5),
        p90: ms(0.9),
        p95: ms(0.95),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    })
}
