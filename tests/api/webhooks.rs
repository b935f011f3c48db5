//! Stock notifications: each change of a SKU's status is derived once from
//! the journal, whichever instance, writer or reconciler journals it, and
//! delivered to the webhooks that want it, signed, retried with growing
//! waits until it is delivered or dead, across restarts.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures::{StreamExt, stream};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    Backend, GatewayProcess, TestApp, admin_token, journal_db, metric_value, spawn_app_with,
    test_settings, token, unique_prefix,
};

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Delivered {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
    /// What the receiver answered.
    answered: u16,
}

impl Delivered {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Checks the Standard Webhooks signature against `secret`, computed
    /// here from the headers and the bytes received.
    fn assert_signed_with(&self, secret: &str) {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let (id, timestamp) = (self.header("webhook-id"), self.header("webhook-timestamp"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&self.body);
        let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(
            self.header("webhook-signature"),
            want,
            "the signature verifies"
        );
        let sent: i64 = timestamp.parse().unwrap();
        let now = flashgate::clock::now_ms() / 1000;
        assert!((now - sent).abs() < 300, "a current timestamp");
    }
}

/// A webhook receiver on loopback that records every request and answers
/// with the status it is told.
#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivered>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
        };
        let app = Router::new()
            .route("/hooks/stock", post(Self::receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    async fn receive(State(me): State<Self>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let answered = me.status.load(Ordering::SeqCst);
        me.seen.lock().unwrap().push(Delivered {
            at: Instant::now(),
            headers,
            body,
            answered,
        });
        StatusCode::from_u16(answered).unwrap()
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/stock", self.addr)
    }

    fn seen(&self) -> Vec<Delivered> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived, then a little longer for any
    /// that should not come; all of them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivered> {
        let started = Instant::now();
        while self.seen().len() < n {
            assert!(
                started.elapsed() < within,
                "{} of {n} deliveries arrived: {:?}",
                self.seen().len(),
                self.seen().iter().map(Delivered::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.seen()
    }
}

/// Registers a webhook through `app`; its id and secret.
async fn register(app: &TestApp, body: Value) -> (String, String) {
    let r = app.admin(Method::POST, "/v1/admin/webhooks", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

/// Notifications of `sku` in version order: `(type, previous, status)`.
async fn notifications(db: &tokio_postgres::Client, sku: &str) -> Vec<(String, String, String)> {
    db.query(
        "SELECT type, previous_status, status FROM stock_notifications
         WHERE sku = $1 ORDER BY version",
        &[&sku],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn each_status_change_is_one_notification_across_two_instances(backend: Backend) {
    let mut settings = test_settings(backend, &unique_prefix());
    settings.webhooks.allow_private_targets = true;
    // The second instance's queue overflows: the reconciler journals much
    // of what it holds, late and out of order with the first's writes.
    let mut small = settings.clone();
    small.journal.queue_capacity = 2;
    let apps = [
        spawn_app_with(settings.clone()).await,
        spawn_app_with(small).await,
    ];
    let db = journal_db(settings.postgres.url.expose()).await;
    let sku = "HOOK-1";
    let receiver = Receiver::start(200).await;
    let (_, secret) = register(
        &apps[1],
        json!({"url": receiver.url(), "events": ["stock.low", "stock.out", "stock.back_in"]}),
    )
    .await;
    let r = apps[0]
        .set_stock(
            sku,
            "default",
            json!({"on_hand": 40, "low_stock_threshold": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Sold down through both instances at once.
    let held = stream::iter(0..40)
        .map(|i| {
            let app = &apps[i % 2];
            async move {
                app.reserve(
                    &token(&format!("hook-{i}")),
                    json!({"sku": sku, "qty": 1}),
                    None,
                )
                .await
                .status
            }
        })
        .buffer_unordered(8)
        .filter(|s| std::future::ready(*s == StatusCode::CREATED))
        .count()
        .await;
    assert_eq!(held, 40);
    // Restocked through the second.
    let r = apps[1]
        .set_stock(
            sku,
            "default",
            json!({"on_hand": 70, "low_stock_threshold": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let want = vec![
        (
            "stock.low".to_owned(),
            "IN_STOCK".to_owned(),
            "LOW_STOCK".to_owned(),
        ),
        (
            "stock.out".to_owned(),
            "LOW_STOCK".to_owned(),
            "OUT_OF_STOCK".to_owned(),
        ),
        (
            "stock.back_in".to_owned(),
            "OUT_OF_STOCK".to_owned(),
            "IN_STOCK".to_owned(),
        ),
    ];
    let started = Instant::now();
    loop {
        let journaled: i64 = db
            .query_one(
                "SELECT count(*) FROM inventory_events WHERE sku = $1",
                &[&sku],
            )
            .await
            .unwrap()
            .get(0);
        if journaled == 42 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{journaled} of 42 journaled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(notifications(&db, sku).await, want);
    // The view at the transition is the one at that version.
    let out = db
        .query_one(
            "SELECT view::text FROM stock_notifications WHERE sku = $1 AND type = 'stock.out'",
            &[&sku],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["status"], "OUT_OF_STOCK");
    assert_eq!(out["available"], 0);
    assert_eq!(out["reserved"], 40);

    // The receiver got each once, from whichever instance sent it, signed.
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3, "exactly one delivery per change");
    let mut types: Vec<String> = Vec::new();
    for d in &got {
        d.assert_signed_with(&secret);
        let body = d.json();
        assert_eq!(body["id"], d.header("webhook-id"));
        assert_eq!(body["data"]["sku"], sku);
        let want = want
            .iter()
            .find(|w| body["type"] == w.0)
            .expect("a type asked for");
        assert_eq!(body["data"]["previous_status"], want.1);
        assert_eq!(body["data"]["status"], want.2);
        types.push(body["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["stock.back_in", "stock.low", "stock.out"]);
}

crate::on_both_topologies!(each_status_change_is_one_notification_across_two_instances);

/// An admin request to a gateway process; its status and JSON body.
async fn admin_call(
    gateway: &GatewayProcess,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, gateway.url(path))
        .bearer_auth(admin_token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sells the one unit of a new SKU `sku`: one `stock.out`.
async fn sell_out(gateway: &GatewayProcess, sku: &str) {
    gateway.stock(sku, 1).await;
    let r = reqwest::Client::new()
        .post(gateway.url("/v1/reservations"))
        .bearer_auth(token("hook-buyer"))
        .json(&json!({"sku": sku, "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Quick retries, few attempts, loopback receivers allowed.
const QUICK_RETRIES: &[(&str, &str)] = &[
    ("FLASHGATE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
    ("FLASHGATE_WEBHOOKS__MAX_ATTEMPTS", "4"),
    ("FLASHGATE_WEBHOOKS__BACKOFF_INITIAL_MS", "200"),
    ("FLASHGATE_WEBHOOKS__TIMEOUT_MS", "2000"),
];

#[tokio::test]
async fn a_failing_receiver_gets_growing_waits_then_dead_and_a_retry_delivers() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = GatewayProcess::start_with(&settings, QUICK_RETRIES);
    gateway.wait_ready().await;
    let receiver = Receiver::start(500).await;
    let (status, hook) = admin_call(
        &gateway,
        Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": receiver.url(), "events": ["stock.out"], "skus": ["HOOK-2"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    // Another SKU's change is not this webhook's.
    sell_out(&gateway, "HOOK-OTHER").await;
    sell_out(&gateway, "HOOK-2").await;

    let tries = receiver.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(tries.len(), 4, "max_attempts, then no more");
    let first_id = tries[0].header("webhook-id").to_owned();
    for t in &tries {
        assert_eq!(t.header("webhook-id"), first_id, "one message, retried");
        t.assert_signed_with(secret);
    }
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Backoff 200 ms doubling, jittered down by up to half: each wait is at
    // least half its bound, and the bound doubles.
    for (i, gap) in gaps.iter().enumerate() {
        let bound = Duration::from_millis(200 << i);
        assert!(
            *gap >= bound / 2 && *gap < bound + Duration::from_secs(2),
            "wait {i} was {gap:?}, for a bound of {bound:?}: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "the waits grow: {gaps:?}");

    let path = format!("/v1/admin/webhooks/{id}/deliveries?status=dead");
    let started = Instant::now();
    let dead = loop {
        let (status, page) = admin_call(&gateway, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        if let Some(dead) = page["deliveries"].as_array().and_then(|d| d.first()) {
            break dead.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead["attempts"], 4);
    assert_eq!(dead["last_status"], 500);
    assert_eq!(dead["type"], "stock.out");
    assert_eq!(dead["notification_id"], first_id.as_str());
    assert!(dead["next_attempt_at"].is_null());

    // Once the receiver answers again, an operator's retry delivers it.
    receiver.answer(200);
    let retry = format!(
        "/v1/admin/webhook-deliveries/{}/retry",
        dead["id"].as_str().unwrap()
    );
    let (status, retried) = admin_call(&gateway, Method::POST, &retry, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(retried["status"], "pending");
    let tries = receiver.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(tries.len(), 5);
    assert_eq!(
        (tries[4].answered, tries[4].header("webhook-id")),
        (200, first_id.as_str())
    );
    let path = format!("/v1/admin/webhooks/{id}/deliveries?status=delivered");
    let (_, page) = admin_call(&gateway, Method::GET, &path, None).await;
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(page["deliveries"][0]["attempts"], 1);
    assert!(page["deliveries"][0]["delivered_at"].is_string());

    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let attempts = |outcome| {
        metric_value(
            &metrics,
            "flashgate_webhook_attempts_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(
        (attempts("retried"), attempts("dead"), attempts("delivered")),
        (3.0, 1.0, 1.0)
    );
    assert_eq!(
        metric_value(&metrics, "flashgate_webhook_notifications_total", &[]),
        2.0
    );
}

#[tokio::test]
async fn deliveries_pending_when_a_gateway_is_killed_are_sent_after_it_restarts() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let slow_retries: Vec<(&str, &str)> = QUICK_RETRIES
        .iter()
        .copied()
        .filter(|(k, _)| !k.ends_with("BACKOFF_INITIAL_MS"))
        .chain([("FLASHGATE_WEBHOOKS__BACKOFF_INITIAL_MS", "3000")])
        .collect();
    let mut gateway = GatewayProcess::start_with(&settings, &slow_retries);
    gateway.wait_ready().await;
    let receiver = Receiver::start(503).await;
    let (status, _) = admin_call(
        &gateway,
        Method::POST,
        "/v1/admin/webhooks",
        Some(json!({"url": receiver.url(), "events": ["stock.out"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for sku in ["HOOK-K1", "HOOK-K2", "HOOK-K3"] {
        sell_out(&gateway, sku).await;
    }
    // Each was tried once and waits for its next attempt when the gateway dies.
    receiver.wait_for(3, Duration::from_secs(20)).await;
    gateway.kill_9();
    receiver.answer(200);

    let mut restarted = GatewayProcess::start_with(&settings, &slow_retries);
    restarted.wait_ready().await;
    let got = receiver.wait_for(6, Duration::from_secs(20)).await;
    let mut delivered: Vec<String> = got
        .iter()
        .filter(|d| d.answered == 200)
        .map(|d| d.json()["data"]["sku"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        ["HOOK-K1", "HOOK-K2", "HOOK-K3"],
        "each delivered once"
    );
}

#[tokio::test]
async fn webhook_targets_inside_the_network_are_refused_unless_allowed() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let app = spawn_app_with(settings.clone()).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "ftp://example.com/hook",
        "https://user:password@example.com/hook",
        "not a url",
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/admin/webhooks",
                json!({"url": url, "events": ["stock.out"]}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
            "{url}: {:?}",
            r.body
        );
    }
    // The rest of the body is checked too.
    let mut allowed = settings.clone();
    allowed.webhooks.allow_private_targets = true;
    let app = spawn_app_with(allowed).await;
    for body in [
        json!({"url": "http://127.0.0.1:9/hook", "events": []}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.gone"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.out"], "skus": []}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.out"], "skus": ["no spaces"]}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.out"], "secret": "hunter2"}),
        json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.out"], "extra": 1}),
    ] {
        let r = app
            .admin(Method::POST, "/v1/admin/webhooks", body.clone())
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {:?}",
            r.body
        );
    }
    let given = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["stock.out", "stock.out", "stock.low"],
                   "skus": ["A-1"], "secret": given}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["secret"], given.as_str());
    assert_eq!(r.body["events"], json!(["stock.out", "stock.low"]));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let (_, generated) = register(
        &app,
        json!({"url": "http://127.0.0.1:9/other", "events": ["stock.low"]}),
    )
    .await;
    assert!(generated.starts_with("whsec_") && generated.len() > 40);

    // Listed without their secrets, page by page.
    let r = app
        .send(
            Method::GET,
            "/v1/admin/webhooks?limit=1",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["webhooks"][0]["id"], id.as_str());
    assert!(r.body["webhooks"][0].get("secret").is_none());
    let next = r.body["next"].as_str().unwrap().to_owned();
    let r = app
        .send(
            Method::GET,
            &format!("/v1/admin/webhooks?limit=1&cursor={next}"),
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(r.body["webhooks"].as_array().unwrap().len(), 1);
    assert!(
        r.body["webhooks"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/other")
    );

    // Shoppers reach none of it; unknown ids are 404.
    let r = app
        .send(
            Method::GET,
            "/v1/admin/webhooks",
            Some(&token("shopper")),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let path = format!("/v1/admin/webhooks/{id}");
    let r = app
        .send(Method::DELETE, &path, Some(&admin_token()), &[], None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .send(Method::DELETE, &path, Some(&admin_token()), &[], None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "unknown-webhook")
    );
    let r = app
        .send(
            Method::GET,
            &format!("{path}/deliveries"),
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "unknown-webhook")
    );
    let r = app
        .send(
            Method::POST,
            "/v1/admin/webhook-deliveries/nope/retry",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "unknown-delivery")
    );
}
