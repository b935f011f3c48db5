//! Settings: every knob flashgate reads, with its unit and its default.
//!
//! Layers, later ones winning: the defaults below, `config/default.toml` (when
//! present in the working directory), the `--config FILE`, then environment
//! variables `FLASHGATE_<SECTION>__<KEY>`. Unknown keys are refused, so a typo
//! in a limit is a start-up error rather than a silently ignored setting.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, bail};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub use crate::secret::{ConnectionUrl, Secret};

/// The secret used when `auth.secret` is not set. Anyone can mint tokens with
/// it: fine on a laptop, never in production (the gateway says so loudly).
pub const DEVELOPMENT_SECRET: &str = "flashgate-development-secret-do-not-use-in-production";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub journal: JournalSettings,
    pub auth: AuthSettings,
    pub reservation: ReservationSettings,
    pub expiry: ExpirySettings,
    pub limits: LimitsSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub live: LiveSettings,
    pub webhooks: WebhookSettings,
    pub cart: CartSettings,
    pub admin: AdminSettings,
    pub buckets: BucketSettings,
}

/// Hot-SKU stock buckets (`service::buckets`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketSettings {
    /// How often every instance evens out the free units of each bucketed
    /// SKU's buckets (0: never).
    pub rebalance_interval_ms: u64,
    /// Buckets whose free units differ by at most this many are left as
    /// they are.
    pub rebalance_slack: i64,
    /// A cap claim this old is checked against its hold by the
    /// rebalancer's claims sweep (a spill takes milliseconds).
    pub claim_check_after_ms: u64,
}

pub const DEFAULT_REBALANCE_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_REBALANCE_SLACK: i64 = 2;
pub const DEFAULT_CLAIM_CHECK_AFTER_MS: u64 = 30_000;

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            rebalance_interval_ms: DEFAULT_REBALANCE_INTERVAL_MS,
            rebalance_slack: DEFAULT_REBALANCE_SLACK,
            claim_check_after_ms: DEFAULT_CLAIM_CHECK_AFTER_MS,
        }
    }
}

/// Operator endpoints' own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Lines one `POST /v1/admin/inventory/import` may hold.
    pub import_lines_max: usize,
    /// How long one import may take, end to end (it is exempt from
    /// `http.request_timeout_ms`).
    pub import_timeout_ms: u64,
}

pub const DEFAULT_IMPORT_LINES_MAX: usize = 10_000;
pub const DEFAULT_IMPORT_TIMEOUT_MS: u64 = 120_000;

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            import_lines_max: DEFAULT_IMPORT_LINES_MAX,
            import_timeout_ms: DEFAULT_IMPORT_TIMEOUT_MS,
        }
    }
}

/// Carts: several SKUs held all or nothing (`service::carts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CartSettings {
    /// Lines one cart may have.
    pub max_lines: usize,
    /// A cart still being placed this long after it began is rolled back
    /// by the recovery sweep (its gateway stopped mid-way).
    pub recovery_seconds: u64,
    /// How often every instance looks for carts to recover or finish.
    pub sweep_interval_ms: u64,
    /// A cart confirmation is refused (409 `reservation-expired`) when
    /// fewer ms than this remain before the cart's deadline, so that no
    /// line expires while the others are confirmed.
    pub confirm_margin_ms: u64,
}

pub const DEFAULT_CART_MAX_LINES: usize = 20;
pub const DEFAULT_CART_RECOVERY_SECONDS: u64 = 10;
pub const DEFAULT_CART_SWEEP_INTERVAL_MS: u64 = 500;
pub const DEFAULT_CART_CONFIRM_MARGIN_MS: u64 = 2_000;

