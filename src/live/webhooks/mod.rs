//! Stock webhooks: registration, delivery history and retries (this file),
//! the signature (`signature`), the Postgres statements (`store`) and the
//! deliverer task that every instance runs (`deliverer`). Which targets may
//! be reached, and the POST itself, are `crate::outbound`.
//!
//! Notifications are made by the journal (`journal::notifications`), once
//! per status change; here each is delivered at least once to every webhook
//! that wants it, with a stable `webhook-id` for receivers to deduplicate.

pub mod deliverer;
pub mod signature;
pub mod store;

use deadpool_postgres::Pool;

use self::{
    signature::Secret,
    store::{DeliveryRow, NewWebhook, WebhookRow},
};
use crate::{
    config::WebhookSettings,
    inventory::Sku,
    journal::store::StoreError,
    outbound::target::{Reach, Target},
};

/// The events a webhook may ask for.
pub const EVENT_TYPES: &[&str] = &["stock.low", "stock.out", "stock.back_in", "stock.backorder"];
/// SKUs one webhook may name at most.
pub const SKUS_MAX: usize = 1_000;

/// The statuses a delivery goes through.
pub const DELIVERY_STATUSES: &[&str] = &["pending", "delivered", "dead"];

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such webhook")]
    UnknownWebhook,
    #[error("no such delivery")]
    UnknownDelivery,
    #[error("{0} webhooks are registered, the most webhooks.max_webhooks allows")]
    TooMany(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no randomness for a secret: {0}")]
    Random(getrandom::Error),
}

/// A registration as the API receives it.
pub struct Registration {
    pub url: String,
    pub events: Vec<String>,
    pub skus: Option<Vec<String>>,
    pub secret: Option<String>,
}

/// The webhook service the admin API calls.
pub struct Webhooks {
    pool: Pool,
    reach: Reach,
    max_webhooks: i64,
}

impl Webhooks {
    pub fn new(pool: Pool, settings: &WebhookSettings) -> Self {
        Self {
            pool,
            reach: reach(settings),
            max_webhooks: settings.max_webhooks,
        }
    }

    /// Registers a webhook; returns it with its secret (shown this once).
    pub async fn register(
        &self,
        registration: Registration,
    ) -> Result<(WebhookRow, String), WebhookError> {
        let invalid = |e: &dyn std::fmt::Display| WebhookError::Invalid(e.to_string());
        let target = Target::parse(&registration.url).map_err(|e| invalid(&e))?;
        target.resolve(self.reach).await.map_err(|e| invalid(&e))?;
        let events = events(registration.events)?;
        let skus = registration.skus.map(skus).transpose()?;
        let secret = match registration.secret {
            Some(text) => {
                Secret::parse(&text).map_err(|e| invalid(&e))?;
                text
            }
            None => Secret::generate().map_err(WebhookError::Random)?.1,
        };
        let registered = store::count_live(&self.pool).await?;
        if registered >= self.max_webhooks {
            return Err(WebhookError::TooMany(registered));
        }
        let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
        let row = store::insert(
            &self.pool,
            &NewWebhook {
                id: &id,
                url: &registration.url,
                events: &events,
                skus: skus.as_deref(),
                secret: &secret,
            },
        )
        .await?;
        Ok((row, secret))
    }

    pub async fn list(&self, after: i64, limit: i64) -> Result<Vec<WebhookRow>, WebhookError> {
        Ok(store::list(&self.pool, after, limit).await?)
    }

    pub async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        if !plausible_id(id) {
            return Err(WebhookError::UnknownWebhook);
        }
        match store::delete(&self.pool, id).await? {
            true => Ok(()),
            false => Err(WebhookError::UnknownWebhook),
        }
    }

    pub async fn deliveries(
        &self,
        webhook_id: &str,
        status: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, WebhookError> {
        if !plausible_id(webhook_id) || !store::exists(&self.pool, webhook_id).await? {
            return Err(WebhookError::UnknownWebhook);
        }
        Ok(store::deliveries(&self.pool, webhook_id, status, after, limit).await?)
    }

    pub async fn retry(&self, delivery_id: &str) -> Result<DeliveryRow, WebhookError> {
        if !plausible_id(delivery_id) {
            return Err(WebhookError::UnknownDelivery);
        }
        store::retry(&self.pool, delivery_id)
            .await?
            .ok_or(WebhookError::UnknownDelivery)
    }
}

/// Longest id of a webhook or delivery (`wh_` and 32 hex digits; a UUID).
const ID_LEN_MAX: usize = 64;

/// Whether `id` could be one the gateway made: anything else names nothing
/// and never reaches Postgres (which refuses some bytes, NUL among them).
fn plausible_id(id: &str) -> bool {
    (1..=ID_LEN_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn reach(settings: &WebhookSettings) -> Reach {
    if settings.allow_private_targets {
        Reach::Anywhere
    } else {
        Reach::PublicOnly
    }
}

/// The event types asked for: known ones, each once, at least one.
fn events(asked: Vec<String>) -> Result<Vec<String>, WebhookError> {
    let mut events = Vec::new();
    for event in asked {
        if !EVENT_TYPES.contains(&event.as_str()) {
            return Err(WebhookError::Invalid(format!(
                "events must be among {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(WebhookError::Invalid(
            "events must name at least one event".into(),
        ));
    }
    Ok(events)
}

/// The SKUs named: valid ones, each once, 1 to `SKUS_MAX`.
fn skus(named: Vec<String>) -> Result<Vec<String>, WebhookError> {
    if named.is_empty() || named.len() > SKUS_MAX {
        return Err(WebhookError::Invalid(format!(
            "skus must name 1 to {SKUS_MAX} SKUs, or be left out for every SKU"
        )));
    }
    let mut skus = Vec::with_capacity(named.len());
    for sku in named {
        let sku = Sku::parse(&sku).map_err(|e| WebhookError::Invalid(format!("skus: {e}")))?;
        let sku = sku.as_str().to_owned();
        if !skus.contains(&sku) {
            skus.push(sku);
        }
    }
    Ok(skus)
}
