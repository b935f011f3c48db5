//! The deliverer: every instance runs one. It claims due deliveries (at
//! most `webhooks.concurrency` in flight), sends each, and records the
//! outcome: delivered on a 2xx within `webhooks.timeout_ms`, else another
//! attempt after an exponential backoff with jitter, or `dead` after
//! `webhooks.max_attempts`. It sleeps until the next retry falls due, this
//! instance's journal commits that made notifications wake it, and it looks
//! at least every `webhooks.poll_interval_ms` for the others' (and the
//! reconciler's).
//! It also carries the notifications of SKUs waiting at a journal gap past
//! it (`journal::notifications::sweep_gaps`) and publishes the backlog.
//!
//! Stopping aborts attempts in flight: their leases run out and another
//! instance, or this one restarted, sends them again.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use deadpool_postgres::Pool;
use hyper::body::Bytes;
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    reach,
    signature::Secret,
    store::{self, Claimed, Outcome},
};
use crate::outbound::{self, Outbound, SendError, target::Reach};
use crate::{config::WebhookSettings, journal::notifications, metrics as names};

/// How long past an attempt's timeout its claim lasts before the delivery
/// is due again (the attempt's instance died, or cannot record the result).
const LEASE_GRACE: Duration = Duration::from_secs(10);
/// How often the backlog gauges are refreshed and waiting gaps swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest rest between two looks: a delivery that is due but that
/// another instance holds does not make this one spin.
const WAIT_MIN: Duration = Duration::from_millis(20);
/// After Postgres failed, the next look waits this long.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Bytes of a receiver's answer read at most (the rest is dropped).
const RESPONSE_BYTES_MAX: usize = 4096;
/// Characters of an error kept in a delivery's `last_error`.
const ERROR_CHARS_MAX: usize = 500;