impl Default for CartSettings {
    fn default() -> Self {
        Self {
            max_lines: DEFAULT_CART_MAX_LINES,
            recovery_seconds: DEFAULT_CART_RECOVERY_SECONDS,
            sweep_interval_ms: DEFAULT_CART_SWEEP_INTERVAL_MS,
            confirm_margin_ms: DEFAULT_CART_CONFIRM_MARGIN_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Let webhook URLs reach loopback, link-local and private addresses
    /// (refused by default: a registered URL must not reach the gateway's
    /// own network).
    pub allow_private_targets: bool,
    /// A delivery is delivered when the receiver answers 2xx within this.
    pub timeout_ms: u64,
    /// Wait after the first failed attempt; doubles per attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// The longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// Attempts before a delivery is `dead`.
    pub max_attempts: u32,
    /// Deliveries one instance sends at once.
    pub concurrency: usize,
    /// The deliverer looks for due deliveries at least this often (it is
    /// woken sooner by this instance's journal commits and by the next
    /// retry falling due).
    pub poll_interval_ms: u64,
    /// Registered webhooks at most.
    pub max_webhooks: i64,
    /// Events past a missing journal version wait this long for it before
    /// notifications go on past the gap.
    pub gap_wait_seconds: u64,
    /// CAs (PEM) that `https` receivers' certificates are checked against;
    /// the system's roots when unset.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            timeout_ms: 5_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            max_attempts: 12,
            concurrency: 16,
            poll_interval_ms: 1_000,
            max_webhooks: 1_000,
            gap_wait_seconds: 60,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSettings {
    /// `GET /v1/inventory/{sku}` may answer from a view this old; 0: every
    /// read goes to Redis (and reads back this instance's own writes).
    pub read_staleness_ms: u64,
    /// `Cache-Control: public, max-age=` of that answer, for CDNs and
    /// browsers.
    pub read_max_age_seconds: u64,
    /// SKUs whose views are kept (the least recently read go first).
    pub cached_skus_max: u64,
    /// Stock events one SSE stream gets per second at most; changes in
    /// between are folded into the next event (the newest state always
    /// arrives).
    pub max_updates_per_second: u32,
    /// A comment line on every SSE stream this often, so proxies keep it.
    pub heartbeat_seconds: u64,
    /// SSE streams open at once in this instance; past it, 503 overloaded.
    pub max_subscribers: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            read_staleness_ms: 100,
            read_max_age_seconds: 1,
            cached_skus_max: 100_000,
            max_updates_per_second: 10,
            heartbeat_seconds: 15,
            max_subscribers: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Deadline for a whole request; past it the client gets 503.
    pub request_timeout_ms: u64,
    /// Open connections served at once; past it, new connections wait in
    /// the kernel's listen backlog until one closes.
    pub max_connections: usize,
    /// A client must send a whole request head within this time, counted
    /// from when the gateway starts waiting for it (so it is also how long
    /// an idle keep-alive connection is kept). Slow-header clients are cut.
    pub header_read_timeout_ms: u64,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` names the
    /// client. Anyone else's header is ignored: the socket address is the
    /// client. A bare address is the block of that one address.
    #[serde(deserialize_with = "addresses_or_blocks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `["10.0.0.0/8", "127.0.0.1", "::1"]`: CIDR blocks, or addresses taken
/// as blocks of one.
fn addresses_or_blocks<'de, D>(deserializer: D) -> Result<Vec<ipnet::IpNet>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Vec<String> = Deserialize::deserialize(deserializer)?;
    raw.iter()
        .map(|item| {
            let item = item.trim();
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{item:?} is neither an IP address nor a CIDR block"
                    ))
                })
        })
        .collect()
}

/// The `redis.url` schemes: one server or a cluster, plaintext or TLS.
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "redis-cluster", "rediss-cluster"];

pub const DEFAULT_HTTP_BODY_LIMIT_BYTES: usize = 16 * 1024;
pub const DEFAULT_HTTP_REQUEST_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT_MS: u64 = 10_000;

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: DEFAULT_HTTP_BODY_LIMIT_BYTES,
            request_timeout_ms: DEFAULT_HTTP_REQUEST_TIMEOUT_MS,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            header_read_timeout_ms: DEFAULT_HTTP_HEADER_READ_TIMEOUT_MS,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port` or `redis-cluster://host:port?node=host:port&…`;
    /// `rediss://` and `rediss-cluster://` for TLS.
    pub url: ConnectionUrl,
    /// PEM file of the CAs that sign the servers' certificates (TLS URLs
    /// only). Unset: the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key flashgate writes; lets deployments share a Redis.
    pub key_prefix: String,
    /// Number of partitions SKUs are spread over. Fixed for the life of the
    /// data: a gateway configured with another number refuses to start.
    pub partitions: u32,
    /// Multiplexed connections (per cluster node) in the client pool.
    pub pool_size: usize,
    /// Deadline for one Redis command, shorter than the HTTP deadline.
    pub command_timeout_ms: u64,
    /// Deadline for opening a connection.
    pub connect_timeout_ms: u64,
    /// Extra attempts after TRYAGAIN, CLUSTERDOWN or LOADING.
    pub busy_retries: u32,
    /// Pause before each of those extra attempts.
    pub busy_retry_delay_ms: u64,
    /// Approximate cap on each partition's event stream (XADD MAXLEN ~).
    /// Entries beyond it are trimmed oldest first: size it to hold what the
    /// journal may lag behind (see README, "Event stream").
    pub stream_max_len: u64,
    /// Most requests one batch script call applies (per partition; see
    /// README, "Batching").
    pub batch_size_max: usize,
    /// Requests a partition's pending list holds while its batch is in
    /// flight; past it, new requests get 503 `overloaded`.
    pub batch_pending_max: usize,
    /// Replicas that must have a confirmation (`WAIT` on the node that ran
    /// it) before it is acknowledged; fewer within `wait_timeout_ms`: 503,
    /// and the retry answers the same. 0: no wait.
    pub confirm_wait_replicas: u32,
    /// The same for new holds (0: no wait).
    pub hold_wait_replicas: u32,
    /// Longest `WAIT` for replicas.
    pub wait_timeout_ms: u64,
}

pub const DEFAULT_REDIS_PARTITIONS: u32 = 256;
pub const DEFAULT_REDIS_POOL_SIZE: usize = 4;
pub const DEFAULT_REDIS_COMMAND_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_REDIS_BUSY_RETRIES: u32 = 3;
pub const DEFAULT_REDIS_BUSY_RETRY_DELAY_MS: u64 = 25;
pub const DEFAULT_REDIS_STREAM_MAX_LEN: u64 = 1_000_000;
pub const DEFAULT_REDIS_BATCH_SIZE_MAX: usize = 128;
pub const DEFAULT_REDIS_BATCH_PENDING_MAX: usize = 4_096;

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            tls_ca_file: None,
            key_prefix: "fg".into(),
            partitions: DEFAULT_REDIS_PARTITIONS,
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            command_timeout_ms: DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
            busy_retries: DEFAULT_REDIS_BUSY_RETRIES,
            busy_retry_delay_ms: DEFAULT_REDIS_BUSY_RETRY_DELAY_MS,
            stream_max_len: DEFAULT_REDIS_STREAM_MAX_LEN,
            batch_size_max: DEFAULT_REDIS_BATCH_SIZE_MAX,
            batch_pending_max: DEFAULT_REDIS_BATCH_PENDING_MAX,
            confirm_wait_replicas: 0,
            hold_wait_replicas: 0,
            wait_timeout_ms: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// The journal database; `sslmode=require` (or `prefer`) for TLS,
    /// plaintext when no `sslmode` is given.
    pub url: ConnectionUrl,
    /// PEM file of the CAs that sign the server's certificate (with
    /// `sslmode`). Unset: the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Connections in the pool (writer, reconciler, confirmations, readiness).
    pub pool_size: usize,
    /// Deadline for opening a connection.
    pub connect_timeout_ms: u64,
    /// Longest wait for a free pooled connection.
    pub acquire_timeout_ms: u64,
    /// Server-side deadline for one statement.
    pub statement_timeout_ms: u64,
}

pub const DEFAULT_POSTGRES_POOL_SIZE: usize = 8;
pub const DEFAULT_POSTGRES_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_POSTGRES_ACQUIRE_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS: u64 = 5_000;

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/flashgate".into(),
            tls_ca_file: None,
            pool_size: DEFAULT_POSTGRES_POOL_SIZE,
            connect_timeout_ms: DEFAULT_POSTGRES_CONNECT_TIMEOUT_MS,
            acquire_timeout_ms: DEFAULT_POSTGRES_ACQUIRE_TIMEOUT_MS,
            statement_timeout_ms: DEFAULT_POSTGRES_STATEMENT_TIMEOUT_MS,
        }
    }
}

