//! Throwaway local servers for `flashgate-dev demo`, `flashgate-dev bench` and the
//! integration tests: `redis-server` (standalone, or a cluster of masters)
//! and a PostgreSQL cluster from the installed binaries, on free loopback
//! ports, under one directory in the system temp dir.
//!
//! Cleanup has two layers. Dropping the [`DevStack`] stops every process it
//! started and removes the directory. A reaper (a detached shell started
//! with the stack) waits for the owning process to exit, however it exits
//! (`kill -9` included), then does the same, unless the stack was kept
//! ([`DevStack::keep`], the demo's `--keep`).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// How long a server may take to answer after it was started.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The newest port handed out; the cluster bus port (+10,000) must stay valid.
const PORT_MAX: u16 = 50_000;

/// How much a PostgreSQL of the stack keeps through a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync and synchronous commit off: fast, for data thrown away anyway
    /// (tests, the demo).
    Throwaway,
    /// PostgreSQL's defaults, as in production: what `bench` measures.
    Durable,
}

/// One node of a cluster the stack started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNode {
    pub port: u16,
    pub pid: u32,
}

/// What the stack's processes are started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    ClusterNode,
}

struct Process {
    /// The process to signal (for PostgreSQL, the postmaster, which may be
    /// a grandchild when `runuser` started it).
    pid: u32,
    child: Child,
}

/// Servers started by this process, stopped and removed on drop.
pub struct DevStack {
    dir: PathBuf,
    processes: Vec<Process>,
    ports: Vec<u16>,
    kept: bool,
    /// Certificates the servers started from now on present, TLS only.
    tls: Option<ServerTls>,
}

