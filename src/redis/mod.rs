//! Redis: client setup, key layout, script registry, the per-partition
//! batcher and typed script calls.
//!
//! One `Redis` value is shared by every request. It owns a fred pool that
//! reconnects forever; each command carries the configured timeout, so a
//! request can always be answered (with 503 when Redis cannot decide).
//! The layer returns replies and the events its scripts appended; it knows
//! nothing of the journal that writes them (see `crate::service`).

pub mod batch;
pub mod buckets;
pub mod calls;
pub mod carts;
pub mod health;
pub mod keys;
pub mod reply;
pub mod route;
pub mod scripts;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{FromValue, MultipleKeys, MultipleValues},
    util::redis_keyslot,
};

use metrics::Histogram;

use crate::{
    config::{RedisSettings, Settings},
    inventory::{Partition, Sku},
    metrics as names,
};
use health::{Health, Reached};
pub use keys::Keys;
pub use scripts::{ScriptName, Scripts};

/// Failures of the Redis layer, as the HTTP layer needs to tell them apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// The partition's pending list is full (`redis.batch_pending_max`):
    /// Redis is not keeping up, and the request is shed.
    #[error("the batch pending list of {script} is full")]
    Overloaded { script: &'static str },
    /// Redis could not answer in time (down, failing over, overloaded): the
    /// request may be retried.
    #[error("redis unavailable during {script}: {source}")]
    Unavailable {
        script: &'static str,
        #[source]
        source: fred::error::Error,
    },
    /// Redis answered with an error no retry will fix (a script bug).
    #[error("redis refused {script}: {source}")]
    Refused {
        script: &'static str,
        #[source]
        source: fred::error::Error,
    },
    /// The SKU (or, while this gateway checks it after a failover, its
    /// whole slot) is fenced: Redis may have lost writes the journal has,
    /// and nothing is sold from that state until it is rebuilt. Nothing ran.
    #[error("{script} refused: the sku is fenced until it is rebuilt from the journal")]
    Fenced { script: &'static str },
    /// A script replied with something this gateway does not understand.
    #[error("unexpected reply from {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
}

/// Who a Redis command is for: a request waits for its node within its
/// timeout; background work (sweeper, reconciler, rebuild, orphan releases)
/// skips a node that is backing off (see `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Request,
    Background,
}

/// Numbers the typed calls pass to scripts, fixed at start.
#[derive(Debug, Clone)]
pub struct CallLimits {
    pub hold_ttl_ms: u64,
    pub idempotency_ttl_ms: u64,
    pub record_retention_ms: u64,
    pub operation_ttl_ms: u64,
    pub expiry_batch: u32,
    pub stream_max_len: u64,
    pub busy_retries: u32,
    pub busy_retry_delay: Duration,
    pub batch_size_max: usize,
    pub batch_pending_max: usize,
    pub confirm_wait_replicas: u32,
    pub hold_wait_replicas: u32,
    pub wait_timeout_ms: u64,
}

impl CallLimits {
    fn from_settings(s: &Settings) -> Self {
        Self {
            hold_ttl_ms: s.reservation.ttl_seconds * 1000,
            idempotency_ttl_ms: s.reservation.idempotency_ttl_seconds * 1000,
            record_retention_ms: s.reservation.record_retention_seconds * 1000,
            operation_ttl_ms: s.reservation.operation_ttl_seconds * 1000,
            expiry_batch: s.expiry.batch_max,
            stream_max_len: s.redis.stream_max_len,
            busy_retries: s.redis.busy_retries,
            busy_retry_delay: Duration::from_millis(s.redis.busy_retry_delay_ms),
            batch_size_max: s.redis.batch_size_max,
            batch_pending_max: s.redis.batch_pending_max,
            confirm_wait_replicas: s.redis.confirm_wait_replicas,
            hold_wait_replicas: s.redis.hold_wait_replicas,
            wait_timeout_ms: s.redis.wait_timeout_ms,
        }
    }
}

/// What every call needs: connections, scripts, key layout and limits.
/// Shared by the `Redis` handle and the batch lanes' tasks.
pub struct Core {
    /// fred's own client of the whole deployment: every command on a
    /// standalone Redis; on a cluster, only deployment-wide ones (the
    /// partition count).
    pool: Pool,
    /// How the standalone server has answered (each cluster master has its
    /// own, in `route`).
    health: Arc<Health>,
    /// On a cluster, scripts go to the master of their slot (see `route`).
    slots: Option<Arc<route::Slots>>,
    scripts: Scripts,
    keys: Keys,
    limits: CallLimits,
    /// Each script's latency histogram, in `ScriptName::ALL` order, built
    /// once so a call does not look its labels up.
    latency: Vec<Histogram>,
}

