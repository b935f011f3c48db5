//! The live feed: stock events for SSE streams, one Redis subscription per
//! partition per instance whatever the number of streams.
//!
//! A SKU somebody watches has a topic: a `watch` channel holding its newest
//! view (serialised once, shared by every stream) and a pump task that
//! refreshes it. An announcement newer than the topic's view wakes the pump
//! (`Notify` keeps one permit, so a burst of announcements is one wake); the
//! pump reads the view with one `HGETALL`, publishes it, and rests
//! `1 / live.max_updates_per_second` before it reads again. Each stream
//! waits the same interval between its own events and then takes whatever
//! is newest, so a slow client skips states instead of queueing them: the
//! instance holds one view per watched SKU, never one per event per client.
//!
//! Bounds: at most `live.max_subscribers` streams (so at most that many
//! topics); a topic and its pump end with their last stream. When the
//! subscription is lost and comes back, every pump reads again: the
//! announcements in between are gone.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    announcements::{Announcement, Listener},
    views::Views,
};
use crate::{
    config::LiveSettings,
    inventory::{Sku, view::InventoryView},
    metrics::{self as names, LabelledCounter},
    redis::{Caller, Redis},
};

/// A view as streams send it: its version and its JSON, made once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    pub json: Arc<str>,
}

impl Snapshot {
    pub fn of(view: &InventoryView) -> Self {
        Self {
            version: view.version,
            json: serde_json::to_string(view).unwrap_or_default().into(),
        }
    }
}

struct Topic {
    newest: watch::Sender<Snapshot>,
    wake: Notify,
}

/// Pump refreshes by outcome: `ok` or `error` (retried after the interval).
static REFRESHES: LabelledCounter =
    LabelledCounter::new(names::LIVE_VIEW_REFRESHES_TOTAL, "outcome");

pub struct Feed {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    streams: AtomicUsize,
    max_streams: usize,
    /// Between two events of a stream, and two reads of a pump.
    pub interval: Duration,
    pub heartbeat: Duration,
    /// Announcements can be trusted (the subscription is live).
    live: AtomicBool,
    /// Cancelled when the gateway starts draining: every stream ends.
    closing: CancellationToken,
    redis: Arc<Redis>,
    views: Arc<Views>,
    subscribers: Gauge,
    watched: Gauge,
    refused: Counter,
    sent: Counter,
    coalesced: Counter,
}

/// A place among `live.max_subscribers`, given back on drop.
pub struct StreamSlot(Arc<Feed>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = self.0.streams.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.subscribers.set(open as f64);
    }
}

impl StreamSlot {
    pub fn feed(&self) -> &Feed {
        &self.0
    }
}

impl Feed {
    pub fn new(settings: &LiveSettings, redis: Arc<Redis>, views: Arc<Views>) -> Self {
        REFRESHES.increment("ok", 0);
        REFRESHES.increment("error", 0);
        let refused = metrics::counter!(names::LIVE_STREAMS_REFUSED_TOTAL);
        refused.increment(0);
        Self {
            topics: Mutex::default(),
            streams: AtomicUsize::new(0),
            max_streams: settings.max_subscribers,
            interval: Duration::from_secs(1) / settings.max_updates_per_second.max(1),
            heartbeat: Duration::from_secs(settings.heartbeat_seconds),
            live: AtomicBool::new(false),
            closing: CancellationToken::new(),
            redis,
            views,
            subscribers: metrics::gauge!(names::LIVE_SUBSCRIBERS),
            watched: metrics::gauge!(names::LIVE_WATCHED_SKUS),
            refused,
            sent: metrics::counter!(names::LIVE_EVENTS_SENT_TOTAL),
            coalesced: metrics::counter!(names::LIVE_UPDATES_COALESCED_TOTAL),
        }
    }

    /// A place for one more stream, or `None` at `live.max_subscribers`.
    pub fn admit(self: &Arc<Self>) -> Option<StreamSlot> {
        let open = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = StreamSlot(self.clone());
        if open > self.max_streams {
            self.refused.increment(1);
            return None;
        }
        self.subscribers.set(open as f64);
        Some(slot)
    }

