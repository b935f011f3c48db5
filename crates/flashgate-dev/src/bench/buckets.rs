//! `flashgate-dev bench --scenario buckets`: one bucketed SKU against one
//! plain SKU, each at its maximum (closed model), on a 3-master Redis
//! Cluster of its own, with every master's script calls counted
//! (`INFO commandstats`) to show where each SKU's load lands.

use std::{sync::Arc, time::Duration};

use hyper::Method;
use serde_json::json;

use flashgate::{
    auth::{Auth, Role},
    inventory::AccountId,
};

use super::{BenchOptions, Reserve, cpu_per_op, emit, shopper_tokens};
use crate::{
    devstack::{self, DevStack, redis_cli},
    loadgen::{self, Conn, Pace, Plan, gateway::GatewayProcess},
};

const PLAIN_SKU: &str = "BENCH-PLAIN";
const BUCKETED_SKU: &str = "BENCH-BUCKETED";
/// Buckets of the bucketed SKU: two per master.
const BUCKETS: u32 = 6;
/// Units that do not run out during a run.
const PLENTY: i64 = 1_000_000_000;

/// Script calls (`EVALSHA`) each master served since its stats were reset.
fn script_calls(port: u16) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub async fn run(options: &BenchOptions) -> anyhow::Result<()> {
    let mut stack = DevStack::create("bench-buckets")?;
    eprintln!("Starting a 3-master Redis Cluster, PostgreSQL and a gateway…");
    let masters = stack.redis_cluster(3)?;
    let postgres_port = stack.postgres(devstack::Durability::Durable)?;
    let gateway = GatewayProcess::start(
        &mut stack,
        &[
            ("redis__url", devstack::cluster_url(&masters)),
            (
                "postgres__url",
                format!("postgres://postgres@127.0.0.1:{postgres_port}/flashgate"),
            ),
            ("limits__ip__mode", "off".into()),
            ("limits__account__per_second", "100000".into()),
            ("limits__account__burst", "100000".into()),
        ],
    )
    .await?;
    let auth = Auth::new(&gateway.secret);
    let admin = auth.issue(&AccountId::parse("bench-admin")?, Role::Admin, 86_400);
    let mut conn = Conn::new(gateway.addr);
    conn.expect_ok(
        Method::PUT,
        &format!("/v1/admin/inventory/{BUCKETED_SKU}"),
        &admin,
        json!({ "buckets": BUCKETS }),
    )
    .await?;
    for sku in [PLAIN_SKU, BUCKETED_SKU] {
        let path = format!("/v1/admin/inventory/{sku}/locations/default");
        conn.expect_ok(Method::PUT, &path, &admin, json!({ "on_hand": PLENTY }))
            .await?;
    }
    let tokens = shopper_tokens(&auth)?;
    let plan = Plan {
        pace: Pace::BackToBack,
        duration: Duration::from_secs(options.duration_seconds),
        connections: options.connections,
    };
    for sku in [PLAIN_SKU, BUCKETED_SKU] {
        for port in &masters {
            redis_cli(*port, &["CONFIG", "RESETSTAT"]);
        }
        let workload = Arc::new(Reserve {
            tokens: tokens.clone(),
            skus: vec![sku.to_owned()],
        });
        let before = gateway.cpu_time();
        let name = format!("buckets:{sku}");
        let mut report = loadgen::run(&name, gateway.addr, plan, workload, None).await?;
        report.gateway_cpu_us_per_op = cpu_per_op(before, gateway.cpu_time(), report.sent);
        emit(&report)?;
        let calls: Vec<u64> = masters.iter().map(|p| script_calls(*p)).collect();
        let mean = calls.iter().sum::<u64>() as f64 / calls.len() as f64;
        let spread = calls
            .iter()
            .map(|c| (*c as f64 - mean).abs() / mean.max(1.0) * 100.0)
            .fold(0.0, f64::max);
        println!(
            "{}",
            json!({
                "scenario": name,
                "script_calls_per_master": calls,
                "script_calls_per_reservation": calls.iter().sum::<u64>() as f64 / report.ok.max(1) as f64,
                "largest_deviation_from_mean_pct": spread,
            })
        );
        eprintln!(
            "{:<22} script calls per master {calls:?}: at most {spread:.1} % from their mean, {:.2} per reservation",
            name,
            calls.iter().sum::<u64>() as f64 / report.ok.max(1) as f64
        );
    }
    drop(gateway);
    drop(stack);
    Ok(())
}
