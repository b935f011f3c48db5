//! Generated requests to every route `openapi.json` lists, against a
//! gateway process of its own: arrays, nulls, huge and negative numbers,
//! unicode and invalid UTF-8 in paths and bodies, wrong methods, missing
//! and wrong tokens. Nothing may answer 5xx, every refusal must be a
//! problem document with its `request_id`, every answer to an operation's
//! own method a status openapi.json declares for it, and the process's
//! memory must stay flat from one round to the next.
//!
//! The generator is seeded (`FUZZ_SEED`, default below; not a `FLASHGATE_`
//! variable, which the gateway process would read as configuration) so a
//! failure can be replayed; the seed is printed.

use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    Backend, GatewayProcess, admin_token, repo_file, test_settings, token, unique_prefix,
};

/// Requests per round; two rounds are sent and the memory compared.
const REQUESTS_PER_ROUND: usize = 3_000;
/// Growth of the gateway's resident memory allowed from the first round's
/// end to the second's: a leak of ~5 KB per request would exceed it.
const RSS_GROWTH_MAX_BYTES: u64 = 16 << 20;
const DEFAULT_SEED: u64 = 14;
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// Longest any generated request may take (a long poll waits at most 30 s).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// Field names the contract's bodies use, so generated objects often get
/// past "unknown field" and reach the deeper checks.
const FIELDS: &[&str] = &[
    "sku",
    "qty",
    "location",
    "on_hand",
    "safety_stock",
    "low_stock_threshold",
    "backorder_limit",
    "max_per_account",
    "sale_opens_at",
    "sale_closes_at",
    "reservation_ttl_seconds",
    "delta",
    "reason",
    "reference",
];

fn text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "FUZZ-1",
        "default",
        "receipt",
        "shrinkage",
        "2026-12-01T10:00:00Z",
        "9999-99-99T99:99:99Z",
        "ü✓😀",
        "\u{0}",
        "\u{202e}",
        "a b",
        "..",
        "%ff",
        "'; DROP TABLE reservations; --",
        "",
    ];
    match rng.random_range(0..4) {
        0 => "x".repeat(rng.random_range(0..200)),
        _ => PIECES[rng.random_range(0..PIECES.len())].to_owned(),
    }
}

/// A number as JSON text, including ones no Rust integer holds.
fn number(rng: &mut StdRng) -> String {
    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "-1",
        "2",
        "10",
        "11",
        "2147483648",
        "-2147483649",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "1e400",
        "-0",
        "0.5",
        "1e3",
        "100000000000000000000000000000",
    ];
    NUMBERS[rng.random_range(0..NUMBERS.len())].to_owned()
}

/// A JSON document as text, nested at most `depth` deep.
fn json_text(rng: &mut StdRng, depth: u32) -> String {
    let kind = if depth == 0 {
        rng.random_range(0..4)
    } else {
        rng.random_range(0..7)
    };
    match kind {
        0 => "null".to_owned(),
        1 => if rng.random() { "true" } else { "false" }.to_owned(),
        2 => number(rng),
        3 => Value::String(text(rng)).to_string(),
        4 => {
            let items: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| json_text(rng, depth - 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let members: Vec<String> = (0..rng.random_range(0..5))
                .map(|_| {
                    let key = if rng.random_range(0..5) == 0 {
                        text(rng)
                    } else {
                        FIELDS[rng.random_range(0..FIELDS.len())].to_owned()
                    };
                    format!("{}:{}", Value::String(key), json_text(rng, depth - 1))
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..12) {
        0 => Vec::new(),
        1 => b"{".to_vec(),
        2 => vec![b'"', 0xff, 0xfe, b'"'],
        3 => format!("{{\"sku\":\"{}\"}}", "A".repeat(20_000)).into_bytes(),
        4 => json!({"sku": "FUZZ-1", "qty": 1}).to_string().into_bytes(),
        5 => json!({"on_hand": 5}).to_string().into_bytes(),
        _ => json_text(rng, 3).into_bytes(),
    }
}

/// A path parameter: valid ones, and what a path should never carry.
fn segment(rng: &mut StdRng, hold: &str) -> String {
    const SEGMENTS: &[&str] = &[
        "FUZZ-1",
        "FUZZ-2",
        "default",
        "%ff",
        "%c3%28",
        "%00",
        "%2F",
        "..",
        "%e2%9c%93",
        "a.b_c-d",
        "",
    ];
    match rng.random_range(0..6) {
        0 => hold.to_owned(),
        1 => "S".repeat(rng.random_range(60..80)),
        _ => SEGMENTS[rng.random_range(0..SEGMENTS.len())].to_owned(),
    }
}

struct Operation {
    method: Method,
    template: String,
    /// The statuses openapi.json declares for it.
    statuses: Vec<u16>,
}

fn operations() -> Vec<Operation> {
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file("openapi.json")).unwrap()).unwrap();
    let mut ops = Vec::new();
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|s| s.parse().unwrap())
                .collect();
            ops.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                template: template.clone(),
                statuses,
            });
        }
    }
    assert!(
        ops.len() >= 10,
        "openapi.json lists {} operations",
        ops.len()
    );
    ops
}

