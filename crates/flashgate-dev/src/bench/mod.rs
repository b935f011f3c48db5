//! `flashgate-dev bench`: reproducible numbers on this machine.
//!
//! It starts its own standalone Redis, PostgreSQL and gateway process (see
//! `devstack`), runs the chosen scenarios through the open-model load
//! generator, and prints one JSON report per run on stdout (a summary goes
//! to stderr). `compare` also measures, in the same run, the ceilings
//! flashgate is judged against (see `compare`), and prints every ratio.

pub mod buckets;
pub mod compare;
pub mod fanout;

use std::{io::Write, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use hyper::Method;
use serde_json::json;

use flashgate::{
    auth::{Auth, Role},
    inventory::AccountId,
};

use crate::{
    devstack::{self, DevStack},
    loadgen::{self, Conn, Outcome, Pace, Plan, Report, Workload, gateway::GatewayProcess},
};

/// The SKU every reservation of the hot scenarios contends for.
pub const HOT_SKU: &str = "BENCH-HOT";
/// A SKU with nothing left.
const SOLD_OUT_SKU: &str = "BENCH-GONE";
/// Units of each SKU that must not run out during a run.
const PLENTY: i64 = 1_000_000_000;
/// SKUs of the `many` scenario.
const MANY_SKUS: usize = 1000;
/// Accounts the load is spread over (no cap is set, so they only vary the
/// requests).
const ACCOUNTS: usize = 1000;
/// Each step of `knee` raises the rate by this factor.
const KNEE_STEP: f64 = 1.25;
/// Steps `knee` takes at most.
const KNEE_STEPS_MAX: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Reservations of one hot SKU.
    Hot,
    /// A reservation, then its confirmation (one operation, two requests).
    Confirm,
    /// Reservations of a sold-out SKU: every answer is a 409.
    SoldOut,
    /// Reservations spread over 1,000 SKUs in every partition.
    Many,
    /// One account far over its rate limit: nearly every answer is a 429.
    RateLimited,
    /// A gateway whose Redis is stalled and whose in-flight cap is 1: nearly
    /// every answer is a 503 `overloaded` (the one request in flight waits
    /// for the Redis command timeout).
    Overloaded,
    /// Reads of the hot SKU's inventory view (`GET /v1/inventory/{sku}`),
    /// answered from the gateway's cached view.
    CachedRead,
    /// Hot reservations at 500/s, alone and while 1,000 clients follow the
    /// hot SKU's SSE stream: the gateway's CPU per delivered event.
    SseFanout,
    /// Hot reservations at rising rates until p99 passes --p99-bound-ms or
    /// the gateway falls behind.
    Knee,
    /// Ceilings and ratios: see BENCHMARKS.md.
    Compare,
    /// One SKU in 6 stock buckets against one plain SKU, each at its
    /// maximum, on a 3-master cluster of its own, with every master's
    /// script calls.
    Buckets,
    /// hot, confirm, sold-out, many, rate-limited, overloaded and
    /// cached-read at --rate, then sse-fanout.
    All,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// What to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Offered operations per second (open model).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Length of each run.
    #[arg(long, default_value_t = 10)]
    pub duration_seconds: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// The p99 latency `knee` stops at.
    #[arg(long, default_value_t = 5.0)]
    pub p99_bound_ms: f64,
}

/// The servers and gateway a bench runs against.
pub struct Target {
    pub stack: DevStack,
    pub gateway: GatewayProcess,
    pub redis_port: u16,
    pub postgres_port: u16,
    auth: Auth,
}

