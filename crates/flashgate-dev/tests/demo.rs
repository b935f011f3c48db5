//! `flashgate-dev demo` and `flashgate-dev bench` through the binary, on the
//! servers they start themselves (and the `flashgate` gateway binary cargo
//! built beside it: run with `cargo test --workspace`), and the load
//! generator's latency accounting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, extract::State, routing::get};
use flashgate_dev::loadgen::{self, Conn, Outcome, Pace, Plan, Workload};
use serde_json::Value;

fn flashgate(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashgate-dev"));
    cmd.args(args).env_remove("FLASHGATE_CONFIG");
    cmd
}

/// A small sale: 100 units, 1,500 attempts, 3 s holds.
const SMALL_SALE: [&str; 11] = [
    "demo",
    "--units",
    "100",
    "--attempts",
    "1500",
    "--accounts",
    "300",
    "--rate",
    "1000",
    "--hold-ttl-seconds",
    "3",
];

/// The directory a demo announced in its first line.
fn announced_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Starting a 3-master"))
        .expect("the demo names its directory");
    PathBuf::from(line.rsplit(" in ").next().unwrap())
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_sells_out_without_overselling_and_removes_what_it_started() {
    let out = flashgate(&SMALL_SALE).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ok ")).collect();
    assert_eq!(checks.len(), 7, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("Postgres matches Redis"), "{stdout}");
    // 1,500 attempts for 100 units: the crowd met both refusals.
    assert!(stdout.contains("insufficient-stock"), "{stdout}");
    let reserved: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("reserved"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a reserved count");
    // Each unit is held at most once while no hold can expire; a crowd
    // slowed past the 3 s TTL (a loaded machine) re-holds expired units.
    let crowd_seconds: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("attempts"))
        .and_then(|l| {
            l.split(" in ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the crowd's duration");
    let most = if crowd_seconds < 3.0 { 100 } else { 600 };
    assert!((50..=most).contains(&reserved), "{stdout}");
    assert!(!announced_dir(&stdout).exists(), "the demo left its files");
}

#[test]
fn a_demo_with_stock_buckets_checks_the_same_invariants() {
    let mut args = SMALL_SALE.to_vec();
    args.extend(["--buckets", "4"]);
    let out = flashgate(&args).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("in 4 stock buckets"), "{stdout}");
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ok ")).collect();
    assert_eq!(checks.len(), 7, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("insufficient-stock"), "{stdout}");
}

#[test]
fn a_demo_through_a_waiting_room_checks_every_hold_was_admitted() {
    let mut args = SMALL_SALE.to_vec();
    args.extend(["--waiting-room", "200"]);
    let out = flashgate(&args).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ok ")).collect();
    assert_eq!(checks.len(), 8, "{stdout}");
    assert!(
        stdout.contains("ok   every hold went through the waiting room"),
        "{stdout}"
    );
    // Shoppers done tried once more without an admission, and were refused.
    assert!(stdout.contains("403          "), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn the_buckets_bench_counts_each_masters_script_calls() {
    let out = flashgate(&[
        "bench",
        "--scenario",
        "buckets",
        "--duration-seconds",
        "2",
        "--connections",
        "16",
    ])
    .output()
    .expect("run the bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let calls = |sku: &str| -> Vec<u64> {
        lines
            .iter()
            .find(|l| {
                l["scenario"] == format!("buckets:{sku}") && l["script_calls_per_master"].is_array()
            })
            .map(|l| {
                l["script_calls_per_master"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect()
            })
            .expect("the per-master counts")
    };
    // The plain SKU's calls land on one master; the bucketed SKU's on all.
    let plain = calls("BENCH-PLAIN");
    let busiest = *plain.iter().max().unwrap();
    assert!(busiest > 100, "{plain:?}");
    assert!(
        plain.iter().filter(|c| **c * 10 > busiest).count() == 1,
        "{plain:?}"
    );
    let bucketed = calls("BENCH-BUCKETED");
    assert!(
        bucketed
            .iter()
            .all(|c| *c * 2 > *bucketed.iter().max().unwrap()),
        "{bucketed:?}"
    );
}

/// Reads the demo's output until `marker`; returns what it read.
fn read_until(child: &mut Child, marker: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read the demo's output");
        assert!(n > 0, "the demo ended before {marker:?}: {seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            // Keep draining so the demo never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return seen;
        }
    }
}

fn gateway_addr(stdout: &str) -> SocketAddr {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Gateway ready at http://"))
        .expect("the demo names its gateway")
        .trim()
        .parse()
        .expect("a socket address")
}

#[test]
fn an_interrupted_demo_stops_its_servers_and_removes_its_files() {
    let mut child = flashgate(&["demo", "--attempts", "1000000", "--rate", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let seen = read_until(&mut child, "The drop opens");
    let dir = announced_dir(&seen);
    let gateway = gateway_addr(&seen);
    assert!(dir.exists() && !refuses_connections(gateway));

    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();

    assert!(
        !exit.success(),
        "an interrupted demo does not report success"
    );
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(refuses_connections(gateway), "the gateway still runs");
}

#[test]
fn a_kept_demo_leaves_a_working_stack_and_says_how_to_stop_it() {
    let mut args = SMALL_SALE.to_vec();
    args.push("--keep");
    let out = flashgate(&args).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let dir = announced_dir(&stdout);
    let gateway = gateway_addr(&stdout);
    let token = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("shopper   Authorization: Bearer "))
        .expect("a shopper token");
    let stop = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Stop it all with:"))
        .nth(1)
        .expect("a stop command")
        .trim()
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (view, mine) = runtime.block_on(async {
        let mut conn = Conn::new(gateway);
        let view = conn
            .send(
                hyper::Method::GET,
                "/v1/inventory/SNEAKER-DROP-1",
                None,
                None,
            )
            .await
            .unwrap();
        let body = r#"{"sku":"SNEAKER-DROP-1","qty":1}"#.to_owned();
        let mine = conn
            .send(
                hyper::Method::POST,
                "/v1/reservations",
                Some(token),
                Some(body),
            )
            .await
            .unwrap();
        (view, mine)
    });
    assert_eq!(view.status, 200);
    assert_eq!(view.json().unwrap()["sku"], "SNEAKER-DROP-1");
    // The kept token is the gateway's: the request is judged on stock, not refused as 401.
    assert_ne!(mine.status, 401, "{:?}", mine.json());
    // So is one a load test signs with the printed secret.
    let secret = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret    "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the auth secret");
    let signed = flashgate::auth::Auth::new(secret).issue(
        &flashgate::inventory::AccountId::parse("k6-shopper").unwrap(),
        flashgate::auth::Role::Shopper,
        600,
    );
    let theirs = runtime.block_on(async {
        let body = r#"{"sku":"SNEAKER-DROP-1","qty":1}"#.to_owned();
        Conn::new(gateway)
            .send(
                hyper::Method::POST,
                "/v1/reservations",
                Some(&signed),
                Some(body),
            )
            .await
            .unwrap()
    });
    assert_ne!(theirs.status, 401, "{:?}", theirs.json());

    let status = Command::new("sh").args(["-c", &stop]).status().unwrap();
    assert!(status.success(), "{stop}");
    wait_for("the kept gateway stops", || refuses_connections(gateway));
    assert!(!dir.exists());
}

#[test]
fn bench_reports_each_scenario_as_json() {
    let out = flashgate(&[
        "bench",
        "--scenario",
        "all",
        "--rate",
        "200",
        "--duration-seconds",
        "1",
        "--connections",
        "8",
    ])
    .output()
    .expect("run the bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON report per line"))
        .collect();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "hot",
            "confirm",
            "sold-out",
            "many",
            "rate-limited",
            "overloaded",
            "cached-read",
            "sse-fanout"
        ]
    );
    let (fanout, reports) = reports.split_last().unwrap();
    assert_eq!(fanout["streams"], 1000, "{fanout}");
    // Every stream had news in every interval of the run.
    assert!(
        fanout["events_delivered"].as_u64().unwrap() >= 1000,
        "{fanout}"
    );
    assert!(fanout["gateway_cpu_us_per_event"].is_number(), "{fanout}");
    for r in reports {
        assert_eq!(r["offered_per_s"], 200.0);
        assert_eq!(r["sent"], 200, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert!(r["achieved_per_s"].as_f64().unwrap() > 0.0);
        let l = &r["latency_ms"];
        let order = ["p50", "p90", "p99", "p999", "max"].map(|q| l[q].as_f64().unwrap());
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{l}");
        assert!(r["gateway_cpu_us_per_op"].as_f64().is_some(), "{r}");
    }
    assert_eq!(reports[0]["ok"], 200, "{}", reports[0]);
    assert_eq!(reports[1]["ok"], 200, "every hold confirmed");
    assert_eq!(reports[2]["ok"], 0);
    assert_eq!(reports[2]["rejected"]["insufficient-stock"], 200);
    assert_eq!(reports[3]["ok"], 200);
    // One account: a burst of 20, then 100/s, over about a second.
    let limited = &reports[4];
    let ok = limited["ok"].as_u64().unwrap();
    assert!((20..=125).contains(&ok), "{limited}");
    assert_eq!(limited["rejected"]["rate-limited"], 200 - ok, "{limited}");
    assert!(limited["latency_by_outcome_ms"]["rate-limited"]["p99"].is_number());
    // Redis paused, one place in flight: shed, but for the request holding it.
    let shed = &reports[5];
    assert_eq!(shed["ok"], 0, "{shed}");
    // Every poll of the view is answered (from the gateway's cached view).
    assert_eq!(reports[6]["ok"], 200, "{}", reports[6]);
    assert!(
        shed["rejected"]["overloaded"].as_u64().unwrap() >= 190,
        "{shed}"
    );
}

/// A server that answers at once, except that it holds every request
/// arriving inside a window until the window ends.
#[derive(Clone)]
struct Stalling {
    start: Instant,
    from: Duration,
    until: Duration,
}

async fn stalling(State(s): State<Stalling>) -> &'static str {
    let now = s.start.elapsed();
    if now >= s.from && now < s.until {
        tokio::time::sleep(s.until - now).await;
    }
    "ok"
}