pub struct Deliverer {
    pool: Pool,
    settings: WebhookSettings,
    reach: Reach,
    /// Built on the first `https` delivery (reading the system's roots or
    /// `webhooks.tls_ca_file`); an error is kept and reported per attempt.
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Deliverer {
    pub fn new(pool: Pool, settings: &WebhookSettings) -> Arc<Self> {
        Arc::new(Self {
            pool,
            reach: reach(settings),
            settings: settings.clone(),
            tls: OnceLock::new(),
        })
    }

    /// Runs until `stop`; `notified` changes when a journal commit of this
    /// instance made notifications.
    pub async fn run(self: Arc<Self>, mut notified: watch::Receiver<u64>, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        let mut housekeeping = Instant::now();
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        // Until the store goes (at shutdown), its commits wake the deliverer.
        let mut journal_open = true;
        // One WARN when Postgres stops answering, one INFO when it is back.
        let mut failing = false;
        loop {
            if housekeeping <= Instant::now() {
                self.housekeep().await;
                housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
            }
            let free = self.settings.concurrency.saturating_sub(in_flight.len());
            let wait = match self.claim(free).await {
                Ok(claimed) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("webhook deliveries are claimed again");
                    }
                    let full = claimed.len() == free && free > 0;
                    for c in claimed {
                        let me = self.clone();
                        in_flight.spawn(async move { me.attempt(c).await });
                    }
                    if full {
                        poll
                    } else {
                        self.until_next_due().await.unwrap_or(poll).min(poll)
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "webhook deliveries could not be claimed; retrying");
                    }
                    ERROR_PAUSE
                }
            };
            let wake = (Instant::now() + wait.max(WAIT_MIN)).min(housekeeping);
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = notified.changed(), if journal_open => journal_open = changed.is_ok(),
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        in_flight.abort_all();
    }

    async fn claim(&self, free: usize) -> Result<Vec<Claimed>, crate::journal::store::StoreError> {
        if free == 0 {
            return Ok(Vec::new());
        }
        let lease = Duration::from_millis(self.settings.timeout_ms) + LEASE_GRACE;
        store::claim(&self.pool, free as i64, lease).await
    }

    async fn until_next_due(&self) -> Option<Duration> {
        store::next_due(&self.pool).await.ok().flatten()
    }

    async fn housekeep(&self) {
        match store::backlog(&self.pool).await {
            Ok((dead, oldest)) => {
                metrics::gauge!(names::WEBHOOK_DEAD_DELIVERIES).set(dead as f64);
                metrics::gauge!(names::WEBHOOK_OLDEST_PENDING_SECONDS).set(oldest);
            }
            Err(e) => tracing::debug!(error = %e, "the webhook backlog could not be read"),
        }
        let gap_wait = Duration::from_secs(self.settings.gap_wait_seconds);
        let swept = match self.pool.get().await {
            Ok(mut client) => notifications::sweep_gaps(&mut client, gap_wait).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = swept {
            tracing::debug!(error = %e, "journal gaps could not be swept for notifications");
        }
    }

    /// One attempt of one delivery, and its record.
    async fn attempt(&self, claimed: Claimed) {
        let result = self.send(&claimed).await;
        let error;
        let outcome = match &result {
            Ok(status) if (200..300).contains(status) => Outcome::Delivered { status: *status },
            _ => {
                error = match &result {
                    Ok(status) => format!("the receiver answered {status}"),
                    Err(e) => e.to_string().chars().take(ERROR_CHARS_MAX).collect(),
                };
                let last = claimed.attempt >= self.settings.max_attempts as i32;
                Outcome::Failed {
                    status: result.as_ref().ok().copied(),
                    error: &error,
                    retry_in: (!last).then(|| self.backoff(claimed.attempt)),
                }
            }
        };
        let label = match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed {
                retry_in: Some(_), ..
            } => "retried",
            Outcome::Failed { retry_in: None, .. } => "dead",
        };
        match store::finish(&self.pool, &claimed, outcome).await {
            Ok(lag) => {
                metrics::counter!(names::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => label).increment(1);
                if let Some(lag) = lag {
                    metrics::histogram!(names::WEBHOOK_DELIVERY_LAG_SECONDS).record(lag);
                }
                if label == "dead" {
                    tracing::warn!(
                        delivery = claimed.id,
                        notification = claimed.notification_id,
                        "a webhook delivery ran out of attempts and is dead"
                    );
                }
            }
            // The lease runs out and the delivery is tried again.
            Err(e) => tracing::warn!(error = %e, delivery = claimed.id,
                "a webhook attempt's outcome could not be recorded"),
        }
    }

    /// Sends the message; the receiver's status.
    async fn send(&self, claimed: &Claimed) -> Result<u16, SendError> {
        let body = render(claimed).map_err(|e| SendError::Http(e.to_string()))?;
        let secret = Secret::parse(&claimed.secret)
            .map_err(|e| SendError::Http(format!("the webhook's secret: {e}")))?;
        let timestamp = crate::clock::now_ms() / 1000;
        let signature = secret.sign(&claimed.notification_id, timestamp, &body);
        let request = Outbound {
            method: axum::http::Method::POST,
            url: &claimed.url,
            headers: vec![
                ("webhook-id", claimed.notification_id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            json: Some(body),
            body_bytes_max: RESPONSE_BYTES_MAX,
        };
        let tls = || self.tls_config();
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let answer = outbound::send(request, self.reach, &tls, timeout).await?;
        Ok(answer.status)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| {
                crate::tls::client_config(self.settings.tls_ca_file.as_deref())
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    /// The wait after failed attempt `attempt` (from 1): the initial backoff
    /// doubled per attempt, capped, then jittered down by up to half, so
    /// receivers that failed together do not all come back together, and
    /// each wait is still at least the previous one's bound.
    fn backoff(&self, attempt: i32) -> Duration {
        let initial = self.settings.backoff_initial_ms;
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        let full = initial
            .saturating_mul(1u64 << doublings)
            .min(self.settings.backoff_max_ms);
        let jitter = getrandom::u64().unwrap_or(0) % (full / 2 + 1);
        Duration::from_millis(full - jitter)
    }
}

/// `{"id","type","occurred_at","data":{<inventory view>,"previous_status"}}`.
fn render(claimed: &Claimed) -> Result<Bytes, serde_json::Error> {
    let mut data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&claimed.view)?;
    data.insert(
        "previous_status".into(),
        claimed.previous_status.clone().into(),
    );
    let body = serde_json::json!({
        "id": claimed.notification_id,
        "type": claimed.kind,
        "occurred_at": crate::clock::rfc3339(claimed.occurred_at_ms),
        "data": data,
    });
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}
