//! A gateway process that `demo` and `bench` start on their own servers:
//! this same binary running `serve`, configured through environment
//! variables, its output in the stack's directory.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::bail;
use hyper::{Method, StatusCode};

use super::Conn;
use crate::devstack::DevStack;

/// How long a started gateway may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct GatewayProcess {
    pub pid: u32,
    pub addr: SocketAddr,
    pub secret: String,
}

impl GatewayProcess {
    /// Starts `flashgate serve` on a free port with `settings` as
    /// `FLASHGATE_<SECTION>__<KEY>` pairs (e.g. `("redis__url", …)`) and a
    /// fresh auth secret, then waits until it is ready.
    pub async fn start(stack: &mut DevStack, settings: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = crate::gateway_binary()?;
        let port = stack.free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let secret = format!("flashgate-local-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .env_remove("FLASHGATE_CONFIG")
            .env("FLASHGATE_HTTP__LISTEN", addr.to_string())
            .env("FLASHGATE_AUTH__SECRET", &secret)
            .env("FLASHGATE_LOG__LEVEL", "warn");
        for (key, value) in settings {
            cmd.env(format!("FLASHGATE_{}", key.to_uppercase()), value);
        }
        let pid = stack.spawn("gateway", cmd)?;
        let gateway = Self { pid, addr, secret };
        gateway.wait_ready(stack).await?;
        Ok(gateway)
    }

    async fn wait_ready(&self, stack: &DevStack) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut conn = Conn::new(self.addr);
        loop {
            let ready = conn.send(Method::GET, "/readyz", None, None).await;
            if ready.is_ok_and(|r| r.status == StatusCode::OK) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log = stack.dir().join("gateway.log");
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "the gateway was not ready within {READY_TIMEOUT:?}; its log ({}):\n{tail}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU time (user + system) the gateway has used so far, from /proc.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }
}

/// User + system CPU time of process `pid` (Linux /proc; clock ticks of
/// 1/100 s, the kernel's USER_HZ on every Linux architecture in use).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}