/// PEM files of a server certificate, its key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl DevStack {
    /// A new directory `flashgate-<label>-<pid>` with a reaper watching it.
    pub fn create(label: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("flashgate-{label}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        spawn_reaper(&dir)?;
        Ok(Self {
            dir,
            processes: Vec::new(),
            ports: Vec::new(),
            kept: false,
            tls: None,
        })
    }

    /// Servers started after this speak TLS only, with `tls`: Redis on its
    /// `--tls-port` (cluster bus included), PostgreSQL with `ssl=on` and
    /// `hostssl`-only client rules.
    pub fn with_tls(&mut self, tls: ServerTls) -> &mut Self {
        self.tls = Some(tls);
        self
    }

    /// `redis-cli` against a server of this stack (over TLS when it has).
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        cmd.args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A loopback port no server of this stack uses, whose cluster bus port
    /// (+10,000) is free too.
    pub fn free_port(&mut self) -> u16 {
        loop {
            let Ok(probe) = TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let Ok(port) = probe.local_addr().map(|a| a.port()) else {
                continue;
            };
            drop(probe);
            if port > PORT_MAX || self.ports.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                self.ports.push(port);
                return port;
            }
        }
    }

    /// Starts a process in its own process group (so a Ctrl-C meant for the
    /// owner reaches it only through the owner's cleanup), with its output
    /// in `<dir>/<name>.log`. Returns its pid.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> anyhow::Result<u32> {
        let log = File::create(self.dir.join(format!("{name}.log")))
            .with_context(|| format!("creating the log of {name}"))?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating a log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.processes.push(Process { pid, child });
        self.record_pid(pid)?;
        Ok(pid)
    }

    /// Adds `pid` to the list the reaper stops.
    fn record_pid(&self, pid: u32) -> anyhow::Result<()> {
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))
            .context("opening the pid list")?;
        writeln!(pids, "{pid}").context("writing the pid list")
    }

    /// One `redis-server` on `port` (nothing persisted), answering PING.
    pub fn redis_on(&mut self, port: u16, mode: RedisMode) -> anyhow::Result<u32> {
        require("redis-server", "redis-server")?;
        require("redis-cli", "redis-tools")?;
        let dir = self.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).context("creating a redis directory")?;
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
            None => {
                cmd.args(["--port", &port.to_string()]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--logfile", "redis.log"]);
        if mode == RedisMode::ClusterNode {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        let pid = self.spawn(&format!("redis-{port}"), cmd)?;
        wait_until("redis-server", || {
            self.cli(port, &["ping"]).trim() == "PONG"
        })?;
        Ok(pid)
    }

    /// A standalone Redis on a free port; returns the port.
    pub fn redis(&mut self) -> anyhow::Result<u16> {
        let port = self.free_port();
        self.redis_on(port, RedisMode::Standalone)?;
        Ok(port)
    }

    /// A Redis Cluster of `masters` masters (no replicas), every slot
    /// covered; returns the masters' ports.
    pub fn redis_cluster(&mut self, masters: usize) -> anyhow::Result<Vec<u16>> {
        let nodes = self.redis_cluster_with_replicas(masters, 0)?;
        Ok(nodes.into_iter().map(|n| n.port).collect())
    }

    /// A Redis Cluster of `masters` masters with `replicas` replicas each
    /// (`cluster-node-timeout` 2000 ms), every slot covered and every
    /// replica in sync; returns every node, masters first.
    pub fn redis_cluster_with_replicas(
        &mut self,
        masters: usize,
        replicas: usize,
    ) -> anyhow::Result<Vec<ClusterNode>> {
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let port = self.free_port();
            let pid = self.redis_on(port, RedisMode::ClusterNode)?;
            nodes.push(ClusterNode { port, pid });
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        self.create_cluster(&ports, replicas)?;
        if replicas > 0 {
            for node in &nodes {
                wait_until("the replicas", || {
                    let info = self.cli(node.port, &["info", "replication"]);
                    info.contains("role:master")
                        && info.contains(&format!("connected_slaves:{replicas}"))
                        || info.contains("master_link_status:up")
                })?;
            }
        }
        Ok(nodes)
    }

    fn create_cluster(&mut self, ports: &[u16], replicas: usize) -> anyhow::Result<()> {
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cli = Command::new("redis-cli");
        if let Some(tls) = &self.tls {
            cli.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = cli
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for port in ports {
            wait_until("the cluster", || {
                self.cli(*port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            })?;
        }
        Ok(())
    }

    /// A PostgreSQL cluster (trust auth) on a free port, with a database
    /// `flashgate`; returns the port.
    pub fn postgres(&mut self, durability: Durability) -> anyhow::Result<u16> {
        require("psql", "postgresql-client")?;
        let bin = postgres_bin()?;
        let dir = self.dir.join("postgres");
        std::fs::create_dir_all(&dir).context("creating the postgres directory")?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .context("chown the postgres directory")?;
            if !status.success() {
                bail!("chown postgres {} failed", dir.display());
            }
        }
        let data = dir.join("data");
        let out = as_postgres_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = self.free_port();
        let mut cmd = as_postgres_user(&bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&dir)
            .args(["-c", "max_connections=300"]);
        if let Some(tls) = &self.tls {
            let (cert, key) = postgres_tls_files(&data, tls)?;
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        if durability == Durability::Throwaway {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        let launcher = self.spawn("postgres", cmd)?;
        wait_until("postgres", || psql(port, "postgres", "SELECT 1").is_some())?;
        // Signal the postmaster itself: `runuser` may stand between.
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
        if let (Some(pid), Some(process)) = (postmaster, self.processes.last_mut())
            && process.pid == launcher
        {
            process.pid = pid;
            self.record_pid(pid)?;
        }
        if psql(port, "postgres", "CREATE DATABASE flashgate").is_none() {
            bail!("creating the flashgate database failed");
        }
        Ok(port)
    }

    /// Stops one process now, as a crash would (`kill -9`), and waits for it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.processes.iter().position(|p| p.pid == pid) {
            let mut process = self.processes.swap_remove(i);
            signal("-KILL", process.pid);
            let _ = process.child.wait();
        }
    }

    /// Leaves every server running after this process exits; returns the
    /// shell command that stops them and removes the directory.
    pub fn keep(mut self) -> String {
        self.kept = true;
        let _ = File::create(self.dir.join("keep"));
        // Newest first, as on drop: the gateway stops before the servers it
        // uses, instead of retrying them through its whole grace period.
        let pids: Vec<String> = self
            .processes
            .iter()
            .rev()
            .map(|p| p.pid.to_string())
            .collect();
        // Waits for each process to exit before removing its files.
        format!(
            "for p in {pids}; do kill -INT $p 2>/dev/null; \
             while kill -0 $p 2>/dev/null; do sleep 0.2; done; done; rm -rf {dir}",
            pids = pids.join(" "),
            dir = self.dir.display()
        )
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Newest first: the gateway before the servers it uses.
        for process in self.processes.iter().rev() {
            signal("-INT", process.pid);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for process in self.processes.iter_mut().rev() {
            while process.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process.child.try_wait().ok().flatten().is_none() {
                signal("-KILL", process.pid);
                let _ = process.child.kill();
                let _ = process.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops the stack's processes and removes `dir` once this process is gone,
/// unless `<dir>/keep` exists by then.
fn spawn_reaper(dir: &Path) -> anyhow::Result<()> {
    let script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; \
         [ -e '{dir}/keep' ] && exit 0; \
         pids=$(cat '{dir}/pids' 2>/dev/null); \
         [ -n \"$pids\" ] && kill -INT $pids 2>/dev/null && sleep 2 && kill -9 $pids 2>/dev/null; \
         rm -rf '{dir}'",
        owner = std::process::id(),
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
        .context("starting the reaper (setsid, from util-linux)")?;
    Ok(())
}

/// Fails with the Debian package to install when `binary` is not on PATH.
pub fn require(binary: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!("`{binary}` is not installed: run `sudo apt-get install {package}`");
    }
    Ok(())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > SERVER_START_TIMEOUT {
            bail!("{what} did not become ready within {SERVER_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Copies the certificate and key into the data directory, where the server
/// user owns them (PostgreSQL refuses a key others can read), and lets TCP
/// clients in over TLS only.
fn postgres_tls_files(data: &Path, tls: &ServerTls) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let cert = data.join("server.crt");
    let key = data.join("server.key");
    std::fs::copy(&tls.cert, &cert).context("copying the postgres certificate")?;
    std::fs::copy(&tls.key, &key).context("copying the postgres key")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .context("restricting the postgres key")?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .context("writing pg_hba.conf")?;
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&cert)
            .arg(&key)
            .arg(data.join("pg_hba.conf"))
            .status()
            .context("chown the postgres certificate")?;
        if !status.success() {
            bail!("chown of the postgres certificate failed");
        }
    }
    Ok((cert, key))
}

/// Runs `redis-cli -p port args…`; its standard output (empty on failure).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// The `redis.url` of a cluster whose masters listen on `ports`.
pub fn cluster_url(ports: &[u16]) -> String {
    let nodes: Vec<String> = ports[1..]
        .iter()
        .map(|p| format!("node=127.0.0.1:{p}"))
        .collect();
    format!("redis-cluster://127.0.0.1:{}?{}", ports[0], nodes.join("&"))
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

/// The directory of the newest installed PostgreSQL server binaries.
pub fn postgres_bin() -> anyhow::Result<PathBuf> {
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
    found.pop().context(
        "PostgreSQL server binaries are not installed: run `sudo apt-get install postgresql`",
    )
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