impl Target {
    /// A standalone Redis, PostgreSQL and a gateway, seeded with the
    /// bench's SKUs.
    pub async fn start() -> anyhow::Result<Self> {
        let mut stack = DevStack::create("bench")?;
        let redis_port = stack.redis()?;
        let postgres_port = stack.postgres(devstack::Durability::Durable)?;
        let gateway = GatewayProcess::start(
            &mut stack,
            &[
                ("redis__url", format!("redis://127.0.0.1:{redis_port}")),
                (
                    "postgres__url",
                    format!("postgres://postgres@127.0.0.1:{postgres_port}/flashgate"),
                ),
                // Every request comes from the load generator's address.
                ("limits__ip__mode", "off".into()),
                // The crowd's accounts stay within their budget at any
                // offered rate up to ACCOUNTS x 100/s; `rate-limited`'s one
                // account gets a burst of 20, then 100/s.
                ("limits__account__per_second", "100".into()),
                ("limits__account__burst", "20".into()),
            ],
        )
        .await?;
        let auth = Auth::new(&gateway.secret);
        let target = Self {
            stack,
            gateway,
            redis_port,
            postgres_port,
            auth,
        };
        target.seed().await?;
        Ok(target)
    }

    async fn seed(&self) -> anyhow::Result<()> {
        let admin = self
            .auth
            .issue(&AccountId::parse("bench-admin")?, Role::Admin, 86_400);
        let mut conn = Conn::new(self.gateway.addr);
        let mut skus = vec![(HOT_SKU.to_owned(), PLENTY), (SOLD_OUT_SKU.to_owned(), 0)];
        skus.extend((0..MANY_SKUS).map(|n| (many_sku(n), PLENTY)));
        for (sku, on_hand) in skus {
            let path = format!("/v1/admin/inventory/{sku}/locations/default");
            conn.expect_ok(Method::PUT, &path, &admin, json!({ "on_hand": on_hand }))
                .await?;
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    fn tokens(&self) -> anyhow::Result<Arc<Vec<String>>> {
        shopper_tokens(&self.auth)
    }

    /// Runs `scenario` once as `plan` says, with the gateway's CPU time per
    /// operation.
    pub async fn measure(&self, scenario: Scenario, plan: Plan) -> anyhow::Result<Report> {
        let name = scenario_name(scenario);
        let name = name.as_str();
        let tokens = self.tokens()?;
        let before = self.gateway.cpu_time();
        let mut report = match scenario {
            Scenario::Confirm => {
                let workload = Arc::new(ReserveThenConfirm { tokens });
                loadgen::run(name, self.addr(), plan, workload, None).await?
            }
            Scenario::Overloaded => return self.measure_overloaded(plan).await,
            Scenario::SseFanout => anyhow::bail!("sse-fanout is measured by bench::fanout"),
            Scenario::CachedRead => {
                let workload = Arc::new(ReadView {
                    path: format!("/v1/inventory/{HOT_SKU}"),
                });
                loadgen::run(name, self.addr(), plan, workload, None).await?
            }
            Scenario::RateLimited => {
                let workload = Arc::new(Reserve {
                    tokens: Arc::new(tokens[..1].to_vec()),
                    skus: vec![HOT_SKU.to_owned()],
                });
                loadgen::run(name, self.addr(), plan, workload, None).await?
            }
            _ => {
                let workload = Arc::new(Reserve {
                    tokens,
                    skus: match scenario {
                        Scenario::SoldOut => vec![SOLD_OUT_SKU.to_owned()],
                        Scenario::Many => (0..MANY_SKUS).map(many_sku).collect(),
                        _ => vec![HOT_SKU.to_owned()],
                    },
                });
                loadgen::run(name, self.addr(), plan, workload, None).await?
            }
        };
        report.gateway_cpu_us_per_op = cpu_per_op(before, self.gateway.cpu_time(), report.sent);
        Ok(report)
    }
}

impl Target {
    /// `overloaded`: a second gateway, with an in-flight cap of one, in
    /// front of a second Redis that is paused for the whole run.
    async fn measure_overloaded(&self, plan: Plan) -> anyhow::Result<Report> {
        let mut stack = DevStack::create("bench-shed")?;
        let redis_port = stack.redis()?;
        let database = "flashgate_shed";
        devstack::psql(
            self.postgres_port,
            "postgres",
            &format!("CREATE DATABASE {database}"),
        )
        .with_context(|| format!("creating database {database}"))?;
        let gateway = GatewayProcess::start(
            &mut stack,
            &[
                ("redis__url", format!("redis://127.0.0.1:{redis_port}")),
                (
                    "postgres__url",
                    format!(
                        "postgres://postgres@127.0.0.1:{}/{database}",
                        self.postgres_port
                    ),
                ),
                ("limits__ip__mode", "off".into()),
                ("limits__in_flight__max", "1".into()),
            ],
        )
        .await?;
        let pause_ms = (plan.duration + Duration::from_secs(5))
            .as_millis()
            .to_string();
        devstack::redis_cli(redis_port, &["CLIENT", "PAUSE", &pause_ms, "ALL"]);
        let workload = Arc::new(Reserve {
            tokens: shopper_tokens(&Auth::new(&gateway.secret))?,
            skus: vec![HOT_SKU.to_owned()],
        });
        let name = scenario_name(Scenario::Overloaded);
        let before = gateway.cpu_time();
        let report = loadgen::run(&name, gateway.addr, plan, workload, None).await;
        devstack::redis_cli(redis_port, &["CLIENT", "UNPAUSE"]);
        let mut report = report?;
        report.gateway_cpu_us_per_op = cpu_per_op(before, gateway.cpu_time(), report.sent);
        Ok(report)
    }
}

/// A token for each of the bench's accounts.
fn shopper_tokens(auth: &Auth) -> anyhow::Result<Arc<Vec<String>>> {
    let tokens = (0..ACCOUNTS)
        .map(|n| {
            AccountId::parse(&format!("bench-{n:04}"))
                .map(|a| auth.issue(&a, Role::Shopper, 86_400))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(tokens))
}

/// CPU time between two readings, per operation, in microseconds.
fn cpu_per_op(before: Option<Duration>, after: Option<Duration>, ops: u64) -> Option<f64> {
    let spent = after? - before?;
    Some(spent.as_secs_f64() * 1e6 / ops.max(1) as f64)
}

fn many_sku(n: usize) -> String {
    format!("BENCH-M-{n:04}")
}

/// The scenario's name as `--scenario` spells it.
fn scenario_name(scenario: Scenario) -> String {
    use clap::ValueEnum;
    scenario
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}

/// The reservation body and token of operation `i`.
fn reservation<'t>(tokens: &'t [String], skus: &[String], i: u64) -> (String, &'t str) {
    let sku = &skus[(i as usize) % skus.len()];
    let token = tokens[(i as usize) % tokens.len()].as_str();
    (format!(r#"{{"sku":"{sku}","qty":1}}"#), token)
}

struct Reserve {
    tokens: Arc<Vec<String>>,
    skus: Vec<String>,
}

impl Workload for Reserve {
    async fn run(&self, conn: &mut Conn, i: u64) -> Outcome {
        let (body, token) = reservation(&self.tokens, &self.skus, i);
        Outcome::of_result(
            &conn
                .send(Method::POST, "/v1/reservations", Some(token), Some(body))
                .await,
        )
    }
}

/// A shopper's page polling one SKU's stock (no token needed).
struct ReadView {
    path: String,
}

impl Workload for ReadView {
    async fn run(&self, conn: &mut Conn, _i: u64) -> Outcome {
        Outcome::of_result(&conn.send(Method::GET, &self.path, None, None).await)
    }
}

struct ReserveThenConfirm {
    tokens: Arc<Vec<String>>,
}

impl Workload for ReserveThenConfirm {
    async fn run(&self, conn: &mut Conn, i: u64) -> Outcome {
        let skus = [HOT_SKU.to_owned()];
        let (body, token) = reservation(&self.tokens, &skus, i);
        let Ok(held) = conn
            .send(Method::POST, "/v1/reservations", Some(token), Some(body))
            .await
        else {
            return Outcome::Failed;
        };
        let Some(id) = held
            .json()
            .and_then(|v| v["reservation_id"].as_str().map(str::to_owned))
        else {
            return Outcome::of(&held);
        };
        let path = format!("/v1/reservations/{id}/confirm");
        Outcome::of_result(&conn.send(Method::POST, &path, Some(token), None).await)
    }
}

/// Prints one report as a JSON line on stdout, and a summary on stderr.
pub fn emit(report: &Report) -> anyhow::Result<()> {
    let line = serde_json::to_string(report).context("encoding a report")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing a report")?;
    out.flush().context("writing a report")?;
    let l = report.latency_ms;
    eprintln!(
        "{:<22} {:>9} /s offered {:>9.0} /s achieved  ok {:<8} rejected {:<8} p50 {:.2} p99 {:.2} p999 {:.2} max {:.2} ms{}",
        report.scenario,
        report
            .offered_per_s
            .map_or("max".to_owned(), |r| format!("{r:.0}")),
        report.achieved_per_s,
        report.ok,
        report.rejected_total(),
        l.p50,
        l.p99,
        l.p999,
        l.max,
        report
            .gateway_cpu_us_per_op
            .map_or(String::new(), |c| format!("  gateway cpu {c:.1} µs/op")),
    );
    if report.latency_by_outcome_ms.len() > 1 {
        for (outcome, l) in &report.latency_by_outcome_ms {
            eprintln!(
                "{:<22}   {outcome:<20} p50 {:.3} p99 {:.3} max {:.3} ms",
                "", l.p50, l.p99, l.max
            );
        }
    }
    Ok(())
}

pub async fn run(options: BenchOptions) -> anyhow::Result<std::process::ExitCode> {
    if options.rate <= 0.0 || options.duration_seconds == 0 || options.connections == 0 {
        anyhow::bail!("--rate, --duration-seconds and --connections must be above 0");
    }
    if options.scenario == Scenario::Buckets {
        buckets::run(&options).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    eprintln!("Starting Redis, PostgreSQL and a gateway on local throwaway servers…");
    let target = Target::start().await?;
    let plan = Plan {
        pace: Pace::Rate(options.rate),
        duration: Duration::from_secs(options.duration_seconds),
        connections: options.connections,
    };
    match options.scenario {
        Scenario::All => {
            for scenario in [
                Scenario::Hot,
                Scenario::Confirm,
                Scenario::SoldOut,
                Scenario::Many,
                Scenario::RateLimited,
                Scenario::Overloaded,
                Scenario::CachedRead,
            ] {
                emit(&target.measure(scenario, plan).await?)?;
            }
            fanout::emit(&fanout::measure(&target, plan.duration).await?)?;
        }
        Scenario::SseFanout => fanout::emit(&fanout::measure(&target, plan.duration).await?)?,
        Scenario::Knee => {
            knee(&target, &options).await?;
        }
        Scenario::Compare => compare::run(&target, &options).await?,
        Scenario::Buckets => unreachable!("measured on a cluster of its own, above"),
        scenario => emit(&target.measure(scenario, plan).await?)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Raises the hot rate step by step from --rate until p99 passes the bound
/// or the gateway achieves less than 95 % of the offered rate; returns the
/// last rate that held both.
pub async fn knee(target: &Target, options: &BenchOptions) -> anyhow::Result<Option<f64>> {
    let mut rate = options.rate;
    let mut knee = None;
    for _ in 0..KNEE_STEPS_MAX {
        let plan = Plan {
            pace: Pace::Rate(rate),
            duration: Duration::from_secs(options.duration_seconds),
            connections: options.connections,
        };
        let mut report = target.measure(Scenario::Hot, plan).await?;
        report.scenario = format!("knee@{rate:.0}");
        emit(&report)?;
        let holds = report.latency_ms.p99 <= options.p99_bound_ms
            && report.achieved_per_s >= 0.95 * rate
            && report.failed == 0;
        if !holds {
            break;
        }
        knee = Some(rate);
        rate *= KNEE_STEP;
    }
    match knee {
        Some(rate) => eprintln!(
            "knee: {rate:.0} reservations/s is the highest rate with p99 ≤ {} ms",
            options.p99_bound_ms
        ),
        None => eprintln!(
            "knee: even {:.0}/s passed p99 {} ms; start lower with --rate",
            options.rate, options.p99_bound_ms
        ),
    }
    Ok(knee)
}