/// When a confirmation is acknowledged relative to its journal write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmDurability {
    /// 200 only after the confirmation's event is committed in Postgres.
    Sync,
    /// 200 once Redis has it; the journal follows like every other event.
    Async,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    /// Events the queue between requests and the writer holds; past it they
    /// are dropped to the reconciler (they are already in the stream).
    pub queue_capacity: usize,
    /// Most events written in one batch (one statement per table).
    pub batch_size_max: usize,
    /// How long the writer waits for more events before writing a batch.
    pub linger_ms: u64,
    /// Pause between attempts to write a batch Postgres refused.
    pub retry_backoff_ms: u64,
    /// On shutdown, how long the writer may keep draining the queue.
    pub drain_grace_ms: u64,
    /// How often the reconciler passes over every partition.
    pub reconcile_interval_ms: u64,
    /// Stream entries read per partition per pass.
    pub reconcile_entries_max: u64,
    /// Entries younger than this are left to the writer.
    pub reconcile_settle_ms: u64,
    /// `stock_levels` rows compared with Redis per partition per drift check.
    pub drift_rows_max: i64,
    /// A drift check runs every this many reconcile passes.
    pub drift_check_every_passes: u32,
    /// A SKU found to have lost writes in Redis (the journal holds a newer
    /// version: a failover rolled back, Redis restarted without its last
    /// writes) is fenced at once; with this on, it is also rebuilt from the
    /// journal at once, which lifts the fence. Off: it stays fenced (503
    /// `sku-recovering`) until `flashgate rebuild`.
    pub auto_rebuild: bool,
    /// `sync` (a confirm waits for its Postgres commit) or `async`.
    pub confirm_durability: ConfirmDurability,
    /// `sync` confirmations waiting to join a group commit; past it a
    /// confirm is answered 503 at once (its event stays in the stream).
    pub confirm_pending_max: usize,
    /// Most `sync` confirmations committed in one Postgres transaction.
    pub confirm_group_max: usize,
    /// Group commits written at once (each holds one Postgres connection).
    pub confirm_groups_in_flight: usize,
}

