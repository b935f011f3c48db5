//! Real servers for the integration tests, and a gateway per test.
//!
//! The first test that needs them starts, once per test binary, a standalone
//! `redis-server`, a Redis Cluster of three masters and a throwaway
//! PostgreSQL, through `flashgate_dev::devstack` (the same code that serves
//! `flashgate demo`). The stack lives in a static and is never dropped: its
//! reaper stops the servers and removes their directory once the test
//! process exits, however it exits.
//!
//! Each test gets its own gateway on port 0 with its own key prefix and its
//! own journal database, so tests share the servers without seeing each
//! other's data.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use flashgate::{
    app::App,
    auth::{Auth, Role},
    config::{LimitMode, Settings},
    inventory::AccountId,
};
use flashgate_dev::devstack::{self, DevStack, RedisMode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const TEST_SECRET: &str = "flashgate-test-secret-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Standalone,
    Cluster,
}

pub struct Servers {
    pub standalone_port: u16,
    pub cluster_ports: Vec<u16>,
    pub postgres_port: u16,
    /// Never dropped (it lives in a static): its reaper cleans up.
    _stack: DevStack,
}

impl Servers {
    pub fn url(&self, backend: Backend) -> String {
        match backend {
            Backend::Standalone => format!("redis://127.0.0.1:{}", self.standalone_port),
            Backend::Cluster => devstack::cluster_url(&self.cluster_ports),
        }
    }

    /// Every node serving `backend` (one for standalone, every master for the cluster).
    pub fn ports(&self, backend: Backend) -> Vec<u16> {
        match backend {
            Backend::Standalone => vec![self.standalone_port],
            Backend::Cluster => self.cluster_ports.clone(),
        }
    }
}

const INSTALL_HINT: &str = "(./scripts/test.sh installs the server packages)";

fn start_servers() -> Servers {
    let mut stack = DevStack::create("test").expect("a directory for the test servers");
    let standalone_port = stack.redis().expect(INSTALL_HINT);
    let cluster_ports = stack.redis_cluster(3).expect(INSTALL_HINT);
    let postgres_port = stack
        .postgres(devstack::Durability::Throwaway)
        .expect(INSTALL_HINT);
    Servers {
        standalone_port,
        cluster_ports,
        postgres_port,
        _stack: stack,
    }
}

pub use flashgate_dev::devstack::psql;
use flashgate_dev::devstack::redis_cli;

/// A new, empty database on the test Postgres; returns its URL.
pub fn fresh_database() -> String {
    let port = servers().postgres_port;
    let name = format!("t{}", uuid::Uuid::new_v4().simple());
    let created = (0..20).any(|_| {
        psql(port, "postgres", &format!("CREATE DATABASE {name}")).is_some() || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(created, "could not create database {name}");
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// A standalone Redis of one test's own, which the test may stop and start.
pub struct PrivateRedis {
    pub port: u16,
    pid: Option<u32>,
    stack: DevStack,
}

impl PrivateRedis {
    pub fn start() -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let mut stack = DevStack::create(&format!("test-private{n}")).expect("a directory");
        let port = stack.free_port();
        let mut redis = Self {
            port,
            pid: None,
            stack,
        };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.stack.kill(pid);
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn resume(&mut self) {
        let pid = self
            .stack
            .redis_on(self.port, RedisMode::Standalone)
            .expect(INSTALL_HINT);
        self.pid = Some(pid);
    }
}

pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(start_servers)
}

/// Runs a redis-cli command on every node of `backend`.
pub fn on_every_node(backend: Backend, args: &[&str]) -> Vec<String> {
    servers()
        .ports(backend)
        .into_iter()
        .map(|p| redis_cli(p, args))
        .collect()
}

/// Keys under `prefix` on every node of `backend`.
pub fn keys_under(backend: Backend, prefix: &str) -> Vec<String> {
    on_every_node(backend, &["--scan", "--pattern", &format!("{prefix}:*")])
        .iter()
        .flat_map(|out| out.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect()
}

pub fn unique_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..24])
}

