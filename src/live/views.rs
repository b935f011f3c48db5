//! Cached inventory views: `GET /v1/inventory/{sku}` answered from memory.
//!
//! Each SKU's view (or its absence) is kept at most `live.read_staleness_ms`
//! after it was read from Redis, for at most `live.cached_skus_max` SKUs
//! (the least recently used go first). Concurrent misses of one SKU share
//! one Redis read, so a burst of polls costs one `HGETALL` per staleness
//! window whatever its size. Every change, made through this instance or
//! another, shows within the staleness bound: the reservation path pays
//! nothing for the cache. (Admin writes answer with the fresh view.)

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use crate::{
    config::LiveSettings,
    inventory::{Sku, view::InventoryView},
    metrics::{self as names, LabelledCounter},
    redis::RedisError,
};

/// Reads by where they were answered from: `cache` or `redis`.
static READS: LabelledCounter = LabelledCounter::new(names::INVENTORY_READS_TOTAL, "source");

pub struct Views {
    /// `None` for a SKU Redis does not know: a poll storm on an unknown SKU
    /// is absorbed too. No cache at all when `live.read_staleness_ms` is 0.
    cache: Option<Cache<String, Option<InventoryView>>>,
    /// `Cache-Control: public, max-age=` of an answer.
    max_age_seconds: u64,
}

impl Views {
    pub fn new(settings: &LiveSettings) -> Self {
        let staleness = Duration::from_millis(settings.read_staleness_ms);
        READS.increment("cache", 0);
        READS.increment("redis", 0);
        Self {
            cache: (!staleness.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(settings.cached_skus_max)
                    .time_to_live(staleness)
                    .build()
            }),
            max_age_seconds: settings.read_max_age_seconds,
        }
    }

    /// The `Cache-Control` of an answer.
    pub fn cache_control(&self) -> String {
        format!("public, max-age={}", self.max_age_seconds)
    }

    /// The cached view of `sku`, if one is fresh enough.
    pub async fn cached(&self, sku: &Sku) -> Option<Option<InventoryView>> {
        let found = self.cache.as_ref()?.get(sku.as_str()).await;
        if found.is_some() {
            READS.increment("cache", 1);
        }
        found
    }

    /// Keeps `view`, just read from Redis (by the live feed's pump).
    pub async fn put(&self, sku: &Sku, view: InventoryView) {
        if let Some(cache) = &self.cache {
            cache.insert(sku.as_str().to_owned(), Some(view)).await;
        }
    }

    /// The view of `sku`: cached, or read with `read` (once, however many
    /// callers miss at the same time) and kept.
    pub async fn get_or_read<F>(
        &self,
        sku: &Sku,
        read: F,
    ) -> Result<Option<InventoryView>, RedisError>
    where
        F: Future<Output = Result<Option<InventoryView>, RedisError>>,
    {
        let Some(cache) = &self.cache else {
            READS.increment("redis", 1);
            return read.await;
        };
        let ran = std::sync::atomic::AtomicBool::new(false);
        let counted = async {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
            read.await
        };
        let view = cache
            .try_get_with(sku.as_str().to_owned(), counted)
            .await
            .map_err(|e: Arc<RedisError>| (*e).clone());
        // A caller that waited for another's read was answered from it.
        let source = if ran.load(std::sync::atomic::Ordering::Relaxed) {
            "redis"
        } else {
            "cache"
        };
        READS.increment(source, 1);
        view
    }
}