/// One generated request: method, path and body, for the failure report.
struct Generated {
    method: Method,
    path: String,
    body: Vec<u8>,
    auth: Option<String>,
    content_type: Option<&'static str>,
    /// The operation's declared statuses, when the request used its method
    /// (its answer must be one of them).
    declared: Option<(String, Vec<u16>)>,
}

fn generate(rng: &mut StdRng, ops: &[Operation], hold: &str, shopper: &str) -> Generated {
    let op = &ops[rng.random_range(0..ops.len())];
    let mut path = op.template.clone();
    while let (Some(start), Some(end)) = (path.find('{'), path.find('}')) {
        path.replace_range(start..=end, &segment(rng, hold));
    }
    const METHODS: &[Method] = &[Method::GET, Method::POST, Method::PUT, Method::DELETE];
    let method = if rng.random_range(0..8) == 0 {
        METHODS[rng.random_range(0..METHODS.len())].clone()
    } else {
        op.method.clone()
    };
    let auth = match rng.random_range(0..5) {
        0 => None,
        1 => Some("not-a-token".to_owned()),
        2 => Some(shopper.to_owned()),
        _ => Some(admin_token()),
    };
    let content_type = match rng.random_range(0..6) {
        0 => None,
        1 => Some("text/plain"),
        _ => Some("application/json"),
    };
    let declared = (method == op.method).then(|| {
        (
            format!("{} {}", op.method, op.template),
            op.statuses.clone(),
        )
    });
    Generated {
        method,
        path,
        body: body(rng),
        auth,
        content_type,
        declared,
    }
}

/// The answer's status (0: none) and what was wrong with it, if anything.
async fn check(http: &reqwest::Client, base: &str, g: &Generated) -> (u16, Option<String>) {
    let status = std::cell::Cell::new(0);
    let failure = answer(http, base, g, &status).await;
    (status.get(), failure)
}

