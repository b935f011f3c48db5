//! The Postgres side of the journal: the connection pool, migrations, and
//! every statement flashgate runs against the journal tables.
//!
//! `apply` is the one write path for events (writer, reconciler and
//! synchronous confirmations alike): one transaction, one statement per
//! table, idempotent. Events insert with `ON CONFLICT DO NOTHING`;
//! `reservations` and `stock_levels` take an event only when its SKU version
//! is newer than the row's, so replaying any events in any order leaves the
//! tables as the newest event says.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::{NoTls, config::SslMode};

use super::committed::Committed;
use crate::config::PostgresSettings;
use crate::events::Event;
use crate::inventory::Partition;

mod embedded {
    refinery::embed_migrations!("src/journal/migrations");
}

/// Key of the session advisory lock that serialises migrations, so several
/// instances can start at once ("flashgate" in ASCII, as an i64).
const MIGRATION_LOCK: i64 = 0x666c_6173_6867_6174;
/// First key of the two-key advisory locks the reconciler takes per partition.
pub const RECONCILE_LOCK: i32 = 0x6667_7263;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no postgres connection: {0}")]
    Pool(#[from] PoolError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("unexpected journal data: {0}")]
    Corrupt(String),
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// What `apply` committed, for the reconciler (see `committed`).
    committed: Arc<Committed>,
    /// Bumped after each `apply` commit: change-feed long polls wake on it.
    journaled: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped after an `apply` commit that made stock notifications: the
    /// webhook deliverer wakes on it.
    notified: Arc<tokio::sync::watch::Sender<u64>>,
}

/// A place in the change feed: the writing transaction and the row's
/// sequence number. Rendered as `<xid>.<seq>`; clients treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    pub xid: u64,
    pub seq: i64,
}

impl FeedCursor {
    pub fn parse(raw: &str) -> Option<Self> {
        let (xid, seq) = raw.split_once('.')?;
        Some(Self {
            xid: xid.parse().ok()?,
            seq: seq.parse().ok().filter(|s: &i64| *s >= 0)?,
        })
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.xid, self.seq)
    }
}

/// One `inventory_events` row as the change feed shows it.
#[derive(Debug, Clone)]
pub struct FeedRow {
    pub cursor: FeedCursor,
    pub kind: String,
    pub sku: String,
    pub location: String,
    pub reservation_id: Option<String>,
    pub account_id: Option<String>,
    pub qty: i32,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    pub version: i64,
    pub occurred_at_ms: i64,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
}

/// A SKU's sale policy as the journal keeps it; `None` where unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRow {
    pub max_per_account: Option<i64>,
    pub opens_at_ms: Option<i64>,
    pub closes_at_ms: Option<i64>,
    pub hold_ttl_seconds: Option<i64>,
    pub seller: Option<String>,
    pub admit_per_second: Option<i64>,
    pub admission_ttl_seconds: Option<i64>,
    /// The partitions of the SKU's stock buckets, comma separated.
    pub buckets: Option<String>,
}

/// Who changed a SKU's policy, at which version, to what.
#[derive(Debug, Clone)]
pub struct PolicyChange<'a> {
    pub version: i64,
    pub actor: &'a str,
    pub request_id: &'a str,
    /// The policy after the change, as the API answers it.
    pub policy: &'a serde_json::Value,
}

/// One `stock_levels` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub sku: String,
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub low_stock_threshold: i64,
    pub backorder_limit: i64,
    pub version: i64,
}

/// One `reservations` row, times in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub location: String,
    pub account_id: String,
    pub qty: i64,
    pub state: String,
    pub backorder: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub updated_at_ms: i64,
    pub stream_id: String,
}