pub struct Redis {
    core: Arc<Core>,
    reserves: batch::Lanes<calls::ReserveBatch>,
    settles: batch::Lanes<calls::SettleBatch>,
}

/// Replies that only mean "not now": retried a few times, then 503.
fn is_busy(err: &fred::error::Error) -> bool {
    let d = err.details();
    ["TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"]
        .iter()
        .any(|p| d.starts_with(p))
}

fn is_noscript(err: &fred::error::Error) -> bool {
    err.details().starts_with("NOSCRIPT")
}

/// Sorts a failed command into what the HTTP layer needs, and counts it.
pub(crate) fn classify(script: &'static str, source: fred::error::Error) -> RedisError {
    use fred::error::ErrorKind::*;
    let error = match source.kind() {
        IO | Timeout | Canceled | Cluster | Routing | Backpressure | NotFound => {
            RedisError::Unavailable { script, source }
        }
        _ if is_busy(&source) => RedisError::Unavailable { script, source },
        _ => RedisError::Refused { script, source },
    };
    count_error(script, error.kind());
    error
}

/// Every `kind` label of `flashgate_redis_errors_total`.
const ERROR_KINDS: [&str; 11] = [
    "unavailable",
    "refused",
    "reply",
    "noscript",
    "busy",
    "overloaded",
    "moved",
    "unrouted",
    "unreplicated",
    "fenced",
    "backing_off",
];

fn count_error(script: &'static str, kind: &'static str) {
    metrics::counter!(names::REDIS_ERRORS_TOTAL, "script" => script, "kind" => kind).increment(1);
}

impl RedisError {
    /// The `kind` label of `flashgate_redis_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Refused { .. } => "refused",
            Self::Reply { .. } => "reply",
            Self::Overloaded { .. } => "overloaded",
            Self::Fenced { .. } => "fenced",
        }
    }
}

impl Redis {
    /// Connects, checks the partition count, and loads every script (a
    /// script that does not compile fails the start).
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let pool = build_pool(&settings.redis)?;
        let connect_timeout = Duration::from_millis(settings.redis.connect_timeout_ms);
        pool.connect();
        tokio::time::timeout(connect_timeout, pool.wait_for_connect())
            .await
            .with_context(|| format!("redis at {} did not answer in time", settings.redis.url))?
            .with_context(|| format!("connecting to redis at {}", settings.redis.url))?;
        let base = config(&settings.redis)?;
        let slots = match base.server {
            ServerConfig::Clustered { .. } => Some(
                tokio::time::timeout(
                    connect_timeout,
                    route::Slots::connect(&settings.redis, base.clone()),
                )
                .await
                .context("the cluster's slots could not be read in time")??,
            ),
            _ => None,
        };
        let core = Core {
            pool,
            health: Arc::new(Health::new(match &base.server {
                ServerConfig::Centralized { server } => server.to_string(),
                _ => "redis".to_owned(),
            })),
            slots,
            scripts: Scripts::default(),
            keys: Keys::new(&settings.redis.key_prefix, settings.redis.partitions),
            limits: CallLimits::from_settings(settings),
            latency: ScriptName::ALL
                .iter()
                .map(|s| metrics::histogram!(names::REDIS_SCRIPT_DURATION_SECONDS, "script" => s.stem()))
                .collect(),
        };
        for script in ScriptName::ALL {
            // Exported at 0 from the start: a rate over a counter that
            // appears with its first error would miss that error.
            for kind in ERROR_KINDS {
                metrics::counter!(names::REDIS_ERRORS_TOTAL, "script" => script.stem(), "kind" => kind)
                    .increment(0);
            }
        }
        core.check_partitions().await?;
        core.load_scripts().await.context("loading lua scripts")?;
        let core = Arc::new(core);
        Ok(Self {
            reserves: batch::Lanes::new(core.clone()),
            settles: batch::Lanes::new(core.clone()),
            core,
        })
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Readiness of the connections: every client in the pool must answer,
    /// since requests are spread over all of them.
    pub async fn ping(&self) -> Result<(), fred::error::Error> {
        for client in self.core.pool.clients() {
            client.ping::<String>(None).await?;
        }
        if let Some(slots) = &self.core.slots {
            for client in slots.all_clients() {
                client.ping::<String>(None).await?;
            }
        }
        Ok(())
    }