async fn answer(
    http: &reqwest::Client,
    base: &str,
    g: &Generated,
    seen: &std::cell::Cell<u16>,
) -> Option<String> {
    let mut req = http
        .request(g.method.clone(), format!("{base}{}", g.path))
        .body(g.body.clone());
    if let Some(t) = &g.auth {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = g.content_type {
        req = req.header("content-type", ct);
    }
    let describe = |what: String| {
        let body = String::from_utf8_lossy(&g.body);
        let body: String = body.chars().take(120).collect();
        format!("{} {} {body:?}: {what}", g.method, g.path)
    };
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) if e.is_builder() => return None,
        Err(e) => return Some(describe(format!("no answer: {e}"))),
    };
    let status = resp.status();
    seen.set(status.as_u16());
    let content_type = |prefix: &[u8]| {
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(prefix))
    };
    let problem = content_type(b"application/problem+json");
    // A stock stream that opened never ends: its head is the answer.
    if status.is_success() && content_type(b"text/event-stream") {
        return None;
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    if status.is_server_error() {
        return Some(describe(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // A generated segment may route elsewhere (`..`, an escaped `/`): then
    // the router's own 404 or 405 answers, which no operation declares.
    let routed_elsewhere = ["not-found", "method-not-allowed"]
        .iter()
        .any(|code| doc["type"].as_str().is_some_and(|t| t.ends_with(code)));
    if let Some((operation, statuses)) = &g.declared
        && !statuses.contains(&status.as_u16())
        && !routed_elsewhere
    {
        return Some(describe(format!(
            "{status} is not declared for {operation} in openapi.json"
        )));
    }
    if status.is_client_error() {
        let request_id = doc["request_id"].as_str().is_some_and(|id| !id.is_empty());
        if !problem || !request_id || doc["status"] != status.as_u16() {
            return Some(describe(format!(
                "{status} is not a problem document with its request_id: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
    }
    None
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// What a round saw: the wrong answers, and how many of each status.
#[derive(Default)]
struct Seen {
    failures: Vec<String>,
    statuses: std::collections::BTreeMap<u16, usize>,
}

async fn round(
    seen: &mut Seen,
    rng: &mut StdRng,
    http: &reqwest::Client,
    base: &str,
    ops: &[Operation],
    (hold, shopper): (&str, &str),
) {
    use futures::StreamExt;
    let generated: Vec<Generated> = (0..REQUESTS_PER_ROUND)
        .map(|_| generate(rng, ops, hold, shopper))
        .collect();
    let answers: Vec<(u16, Option<String>)> = futures::stream::iter(generated.iter())
        .map(|g| check(http, base, g))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (status, failure) in answers {
        *seen.statuses.entry(status).or_default() += 1;
        seen.failures.extend(failure);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_to_every_route_never_get_a_5xx_and_leave_memory_flat() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("fuzz seed {seed} (FUZZ_SEED replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let base = gateway.url("");
    // No generated request may hang the run: one that gets no whole answer
    // within this is a failure like a 5xx.
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let shopper = token("fuzz-shopper");
    gateway.stock("FUZZ-1", 1_000_000).await;
    let r = http
        .post(format!("{base}/v1/reservations"))
        .bearer_auth(&shopper)
        .json(&json!({"sku": "FUZZ-1", "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let hold: Value = r.json().await.unwrap();
    let hold = hold["reservation_id"].as_str().unwrap().to_owned();
    let ops = operations();

    let mut seen = Seen::default();
    let ids = (hold.as_str(), shopper.as_str());
    round(&mut seen, &mut rng, &http, &base, &ops, ids).await;
    let after_first = rss_bytes(gateway.child.id());
    round(&mut seen, &mut rng, &http, &base, &ops, ids).await;
    let after_second = rss_bytes(gateway.child.id());
    let Seen { failures, statuses } = seen;
    // The generator reaches past the edge: some requests are accepted.
    assert!(
        statuses.keys().any(|s| (200..300).contains(s)),
        "{statuses:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} answers were wrong; the first ones:\n{}",
        failures.len(),
        2 * REQUESTS_PER_ROUND,
        failures[..failures.len().min(10)].join("\n")
    );
    let growth = after_second.saturating_sub(after_first);
    eprintln!(
        "fuzz: {} requests over {} operations, 0 wrong; statuses {statuses:?}; rss {} -> {} KiB",
        2 * REQUESTS_PER_ROUND,
        ops.len(),
        after_first / 1024,
        after_second / 1024
    );
    assert!(
        growth <= RSS_GROWTH_MAX_BYTES,
        "the gateway grew by {} KiB over a round of {REQUESTS_PER_ROUND} requests",
        growth / 1024
    );
    // Still serving after it all.
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
