//! Bulk stock import: NDJSON streamed, bounded, a bad line failing alone,
//! idempotent with a key.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use flashgate::auth::Auth;
use flashgate::inventory::AccountId;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Backend, GatewayProcess, TEST_SECRET, TestApp, admin_token, journal_db, spawn_app_with,
    test_settings, unique_prefix,
};
use crate::on_both_topologies;

/// Line `n` (1-based) of the test body: SKU `IMP-<n / 10>` at location
/// `loc-<n % 10>`, padded with `pad` spaces.
fn line(n: usize, pad: usize) -> String {
    let body = json!({
        "sku": format!("IMP-{}", n / 10),
        "location": format!("loc-{}", n % 10),
        "on_hand": n,
        "safety_stock": n % 3,
    });
    format!("{}{}\n", body, " ".repeat(pad))
}

fn body_with_bad_lines(lines: usize, pad: usize) -> String {
    (1..=lines)
        .map(|n| match n {
            17 => "{\"sku\": \"IMP-x\", \"on_hand\": \n".to_owned(),
            5_000 => json!({ "sku": "IMP-y", "on_hand": -1 }).to_string() + "\n",
            9_999 => json!({ "sku": "IMP-z", "on_hand": 1, "colour": "red" }).to_string() + "\n",
            n => line(n, pad),
        })
        .collect()
}

async fn import(
    app: &TestApp,
    token: &str,
    body: String,
    key: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = app
        .http
        .post(app.url("/v1/admin/inventory/import"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, resp.json().await.unwrap_or(Value::Null))
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn ten_thousand_lines_with_three_bad_ones_apply_once(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let body = body_with_bad_lines(10_000, 0);
    let (status, replayed, report) =
        import(&app, &admin_token(), body.clone(), Some("imp-1")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(replayed, None);
    assert_eq!(report["applied"], 9_997);
    let failed: Vec<(u64, &str)> = report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["line"].as_u64().unwrap(), f["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failed,
        [
            (17, "validation-failed"),
            (5_000, "validation-failed"),
            (9_999, "validation-failed")
        ]
    );
    let view = app.view("IMP-123").await.body;
    let loc = view["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == "loc-4")
        .unwrap();
    assert_eq!(
        (loc["on_hand"].clone(), loc["safety_stock"].clone()),
        (json!(1234), json!(1234 % 3))
    );
    assert_eq!(app.view("IMP-x").await.status, StatusCode::NOT_FOUND);
    let versions = app.view("IMP-999").await.body["version"].clone();

    // The same key and body: the first result, and nothing changes.
    let (status, replayed, again) = import(&app, &admin_token(), body, Some("imp-1")).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (StatusCode::OK, Some("true"))
    );
    assert_eq!(again, report);
    assert_eq!(app.view("IMP-999").await.body["version"], versions);
    let other = body_with_bad_lines(10, 0);
    let (status, _, reused) = import(&app, &admin_token(), other, Some("imp-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reused["type"],
        "https://flashgate.dev/problems/idempotency-key-reused"
    );
    // The journal has each applied line once, with the operator.
    let start = std::time::Instant::now();
    loop {
        let events = count(
            &db,
            "SELECT count(*) FROM inventory_events WHERE kind = 'stock_set' AND actor = 'ops-admin'",
        )
        .await;
        if events == 9_997 {
            break;
        }
        assert!(
            events < 9_997,
            "{events} stock changes journaled for 9,997 lines"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {events} journaled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A location keeper's lines elsewhere fail alone.
    let keeper = AccountId::parse("keeper-loc-1").unwrap();
    let scoped =
        Auth::new(TEST_SECRET).issue_scoped(&keeper, Some("inventory:write:location:loc-1"), 3600);
    let (status, _, report) =
        import(&app, &scoped, (1..=20).map(|n| line(n, 0)).collect(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["applied"], 2);
    assert_eq!(report["failed"].as_array().unwrap().len(), 18);
    assert_eq!(report["failed"][0]["code"], "forbidden");
    let (status, _, _) = import(&app, &admin_token(), "{}".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    let wrong_type = app
        .http
        .post(app.url("/v1/admin/inventory/import"))
        .bearer_auth(admin_token())
        .json(&json!({ "sku": "IMP-1", "on_hand": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// The gateway's resident memory (KiB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_streams_its_body_instead_of_holding_it() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let pid = gateway.child.id();
    let http = reqwest::Client::new();
    let send = |body: String| {
        let http = http.clone();
        let url = gateway.url("/v1/admin/inventory/import");
        async move {
            let r = http
                .post(url)
                .bearer_auth(admin_token())
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    // Warm up with the same lines, unpadded (about 0.7 MB).
    let small: String = (1..=10_000).map(|n| line(n, 0)).collect();
    assert_eq!(send(small).await["applied"], 10_000);
    let before = rss_kib(pid);
    assert!(before > 0, "no resident set size read for the gateway");

    // The same lines padded to about 3 KB each: a 30 MB body.
    let big: String = (1..=10_000).map(|n| line(n, 3_000)).collect();
    let body_kib = big.len() as u64 / 1024;
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    assert_eq!(send(big).await["applied"], 10_000);
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!("import: a {body_kib} KiB body grew the gateway's RSS by {grew} KiB at most");
    assert!(
        grew < body_kib / 4,
        "RSS grew {grew} KiB while importing a {body_kib} KiB body"
    );
}

on_both_topologies!(ten_thousand_lines_with_three_bad_ones_apply_once);