    pub async fn quit(&self) {
        if let Err(e) = self.core.pool.quit().await {
            tracing::debug!(error = %e, "closing redis connections");
        }
        if let Some(slots) = &self.core.slots {
            slots.quit().await;
        }
    }
}

/// The handle is the core plus the batch lanes: keys, limits, the pool and
/// single script calls are the core's.
impl std::ops::Deref for Redis {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Core {
    async fn check_partitions(&self) -> anyhow::Result<()> {
        let wanted = self.keys.partitions().to_string();
        let previous: Option<String> = self
            .pool
            .set(
                self.keys.meta_partitions(),
                wanted.as_str(),
                None,
                Some(SetOptions::NX),
                true,
            )
            .await
            .context("reading the partition count")?;
        match previous {
            Some(p) if p != wanted => bail!(
                "this Redis holds data for {p} partitions but redis.partitions is {wanted}; \
                 the count is fixed for the life of the data"
            ),
            _ => Ok(()),
        }
    }

    /// Loads every script on every primary.
    pub async fn load_scripts(&self) -> Result<(), fred::error::Error> {
        for (_, script) in self.scripts.iter() {
            match &self.slots {
                Some(slots) => {
                    for client in slots.masters() {
                        script.load(&client).await?;
                    }
                }
                None => script.load(self.pool.next()).await?,
            }
        }
        Ok(())
    }

    fn routed_slot(
        &self,
        slot: u16,
        what: &'static str,
    ) -> Result<(Client, Arc<Health>), RedisError> {
        let Some(slots) = &self.slots else {
            return Ok((self.pool.next().clone(), self.health.clone()));
        };
        // Unrouted while no known master serves the slot: a refresh of the
        // slot table is then under way.
        slots.client_for(slot).ok_or_else(|| {
            slots.refresh_soon();
            count_error(what, "unrouted");
            unrouted(what)
        })
    }

    /// Runs `command` on a client of the node serving `key` (on a cluster,
    /// its slot's master, see `route`), and feeds its outcome to the node's
    /// health. For `Caller::Background` it is refused at once while that
    /// node is backing off after failing to answer (see `health`), so a
    /// dead node costs background work one command timeout per backoff
    /// window, not one per partition per pass.
    pub async fn command<T, F>(
        &self,
        key: &str,
        what: &'static str,
        caller: Caller,
        command: impl FnOnce(Client) -> F,
    ) -> Result<T, RedisError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        let (client, health) = self.routed_slot(redis_keyslot(key.as_bytes()), what)?;
        if caller == Caller::Background && !health.admit_background() {
            count_error(what, "backing_off");
            return Err(backing_off(what));
        }
        let result = command(client).await;
        health.observe(Reached::of(&result));
        result.map_err(|e| classify(what, e))
    }

    /// Whether a background call on partition `p` may go now (see
    /// `health`): `false` while its node is backing off. A `true` may be
    /// that node's probe, so the caller makes its call at once.
    pub fn admits_background(&self, p: Partition) -> bool {
        self.routed_slot(self.slot_of(p), "orphans")
            .is_ok_and(|(_, health)| health.admit_background())
    }

    /// Whether scripts that change stock must refuse `slot` (see `route`).
    fn fenced(&self, slot: u16) -> bool {
        self.slots.as_ref().is_some_and(|s| s.fenced(slot))
    }

    /// The slots fenced after their master changed (none on a standalone
    /// Redis, whose failures the reconciler's drift check finds).
    pub fn fenced_slots(&self) -> route::FencedSlots {
        self.slots
            .as_ref()
            .map(|s| s.fenced_slots())
            .unwrap_or_default()
    }

    /// Lifts a slot's fence; see `route::Slots::unfence`.
    pub fn unfence(&self, slots: &[u16], generation: u64) {
        if let Some(routed) = &self.slots {
            routed.unfence(slots, generation);
        }
    }

    /// Returns when slots are fenced; never on a standalone Redis.
    pub async fn fence_raised(&self) {
        match &self.slots {
            Some(slots) => slots.fence_raised().await,
            None => std::future::pending().await,
        }
    }

