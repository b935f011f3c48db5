//! Live stock: what shoppers' pages read during a drop.
//!
//! - `views`: the inventory view served from memory, at most
//!   `live.read_staleness_ms` old, so a poll storm does not reach Redis.

pub mod views;
