//! What operators see: `/metrics` on its own listener, the oversold counter,
//! the alert rules under `promtool`, and a real Prometheus scraping a
//! gateway under load while every dashboard query and alert expression is
//! evaluated through its HTTP API.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flashgate::{config::Settings, inventory::Sku, redis::Keys};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Backend, GatewayProcess, admin_token, free_port, journal_db, metric_value, on_every_node,
    repo_file, test_settings, token, unique_prefix,
};
use crate::on_both_topologies;

/// A gateway process with `metrics.listen` on its own port.
struct Observed {
    settings: Settings,
    gateway: GatewayProcess,
    metrics_addr: String,
    http: reqwest::Client,
}

impl Observed {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let settings = test_settings(backend, &unique_prefix());
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut vars = vec![("FLASHGATE_METRICS__LISTEN", metrics_addr.as_str())];
        vars.extend_from_slice(env);
        let mut gateway = GatewayProcess::start_with(&settings, &vars);
        gateway.wait_ready().await;
        Self {
            settings,
            gateway,
            metrics_addr,
            http: reqwest::Client::new(),
        }
    }

    /// The Redis key of a SKU's hash.
    fn sku_key(&self, sku: &str) -> String {
        let keys = Keys::new(
            &self.settings.redis.key_prefix,
            self.settings.redis.partitions,
        );
        let sku = Sku::parse(sku).unwrap();
        keys.sku(keys.partition_of(&sku), &sku)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> StatusCode {
        self.http
            .request(method, self.gateway.url(path))
            .bearer_auth(admin_token())
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn shopper(&self, account: &str, path: &str) -> StatusCode {
        self.http
            .post(self.gateway.url(path))
            .bearer_auth(token(account))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn stock(&self, sku: &str, on_hand: u64) {
        let path = format!("/v1/admin/inventory/{sku}/locations/default");
        let status = self
            .admin(reqwest::Method::PUT, &path, json!({ "on_hand": on_hand }))
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    /// One reservation of one unit; its status and body.
    async fn reserve(&self, account: &str, sku: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.gateway.url("/v1/reservations"))
            .bearer_auth(token(account))
            .json(&json!({ "sku": sku, "qty": 1 }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }
}

async fn metrics_count_every_request_by_route_template_and_outcome(backend: Backend) {
    let o = Observed::start(backend, &[]).await;
    o.stock("OBS-SALE", 5).await;
    let replies = join_all((0..20).map(|i| {
        let o = &o;
        async move { o.reserve(&format!("shopper-{i}"), "OBS-SALE").await.0 }
    }))
    .await;
    let held = replies
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(held, 5, "{replies:?}");
    let unknown = o
        .shopper("shopper-0", "/v1/reservations/not-an-id/confirm")
        .await;
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    let nowhere = o
        .http
        .get(o.gateway.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);

    let m = o.metrics().await;
    let reservations =
        |outcome| metric_value(&m, "flashgate_reservations_total", &[("outcome", outcome)]);
    assert_eq!(reservations("held"), 5.0);
    assert_eq!(reservations("insufficient-stock"), 15.0);
    let requests = |route, method, status| {
        let labels = [("route", route), ("method", method), ("status", status)];
        metric_value(&m, "flashgate_http_requests_total", &labels)
    };
    assert_eq!(requests("/v1/reservations", "POST", "201"), 5.0);
    assert_eq!(requests("/v1/reservations", "POST", "409"), 15.0);
    assert_eq!(
        requests("/v1/reservations/{id}/confirm", "POST", "404"),
        1.0
    );
    assert_eq!(requests("unmatched", "GET", "404"), 1.0);
    let route = "/v1/admin/inventory/{sku}/locations/{location}";
    assert_eq!(requests(route, "PUT", "200"), 1.0);
    let events = |kind| metric_value(&m, "flashgate_inventory_events_total", &[("kind", kind)]);
    assert_eq!((events("reserved"), events("stock_set")), (5.0, 1.0));
    assert!(m.contains("\nflashgate_oversold_total 0\n"), "{m}");
    assert_eq!(metric_value(&m, "flashgate_build_info", &[]), 1.0);
    assert!(m.contains(
        "flashgate_http_request_duration_seconds_bucket{route=\"/v1/reservations\",method=\"POST\",status=\"201\",le=\"0.15\"}"
    ));
    // Each reservation went through the script once (in some batch),
    // unless it was answered locally.
    let scripted = metric_value(
        &m,
        "flashgate_redis_batch_requests_sum",
        &[("script", "reserve")],
    );
    let local = metric_value(
        &m,
        "flashgate_sold_out_short_circuit_total",
        &[("mode", "enforce")],
    );
    assert_eq!(scripted + local, 20.0, "{m}");
    // Labels come from closed sets: no SKU, account or reservation id.
    for private in ["OBS-SALE", "shopper-", "not-an-id", "/no/such/route"] {
        assert!(!m.contains(private), "{private} leaked into the metrics");
    }

    // Every journaled event goes through the queue and is counted out.
    let start = Instant::now();
    let queue = loop {
        let m = o.metrics().await;
        let value = |name| metric_value(&m, name, &[]);
        let queue = (
            value("flashgate_journal_queue_pushed_total"),
            value("flashgate_journal_queue_popped_total"),
            value("flashgate_journal_queue_depth"),
        );
        if queue == (6.0, 6.0, 0.0) || start.elapsed() > Duration::from_secs(10) {
            let dropped = [("reason", "queue_full")];
            assert_eq!(
                metric_value(&m, "flashgate_journal_queue_dropped_total", &dropped),
                0.0
            );
            assert_eq!(value("flashgate_journal_queue_capacity"), 65536.0);
            break queue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(queue, (6.0, 6.0, 0.0), "pushed, popped, depth");

    // The metrics listener serves the metrics and nothing else; the API
    // listener serves them too.
    let api_on_metrics = o
        .http
        .get(format!("http://{}/v1/inventory/OBS-SALE", o.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(api_on_metrics.status(), StatusCode::NOT_FOUND);
    let on_api = o.http.get(o.gateway.url("/metrics")).send().await.unwrap();
    assert_eq!(on_api.status(), StatusCode::OK);

    // The running gateway describes itself as the committed openapi.json.
    let served: Value = o
        .http
        .get(o.gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed = std::fs::read_to_string(repo_file("openapi.json")).unwrap();
    assert_eq!(served, serde_json::from_str::<Value>(&committed).unwrap());
}

async fn a_hold_that_breaks_the_stock_invariant_is_counted_as_oversold(backend: Backend) {
    let o = Observed::start(backend, &[]).await;
    o.stock("OBS-BROKEN", 5).await;
    assert_eq!(
        o.reserve("first", "OBS-BROKEN").await.0,
        StatusCode::CREATED
    );
    assert!(o.metrics().await.contains("\nflashgate_oversold_total 0\n"));

    // A backorder limit below zero, written behind the gateway's back: the
    // reserve script still sees free units, but the hold leaves the location
    // holding more than on hand - safety stock + backorder limit.
    let key = o.sku_key("OBS-BROKEN");
    on_every_node(backend, &["HSET", &key, "l:default:bo", "-10"]);
    assert_eq!(
        o.reserve("second", "OBS-BROKEN").await.0,
        StatusCode::CREATED
    );
    let m = o.metrics().await;
    assert_eq!(
        metric_value(&m, "flashgate_oversold_total", &[]),
        1.0,
        "{m}"
    );
}

/// `sync` confirmations sent together are committed together: every one is
/// in Postgres when it is answered, in fewer transactions than confirmations.
async fn sync_confirmations_arriving_together_share_postgres_commits(backend: Backend) {
    let o = Observed::start(backend, &[]).await;
    let (sku, n) = ("OBS-CONFIRM", 60);
    o.stock(sku, n as u64).await;
    let holds = join_all((0..n).map(|i| {
        let o = &o;
        async move {
            let (status, body) = o.reserve(&format!("confirmer-{i}"), sku).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["reservation_id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    let confirmed = join_all(holds.iter().enumerate().map(|(i, id)| {
        let o = &o;
        async move {
            let path = format!("/v1/reservations/{id}/confirm");
            o.shopper(&format!("confirmer-{i}"), &path).await
        }
    }))
    .await;
    assert!(
        confirmed.iter().all(|s| *s == StatusCode::OK),
        "{confirmed:?}"
    );

    let db = journal_db(o.settings.postgres.url.expose()).await;
    let in_postgres: i64 = db
        .query_one(
            "SELECT count(*) FROM reservations WHERE reservation_id = ANY($1) AND state = 'confirmed'",
            &[&holds],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_postgres, n as i64, "every answered confirm is committed");
    let m = o.metrics().await;
    let grouped = metric_value(&m, "flashgate_journal_confirm_group_requests_sum", &[]);
    let groups = metric_value(&m, "flashgate_journal_confirm_group_requests_count", &[]);
    assert_eq!(grouped, n as f64, "each confirmation joined one group");
    assert!(groups < n as f64, "{groups} commits for {n} confirmations");
}

on_both_topologies!(
    metrics_count_every_request_by_route_template_and_outcome,
    a_hold_that_breaks_the_stock_invariant_is_counted_as_oversold,
    sync_confirmations_arriving_together_share_postgres_commits,
);

const PROMETHEUS_HINT: &str =
    "the test suite needs Prometheus: apt-get install prometheus (scripts/test.sh installs it)";

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect(PROMETHEUS_HINT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let out = promtool(&["test", "rules", "config/alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "config", "config/prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_says_what_to_do_and_links_its_runbook_section() {
    let rules = std::fs::read_to_string(repo_file("config/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(repo_file("docs/runbook.md")).unwrap();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 14, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.split_whitespace().next().unwrap();
        assert!(
            block.contains("description: \""),
            "{name} has no description"
        );
        let url = format!("runbook_url: \"docs/runbook.md#{}\"", name.to_lowercase());
        assert!(block.contains(&url), "{name}: no {url}");
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/runbook.md has no section for {name}"
        );
    }
}

#[test]
fn the_alertmanager_configuration_is_valid() {
    let out = Command::new("amtool")
        .args(["check-config", "config/alertmanager.yml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("amtool: apt-get install prometheus-alertmanager (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every query of the dashboard: (panel title, expression).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("grafana/dashboards/flashgate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// Every alert of config/alerts.yml: (name, expression), read from the
/// rules Prometheus loaded.
fn loaded_rules(rules: &Value) -> Vec<&Value> {
    rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

/// What a query measures, by its metric's name: seconds, a rate, or a count.
fn unit_of(expr: &str) -> &'static str {
    if expr.contains("_seconds") {
        "seconds"
    } else if expr.contains("rate(") {
        "per second"
    } else {
        "count"
    }
}

#[test]
fn the_dashboard_uses_the_provisioned_data_source_and_unique_panel_ids() {
    let text = std::fs::read_to_string(repo_file("grafana/dashboards/flashgate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let source =
        std::fs::read_to_string(repo_file("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(source.contains("uid: prometheus"));
    // Portable: every query names the `datasource` variable, not a uid, so
    // the dashboard imports into a Grafana whose Prometheus has another.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no data source variable"
    );
    assert!(
        !text.contains("\"uid\": \"prometheus\""),
        "a hard-coded data source uid"
    );
    let mut ids = std::collections::HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "duplicate id");
        if panel["type"] != "row" {
            let title = &panel["title"];
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
            // One unit per series: a panel of several queries either keeps
            // one unit or sets one per query.
            let targets = panel["targets"].as_array().unwrap();
            let overridden = panel["fieldConfig"]["overrides"]
                .as_array()
                .map_or(0, Vec::len);
            let units: std::collections::BTreeSet<String> = targets
                .iter()
                .map(|t| unit_of(t["expr"].as_str().unwrap()).to_owned())
                .collect();
            assert!(
                units.len() <= 1 || overridden >= targets.len(),
                "{title} mixes {units:?} under one unit"
            );
        }
    }
    // Stats that survive a gateway restart: increases over the range.
    let stat = |title: &str| {
        dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .map(|p| p["targets"][0]["expr"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert!(stat("Oversold").contains("increase(flashgate_oversold_total"));
    assert!(stat("Drifted SKUs").contains("[$__range]"));
    assert!(dashboard_queries().len() >= 20);
}

/// A Prometheus server on a free port and a data directory of its own,
/// both removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flashgate-prometheus-{}", unique_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: flashgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = repo_file("config/alerts.yml").display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(PROMETHEUS_HINT);
        Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn get(&self, http: &reqwest::Client, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).unwrap();
        let r = http.get(url).send().await.unwrap();
        r.json().await.unwrap()
    }

    /// An instant query; fails the test unless Prometheus accepted it.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<Value> {
        let body = self.get(http, "/api/v1/query", &[("query", expr)]).await;
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A little of everything the dashboard shows: holds, a sell-out (409s and
/// local answers), a bot (429s), confirms and releases, and holds left to
/// expire.
async fn a_little_load(o: &Observed) {
    o.stock("PROM-SALE", 30).await;
    o.stock("PROM-IDLE", 10).await;
    let policy = json!({ "reservation_ttl_seconds": 1 });
    let status = o
        .admin(
            reqwest::Method::PUT,
            "/v1/admin/inventory/PROM-IDLE",
            policy,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..3 {
        assert_eq!(
            o.reserve(&format!("idle-{i}"), "PROM-IDLE").await.0,
            StatusCode::CREATED
        );
    }
    let until = Instant::now() + Duration::from_secs(6);
    let mut round = 0;
    let mut answers = std::collections::HashSet::new();
    while Instant::now() < until {
        let crowd = join_all((0..10).map(|i| {
            let account = format!("crowd-{round}-{i}");
            async move {
                let (status, body) = o.reserve(&account, "PROM-SALE").await;
                if status == StatusCode::CREATED {
                    let id = body["reservation_id"].as_str().unwrap().to_owned();
                    let action = if i % 2 == 0 { "confirm" } else { "release" };
                    o.shopper(&account, &format!("/v1/reservations/{id}/{action}"))
                        .await;
                }
                status
            }
        }));
        let bot = join_all((0..5).map(|_| o.reserve("bot", "PROM-SALE")));
        let (crowd, bot) = tokio::join!(crowd, bot);
        answers.extend(crowd.into_iter().chain(bot.into_iter().map(|(s, _)| s)));
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for expected in [
        StatusCode::CREATED,
        StatusCode::CONFLICT,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert!(answers.contains(&expected), "no {expected} in {answers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_gateway_under_load_and_every_panel_and_alert_evaluates() {
    let o = Observed::start(
        Backend::Standalone,
        &[
            ("FLASHGATE_LIMITS__ACCOUNT__MODE", "enforce"),
            ("FLASHGATE_LIMITS__ACCOUNT__PER_SECOND", "1"),
            ("FLASHGATE_LIMITS__ACCOUNT__BURST", "2"),
            ("FLASHGATE_JOURNAL__RECONCILE_INTERVAL_MS", "200"),
            ("FLASHGATE_JOURNAL__DRIFT_CHECK_EVERY_PASSES", "1"),
            ("FLASHGATE_EXPIRY__SWEEP_INTERVAL_MS", "200"),
            ("FLASHGATE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ],
    )
    .await;
    let prometheus = Prometheus::start(&o.metrics_addr);
    let http = reqwest::Client::new();
    // The sale sells out and comes back: webhook deliveries for the panels.
    let receiver = crate::webhooks::Receiver::start(200).await;
    let hook = json!({"url": receiver.url(), "events": ["stock.out", "stock.back_in"]});
    let status = o
        .admin(reqwest::Method::POST, "/v1/admin/webhooks", hook)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    a_little_load(&o).await;
    receiver.wait_for(1, Duration::from_secs(20)).await;

    // Wait until Prometheus holds enough scrapes for a rate, the expiry
    // sweeper has given the idle holds back, and a drift check has run.
    let start = Instant::now();
    loop {
        let ready = [
            "count_over_time(flashgate_build_info[1m]) >= 5",
            "flashgate_expiry_swept_holds_total > 0",
            "flashgate_drift_skus",
        ];
        let mut all = true;
        for expr in ready {
            let body = prometheus
                .get(&http, "/api/v1/query", &[("query", expr)])
                .await;
            all &= body["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        }
        if all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never saw the gateway's load"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*");
        if prometheus.query(&http, &expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panel queries without series:\n{}",
        empty.join("\n")
    );
    let oversold = prometheus
        .query(&http, "sum(flashgate_oversold_total)")
        .await;
    assert_eq!(oversold[0]["value"][1], "0");
    let instances = prometheus
        .get(
            &http,
            "/api/v1/label/instance/values",
            &[("match[]", "flashgate_build_info")],
        )
        .await;
    assert_eq!(instances["data"], json!([o.metrics_addr]));

    // Every alert loaded, evaluated without error, and none pages.
    let declared = std::fs::read_to_string(repo_file("config/alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    let start = Instant::now();
    let rules = loop {
        let body = prometheus.get(&http, "/api/v1/rules", &[]).await;
        let rules = loaded_rules(&body).into_iter().cloned().collect::<Vec<_>>();
        let evaluated = rules.iter().all(|r| {
            !r["lastEvaluation"]
                .as_str()
                .unwrap_or("0001")
                .starts_with("0001")
        });
        if evaluated && rules.len() == declared {
            break rules;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rules never evaluated: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        prometheus
            .query(&http, rule["query"].as_str().unwrap())
            .await;
        if rule["labels"]["severity"] == "page" {
            assert_ne!(rule["state"], "firing", "{rule}");
        }
    }
}

/// `docker compose` (the plugin) or `docker-compose`, whichever answers.
fn compose_command() -> Option<Command> {
    let works = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return Some(cmd);
    }
    works(Command::new("docker-compose").arg("version")).then(|| Command::new("docker-compose"))
}

/// The lines of one service of docker-compose.yml: from `  name:` to the
/// next line indented by two spaces or less.
fn service_block<'a>(compose: &'a str, name: &str) -> &'a str {
    let start = compose
        .find(&format!("\n  {name}:\n"))
        .unwrap_or_else(|| panic!("no service {name}"))
        + 1;
    let body = &compose[start..];
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let line = &body[i..];
            !line.starts_with("   ") && !line.starts_with('\n')
        })
        .unwrap_or(body.len());
    &body[..end]
}

#[test]
fn the_compose_file_is_valid_pins_its_images_and_mounts_files_that_exist() {
    let compose = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    for line in compose.lines().map(str::trim) {
        if let Some(image) = line.strip_prefix("image:") {
            let image = image.trim();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            let pinned = tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == 'v');
            assert!(
                pinned || image == "flashgate:local",
                "{image} is not pinned"
            );
        }
        if let Some(mount) = line.strip_prefix("- ./") {
            let source = mount.split(':').next().unwrap();
            assert!(
                repo_file(source).exists(),
                "{source} is mounted but missing"
            );
        }
    }
    assert!(compose.contains("--cluster-replicas 1"));
    // Hardened: loopback ports, a healthcheck per long-running service,
    // data in named volumes, a bounded cluster init.
    for line in compose.lines().map(str::trim) {
        if line.starts_with("- \"") && line.contains(':') && !line.contains("/") {
            assert!(
                line.starts_with("- \"${FLASHGATE_PUBLISH_ADDRESS:-127.0.0.1}:"),
                "a port published beyond loopback: {line}"
            );
        }
    }
    for service in [
        "flashgate",
        "prometheus",
        "alertmanager",
        "grafana",
        "postgres",
    ] {
        assert!(
            service_block(&compose, service).contains("healthcheck:"),
            "{service} has no healthcheck"
        );
    }
    for i in 1..=6 {
        assert!(
            compose.contains(&format!("redis-{i}-data:/data")),
            "redis-{i} keeps no volume"
        );
    }
    assert!(compose.contains("the redis cluster is not ok after"));
    let dockerfile = std::fs::read_to_string(repo_file("Dockerfile")).unwrap();
    let dependencies = dockerfile
        .find("COPY Cargo.toml Cargo.lock")
        .expect("a dependency layer");
    assert!(dependencies < dockerfile.find("COPY . .").unwrap());
    assert!(
        dockerfile.contains("USER 10001:10001"),
        "a numeric non-root user"
    );
    assert!(dockerfile.contains("flashgate\", \"healthcheck"));
    assert_eq!(
        compose
            .matches("--cluster-announce-hostname redis-")
            .count(),
        6
    );

    let mut cmd = compose_command().expect(
        "neither `docker compose` nor docker-compose is installed: ./scripts/test.sh installs \
         docker-compose",
    );
    // The stack refuses to start without it (no admin/admin Grafana).
    let refused = compose_command()
        .unwrap()
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .env_remove("GRAFANA_ADMIN_PASSWORD")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the stack started without GRAFANA_ADMIN_PASSWORD"
    );
    let out = cmd
        .env("GRAFANA_ADMIN_PASSWORD", "compose-config-check")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_k6_scripts_parse() {
    let scripts = [
        "lib/flashgate.js",
        "flash-sale.js",
        "bot-storm.js",
        "soak.js",
    ];
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        eprintln!("node is not installed: the k6 scripts' syntax check is skipped");
        return;
    }
    for script in scripts {
        // k6 scripts are ES modules; node parses them without running them.
        let out = Command::new("node")
            .args(["--experimental-default-type=module", "--check"])
            .arg(repo_file(&format!("loadtest/{script}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