pub const DEFAULT_JOURNAL_QUEUE_CAPACITY: usize = 65_536;
pub const DEFAULT_JOURNAL_BATCH_SIZE_MAX: usize = 1_000;
pub const DEFAULT_JOURNAL_LINGER_MS: u64 = 5;
pub const DEFAULT_JOURNAL_RETRY_BACKOFF_MS: u64 = 500;
pub const DEFAULT_JOURNAL_DRAIN_GRACE_MS: u64 = 5_000;
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_RECONCILE_ENTRIES_MAX: u64 = 5_000;
pub const DEFAULT_RECONCILE_SETTLE_MS: u64 = 500;
pub const DEFAULT_DRIFT_ROWS_MAX: i64 = 10_000;
pub const DEFAULT_DRIFT_CHECK_EVERY_PASSES: u32 = 10;
pub const DEFAULT_CONFIRM_PENDING_MAX: usize = 8_192;
pub const DEFAULT_CONFIRM_GROUP_MAX: usize = 512;
pub const DEFAULT_CONFIRM_GROUPS_IN_FLIGHT: usize = 2;

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            queue_capacity: DEFAULT_JOURNAL_QUEUE_CAPACITY,
            batch_size_max: DEFAULT_JOURNAL_BATCH_SIZE_MAX,
            linger_ms: DEFAULT_JOURNAL_LINGER_MS,
            retry_backoff_ms: DEFAULT_JOURNAL_RETRY_BACKOFF_MS,
            drain_grace_ms: DEFAULT_JOURNAL_DRAIN_GRACE_MS,
            reconcile_interval_ms: DEFAULT_RECONCILE_INTERVAL_MS,
            reconcile_entries_max: DEFAULT_RECONCILE_ENTRIES_MAX,
            reconcile_settle_ms: DEFAULT_RECONCILE_SETTLE_MS,
            drift_rows_max: DEFAULT_DRIFT_ROWS_MAX,
            drift_check_every_passes: DEFAULT_DRIFT_CHECK_EVERY_PASSES,
            auto_rebuild: true,
            confirm_durability: ConfirmDurability::Sync,
            confirm_pending_max: DEFAULT_CONFIRM_PENDING_MAX,
            confirm_group_max: DEFAULT_CONFIRM_GROUP_MAX,
            confirm_groups_in_flight: DEFAULT_CONFIRM_GROUPS_IN_FLIGHT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 secret for shopper and admin tokens. Unset: the development
    /// secret, announced with a warning at start.
    pub secret: Option<Secret>,
    /// Longest lifetime a token may have (`exp` minus `iat`, or minus now
    /// without `iat`); longer ones get 401. 0: no limit.
    pub max_token_lifetime_seconds: u64,
    /// An identity provider's keys (a JWKS document) for RS256 and ES256
    /// tokens, read from this file...
    pub jwks_file: Option<std::path::PathBuf>,
    /// ...or fetched from this `http`/`https` URL (not both).
    pub jwks_url: Option<String>,
    /// The keys are read again this often, and at most every few seconds
    /// when a token names a key the gateway does not know (a rotation).
    pub jwks_refresh_seconds: u64,
    /// RS256/ES256 tokens must carry this `iss` (unset: not checked).
    pub issuer: Option<String>,
    /// RS256/ES256 tokens must name this `aud` (unset: not checked).
    pub audience: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            secret: None,
            max_token_lifetime_seconds: 86_400,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            issuer: None,
            audience: None,
        }
    }
}