    /// The master serving partition `p` (its address; one name for a
    /// standalone Redis), for placing a SKU's stock buckets.
    pub fn master_of(&self, p: Partition) -> Option<String> {
        match &self.slots {
            Some(slots) => slots.master_of(self.slot_of(p)),
            None => Some("standalone".to_owned()),
        }
    }

    /// The cluster slot of partition `p`'s keys.
    pub fn slot_of(&self, p: Partition) -> u16 {
        redis_keyslot(self.keys.events(p).as_bytes())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The leading KEYS and ARGV of every script acting on SKUs of
    /// partition `p` (the convention in lua/prelude.lua); the script's own
    /// keys and arguments follow.
    pub fn partition_call(&self, p: Partition, skus: &[&Sku]) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::with_capacity(2 + 3 * skus.len());
        keys.push(self.keys.due(p));
        keys.push(self.keys.events(p));
        let mut args = Vec::with_capacity(4 + skus.len());
        args.push(self.limits.stream_max_len.to_string());
        args.push(self.keys.stock_channel(p));
        args.push(self.limits.expiry_batch.to_string());
        args.push(skus.len().to_string());
        for sku in skus {
            keys.extend(self.keys.sku_keys(p, sku));
            args.push(sku.as_str().to_owned());
        }
        (keys, args)
    }

