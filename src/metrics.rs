//! The only place metric names exist.
//!
//! Names follow `flashgate_<name>_<unit>[_total]` in base units (seconds,
//! events); labels come from closed sets (a route template, a script, an
//! outcome, a reason), never a SKU, account, address or reservation id.
//! Every name is declared once in the table below with its kind and help
//! text; `install` describes them all and sets the histogram buckets.
//!
//! The Prometheus recorder is process-wide: the first gateway built in a
//! process installs it, and `/metrics` renders it. Values that already live
//! in atomics elsewhere (the journal queue's counters, the journal lag) are
//! copied into the recorder when it is rendered, so the hot path pays for
//! them once.

use std::{
    sync::{OnceLock, RwLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric as the recorder describes it.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// A counter with one label whose values form a closed set, its handles
/// resolved once per value instead of building and hashing the label on
/// every increment; bounded by that set.
pub struct LabelledCounter {
    name: &'static str,
    label: &'static str,
    handles: RwLock<Vec<(&'static str, metrics::Counter)>>,
}

impl LabelledCounter {
    pub const fn new(name: &'static str, label: &'static str) -> Self {
        Self {
            name,
            label,
            handles: RwLock::new(Vec::new()),
        }
    }

    pub fn increment(&self, value: &'static str, n: u64) {
        let found = self.handles.read().ok().and_then(|handles| {
            let (_, counter) = handles.iter().find(|(v, _)| *v == value)?;
            Some(counter.clone())
        });
        let counter = found.unwrap_or_else(|| {
            let made = metrics::counter!(self.name, self.label => value);
            if let Ok(mut handles) = self.handles.write() {
                handles.push((value, made.clone()));
            }
            made
        });
        counter.increment(n);
    }
}

/// Declares each metric's constant and its entry in `ALL` from one line.
macro_rules! metric_table {
    ($($(#[doc = $doc:literal])+ $ident:ident: $kind:ident = $name:literal;)+) => {
        $($(#[doc = $doc])+ pub const $ident: &str = $name;)+
        /// Every metric flashgate exports.
        pub const ALL: &[Described] = &[
            $(Described { name: $name, kind: Kind::$kind, help: concat!($($doc),+) },)+
        ];
    };
}

metric_table! {
    /// HTTP requests answered, by route template, method and status.
    HTTP_REQUESTS_TOTAL: Counter = "flashgate_http_requests_total";
    /// Time from the request reaching the router to its response, by route
    /// template, method and status.
    HTTP_REQUEST_DURATION_SECONDS: Histogram = "flashgate_http_request_duration_seconds";
    /// Reservation requests by outcome: `held`, `replayed`, or the problem
    /// code they were refused with (`insufficient-stock`, `rate-limited`...).
    RESERVATIONS_TOTAL: Counter = "flashgate_reservations_total";
    /// Inventory events the scripts appended to the partition streams, by
    /// kind (`reserved`, `confirmed`, `released`, `expired`, `stock_set`,
    /// `adjusted`).
    INVENTORY_EVENTS_TOTAL: Counter = "flashgate_inventory_events_total";
    /// Time of one Redis script call, retries included, by script.
    REDIS_SCRIPT_DURATION_SECONDS: Histogram = "flashgate_redis_script_duration_seconds";
    /// Redis errors by script (or command) and kind: `unavailable`,
    /// `refused`, `reply` (not understood), `noscript` (reloaded), `busy`
    /// and `moved` (retried), `overloaded`, `unrouted`, `unreplicated`,
    /// `fenced`, `backing_off` (background work skipped a node that does
    /// not answer).
    REDIS_ERRORS_TOTAL: Counter = "flashgate_redis_errors_total";
    /// Requests per batch script call, by script (`reserve`, `settle`).
    REDIS_BATCH_REQUESTS: Histogram = "flashgate_redis_batch_requests";
    /// Redis calls in flight from requests.
    REDIS_IN_FLIGHT: Gauge = "flashgate_redis_in_flight";
    /// The in-flight cap past which requests are shed.
    REDIS_IN_FLIGHT_CAPACITY: Gauge = "flashgate_redis_in_flight_capacity";
    /// Times a script observed a location holding more units than it may
    /// (reserved above on hand - safety stock + backorder limit) right after
    /// its own write. It must stay 0: anything else is an oversell.
    OVERSOLD_TOTAL: Counter = "flashgate_oversold_total";
    /// Events the journal queue can hold.
    JOURNAL_QUEUE_CAPACITY: Gauge = "flashgate_journal_queue_capacity";
    /// Events waiting in the journal queue.
    JOURNAL_QUEUE_DEPTH: Gauge = "flashgate_journal_queue_depth";
    /// Events offered to the journal queue and accepted.
    JOURNAL_QUEUE_PUSHED_TOTAL: Counter = "flashgate_journal_queue_pushed_total";
    /// Events the batch writer took from the queue and committed.
    JOURNAL_QUEUE_POPPED_TOTAL: Counter = "flashgate_journal_queue_popped_total";
    /// Events the queue refused, by reason (`queue_full`, `closed`); the
    /// reconciler brings them from the partition streams.
    JOURNAL_QUEUE_DROPPED_TOTAL: Counter = "flashgate_journal_queue_dropped_total";
    /// Events per batch the writer committed.
    JOURNAL_BATCH_EVENTS: Histogram = "flashgate_journal_batch_events";
    /// `sync` confirmations per group commit (one Postgres transaction).
    JOURNAL_CONFIRM_GROUP_REQUESTS: Histogram = "flashgate_journal_confirm_group_requests";
    /// Time of one batch write to Postgres that committed.
    JOURNAL_WRITE_DURATION_SECONDS: Histogram = "flashgate_journal_write_duration_seconds";
    /// Batch writes Postgres refused or did not answer (each is retried).
    JOURNAL_WRITE_ERRORS_TOTAL: Counter = "flashgate_journal_write_errors_total";
    /// How far Postgres trails the events Redis acknowledged.
    JOURNAL_LAG_SECONDS: Gauge = "flashgate_journal_lag_seconds";
    /// 1 when the last journal write or reconcile pass reached Postgres.
    JOURNAL_POSTGRES_UP: Gauge = "flashgate_journal_postgres_up";
    /// Reconciler passes over every partition, by result (`ok`, `failed`:
    /// at least one partition could not be reconciled).
    RECONCILE_PASSES_TOTAL: Counter = "flashgate_reconcile_passes_total";
    /// Events the reconciler found missing in Postgres and inserted.
    RECONCILE_REPAIRED_EVENTS_TOTAL: Counter = "flashgate_reconcile_repaired_events_total";
    /// Passes that found stream entries lost before they were journaled.
    RECONCILE_GAPS_TOTAL: Counter = "flashgate_reconcile_gaps_total";
    /// SKUs whose Redis and Postgres states disagreed at the last drift
    /// check, by reason (`missing_in_redis`, `redis_behind`, `counts_differ`).
    DRIFT_SKUS: Gauge = "flashgate_drift_skus";
    /// How long past its deadline a SKU's earliest hold was when the expiry
    /// sweeper reached it.
    EXPIRY_LAG_SECONDS: Histogram = "flashgate_expiry_lag_seconds";
    /// Holds the expiry sweeper gave back.
    EXPIRY_SWEPT_HOLDS_TOTAL: Counter = "flashgate_expiry_swept_holds_total";
    /// Reservations answered 503 that may have been applied, by what became
    /// of them (`released`, `never_held`, `not_held`, `not_remembered`).
    ORPHAN_HOLDS_TOTAL: Counter = "flashgate_orphan_holds_total";
    /// `POST /v1/carts` by outcome (`held`, `failed`, `replayed`,
    /// `pending`, `key_reused`, `error`).
    CARTS_TOTAL: Counter = "flashgate_carts_total";
    /// Carts the sweep took over from a gateway that stopped driving them,
    /// by what it did (`rolled_back`, `confirmed`, `released`, `expired`,
    /// `retried`).
    CART_RECOVERIES_TOTAL: Counter = "flashgate_cart_recoveries_total";
    /// Waiting-room tickets taken, by outcome (`new`, `existing`).
    QUEUE_TICKETS_TOTAL: Counter = "flashgate_queue_tickets_total";
    /// Waiting-room ticket takes and reads, by the status they answered
    /// (`waiting`, `admitted`, `sold_out`, `expired`).
    QUEUE_TICKET_READS_TOTAL: Counter = "flashgate_queue_ticket_reads_total";
    /// Reservations of bucketed SKUs by where they ended (`home`: held in
    /// the account's home bucket; `spilled`: held in another; `refused`:
    /// no bucket could hold them).
    BUCKET_HOLDS_TOTAL: Counter = "flashgate_bucket_holds_total";
    /// Transfers between stock buckets by how they ended (`moved` by their
    /// mover, `finished` by the sweeper after their mover stopped,
    /// `refused`: the source could not spare the units).
    BUCKET_TRANSFERS_TOTAL: Counter = "flashgate_bucket_transfers_total";
    /// Changes of live holds by kind (`extend`, `shrink`, `release`) and
    /// outcome (`ok` or the problem code).
    HOLD_CHANGES_TOTAL: Counter = "flashgate_hold_changes_total";
    /// `GET /v1/inventory/{sku}` views by where they came from: `cache`
    /// (the in-process view, or another request's read) or `redis`.
    INVENTORY_READS_TOTAL: Counter = "flashgate_inventory_reads_total";
    /// SSE stock streams open in this instance.
    LIVE_SUBSCRIBERS: Gauge = "flashgate_live_subscribers";
    /// SKUs with at least one SSE stream (one refresh task each).
    LIVE_WATCHED_SKUS: Gauge = "flashgate_live_watched_skus";
    /// SSE streams refused at `live.max_subscribers` (503 overloaded).
    LIVE_STREAMS_REFUSED_TOTAL: Counter = "flashgate_live_streams_refused_total";
    /// Stock events sent on SSE streams, first events included.
    LIVE_EVENTS_SENT_TOTAL: Counter = "flashgate_live_events_sent_total";
    /// SKU versions a stream skipped: changes folded into a later event by
    /// the rate limit, or passed over by a slow client.
    LIVE_UPDATES_COALESCED_TOTAL: Counter = "flashgate_live_updates_coalesced_total";
    /// Watched SKUs' views read from Redis after an announcement, by
    /// `outcome` (`ok`, `error`).
    LIVE_VIEW_REFRESHES_TOTAL: Counter = "flashgate_live_view_refreshes_total";
    /// Stock notifications (status changes) the journal derived, whichever
    /// instance's write made them; each is delivered to every webhook that
    /// wants it.
    WEBHOOK_NOTIFICATIONS_TOTAL: Counter = "flashgate_webhook_notifications_total";
    /// Webhook delivery attempts by `outcome`: `delivered` (2xx in time),
    /// `retried` (failed; another attempt is due later), `dead` (failed
    /// the last of `webhooks.max_attempts`).
    WEBHOOK_ATTEMPTS_TOTAL: Counter = "flashgate_webhook_attempts_total";
    /// Deliveries that ran out of attempts and wait for an operator's retry
    /// (over every webhook, read from Postgres).
    WEBHOOK_DEAD_DELIVERIES: Gauge = "flashgate_webhook_dead_deliveries";
    /// Age of the oldest delivery still pending (0 when none is): how far
    /// behind receivers are.
    WEBHOOK_OLDEST_PENDING_SECONDS: Gauge = "flashgate_webhook_oldest_pending_seconds";
    /// From a status change to its receiver's 2xx.
    WEBHOOK_DELIVERY_LAG_SECONDS: Histogram = "flashgate_webhook_delivery_lag_seconds";
    /// Signing keys of the identity provider's JWKS in use (RS256/ES256).
    AUTH_JWKS_KEYS: Gauge = "flashgate_auth_jwks_keys";
    /// Reads of the JWKS after the first, by `outcome` (`ok`, `error`: the
    /// keys in use were kept).
    AUTH_JWKS_REFRESHES_TOTAL: Counter = "flashgate_auth_jwks_refreshes_total";
    /// SKUs found to have lost writes in Redis: the journal held a newer
    /// version than Redis (a failover rolled back acknowledged writes, or
    /// Redis restarted without them). Each is fenced, then rebuilt.
    LOST_WRITE_SKUS_TOTAL: Counter = "flashgate_lost_write_skus_total";
    /// What became of each SKU found to have lost writes, by outcome:
    /// `rebuilt`, `fenced` (left for `flashgate rebuild`: auto_rebuild is
    /// off), `changed` (retried), `current` (nothing was lost after all),
    /// `failed` (Redis or Postgres did not answer; retried).
    SKU_RECOVERIES_TOTAL: Counter = "flashgate_sku_recoveries_total";
    /// Cluster slots this instance holds fenced after their master changed,
    /// until its failover check has compared their SKUs with the journal.
    FENCED_SLOTS: Gauge = "flashgate_fenced_slots";
    /// Failover checks of slots whose master changed, by result (`clean`,
    /// `lost_writes`, `failed`: retried).
    FAILOVER_CHECKS_TOTAL: Counter = "flashgate_failover_checks_total";
    /// Redis nodes that do not answer and that background work (sweeper,
    /// reconciler, rebuild, orphan releases) backs off from.
    REDIS_NODES_BACKING_OFF: Gauge = "flashgate_redis_nodes_backing_off";
    /// How long `WAIT` for replicas took after a batch (confirmations, or
    /// holds, with `redis.*_wait_replicas` set).
    REDIS_WAIT_DURATION_SECONDS: Histogram = "flashgate_redis_wait_duration_seconds";
    /// Requests a limit refused (`mode="enforce"`) or would have refused
    /// (`mode="shadow"`); `limit` is `account`, `ip`, `shared` or `in_flight`.
    ADMISSION_REFUSED_TOTAL: Counter = "flashgate_admission_refused_total";
    /// Keys an in-process rate limiter tracks (`limit` = `account` or `ip`).
    LIMITER_TRACKED_KEYS: Gauge = "flashgate_limiter_tracked_keys";
    /// Shared-limit checks Redis could not answer; the request was let through.
    SHARED_LIMIT_ERRORS_TOTAL: Counter = "flashgate_shared_limit_errors_total";
    /// Reservations answered 409 locally because the SKU is sold out
    /// (`mode="shadow"`: would have been, and went to Redis anyway).
    SOLD_OUT_SHORT_CIRCUIT_TOTAL: Counter = "flashgate_sold_out_short_circuit_total";
    /// SKUs this instance currently answers "sold out" for.
    SOLD_OUT_CACHED_SKUS: Gauge = "flashgate_sold_out_cached_skus";
    /// Sold-out answers dropped before their bound: `cause` is `announced` (a
    /// stock change on pub/sub), `local` (a change made through this
    /// instance) or `resync` (the subscription was lost).
    SOLD_OUT_INVALIDATIONS_TOTAL: Counter = "flashgate_sold_out_invalidations_total";
    /// Always 1; `version` is the running flashgate's.
    BUILD_INFO: Gauge = "flashgate_build_info";
}

/// Latency buckets (seconds): fine below 10 ms where Redis answers, and a
/// bound at 0.15 s, the reservation p99 objective.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Expiry lag buckets (seconds): the sweeper runs every second or so, so
/// anything past a few seconds means it cannot keep up.
const EXPIRY_LAG_BUCKETS_SECONDS: &[f64] =
    &[0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Webhook delivery lag buckets (seconds): under a second when receivers
/// answer, minutes to hours when they retry through backoff.
const DELIVERY_LAG_BUCKETS_SECONDS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

const BATCH_BUCKETS_EVENTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

const BATCH_BUCKETS_REQUESTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn builder() -> PrometheusBuilder {
    let buckets = [
        (
            Matcher::Full(EXPIRY_LAG_SECONDS.into()),
            EXPIRY_LAG_BUCKETS_SECONDS,
        ),
        (
            Matcher::Full(WEBHOOK_DELIVERY_LAG_SECONDS.into()),
            DELIVERY_LAG_BUCKETS_SECONDS,
        ),
        (Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS),
        (
            Matcher::Full(JOURNAL_BATCH_EVENTS.into()),
            BATCH_BUCKETS_EVENTS,
        ),
        (
            Matcher::Full(REDIS_BATCH_REQUESTS.into()),
            BATCH_BUCKETS_REQUESTS,
        ),
        (
            Matcher::Full(JOURNAL_CONFIRM_GROUP_REQUESTS.into()),
            BATCH_BUCKETS_REQUESTS,
        ),
    ];
    buckets
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, (matcher, values)| {
            // Every bucket list above is a non-empty constant, the only
            // condition under which this fails.
            match builder.set_buckets_for_metric(matcher, values) {
                Ok(b) => b,
                Err(_) => unreachable!("bucket lists are non-empty constants"),
            }
        })
}

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed (a test binary that
        // built one first); this handle then stays empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        describe();
        handle
    })
}

fn describe() {
    for m in ALL {
        let help = m.help.trim();
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, help),
            Kind::Gauge => metrics::describe_gauge!(m.name, help),
            Kind::Histogram => metrics::describe_histogram!(m.name, help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Exported from the start, so dashboards and alerts read 0, not nothing.
    metrics::counter!(OVERSOLD_TOTAL).absolute(0);
    metrics::counter!(LOST_WRITE_SKUS_TOTAL).absolute(0);
    metrics::counter!(WEBHOOK_ATTEMPTS_TOTAL, "outcome" => "dead").absolute(0);
}

/// Installs the recorder; call before any metric is registered.
pub fn install() {
    handle();
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// Compacts the recorder until `stop`.
pub async fn upkeep(stop: CancellationToken) {
    let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => handle().run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_name_follows_the_conventions_once() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} is declared twice", m.name);
            assert!(m.name.starts_with("flashgate_"), "{}", m.name);
            assert!(!m.help.trim().is_empty(), "{} has no help", m.name);
            let total = m.name.ends_with("_total");
            assert_eq!(
                total,
                m.kind == Kind::Counter,
                "{}: _total iff counter",
                m.name
            );
            if m.kind == Kind::Histogram {
                assert!(
                    m.name.ends_with("_seconds")
                        || m.name.ends_with("_events")
                        || m.name.ends_with("_requests"),
                    "{}: a histogram names its unit",
                    m.name
                );
            }
        }
    }

    #[test]
    fn latency_histograms_have_a_bucket_at_the_objective() {
        assert!(LATENCY_BUCKETS_SECONDS.contains(&0.15));
        assert!(LATENCY_BUCKETS_SECONDS.is_sorted());
        assert!(EXPIRY_LAG_BUCKETS_SECONDS.is_sorted());
        assert!(BATCH_BUCKETS_EVENTS.is_sorted());
        assert!(BATCH_BUCKETS_REQUESTS.is_sorted());
    }
}