impl AuthSettings {
    pub fn secret_or_development(&self) -> &str {
        self.secret
            .as_ref()
            .map_or(DEVELOPMENT_SECRET, Secret::expose)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationSettings {
    /// How long a hold lasts when the SKU's policy sets no TTL.
    pub ttl_seconds: u64,
    /// Largest `qty` one request may ask for.
    pub max_qty_per_request: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_seconds: u64,
    /// How long a reservation stays readable after its hold ends.
    pub record_retention_seconds: u64,
    /// How long an admin operation's reply is kept to answer a re-sent command.
    pub operation_ttl_seconds: u64,
    /// Longest `seconds` one `POST /v1/reservations/{id}/extend` may ask for.
    pub max_extend_seconds: u32,
    /// No hold lasts longer than this after it was made, extensions
    /// included (409 `hold-limit`).
    pub max_hold_seconds: u64,
}

pub const DEFAULT_RESERVATION_TTL_SECONDS: u64 = 600;
pub const DEFAULT_MAX_QTY_PER_REQUEST: u32 = 10;
pub const DEFAULT_IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;
pub const DEFAULT_RECORD_RETENTION_SECONDS: u64 = 7 * 24 * 3600;
pub const DEFAULT_OPERATION_TTL_SECONDS: u64 = 600;
pub const DEFAULT_MAX_EXTEND_SECONDS: u32 = 600;
pub const DEFAULT_MAX_HOLD_SECONDS: u64 = 3_600;

impl Default for ReservationSettings {
    fn default() -> Self {
        Self {
            ttl_seconds: DEFAULT_RESERVATION_TTL_SECONDS,
            max_qty_per_request: DEFAULT_MAX_QTY_PER_REQUEST,
            idempotency_ttl_seconds: DEFAULT_IDEMPOTENCY_TTL_SECONDS,
            record_retention_seconds: DEFAULT_RECORD_RETENTION_SECONDS,
            operation_ttl_seconds: DEFAULT_OPERATION_TTL_SECONDS,
            max_extend_seconds: DEFAULT_MAX_EXTEND_SECONDS,
            max_hold_seconds: DEFAULT_MAX_HOLD_SECONDS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpirySettings {
    /// How often the sweeper looks for overdue holds in every partition.
    pub sweep_interval_ms: u64,
    /// Most SKUs the sweeper handles per partition per pass.
    pub sweep_skus_max: u32,
    /// Most holds one script call expires (sweeper and lazy expiry alike).
    pub batch_max: u32,
}

pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 500;
pub const DEFAULT_SWEEP_SKUS_MAX: u32 = 100;
pub const DEFAULT_EXPIRY_BATCH_MAX: u32 = 50;

impl Default for ExpirySettings {
    fn default() -> Self {
        Self {
            sweep_interval_ms: DEFAULT_SWEEP_INTERVAL_MS,
            sweep_skus_max: DEFAULT_SWEEP_SKUS_MAX,
            batch_max: DEFAULT_EXPIRY_BATCH_MAX,
        }
    }
}

/// What a limit does with a request past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// Refuse it.
    Enforce,
    /// Count it as refused, and serve it: for trying a limit on live traffic.
    Shadow,
    /// Do not check at all.
    Off,
}

/// A token-bucket rate: `per_second` requests replenished each second, up to
/// `burst` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSettings {
    pub mode: LimitMode,
    pub per_second: u32,
    pub burst: u32,
}

impl RateSettings {
    const fn new(mode: LimitMode, per_second: u32, burst: u32) -> Self {
        Self {
            mode,
            per_second,
            burst,
        }
    }
}

impl Default for RateSettings {
    fn default() -> Self {
        DEFAULT_ACCOUNT_RATE
    }
}

/// Cap on Redis calls in flight from requests (load shedding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InFlightSettings {
    pub mode: LimitMode,
    /// Past this many, a request is answered 503 `overloaded` at once.
    pub max: usize,
}

impl Default for InFlightSettings {
    fn default() -> Self {
        Self {
            mode: LimitMode::Enforce,
            max: DEFAULT_IN_FLIGHT_MAX,
        }
    }
}

/// The local "sold out" answer for SKUs that have nothing left to hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoldOutSettings {
    pub mode: LimitMode,
    /// Longest a SKU is answered locally without news from Redis; a restock,
    /// release or expiry announced on pub/sub ends it sooner.
    pub ttl_ms: u64,
    /// SKUs remembered at once; past it, new sold-out SKUs go to Redis.
    pub skus_max: usize,
}

impl Default for SoldOutSettings {
    fn default() -> Self {
        Self {
            mode: LimitMode::Enforce,
            ttl_ms: DEFAULT_SOLD_OUT_TTL_MS,
            skus_max: DEFAULT_SOLD_OUT_SKUS_MAX,
        }
    }
}

/// Admission control in front of `POST /v1/reservations` (see README, "Admission").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Per account, in this instance (governor).
    pub account: RateSettings,
    /// Per client IP, in this instance (governor).
    pub ip: RateSettings,
    /// Per account, shared by every instance (a GCRA script on Redis; one
    /// more Redis call per reservation, so off by default).
    pub shared: RateSettings,
    /// How often the in-process limiters forget keys whose budget is full
    /// again, and give the memory back.
    pub housekeeping_interval_ms: u64,
    pub in_flight: InFlightSettings,
    pub sold_out: SoldOutSettings,
}

