//! An open-model HTTP load generator, shared by `flashgate-dev demo` and
//! `flashgate-dev bench`.
//!
//! Open model: operation `i` is due at `start + i / rate`, whatever happened
//! to the operations before it, so a slow server cannot slow the load down.
//! A fixed set of keep-alive connections (one request at a time each) takes
//! the due operations in order.
//!
//! Latency is corrected for coordinated omission: when every connection was
//! still busy at an operation's due time, its latency counts from the due
//! time, so the queueing a slow server causes is measured, not hidden. When a
//! connection was idle before the due time, latency counts from the moment
//! the request was sent, so the generator's own timer granularity (about a
//! millisecond) is not charged to the server.
//!
//! Latencies go to HDR histograms (microseconds, 3 significant digits), one
//! per connection, merged at the end: no lock on the request path.

pub mod client;
pub mod gateway;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::time::Instant;

pub use client::{Conn, Response};

/// The largest latency recorded exactly; longer ones count as this.
const LATENCY_MAX_US: u64 = 60_000_000;

/// What one operation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Ok,
    /// A refusal, by problem code (`insufficient-stock`, `rate-limited`…),
    /// or `http-<status>` when the body names none.
    Rejected(String),
    /// No answer: connection refused, reset, or timed out.
    Failed,
}

impl Outcome {
    /// The outcome of a request as `Conn::send` returned it.
    pub fn of_result(result: &Result<Response, client::ClientError>) -> Self {
        match result {
            Ok(response) => Self::of(response),
            Err(_) => Self::Failed,
        }
    }

    pub fn of(response: &Response) -> Self {
        if response.status.is_success() {
            return Self::Ok;
        }
        Self::Rejected(
            response
                .problem_code()
                .unwrap_or_else(|| format!("http-{}", response.status.as_u16())),
        )
    }
}

/// One operation of a scenario: one or more requests on `conn`.
pub trait Workload: Send + Sync + 'static {
    fn run(&self, conn: &mut Conn, i: u64) -> impl Future<Output = Outcome> + Send;
}

/// How operations are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Open model: this many operations per second.
    Rate(f64),
    /// Closed model: each connection sends its next operation as soon as
    /// the previous one is answered (for ceilings, not for latency).
    BackToBack,
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub pace: Pace,
    pub duration: Duration,
    pub connections: usize,
}

impl Plan {
    /// Operations the plan sends at its rate (None for back-to-back).
    pub fn total(&self) -> Option<u64> {
        match self.pace {
            Pace::Rate(rate) => Some((rate * self.duration.as_secs_f64()).round() as u64),
            Pace::BackToBack => None,
        }
    }
}

/// What one connection saw.
struct Tally {
    latency_us: Histogram<u64>,
    /// The same latencies by outcome: `ok`, a problem code, or `failed`.
    by_outcome_us: BTreeMap<String, Histogram<u64>>,
    ok: u64,
    rejected: BTreeMap<String, u64>,
    failed: u64,
    last_done: Instant,
}

impl Tally {
    fn new(start: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: histogram()?,
            by_outcome_us: BTreeMap::new(),
            ok: 0,
            rejected: BTreeMap::new(),
            failed: 0,
            last_done: start,
        })
    }

    fn record(&mut self, latency_us: u64, outcome: Outcome) -> anyhow::Result<()> {
        self.latency_us.saturating_record(latency_us);
        let name = match &outcome {
            Outcome::Ok => "ok",
            Outcome::Rejected(code) => code.as_str(),
            Outcome::Failed => "failed",
        };
        match self.by_outcome_us.get_mut(name) {
            Some(h) => h.saturating_record(latency_us),
            None => {
                let mut h = histogram()?;
                h.saturating_record(latency_us);
                self.by_outcome_us.insert(name.to_owned(), h);
            }
        }
        self.count(outcome);
        Ok(())
    }

    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Rejected(code) => *self.rejected.entry(code).or_default() += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        for (name, h) in other.by_outcome_us {
            match self.by_outcome_us.get_mut(&name) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.by_outcome_us.insert(name, h);
                }
            }
        }
        self.ok += other.ok;
        for (code, n) in other.rejected {
            *self.rejected.entry(code).or_default() += n;
        }
        self.failed += other.failed;
        self.last_done = self.last_done.max(other.last_done);
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The result of one run, as `flashgate-dev bench` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// None for a back-to-back (closed-model) run.
    pub offered_per_s: Option<f64>,
    pub achieved_per_s: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub sent: u64,
    pub ok: u64,
    pub rejected: BTreeMap<String, u64>,
    pub failed: u64,
    pub latency_ms: Latency,
    /// The same, for each outcome: `ok`, a problem code, or `failed`.
    pub latency_by_outcome_ms: BTreeMap<String, Latency>,
    /// The gateway's CPU time (user + system) per operation, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_cpu_us_per_op: Option<f64>,
}

impl Report {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Runs `workload` against `addr` as `plan` says; `progress` (if any) is
/// advanced once per finished operation.
pub async fn run<W: Workload>(
    scenario: &str,
    addr: SocketAddr,
    plan: Plan,
    workload: Arc<W>,
    progress: Option<ProgressBar>,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let connections = plan.connections.max(1);
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let workload = workload.clone();
        let next = next.clone();
        let progress = progress.clone();
        let mut tally = Tally::new(start)?;
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let deadline = start + plan.duration;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let free_at = Instant::now();
                let due = match plan.pace {
                    Pace::Rate(rate) => {
                        if plan.total().is_some_and(|total| i >= total) {
                            break;
                        }
                        start + Duration::from_secs_f64(i as f64 / rate)
                    }
                    Pace::BackToBack if free_at >= deadline => break,
                    Pace::BackToBack => free_at,
                };
                tokio::time::sleep_until(due).await;
                let sent = Instant::now();
                let counted_from = if free_at <= due { sent } else { due };
                let outcome = workload.run(&mut conn, i).await;
                let done = Instant::now();
                tally.record((done - counted_from).as_micros() as u64, outcome)?;
                tally.last_done = done;
                if let Some(progress) = &progress {
                    progress.inc(1);
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new(start)?;
    for worker in workers {
        total.merge(worker.await??);
    }
    Ok(report(scenario, plan, start, total))
}

fn report(scenario: &str, plan: Plan, start: Instant, tally: Tally) -> Report {
    let elapsed = (tally.last_done - start).as_secs_f64().max(1e-9);
    let sent = tally.ok + tally.rejected.values().sum::<u64>() + tally.failed;
    Report {
        scenario: scenario.to_owned(),
        offered_per_s: match plan.pace {
            Pace::Rate(rate) => Some(rate),
            Pace::BackToBack => None,
        },
        achieved_per_s: sent as f64 / elapsed,
        duration_s: elapsed,
        connections: plan.connections,
        sent,
        ok: tally.ok,
        rejected: tally.rejected,
        failed: tally.failed,
        latency_ms: Latency::of(&tally.latency_us),
        latency_by_outcome_ms: tally
            .by_outcome_us
            .iter()
            .map(|(name, h)| (name.clone(), Latency::of(h)))
            .collect(),
        gateway_cpu_us_per_op: None,
    }
}