    /// Watches `sku`, whose view a stream just read as `seen`: the receiver
    /// holds the newest view known (`seen`, or newer).
    pub fn watch(self: &Arc<Self>, sku: &Sku, seen: &InventoryView) -> watch::Receiver<Snapshot> {
        let Ok(mut topics) = self.topics.lock() else {
            // A poisoned map: serve the view read, with no updates.
            return watch::channel(Snapshot::of(seen)).1;
        };
        if let Some(topic) = topics.get(sku.as_str()) {
            topic
                .newest
                .send_if_modified(|newest| replace_if_newer(newest, seen));
            return topic.newest.subscribe();
        }
        let (newest, rx) = watch::channel(Snapshot::of(seen));
        let topic = Arc::new(Topic {
            newest,
            wake: Notify::new(),
        });
        // `seen` may be up to `live.read_staleness_ms` old, and changes made
        // before the topic existed were announced to nobody: read once now.
        topic.wake.notify_one();
        topics.insert(sku.as_str().to_owned(), topic.clone());
        self.watched.set(topics.len() as f64);
        tokio::spawn(self.clone().pump(sku.clone(), topic));
        rx
    }

    /// Cancelled when the gateway starts draining.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ends every stream (the gateway is draining).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// A stream sent an event; `skipped` versions were folded into it.
    pub fn sent(&self, skipped: u64) {
        self.sent.increment(1);
        self.coalesced.increment(skipped);
    }

    /// Keeps `topic` fresh until its last stream ends.
    async fn pump(self: Arc<Self>, sku: Sku, topic: Arc<Topic>) {
        loop {
            tokio::select! {
                _ = topic.wake.notified() => {}
                _ = topic.newest.closed() => {
                    if self.forget_if_unwatched(&sku, &topic) {
                        return;
                    }
                    // A stream arrived meanwhile; wait for news again.
                    tokio::time::sleep(self.interval).await;
                    continue;
                }
            }
            match self.redis.inventory(&sku, Caller::Background).await {
                Ok(Some(view)) => {
                    REFRESHES.increment("ok", 1);
                    topic
                        .newest
                        .send_if_modified(|newest| replace_if_newer(newest, &view));
                    self.views.put(&sku, view).await;
                }
                // The SKU's hash is gone (a test wiping keys): nothing to show.
                Ok(None) => REFRESHES.increment("ok", 1),
                Err(e) => {
                    REFRESHES.increment("error", 1);
                    tracing::debug!(error = %e, "live view refresh failed; retrying");
                    topic.wake.notify_one();
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Removes `topic` if no stream watches it; true when removed.
    fn forget_if_unwatched(&self, sku: &Sku, topic: &Arc<Topic>) -> bool {
        let Ok(mut topics) = self.topics.lock() else {
            return true;
        };
        // Streams subscribe under this lock, so the count cannot rise now.
        if topic.newest.receiver_count() > 0 {
            return false;
        }
        if topics
            .get(sku.as_str())
            .is_some_and(|t| Arc::ptr_eq(t, topic))
        {
            topics.remove(sku.as_str());
        }
        self.watched.set(topics.len() as f64);
        true
    }
}

fn replace_if_newer(newest: &mut Snapshot, view: &InventoryView) -> bool {
    if view.version <= newest.version {
        return false;
    }
    *newest = Snapshot::of(view);
    true
}

impl Listener for Feed {
    fn announced(&self, a: &Announcement<'_>) {
        let Ok(topics) = self.topics.lock() else {
            return;
        };
        if let Some(topic) = topics.get(a.sku)
            && (a.bucket || a.version > topic.newest.borrow().version)
        {
            topic.wake.notify_one();
        }
    }

    fn subscribed(&self, live: bool) {
        let was = self.live.swap(live, Ordering::AcqRel);
        if live && !was {
            // Announcements made while unsubscribed are lost: read again.
            if let Ok(topics) = self.topics.lock() {
                topics.values().for_each(|t| t.wake.notify_one());
            }
        }
    }
}