impl Store {
    /// Builds the pool; connections open on first use.
    pub fn new(settings: &PostgresSettings) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = settings
            .url
            .expose()
            .parse()
            .with_context(|| format!("postgres.url {} is not a postgres URL", settings.url))?;
        config.connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
        config.options(format!(
            "-c statement_timeout={}",
            settings.statement_timeout_ms
        ));
        if config.get_application_name().is_none() {
            config.application_name("flashgate");
        }
        if !crate::tls::names_sslmode(settings.url.expose()) {
            config.ssl_mode(SslMode::Disable);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.get_ssl_mode() {
            SslMode::Disable => Manager::from_config(config, NoTls, manager_config),
            _ => {
                let client = crate::tls::client_config(settings.tls_ca_file.as_deref())
                    .context("setting up TLS for postgres")?;
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client);
                Manager::from_config(config, tls, manager_config)
            }
        };
        let acquire = Some(Duration::from_millis(settings.acquire_timeout_ms));
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: acquire,
                create: Some(Duration::from_millis(settings.connect_timeout_ms)),
                recycle: acquire,
            })
            .build()
            .context("building the postgres pool")?;
        Ok(Self {
            pool,
            committed: Arc::default(),
            journaled: Arc::new(tokio::sync::watch::channel(0).0),
            notified: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The stream entries `apply` has committed that no pass has passed yet.
    pub fn committed(&self) -> &Committed {
        &self.committed
    }

    /// Runs pending migrations under an advisory lock, then records the
    /// partition count or refuses one that differs from the recorded count.
    pub async fn migrate(&self, partitions: u32) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("connecting to postgres")?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .context("taking the migration lock")?;
        let report = embedded::migrations::runner()
            .set_migration_table_name("flashgate_schema_history")
            .run_async(&mut **client)
            .await;
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        let report = report.context("running the journal migrations")?;
        unlock.context("releasing the migration lock")?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "applied journal migration");
        }
        let wanted = i32::try_from(partitions).context("redis.partitions")?;
        client
            .execute(
                "INSERT INTO flashgate_meta (partitions) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&wanted],
            )
            .await?;
        let recorded: i32 = client
            .query_one("SELECT partitions FROM flashgate_meta", &[])
            .await?
            .get(0);
        if recorded != wanted {
            bail!(
                "this journal was written with {recorded} partitions but redis.partitions is \
                 {wanted}; the count is fixed for the life of the data"
            );
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Writes the events in one transaction; returns how many were new.
    pub async fn apply(&self, events: &[Event]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let applied = apply_in(&tx, events).await?;
        tx.commit().await?;
        self.committed.record(events);
        if applied.inserted > 0 {
            self.journaled.send_modify(|n| *n += 1);
        }
        if applied.notifications > 0 {
            self.notified.send_modify(|n| *n += 1);
        }
        Ok(applied.inserted)
    }

    /// Changes each time this instance's writer commits new events.
    pub fn journaled(&self) -> tokio::sync::watch::Receiver<u64> {
        self.journaled.subscribe()
    }

    /// Changes each time this instance's writer commits events that made
    /// stock notifications.
    pub fn notified(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notified.subscribe()
    }

    /// Up to `limit` journal events after `after` (from the start when
    /// `None`), of `sku` when given, in journal order. Only transactions
    /// older than every one still running are read, so nothing can be
    /// committed later behind the last row returned.
    pub async fn feed(
        &self,
        after: Option<FeedCursor>,
        sku: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FeedRow>, StoreError> {
        const COLUMNS: &str = "SELECT journal_xid::text, journal_seq, kind, sku, location,
                 reservation_id, account_id, qty, on_hand_after, reserved_after, version,
                 (extract(epoch FROM occurred_at) * 1000)::int8, reason, reference, actor,
                 request_id
             FROM inventory_events
             WHERE (journal_xid, journal_seq) > ($1::text::xid8, $2)
               AND journal_xid < pg_snapshot_xmin(pg_current_snapshot())";
        const ORDER: &str = "ORDER BY journal_xid, journal_seq LIMIT $3";
        let client = self.pool.get().await?;
        let after = after.unwrap_or(FeedCursor { xid: 0, seq: -1 });
        let xid = after.xid.to_string();
        // Two statements, so that each gets the plan of its index.
        let rows = match sku {
            None => {
                let sql = format!("{COLUMNS} {ORDER}");
                client.query(&sql, &[&xid, &after.seq, &limit]).await?
            }
            Some(sku) => {
                // A SKU's events and its stock buckets'.
                let sql = format!(
                    "{COLUMNS} AND (sku = $4 OR starts_with(sku, $4 || '{}')) {ORDER}",
                    crate::inventory::BUCKET_MARK
                );
                client
                    .query(&sql, &[&xid, &after.seq, &limit, &sku])
                    .await?
            }
        };
        rows.iter().map(feed_row).collect()
    }

    /// A finished import's body digest and result, by account and key.
    pub async fn stock_import(
        &self,
        account: &str,
        key: &str,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT digest, result::text FROM stock_imports
                 WHERE account_id = $1 AND idempotency_key = $2",
                &[&account, &key],
            )
            .await?;
        Ok(row.map(|r| {
            let result: String = r.get(1);
            (r.get(0), serde_json::from_str(&result).unwrap_or_default())
        }))
    }

    /// Keeps a finished import's result; the first one kept stays.
    pub async fn save_stock_import(
        &self,
        account: &str,
        key: &str,
        digest: &str,
        result: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO stock_imports (account_id, idempotency_key, digest, result)
                 VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
                &[&account, &key, &digest, &result.to_string()],
            )
            .await?;
        Ok(())
    }

    /// Keeps the SKU's policy and the change that made it, in one
    /// transaction.
    pub async fn save_policy(
        &self,
        sku: &str,
        policy: &PolicyRow,
        change: &PolicyChange<'_>,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO sku_policies AS p (sku, max_per_account, opens_at, closes_at,
                 hold_ttl_seconds, seller, admit_per_second, admission_ttl_seconds, buckets,
                 updated_at)
             VALUES ($1, $2::int8, to_timestamp($3::int8 / 1000.0), to_timestamp($4::int8 / 1000.0),
                 $5::int8, $6, $7::int8, $8::int8, $9, now())
             ON CONFLICT (sku) DO UPDATE SET max_per_account = EXCLUDED.max_per_account,
                 opens_at = EXCLUDED.opens_at, closes_at = EXCLUDED.closes_at,
                 hold_ttl_seconds = EXCLUDED.hold_ttl_seconds, seller = EXCLUDED.seller,
                 admit_per_second = EXCLUDED.admit_per_second,
                 admission_ttl_seconds = EXCLUDED.admission_ttl_seconds,
                 buckets = EXCLUDED.buckets, updated_at = now()",
            &[
                &sku,
                &policy.max_per_account,
                &policy.opens_at_ms,
                &policy.closes_at_ms,
                &policy.hold_ttl_seconds,
                &policy.seller,
                &policy.admit_per_second,
                &policy.admission_ttl_seconds,
                &policy.buckets,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO policy_changes (sku, version, actor, request_id, policy)
             VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[
                &sku,
                &change.version,
                &change.actor,
                &change.request_id,
                &change.policy.to_string(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn policy(&self, sku: &str) -> Result<PolicyRow, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT max_per_account, (extract(epoch FROM opens_at) * 1000)::bigint,
                     (extract(epoch FROM closes_at) * 1000)::bigint, hold_ttl_seconds, seller,
                     admit_per_second, admission_ttl_seconds, buckets
                 FROM sku_policies WHERE sku = $1",
                &[&sku],
            )
            .await?;
        Ok(row.map_or_else(PolicyRow::default, |r| PolicyRow {
            max_per_account: r.get(0),
            opens_at_ms: r.get(1),
            closes_at_ms: r.get(2),
            hold_ttl_seconds: r.get(3),
            seller: r.get(4),
            admit_per_second: r.get(5),
            admission_ttl_seconds: r.get(6),
            buckets: r.get(7),
        }))
    }

    /// Every SKU the journal knows, in order.
    pub async fn skus(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT sku FROM stock_levels
                 UNION SELECT sku FROM sku_policies WHERE buckets IS NOT NULL
                 ORDER BY sku",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `stock_levels` rows of one partition (at most `limit`), or of one SKU.
    pub async fn stock(&self, filter: StockFilter<'_>) -> Result<Vec<StockRow>, StoreError> {
        let client = self.pool.get().await?;
        let columns = "sku, location, on_hand, reserved, safety_stock, low_stock_threshold,
                       backorder_limit, version";
        let rows = match filter {
            StockFilter::Partition { partition, limit } => {
                let sql = format!(
                    "SELECT {columns} FROM stock_levels WHERE partition = $1
                     ORDER BY sku, location LIMIT $2"
                );
                let partition = pg_partition(partition);
                client.query(&sql, &[&partition, &limit]).await?
            }
            StockFilter::Sku(sku) => {
                let sql =
                    format!("SELECT {columns} FROM stock_levels WHERE sku = $1 ORDER BY location");
                client.query(&sql, &[&sku]).await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| StockRow {
                sku: r.get(0),
                location: r.get(1),
                on_hand: r.get(2),
                reserved: r.get(3),
                safety_stock: r.get(4),
                low_stock_threshold: r.get(5),
                backorder_limit: r.get(6),
                version: r.get(7),
            })
            .collect())
    }

    /// A SKU's reservations that still matter to Redis: every live hold and
    /// confirmation (they count towards caps), and the rest while their
    /// records would still be readable (`retention_ms` after their end).
    pub async fn reservations_to_restore(
        &self,
        sku: &str,
        retention_ms: i64,
    ) -> Result<Vec<ReservationRow>, StoreError> {
        let client = self.pool.get().await?;
        let ms = |c: &str| format!("(extract(epoch FROM {c}) * 1000)::bigint");
        let sql = format!(
            "SELECT reservation_id, location, account_id, qty, state, backorder,
                 {}, {}, {}, stream_id
             FROM reservations
             WHERE sku = $1 AND (state IN ('held', 'confirmed')
                 OR updated_at > now() - make_interval(secs => $2::float8))
             ORDER BY reservation_id",
            ms("COALESCE(created_at, updated_at)"),
            ms("COALESCE(expires_at, updated_at)"),
            ms("updated_at"),
        );
        let retention_seconds = retention_ms as f64 / 1000.0;
        let rows = client.query(&sql, &[&sku, &retention_seconds]).await?;
        Ok(rows
            .iter()
            .map(|r| ReservationRow {
                reservation_id: r.get(0),
                location: r.get(1),
                account_id: r.get(2),
                qty: i64::from(r.get::<_, i32>(3)),
                state: r.get(4),
                backorder: r.get(5),
                created_at_ms: r.get(6),
                expires_at_ms: r.get(7),
                updated_at_ms: r.get(8),
                stream_id: r.get(9),
            })
            .collect())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum StockFilter<'a> {
    Partition { partition: Partition, limit: i64 },
    Sku(&'a str),
}

/// The partition's checkpoint, `None` before the first one.
pub async fn checkpoint(
    client: &impl GenericClient,
    partition: i32,
) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(
            "SELECT stream_id FROM journal_checkpoints WHERE partition = $1",
            &[&partition],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn set_checkpoint(
    client: &impl GenericClient,
    partition: i32,
    stream_id: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO journal_checkpoints (partition, stream_id, updated_at)
             VALUES ($1, $2, now())
             ON CONFLICT (partition) DO UPDATE
             SET stream_id = EXCLUDED.stream_id, updated_at = now()",
            &[&partition, &stream_id],
        )
        .await?;
    Ok(())
}

/// The stream ids among `ids` that `inventory_events` does not hold yet.
pub async fn missing(
    client: &impl GenericClient,
    partition: i32,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT id FROM unnest($2::text[]) AS t(id)
             WHERE NOT EXISTS (SELECT 1 FROM inventory_events e
                               WHERE e.partition = $1 AND e.stream_id = t.id)",
            &[&partition, &ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn feed_row(r: &tokio_postgres::Row) -> Result<FeedRow, StoreError> {
    let xid: String = r.try_get(0)?;
    Ok(FeedRow {
        cursor: FeedCursor {
            // An xid8 prints as its decimal value.
            xid: xid
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("journal_xid {xid}")))?,
            seq: r.try_get(1)?,
        },
        kind: r.try_get(2)?,
        sku: r.try_get(3)?,
        location: r.try_get(4)?,
        reservation_id: r.try_get(5)?,
        account_id: r.try_get(6)?,
        qty: r.try_get(7)?,
        on_hand_after: r.try_get(8)?,
        reserved_after: r.try_get(9)?,
        version: r.try_get(10)?,
        occurred_at_ms: r.try_get(11)?,
        reason: r.try_get(12)?,
        reference: r.try_get(13)?,
        actor: r.try_get(14)?,
        request_id: r.try_get(15)?,
    })
}

/// The three statements of `Store::apply`, inside the caller's transaction.
/// Rows are sorted by key so concurrent writers lock them in one order.
/// What one `apply_in` wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Applied {
    /// Events not journaled before.
    pub inserted: u64,
    /// Stock notifications they made.
    pub notifications: u64,
}

pub async fn apply_in(
    client: &impl GenericClient,
    events: &[Event],
) -> Result<Applied, StoreError> {
    let inserted = insert_events(client, events).await?;
    upsert_reservations(client, events).await?;
    let notifications = super::notifications::record(client, &inserted).await?;
    upsert_stock(client, events).await?;
    Ok(Applied {
        inserted: inserted.len() as u64,
        notifications,
    })
}

/// A partition as the journal tables store it. `redis.partitions` is at
/// most 16,384, so the conversion never saturates.
pub fn pg_partition(p: Partition) -> i32 {
    i32::try_from(p.0).unwrap_or(i32::MAX)
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

/// Inserts the events not journaled yet; returns those it inserted.
async fn insert_events<'e>(
    client: &impl GenericClient,
    events: &'e [Event],
) -> Result<Vec<&'e Event>, StoreError> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| (a.partition.0, &a.stream_id).cmp(&(b.partition.0, &b.stream_id)));
    let col = |f: fn(&Event) -> i64| sorted.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let partitions: Vec<i32> = sorted.iter().map(|e| pg_partition(e.partition)).collect();
    let ids: Vec<&str> = sorted.iter().map(|e| e.stream_id.as_str()).collect();
    let kinds: Vec<&str> = sorted.iter().map(|e| e.kind.as_str()).collect();
    let skus: Vec<&str> = sorted.iter().map(|e| e.sku.as_str()).collect();
    let locs: Vec<&str> = sorted.iter().map(|e| e.location.as_str()).collect();
    let rids: Vec<Option<&str>> = sorted
        .iter()
        .map(|e| e.reservation.as_ref().map(|r| r.id.as_str()))
        .collect();
    let accts: Vec<Option<&str>> = sorted
        .iter()
        .map(|e| e.reservation.as_ref().map(|r| r.account.as_str()))
        .collect();
    let qtys: Vec<i32> = sorted.iter().map(|e| clamp_i32(e.qty())).collect();
    let reasons: Vec<Option<&str>> = sorted.iter().map(|e| e.reason.as_deref()).collect();
    let refs: Vec<Option<&str>> = sorted.iter().map(|e| e.reference.as_deref()).collect();
    let actors: Vec<Option<&str>> = sorted.iter().map(|e| e.actor.as_deref()).collect();
    let requests: Vec<Option<&str>> = sorted.iter().map(|e| e.request_id.as_deref()).collect();
    // Prepared once per connection: these statements run with every
    // journal write.
    let insert = client
        .prepare_cached(
            "WITH inserted AS (
             INSERT INTO inventory_events (partition, stream_id, kind, sku, location,
                 reservation_id, account_id, qty, on_hand_after, reserved_after, version,
                 occurred_at, reason, reference, safety_stock_after, low_stock_threshold_after,
                 backorder_limit_after, actor, request_id)
             SELECT p, s, k, sku, loc, rid, acct, qty, oh, rs, ver, to_timestamp(ts / 1000.0),
                 reason, ref, ss, lt, bl, actor, req
             FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::text[], $8::int[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
                 $13::text[], $14::text[], $15::int8[], $16::int8[], $17::int8[], $18::text[],
                 $19::text[])
                 AS t(p, s, k, sku, loc, rid, acct, qty, oh, rs, ver, ts, reason, ref, ss, lt, bl,
                     actor, req)
             ON CONFLICT DO NOTHING
             RETURNING partition, stream_id
             ), n AS (SELECT count(*) AS n FROM inserted)
             SELECT n, NULL::int, NULL::text FROM n WHERE n = $20
             UNION ALL
             SELECT n, partition, stream_id FROM inserted, n WHERE n < $20",
        )
        .await?;
    let rows = client
        .query(
            &insert,
            &[
                &partitions,
                &ids,
                &kinds,
                &skus,
                &locs,
                &rids,
                &accts,
                &qtys,
                &col(|e| e.on_hand),
                &col(|e| e.reserved),
                &col(|e| e.version),
                &col(|e| e.occurred_at_ms),
                &reasons,
                &refs,
                &col(|e| e.safety_stock),
                &col(|e| e.low_stock_threshold),
                &col(|e| e.backorder_limit),
                &actors,
                &requests,
                &(sorted.len() as i64),
            ],
        )
        .await?;
    // Usually every event is new, and one row says so; otherwise (a replay,
    // or an event given twice) the rows name the ones inserted.
    if let Some(row) = rows.first()
        && row.try_get::<_, i64>(0)? == sorted.len() as i64
    {
        return Ok(sorted);
    }
    // Per partition, the stream ids inserted; `&str` lookups, no clones.
    let mut new: HashMap<i32, std::collections::HashSet<&str>> = HashMap::new();
    for row in &rows {
        let partition: i32 = row.try_get(1)?;
        new.entry(partition).or_default().insert(row.try_get(2)?);
    }
    // `remove`: an event given twice was inserted once.
    Ok(sorted
        .into_iter()
        .filter(|e| {
            new.get_mut(&pg_partition(e.partition))
                .is_some_and(|ids| ids.remove(e.stream_id.as_str()))
        })
        .collect())
}

