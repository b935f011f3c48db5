//! The only place metric names exist.
//!
//! Names follow `flashgate_<name>_<unit>[_total]`; labels come from closed
//! sets (a limit's name, a mode, a cause), never a SKU, account or address.
//! The Prometheus recorder is process-wide: the first gateway built in a
//! process installs it, and `/metrics` renders it.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Requests a limit refused (`mode="enforce"`) or would have refused
/// (`mode="shadow"`); `limit` is `account`, `ip`, `shared` or `in_flight`.
pub const ADMISSION_REFUSED_TOTAL: &str = "flashgate_admission_refused_total";
/// Keys an in-process rate limiter tracks (`limit` = `account` or `ip`).
pub const LIMITER_TRACKED_KEYS: &str = "flashgate_limiter_tracked_keys";
/// Shared-limit checks that Redis could not answer; the request was let through.
pub const SHARED_LIMIT_ERRORS_TOTAL: &str = "flashgate_shared_limit_errors_total";
/// Redis calls in flight from requests, and the cap past which requests are shed.
pub const REDIS_IN_FLIGHT: &str = "flashgate_redis_in_flight";
pub const REDIS_IN_FLIGHT_CAPACITY: &str = "flashgate_redis_in_flight_capacity";
/// Reservations answered 409 locally because the SKU is sold out
/// (`mode="shadow"`: would have been, and went to Redis anyway).
pub const SOLD_OUT_SHORT_CIRCUIT_TOTAL: &str = "flashgate_sold_out_short_circuit_total";
/// SKUs this instance currently answers "sold out" for.
pub const SOLD_OUT_CACHED_SKUS: &str = "flashgate_sold_out_cached_skus";
/// Sold-out answers dropped before their bound: `cause` is `announced` (a
/// stock change on pub/sub), `local` (a change made through this instance)
/// or `resync` (the subscription was lost, everything is dropped).
pub const SOLD_OUT_INVALIDATIONS_TOTAL: &str = "flashgate_sold_out_invalidations_total";

/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed (a test binary that
        // built one first); this handle then stays empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        handle
    })
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