pub const DEFAULT_ACCOUNT_RATE: RateSettings = RateSettings::new(LimitMode::Enforce, 5, 10);
pub const DEFAULT_IP_RATE: RateSettings = RateSettings::new(LimitMode::Enforce, 100, 200);
pub const DEFAULT_SHARED_RATE: RateSettings = RateSettings::new(LimitMode::Off, 5, 10);
pub const DEFAULT_LIMITS_HOUSEKEEPING_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_IN_FLIGHT_MAX: usize = 1_024;
pub const DEFAULT_SOLD_OUT_TTL_MS: u64 = 1_000;
pub const DEFAULT_SOLD_OUT_SKUS_MAX: usize = 100_000;

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            account: DEFAULT_ACCOUNT_RATE,
            ip: DEFAULT_IP_RATE,
            shared: DEFAULT_SHARED_RATE,
            housekeeping_interval_ms: DEFAULT_LIMITS_HOUSEKEEPING_INTERVAL_MS,
            in_flight: InFlightSettings::default(),
            sold_out: SoldOutSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// A second listener serving only `GET /metrics`, so Prometheus can
    /// scrape on an address shoppers cannot reach. `/metrics` stays on
    /// `http.listen` too. None (the default): no second listener.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `flashgate=debug,info`.
    pub level: String,
    /// `auto`, `text` or `json`.
    pub format: LogFormat,
    /// One INFO line per request (`flashgate::access`: method, route,
    /// status, duration, request id).
    pub access: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text, coloured when stderr is a terminal and plain otherwise.
    Auto,
    /// Text without colour codes.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
            access: false,
        }
    }
}