/// One reservation's row, from the newest of its events in a batch, with
/// what any of them carried: creation, the newest deadline, the cart.
struct NewestEvents<'e> {
    newest: &'e Event,
    created_at_ms: Option<i64>,
    expires_at_ms: Option<(i64, i64)>,
    cart_id: Option<&'e str>,
}

/// The newest state of each reservation in the batch.
fn newest_per_reservation(events: &[Event]) -> Vec<NewestEvents<'_>> {
    let mut newest: HashMap<&str, NewestEvents<'_>> = HashMap::new();
    for e in events {
        let Some(r) = &e.reservation else { continue };
        let row = newest.entry(r.id.as_str()).or_insert(NewestEvents {
            newest: e,
            created_at_ms: None,
            expires_at_ms: None,
            cart_id: None,
        });
        if e.version > row.newest.version {
            row.newest = e;
        }
        row.created_at_ms = row.created_at_ms.or(r.created_at_ms);
        if let Some(exp) = r.expires_at_ms
            && row.expires_at_ms.is_none_or(|(v, _)| v < e.version)
        {
            row.expires_at_ms = Some((e.version, exp));
        }
        row.cart_id = row.cart_id.or(e.cart_id.as_deref());
    }
    let mut rows: Vec<_> = newest.into_values().collect();
    rows.sort_by(|a, b| reservation_id(a.newest).cmp(reservation_id(b.newest)));
    rows
}