/// Settings for a test gateway: port 0, the test secret, quick sweeps.
pub fn test_settings(backend: Backend, prefix: &str) -> Settings {
    let mut s = Settings::default();
    s.http.listen = "127.0.0.1:0".parse().expect("a socket address");
    s.redis.url = servers().url(backend).into();
    s.redis.key_prefix = prefix.to_owned();
    s.redis.partitions = 64;
    // Dozens of gateways start at once on two cores while the suite runs:
    // the default 2 s to connect is sometimes not enough. Tests of a Redis
    // that does not answer set their own.
    s.redis.connect_timeout_ms = 10_000;
    s.postgres.url = fresh_database().into();
    s.journal.reconcile_interval_ms = 200;
    s.journal.reconcile_settle_ms = 200;
    s.auth.secret = Some(TEST_SECRET.into());
    s.expiry.sweep_interval_ms = 100;
    // Most tests read a view right after changing it; tests/api/live.rs
    // turns the cached view on.
    s.live.read_staleness_ms = 0;
    // Most tests fire many requests from one account and one address; the
    // admission tests turn these limits on themselves.
    s.limits.account.mode = LimitMode::Off;
    s.limits.ip.mode = LimitMode::Off;
    s
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub prefix: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(test_settings(backend, &unique_prefix())).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let prefix = settings.redis.key_prefix.clone();
    let kept = settings.clone();
    let app = App::build(settings).await.expect("the gateway builds");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .expect("an http client");
    TestApp {
        addr,
        prefix,
        settings: kept,
        http,
        stop: Some(stop),
    }
}

/// A client of a test's journal database.
pub async fn journal_db(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the journal database");
    tokio::spawn(connection);
    client
}

/// Deletes every key under `prefix` on every node: Redis losing this
/// deployment's data, as a wipe or a failover to an empty replica would.
pub fn wipe_prefix(backend: Backend, prefix: &str) {
    for port in servers().ports(backend) {
        let script = format!(
            "redis-cli -p {port} --scan --pattern '{prefix}:*' | xargs -r -n 1 redis-cli -p {port} del"
        );
        let status = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .status()
            .expect("run the wipe");
        assert!(status.success(), "wiping {prefix} on {port}");
    }
}

/// A TCP proxy in front of a server that a test can cut (every open
/// connection is dropped and new ones are closed at once) and restore.
pub struct ChaosProxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl ChaosProxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = state.subscribe();
                if *cut_rx.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// A file of this repository.
pub fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn token(account: &str) -> String {
    let account = AccountId::parse(account).expect("a valid account");
    Auth::new(TEST_SECRET).issue(&account, Role::Shopper, 3600)
}

/// Who the tests' direct Redis calls of admin scripts say they are.
pub fn test_staff() -> flashgate::redis::calls::Staff<'static> {
    static ACTOR: std::sync::OnceLock<AccountId> = std::sync::OnceLock::new();
    flashgate::redis::calls::Staff {
        actor: ACTOR.get_or_init(|| AccountId::parse("test-operator").expect("a valid account")),
        request_id: "test-request",
    }
}

pub fn admin_token() -> String {
    let account = AccountId::parse("ops-admin").expect("a valid account");
    Auth::new(TEST_SECRET).issue(&account, Role::Admin, 3600)
}