struct Get;

impl Workload for Get {
    async fn run(&self, conn: &mut Conn, _i: u64) -> Outcome {
        Outcome::of_result(&conn.send(hyper::Method::GET, "/", None, None).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_is_charged_for_the_requests_it_kept_waiting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Stalling {
        start: Instant::now(),
        from: Duration::from_millis(300),
        until: Duration::from_millis(700),
    };
    let app = Router::new().route("/", get(stalling)).with_state(server);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 200/s for 1.5 s on one connection: about 80 requests fall due while
    // the server holds one request for 400 ms.
    let plan = Plan {
        pace: Pace::Rate(200.0),
        duration: Duration::from_millis(1500),
        connections: 1,
    };
    let report = loadgen::run("stall", addr, plan, Arc::new(Get), None)
        .await
        .unwrap();

    assert_eq!(report.sent, 300, "the open model sends every request");
    assert_eq!(report.ok, 300);
    // Timed from when they were sent, only one request would be slow and
    // p90 would be a fraction of a millisecond. Timed from when they were
    // due, a fifth of all requests waited, most of them far over 100 ms.
    assert!(report.latency_ms.p90 >= 100.0, "{:?}", report.latency_ms);
    assert!(report.latency_ms.max >= 380.0, "{:?}", report.latency_ms);
    assert!(report.latency_ms.p50 < 100.0, "{:?}", report.latency_ms);
}