fn reservation_id(e: &Event) -> &str {
    e.reservation.as_ref().map_or("", |r| r.id.as_str())
}

async fn upsert_reservations(
    client: &impl GenericClient,
    events: &[Event],
) -> Result<(), StoreError> {
    let rows = newest_per_reservation(events);
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let (mut skus, mut locs, mut accts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut qtys, mut states, mut bos) = (Vec::new(), Vec::new(), Vec::new());
    let (mut created, mut expires, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    let (mut versions, mut sids, mut carts) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let e = row.newest;
        let Some(r) = &e.reservation else { continue };
        ids.push(r.id.as_str());
        skus.push(e.sku.as_str());
        locs.push(e.location.as_str());
        accts.push(r.account.as_str());
        qtys.push(clamp_i32(e.reservation_qty().unwrap_or(r.qty)));
        states.push(e.reservation_state().unwrap_or("held"));
        carts.push(row.cart_id);
        bos.push(r.backorder);
        created.push(row.created_at_ms);
        expires.push(row.expires_at_ms.map(|(_, exp)| exp));
        updated.push(e.occurred_at_ms);
        versions.push(e.version);
        sids.push(e.stream_id.as_str());
    }
    let upsert = client
        .prepare_cached(
            "INSERT INTO reservations AS r (reservation_id, sku, location, account_id, qty, state,
                 backorder, created_at, expires_at, updated_at, version, stream_id, cart_id)
             SELECT rid, sku, loc, acct, qty, st, bo, to_timestamp(cr / 1000.0),
                 to_timestamp(ex / 1000.0), to_timestamp(ts / 1000.0), ver, sid, cart
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                 $7::bool[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::text[],
                 $13::text[])
                 AS t(rid, sku, loc, acct, qty, st, bo, cr, ex, ts, ver, sid, cart)
             ON CONFLICT (reservation_id) DO UPDATE SET
                 state = CASE WHEN r.version < EXCLUDED.version THEN EXCLUDED.state ELSE r.state END,
                 qty = CASE WHEN r.version < EXCLUDED.version THEN EXCLUDED.qty ELSE r.qty END,
                 updated_at = CASE WHEN r.version < EXCLUDED.version
                     THEN EXCLUDED.updated_at ELSE r.updated_at END,
                 stream_id = CASE WHEN r.version < EXCLUDED.version
                     THEN EXCLUDED.stream_id ELSE r.stream_id END,
                 version = GREATEST(r.version, EXCLUDED.version),
                 created_at = COALESCE(r.created_at, EXCLUDED.created_at),
                 -- An extension moves the deadline: the newest event's wins.
                 expires_at = CASE WHEN r.version < EXCLUDED.version
                     THEN COALESCE(EXCLUDED.expires_at, r.expires_at)
                     ELSE COALESCE(r.expires_at, EXCLUDED.expires_at) END,
                 cart_id = COALESCE(r.cart_id, EXCLUDED.cart_id)
             WHERE r.version < EXCLUDED.version
                 OR (r.created_at IS NULL AND EXCLUDED.created_at IS NOT NULL)
                 OR (r.expires_at IS NULL AND EXCLUDED.expires_at IS NOT NULL)",
        )
        .await?;
    client
        .execute(
            &upsert,
            &[
                &ids, &skus, &locs, &accts, &qtys, &states, &bos, &created, &expires, &updated,
                &versions, &sids, &carts,
            ],
        )
        .await?;
    Ok(())
}