/// A response, reduced to what the tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem code: the last segment of `type`.
    pub fn code(&self) -> &str {
        self.body["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or("")
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("the gateway answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn reserve(&self, token: &str, body: Value, idempotency_key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("idempotency-key", k)])
            .unwrap_or_default();
        self.send(
            Method::POST,
            "/v1/reservations",
            Some(token),
            &headers,
            Some(body.to_string()),
        )
        .await
    }

    /// An admin request with a JSON body.
    pub async fn admin(&self, method: Method, path: &str, body: Value) -> Reply {
        self.send(
            method,
            path,
            Some(&admin_token()),
            &[],
            Some(body.to_string()),
        )
        .await
    }

    pub async fn set_stock(&self, sku: &str, location: &str, body: Value) -> Reply {
        let path = format!("/v1/admin/inventory/{sku}/locations/{location}");
        self.admin(Method::PUT, &path, body).await
    }

    pub async fn adjust(&self, sku: &str, location: &str, body: Value) -> Reply {
        let path = format!("/v1/admin/inventory/{sku}/locations/{location}/adjustments");
        self.admin(Method::POST, &path, body).await
    }

    /// Creates `sku` with `on_hand` units at `default`, asserting success.
    pub async fn stock(&self, sku: &str, on_hand: i64) {
        let r = self
            .set_stock(sku, "default", json!({ "on_hand": on_hand }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    pub async fn policy(&self, sku: &str, body: Value) -> Reply {
        self.admin(Method::PUT, &format!("/v1/admin/inventory/{sku}"), body)
            .await
    }

    pub async fn view(&self, sku: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v1/inventory/{sku}"),
            None,
            &[],
            None,
        )
        .await
    }

    pub async fn reservation(&self, token: &str, id: &str, action: Option<&str>) -> Reply {
        match action {
            None => {
                self.send(
                    Method::GET,
                    &format!("/v1/reservations/{id}"),
                    Some(token),
                    &[],
                    None,
                )
                .await
            }
            Some(a) => {
                let path = format!("/v1/reservations/{id}/{a}");
                self.send(Method::POST, &path, Some(token), &[], None).await
            }
        }
    }
}

/// Declares an async scenario `fn name(backend: Backend)` as two tests, one
/// per Redis topology: `name::standalone` and `name::cluster`.
#[macro_export]
macro_rules! on_both_topologies {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$name($crate::harness::Backend::Standalone).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name($crate::harness::Backend::Cluster).await
            }
        }
    )+};
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the first series of `name` in a Prometheus text exposition
/// whose labels include `labels`; 0 when there is none.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `flashgate serve` as its own process, so a test can kill it.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: String,
}

/// The `flashgate` binary, configured through the environment for `settings`.
pub fn flashgate(settings: &Settings, command: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    cmd.arg(command)
        .env("FLASHGATE_REDIS__URL", settings.redis.url.expose())
        .env("FLASHGATE_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env(
            "FLASHGATE_REDIS__PARTITIONS",
            settings.redis.partitions.to_string(),
        )
        .env("FLASHGATE_POSTGRES__URL", settings.postgres.url.expose())
        .env("FLASHGATE_AUTH__SECRET", TEST_SECRET)
        .env(
            "FLASHGATE_LIVE__READ_STALENESS_MS",
            settings.live.read_staleness_ms.to_string(),
        )
        .env("FLASHGATE_LOG__LEVEL", "warn");
    // The settings' admission limits too (`test_settings` turns them off,
    // since most tests fire many requests from one account and address).
    let mode = |m| serde_json::to_value(m).expect("a limit mode serialises");
    for (var, m) in [
        ("FLASHGATE_LIMITS__IP__MODE", settings.limits.ip.mode),
        (
            "FLASHGATE_LIMITS__ACCOUNT__MODE",
            settings.limits.account.mode,
        ),
    ] {
        if let serde_json::Value::String(m) = mode(m) {
            cmd.env(var, m);
        }
    }
    cmd
}

/// Runs a one-shot command; its exit code and standard output.
pub fn run_tool(settings: &Settings, args: &[&str]) -> (i32, String) {
    let out = flashgate(settings, args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .output()
        .expect("run flashgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

impl GatewayProcess {
    pub fn start(settings: &Settings) -> Self {
        Self::start_with(settings, &[])
    }

    /// Starts it with more `FLASHGATE_…` variables, e.g.
    /// `("FLASHGATE_LIMITS__ACCOUNT__MODE", "shadow")`.
    pub fn start_with(settings: &Settings, env: &[(&str, &str)]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = flashgate(settings, "serve")
            .env("FLASHGATE_HTTP__LISTEN", &addr)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start flashgate serve");
        Self { child, addr }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sets `on_hand` of `sku` at the default location, as an operator.
    pub async fn stock(&self, sku: &str, on_hand: i64) {
        let url = self.url(&format!("/v1/admin/inventory/{sku}/locations/default"));
        let r = reqwest::Client::new()
            .put(url)
            .bearer_auth(admin_token())
            .json(&serde_json::json!({ "on_hand": on_hand }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "stocking {sku}");
    }

    /// Waits until it answers `/readyz` with 200 (at most 30 s).
    pub async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            let ready = http.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            let exited = self.child.try_wait().expect("the gateway's status");
            assert!(
                start.elapsed() < Duration::from_secs(30) && exited.is_none(),
                "the gateway process never became ready ({exited:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}
