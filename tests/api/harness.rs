//! Real servers for the integration tests, and a gateway per test.
//!
//! The first test that needs Redis starts, once per test binary, a standalone
//! `redis-server` and a Redis Cluster of three masters on free loopback ports,
//! each in its own directory under the system temp dir. A reaper shell waits
//! for the test process to exit (however it exits, `kill -9` included), then
//! stops those servers and removes the directory.
//!
//! The same goes for PostgreSQL: one throwaway cluster per test binary
//! (`initdb` as the `postgres` user when the tests run as root, fsync off),
//! on a free port, in the same directory.
//!
//! Each test gets its own gateway on port 0 with its own key prefix and its
//! own journal database, so tests share the servers without seeing each
//! other's data.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use flashgate::{
    app::App,
    auth::{Auth, Role},
    config::Settings,
    inventory::AccountId,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const TEST_SECRET: &str = "flashgate-test-secret-0123456789";
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Standalone,
    Cluster,
}

pub struct Servers {
    pub standalone_port: u16,
    pub cluster_ports: Vec<u16>,
    pub postgres_port: u16,
}

impl Servers {
    pub fn url(&self, backend: Backend) -> String {
        match backend {
            Backend::Standalone => format!("redis://127.0.0.1:{}", self.standalone_port),
            Backend::Cluster => {
                let nodes: Vec<String> = self.cluster_ports[1..]
                    .iter()
                    .map(|p| format!("node=127.0.0.1:{p}"))
                    .collect();
                format!(
                    "redis-cluster://127.0.0.1:{}?{}",
                    self.cluster_ports[0],
                    nodes.join("&")
                )
            }
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

fn require(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{binary}` is not installed: run `sudo apt-get install {package}` (or ./scripts/test.sh, which installs it)"
    );
}

/// A port free for both the client port and the cluster bus port (+10000).
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let port = probe.local_addr().expect("probe address").port();
        drop(probe);
        if port > 50_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < SERVER_START_TIMEOUT,
            "{what} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_redis(dir: &Path, port: u16, cluster: bool) -> u32 {
    std::fs::create_dir_all(dir).expect("create a redis dir");
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"]);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "2000"]);
    }
    // The reaper, not this process, ends the server (see the module docs).
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_until("redis-server", || {
        redis_cli(port, &["ping"]).trim() == "PONG"
    });
    child.id()
}

/// Stops `pids` and removes `dir` once this test process is gone.
fn spawn_reaper(pids: &[u32], dir: &Path) {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 0.5; done; kill {pids} 2>/dev/null; \
         sleep 1; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
        test = std::process::id(),
        pids = pids.join(" "),
        dir = dir.display(),
    );
    // Outlives this process on purpose: it is what cleans up after it.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the reaper");
}

fn start_servers() -> Servers {
    require("redis-server", "redis-server");
    require("redis-cli", "redis-tools");
    let root: PathBuf = std::env::temp_dir().join(format!("flashgate-test-{}", std::process::id()));
    let mut taken = Vec::new();
    let mut pids = Vec::new();

    let standalone_port = free_port(&taken);
    taken.push(standalone_port);
    pids.push(start_redis(
        &root.join("standalone"),
        standalone_port,
        false,
    ));

    let mut cluster_ports = Vec::new();
    for i in 0..3 {
        let port = free_port(&taken);
        taken.push(port);
        pids.push(start_redis(&root.join(format!("cluster-{i}")), port, true));
        cluster_ports.push(port);
    }
    let postgres_port = free_port(&taken);
    pids.push(start_postgres(&root.join("postgres"), postgres_port));
    spawn_reaper(&pids, &root);

    let nodes: Vec<String> = cluster_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run redis-cli --cluster create");
    assert!(status.success(), "redis-cli --cluster create failed");
    for port in &cluster_ports {
        wait_until("the cluster", || {
            redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok")
        });
    }
    Servers {
        standalone_port,
        cluster_ports,
        postgres_port,
    }
}

/// The directory of the newest installed PostgreSQL server binaries.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries are not installed: run `sudo apt-get install postgresql` \
             (or ./scripts/test.sh, which installs it)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the `postgres` user when this process is root
/// (`initdb` and `postgres` refuse to run as root).
fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn start_postgres(dir: &Path, port: u16) -> u32 {
    require("psql", "postgresql-client");
    let bin = postgres_bin();
    std::fs::create_dir_all(dir).expect("create the postgres dir");
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown the postgres dir");
        assert!(status.success(), "chown the postgres dir");
    }
    let data = dir.join("data");
    let status = as_postgres_user(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run initdb");
    assert!(status.success(), "initdb failed in {}", data.display());
    // The reaper, not this process, ends the server (see the module docs).
    #[allow(clippy::zombie_processes)]
    let child = as_postgres_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir)
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    wait_until("postgres", || psql(port, "postgres", "SELECT 1").is_some());
    child.id()
}

/// Runs one SQL command with psql; the unaligned output, or None on failure.
pub fn psql(port: u16, database: &str, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

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
    dir: PathBuf,
    pid: Option<u32>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        require("redis-server", "redis-server");
        let port = free_port(&servers().ports(Backend::Cluster));
        let dir = std::env::temp_dir().join(format!(
            "flashgate-test-{}-private-{port}",
            std::process::id()
        ));
        let mut redis = Self {
            port,
            dir,
            pid: None,
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
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_until("redis-server to die", || {
                redis_cli(self.port, &["ping"]).trim() != "PONG"
            });
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn resume(&mut self) {
        let pid = start_redis(&self.dir, self.port, false);
        spawn_reaper(&[pid], &self.dir);
        self.pid = Some(pid);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
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
    s.redis.url = servers().url(backend);
    s.redis.key_prefix = prefix.to_owned();
    s.redis.partitions = 64;
    s.postgres.url = fresh_database();
    s.journal.reconcile_interval_ms = 200;
    s.journal.reconcile_settle_ms = 200;
    s.auth.secret = Some(TEST_SECRET.into());
    s.expiry.sweep_interval_ms = 100;
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

pub fn token(account: &str) -> String {
    let account = AccountId::parse(account).expect("a valid account");
    Auth::new(TEST_SECRET).issue(&account, Role::Shopper, 3600)
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