async fn upsert_stock(client: &impl GenericClient, events: &[Event]) -> Result<(), StoreError> {
    let mut newest: HashMap<(&str, &str), &Event> = HashMap::new();
    for e in events {
        let slot = newest
            .entry((e.sku.as_str(), e.location.as_str()))
            .or_insert(e);
        if e.version > slot.version {
            *slot = e;
        }
    }
    let mut rows: Vec<&Event> = newest.into_values().collect();
    rows.sort_by(|a, b| (&a.sku, &a.location).cmp(&(&b.sku, &b.location)));
    let text = |f: fn(&Event) -> &str| rows.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let int = |f: fn(&Event) -> i64| rows.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let partitions: Vec<i32> = rows.iter().map(|e| pg_partition(e.partition)).collect();
    let upsert = client
        .prepare_cached(
            "INSERT INTO stock_levels AS s (sku, location, on_hand, reserved, version, updated_at,
                 safety_stock, low_stock_threshold, backorder_limit, partition)
             SELECT sku, loc, oh, rs, ver, to_timestamp(ts / 1000.0), ss, lt, bl, p
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                 $7::int8[], $8::int8[], $9::int8[], $10::int[])
                 AS t(sku, loc, oh, rs, ver, ts, ss, lt, bl, p)
             ON CONFLICT (sku, location) DO UPDATE SET on_hand = EXCLUDED.on_hand,
                 reserved = EXCLUDED.reserved, version = EXCLUDED.version,
                 updated_at = EXCLUDED.updated_at, safety_stock = EXCLUDED.safety_stock,
                 low_stock_threshold = EXCLUDED.low_stock_threshold,
                 backorder_limit = EXCLUDED.backorder_limit
             WHERE s.version < EXCLUDED.version",
        )
        .await?;
    client
        .execute(
            &upsert,
            &[
                &text(|e| e.sku.as_str()),
                &text(|e| e.location.as_str()),
                &int(|e| e.on_hand),
                &int(|e| e.reserved),
                &int(|e| e.version),
                &int(|e| e.occurred_at_ms),
                &int(|e| e.safety_stock),
                &int(|e| e.low_stock_threshold),
                &int(|e| e.backorder_limit),
                &partitions,
            ],
        )
        .await?;
    Ok(())
}
