//! Stock announcements: every partition's sharded pub/sub channel followed
//! by one subscriber per instance, and each announcement handed to the
//! listeners that care (the sold-out short-circuit, the live feed).
//!
//! Each stock change a script makes is announced once on its partition's
//! channel as `sku|version|available|holdable` (lua/prelude.lua, `finish`).
//! One subscription per partition per instance, however many listeners and
//! SSE streams there are. Pub/sub is fire and forget: across a reconnection
//! or a lagging consumer announcements are lost, so listeners are told the
//! subscription went down and came back (`subscribed`), and must not trust
//! what they derived from announcements in between.

use std::{sync::Arc, time::Duration};

use fred::{clients::SubscriberClient, prelude::*};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::{inventory::Partition, redis::Keys};

/// One stock change, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement<'a> {
    pub sku: &'a str,
    pub version: u64,
    /// Units available (on hand, less held and safety stock).
    pub available: i64,
    /// Units that can still be held, backorders included.
    pub holdable: i64,
    /// Announced by one of the SKU's stock buckets: the counts and version
    /// are the bucket's, not the SKU's (which sums them), so listeners read
    /// the SKU again rather than compare versions.
    pub bucket: bool,
}

impl<'a> Announcement<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split('|');
        let name = parts.next()?;
        let sku = crate::inventory::client_sku(name);
        Some(Self {
            sku,
            bucket: sku.len() < name.len(),
            version: parts.next()?.parse().ok()?,
            available: parts.next()?.parse().ok()?,
            holdable: parts.next()?.parse().ok()?,
        })
    }
}

/// What follows announcements.
pub trait Listener: Send + Sync {
    fn announced(&self, announcement: &Announcement<'_>);
    /// `true` once every channel is subscribed; `false` when the
    /// subscription was lost (announcements may have been missed since).
    fn subscribed(&self, live: bool);
}

/// Pause before subscribing again after a refused subscription.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);
/// Pause before subscribing again after a reconnection or a lag.
const RESYNC_PAUSE: Duration = Duration::from_millis(50);

/// Follows every partition's stock channel into `listeners` until `stop`.
/// Subscribes again after each reconnection.
pub async fn follow(
    listeners: Vec<Arc<dyn Listener>>,
    subscriber: SubscriberClient,
    keys: Keys,
    stop: CancellationToken,
) {
    let tell = |live: bool| listeners.iter().for_each(|l| l.subscribed(live));
    let mut messages = subscriber.message_rx();
    let mut reconnections = subscriber.reconnect_rx();
    subscriber.connect();
    let channels: Vec<String> = (0..keys.partitions())
        .map(|p| keys.stock_channel(Partition(p)))
        .collect();
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => break,
            subscribed = subscribe_all(&subscriber, &mut reconnections, &channels) => subscribed,
        };
        tell(subscribed);
        let pause = if subscribed {
            relay(&listeners, &mut messages, &mut reconnections, &stop).await;
            tell(false);
            // Not zero: a closed channel must not become a hot loop.
            RESYNC_PAUSE
        } else {
            RESUBSCRIBE_PAUSE
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tell(false);
    if let Err(e) = subscriber.quit().await {
        tracing::debug!(error = %e, "closing the stock subscriber");
    }
}

/// Hands announcements to `listeners` until the subscription can no longer
/// be trusted (a reconnection, a lagging consumer) or `stop`.
async fn relay(
    listeners: &[Arc<dyn Listener>],
    messages: &mut tokio::sync::broadcast::Receiver<fred::types::Message>,
    reconnections: &mut tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    stop: &CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = reconnections.recv() => return,
            message = messages.recv() => match message {
                Ok(message) => {
                    let text = message.value.as_str();
                    if let Some(announcement) = text.as_deref().and_then(Announcement::parse) {
                        listeners.iter().for_each(|l| l.announced(&announcement));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "stock announcements lagged; subscribing again");
                    return;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Subscribes to every channel (one call per channel: each may live on its
/// own cluster node); false when the connection failed meanwhile.
async fn subscribe_all(
    subscriber: &SubscriberClient,
    reconnections: &mut tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    channels: &[String],
) -> bool {
    if let Err(e) = subscriber.wait_for_connect().await {
        tracing::warn!(error = %e, "stock announcements: cannot connect");
        return false;
    }
    // Connections made so far (the first ones included) are covered by the
    // subscriptions about to be made; only later ones mean a resync.
    while reconnections.try_recv().is_ok() {}
    for channel in channels {
        if let Err(e) = subscriber.ssubscribe(channel.as_str()).await {
            tracing::warn!(error = %e, "stock announcements: cannot subscribe");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        assert_eq!(
            Announcement::parse("A-1|12|0|3"),
            Some(Announcement {
                sku: "A-1",
                version: 12,
                available: 0,
                holdable: 3,
                bucket: false,
            })
        );
        let bucket = Announcement::parse("A-1~17|4|2|2").unwrap();
        assert_eq!((bucket.sku, bucket.bucket), ("A-1", true));
        assert_eq!(Announcement::parse("A-1|x|0|3"), None);
        assert_eq!(Announcement::parse("A-1|12|0"), None);
    }
}