    /// `EVALSHA` with NOSCRIPT reload and a bounded retry of busy replies.
    pub async fn eval<R: FromValue>(
        &self,
        name: ScriptName,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, RedisError> {
        self.eval_on(name, keys, args).await.map(|(value, _)| value)
    }

    /// `eval`, then `WAIT replicas` on the connection that ran it: the reply
    /// and how many replicas have its writes (`None` when `replicas` is 0).
    pub async fn eval_replicated<R: FromValue>(
        &self,
        name: ScriptName,
        keys: Vec<String>,
        args: Vec<String>,
        replicas: u32,
    ) -> Result<(R, Option<u32>), RedisError> {
        let (value, client) = self.eval_on(name, keys, args).await?;
        if replicas == 0 {
            return Ok((value, None));
        }
        let timeout = i64::try_from(self.limits.wait_timeout_ms).unwrap_or(i64::MAX);
        let started = tokio::time::Instant::now();
        // A WAIT that fails says nothing was acknowledged.
        let acked: i64 = match client.wait(i64::from(replicas), timeout).await {
            Ok(acked) => acked,
            Err(e) => {
                tracing::debug!(error = %e, script = name.stem(), "WAIT for replicas failed");
                0
            }
        };
        metrics::histogram!(names::REDIS_WAIT_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok((value, Some(u32::try_from(acked.max(0)).unwrap_or(u32::MAX))))
    }

    /// `eval`, with the client that ran the script.
    async fn eval_on<R: FromValue>(
        &self,
        name: ScriptName,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(R, Client), RedisError> {
        let script = self.scripts.get(name);
        let slot = keys.first().map_or(0, |k| redis_keyslot(k.as_bytes()));
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.try_into().map_err(|e| classify(name.stem(), e))?;
        let mut busy_left = self.limits.busy_retries;
        let mut redirects_left = REDIRECTS_MAX;
        let mut reloaded = false;
        let started = tokio::time::Instant::now();
        loop {
            // Checked at every attempt: a redirection's refresh may fence.
            if !name.runs_while_fenced() && self.fenced(slot) {
                return Err(reply::fenced(name));
            }
            let (client, health) = self.routed_slot(slot, name.stem())?;
            let result = client
                .evalsha::<R, _, _, _>(script.sha1().clone(), keys.clone(), args.clone())
                .await;
            health.observe(Reached::of(&result));
            match result {
                Ok(value) => {
                    // Every name has its histogram (built from ALL above).
                    if let Some(latency) = self.latency.get(name as usize) {
                        latency.record(started.elapsed().as_secs_f64());
                    }
                    return Ok((value, client));
                }
                Err(e) if is_noscript(&e) && !reloaded => {
                    reloaded = true;
                    count_error(name.stem(), "noscript");
                    tracing::warn!(script = name.stem(), "NOSCRIPT: reloading scripts");
                    self.load_scripts()
                        .await
                        .map_err(|e| classify(name.stem(), e))?;
                }
                Err(e) if (e.is_moved() || e.is_ask()) && redirects_left > 0 => {
                    // Not run: the slot moved (a failover, a resharding).
                    redirects_left -= 1;
                    count_error(name.stem(), "moved");
                    if let Some(slots) = &self.slots {
                        slots
                            .refresh()
                            .await
                            .map_err(|err| RedisError::Unavailable {
                                script: name.stem(),
                                source: fred::error::Error::new(
                                    fred::error::ErrorKind::Cluster,
                                    format!("{e}; refreshing the slot table: {err:#}"),
                                ),
                            })?;
                    }
                }
                Err(e) if is_busy(&e) && busy_left > 0 => {
                    busy_left -= 1;
                    count_error(name.stem(), "busy");
                    tokio::time::sleep(self.limits.busy_retry_delay).await;
                }
                Err(e) => {
                    if let Some(slots) = &self.slots
                        && unreachable(&e)
                    {
                        slots.refresh_soon();
                    }
                    return Err(classify(name.stem(), e));
                }
            }
        }
    }
}

/// Stock announcements one subscriber buffers before its consumer is said
/// to lag (and drops its sold-out answers).
const ANNOUNCEMENTS_BUFFERED: usize = 16_384;

/// A client for the stock announcement channels, on its own connections
/// (a subscribed connection can send nothing else). Not yet connected.
pub fn build_subscriber(settings: &RedisSettings) -> anyhow::Result<SubscriberClient> {
    builder(settings)?
        .with_performance_config(|perf| {
            perf.default_command_timeout = Duration::from_millis(settings.command_timeout_ms);
            perf.broadcast_channel_capacity = ANNOUNCEMENTS_BUFFERED;
        })
        .build_subscriber_client()
        .context("building the redis subscriber")
}

fn build_pool(settings: &RedisSettings) -> anyhow::Result<Pool> {
    pool_from(settings, config(settings)?)
}

/// A pool of `redis.pool_size` clients of `config` with the command timeout.
fn pool_from(settings: &RedisSettings, config: Config) -> anyhow::Result<Pool> {
    let command_timeout = Duration::from_millis(settings.command_timeout_ms);
    builder_from(settings, config)
        .with_performance_config(|perf| {
            perf.default_command_timeout = command_timeout;
        })
        .build_pool(settings.pool_size)
        .context("building the redis client pool")
}

fn unrouted(what: &'static str) -> RedisError {
    RedisError::Unavailable {
        script: what,
        source: fred::error::Error::new(
            fred::error::ErrorKind::Cluster,
            "no known master serves this slot",
        ),
    }
}

fn backing_off(what: &'static str) -> RedisError {
    RedisError::Unavailable {
        script: what,
        source: fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "the node does not answer; background work backs off from it",
        ),
    }
}

/// Redirections a script call follows (each after a slot table refresh).
const REDIRECTS_MAX: u32 = 2;

/// Whether an error says the node could not be reached (not that it
/// refused the command).
pub(crate) fn unreachable(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind::*;
    matches!(e.kind(), IO | Timeout | Canceled | Cluster)
}

/// The client configuration of `redis.url`; a TLS URL gets a rustls
/// connector trusting `redis.tls_ca_file` (see `crate::tls`).
fn config(settings: &RedisSettings) -> anyhow::Result<Config> {
    let mut config = Config::from_url(settings.url.expose())
        .with_context(|| format!("redis.url {} is not a redis URL", settings.url))?;
    if config.tls.is_some() {
        let client = crate::tls::client_config(settings.tls_ca_file.as_deref())
            .context("setting up TLS for redis")?;
        config.tls = Some(fred::types::config::TlsConnector::from(client).into());
    }
    Ok(config)
}

/// What every client shares: the URL, timeouts and reconnection policy.
fn builder(settings: &RedisSettings) -> anyhow::Result<Builder> {
    Ok(builder_from(settings, config(settings)?))
}

fn builder_from(settings: &RedisSettings, config: Config) -> Builder {
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|conn| {
            conn.connection_timeout = connect_timeout;
            conn.internal_command_timeout = connect_timeout;
            // A command in flight when a connection drops is re-sent; the
            // scripts recognise their own second run (see DESIGN.md).
            conn.max_command_attempts = 3;
        })
        // Reconnect forever (0 attempts = no limit), 50 ms to 2 s apart.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    builder
}
