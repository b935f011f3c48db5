//! Live stock: what shoppers' pages read during a drop.
//!
//! - `announcements`: the one pub/sub subscriber per instance, following
//!   every partition's stock channel for the listeners below (and the
//!   sold-out short-circuit).
//! - `views`: the inventory view served from memory, at most
//!   `live.read_staleness_ms` old, so a poll storm does not reach Redis.
//! - `feed`: SSE stock events, one topic per watched SKU fanned out to
//!   every stream, coalesced to `live.max_updates_per_second`.
//! - `webhooks`: stock notifications delivered to registered receivers.

pub mod announcements;
pub mod feed;
pub mod views;
pub mod webhooks;