impl Settings {
    /// Loads the layers described in the module docs and validates them.
    pub fn load(config_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let default_file = Path::new("config/default.toml");
        if default_file.exists() {
            figment = figment.merge(Toml::file(default_file));
        }
        if let Some(path) = config_file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("FLASHGATE_").split("__"))
            .extract()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings that would make the gateway unsafe or useless.
    pub fn validate(&self) -> anyhow::Result<()> {
        let prefix_ok = !self.redis.key_prefix.is_empty()
            && self.redis.key_prefix.len() <= 32
            && self
                .redis
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            bail!("redis.key_prefix must be 1-32 characters of [A-Za-z0-9._-]");
        }
        if !(1..=16_384).contains(&self.redis.partitions) {
            bail!("redis.partitions must be between 1 and 16384");
        }
        if self.redis.pool_size == 0 || self.redis.pool_size > 64 {
            bail!("redis.pool_size must be between 1 and 64");
        }
        if self.redis.command_timeout_ms == 0
            || self.redis.command_timeout_ms >= self.http.request_timeout_ms
        {
            bail!("redis.command_timeout_ms must be positive and below http.request_timeout_ms");
        }
        if self.redis.stream_max_len < 1_000 {
            bail!("redis.stream_max_len must be at least 1000");
        }
        // A batch is one EVALSHA whose KEYS and ARGV grow with it; Lua's
        // `unpack` bounds what one call can pass on.
        if !(1..=1_000).contains(&self.redis.batch_size_max) {
            bail!("redis.batch_size_max must be between 1 and 1000");
        }
        if !(1..=1_000_000).contains(&self.redis.batch_pending_max) {
            bail!("redis.batch_pending_max must be between 1 and 1000000");
        }
        if self.reservation.ttl_seconds == 0 || self.reservation.ttl_seconds > 86_400 {
            bail!("reservation.ttl_seconds must be between 1 and 86400");
        }
        if self.reservation.max_extend_seconds == 0
            || self.reservation.max_hold_seconds < self.reservation.ttl_seconds
        {
            bail!(
                "reservation.max_extend_seconds must be positive and reservation.max_hold_seconds \
                 at least reservation.ttl_seconds"
            );
        }
        if !(1..=1_000_000).contains(&self.admin.import_lines_max)
            || self.admin.import_timeout_ms < self.http.request_timeout_ms
        {
            bail!(
                "admin.import_lines_max must be from 1 to 1000000 and admin.import_timeout_ms \
                 at least http.request_timeout_ms"
            );
        }
        if !(1..=100).contains(&self.cart.max_lines) {
            bail!("cart.max_lines must be between 1 and 100");
        }
        if self.cart.recovery_seconds == 0 || self.cart.sweep_interval_ms == 0 {
            bail!("cart.recovery_seconds and cart.sweep_interval_ms must be positive");
        }
        if self.cart.recovery_seconds * 1000 <= 2 * self.http.request_timeout_ms {
            bail!(
                "cart.recovery_seconds must be longer than twice http.request_timeout_ms: a cart's \
                 own request must have given up before the sweep takes the cart over"
            );
        }
        if !(1..=1_000).contains(&self.reservation.max_qty_per_request) {
            bail!("reservation.max_qty_per_request must be between 1 and 1000");
        }
        if self.reservation.idempotency_ttl_seconds == 0
            || self.reservation.operation_ttl_seconds == 0
        {
            bail!("reservation.idempotency_ttl_seconds and operation_ttl_seconds must be positive");
        }
        if self.journal.confirm_pending_max == 0
            || self.journal.confirm_group_max == 0
            || self.journal.confirm_groups_in_flight == 0
        {
            bail!(
                "journal.confirm_pending_max, confirm_group_max and confirm_groups_in_flight \
                 must be positive"
            );
        }
        if self.expiry.sweep_interval_ms == 0
            || self.expiry.sweep_skus_max == 0
            || self.expiry.batch_max == 0
        {
            bail!("expiry.sweep_interval_ms, sweep_skus_max and batch_max must be positive");
        }
        if !(1..=256).contains(&self.postgres.pool_size) {
            bail!("postgres.pool_size must be between 1 and 256");
        }
        let j = &self.journal;
        if j.queue_capacity == 0 || j.batch_size_max == 0 || j.reconcile_entries_max == 0 {
            bail!(
                "journal.queue_capacity, batch_size_max and reconcile_entries_max must be positive"
            );
        }
        if j.batch_size_max > 10_000 {
            bail!("journal.batch_size_max must be at most 10000");
        }
        if j.reconcile_interval_ms == 0 || j.drift_check_every_passes == 0 || j.drift_rows_max <= 0
        {
            bail!(
                "journal.reconcile_interval_ms, drift_check_every_passes and drift_rows_max \
                 must be positive"
            );
        }
        if self.http.body_limit_bytes < 256 {
            bail!("http.body_limit_bytes must be at least 256");
        }
        self.validate_urls()?;
        if self.live.cached_skus_max == 0 {
            bail!("live.cached_skus_max must be positive");
        }
        if self.live.max_updates_per_second == 0 || self.live.max_updates_per_second > 1000 {
            bail!("live.max_updates_per_second must be 1-1000");
        }
        if self.live.heartbeat_seconds == 0 || self.live.max_subscribers == 0 {
            bail!("live.heartbeat_seconds and live.max_subscribers must be positive");
        }
        self.validate_http_and_limits()?;
        if self.auth.jwks_file.is_some() && self.auth.jwks_url.is_some() {
            bail!("set auth.jwks_file or auth.jwks_url, not both");
        }
        if self.auth.jwks_refresh_seconds == 0 {
            bail!("auth.jwks_refresh_seconds must be positive");
        }
        if let Some(url) = &self.auth.jwks_url {
            crate::outbound::target::Target::parse(url)
                .map_err(|e| anyhow::anyhow!("auth.jwks_url: {e}"))?;
        }
        let w = &self.webhooks;
        if w.timeout_ms == 0 || w.backoff_initial_ms == 0 || w.poll_interval_ms == 0 {
            bail!("webhooks.timeout_ms, backoff_initial_ms and poll_interval_ms must be positive");
        }
        if w.backoff_max_ms < w.backoff_initial_ms {
            bail!("webhooks.backoff_max_ms must be at least webhooks.backoff_initial_ms");
        }
        if !(1..=100).contains(&w.max_attempts) || !(1..=1000).contains(&w.concurrency) {
            bail!("webhooks.max_attempts must be 1-100 and webhooks.concurrency 1-1000");
        }
        if w.max_webhooks <= 0 {
            bail!("webhooks.max_webhooks must be positive");
        }
        if matches!(&self.auth.secret, Some(s) if s.expose().len() < 16) {
            bail!("auth.secret must be at least 16 bytes");
        }
        Ok(())
    }

    /// URLs that cannot be parsed are configuration errors (exit 64), not
    /// connection failures; the message names them without a password.
    fn validate_urls(&self) -> anyhow::Result<()> {
        let redis = &self.redis.url;
        // fred takes any scheme for a single server.
        let scheme = redis.expose().split_once("://").map(|(s, _)| s);
        if !scheme.is_some_and(|s| REDIS_SCHEMES.contains(&s)) {
            bail!(
                "redis.url {redis} is not a redis URL: the scheme must be one of {}",
                REDIS_SCHEMES.join(", ")
            );
        }
        fred::types::config::Config::from_url(redis.expose()).map_err(|e| {
            anyhow::anyhow!("redis.url {redis} is not a redis URL: {}", e.details())
        })?;
        let postgres = &self.postgres.url;
        if postgres.expose().parse::<tokio_postgres::Config>().is_err() {
            bail!("postgres.url {postgres} is not a postgres URL");
        }
        for (name, file) in [
            ("redis.tls_ca_file", &self.redis.tls_ca_file),
            ("postgres.tls_ca_file", &self.postgres.tls_ca_file),
        ] {
            if let Some(path) = file.as_ref().filter(|p| !p.is_file()) {
                bail!("{name} {} is not a readable file", path.display());
            }
        }
        Ok(())
    }

    fn validate_http_and_limits(&self) -> anyhow::Result<()> {
        if self.http.max_connections == 0 || self.http.header_read_timeout_ms == 0 {
            bail!("http.max_connections and http.header_read_timeout_ms must be positive");
        }
        let l = &self.limits;
        for (name, rate) in [
            ("account", &l.account),
            ("ip", &l.ip),
            ("shared", &l.shared),
        ] {
            if rate.per_second == 0 || rate.burst == 0 {
                bail!("limits.{name}.per_second and limits.{name}.burst must be positive");
            }
        }
        if l.housekeeping_interval_ms == 0 || l.in_flight.max == 0 {
            bail!("limits.housekeeping_interval_ms and limits.in_flight.max must be positive");
        }
        if l.sold_out.ttl_ms == 0 || l.sold_out.skus_max == 0 {
            bail!("limits.sold_out.ttl_ms and limits.sold_out.skus_max must be positive");
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_file_matches_the_built_in_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml");
        let from_file: Settings = Figment::from(Toml::file(path)).extract().unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Figment::from(Toml::string("[http]\nlisten_typo = \"x\""))
            .extract::<Settings>()
            .unwrap_err();
        assert!(err.to_string().contains("listen_typo"), "{err}");
    }

    #[test]
    fn trusted_proxies_take_bare_addresses_and_blocks() {
        let toml = "[http]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]";
        let s: Settings = Figment::from(Toml::string(toml)).extract().unwrap();
        let shown: Vec<String> = s
            .http
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let env_like = Figment::from(Serialized::defaults(Settings::default())).merge(
            Toml::string("[http]\ntrusted_proxies = [\"not-an-address\"]"),
        );
        let err = env_like.extract::<Settings>().unwrap_err();
        assert!(err.to_string().contains("not-an-address"), "{err}");
    }

    #[test]
    fn urls_that_do_not_parse_are_configuration_errors_without_their_password() {
        let mut s = Settings::default();
        s.redis.url = "htp://user:s3cret@nope".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("redis.url") && !err.contains("s3cret"),
            "{err}"
        );
        let mut s = Settings::default();
        s.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("redis.tls_ca_file"), "{err}");
        let mut s = Settings::default();
        s.postgres.url = "postgres://fg:s3cret@db:notaport/x".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("postgres.url") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn a_key_prefix_with_a_brace_is_refused() {
        let mut s = Settings::default();
        s.redis.key_prefix = "fg{x}".into();
        assert!(s.validate().is_err());
    }
}
