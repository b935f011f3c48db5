//! Integration tests against real Redis servers (standalone and a
//! three-master cluster) that the harness starts itself. Every scenario runs
//! on both topologies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod access;
mod admission;
mod batching;
mod buckets;
mod carts;
mod contention;
mod failover;
mod feed;
mod fuzz;
mod holds;
mod idempotency;
mod identity;
mod import;
mod journal;
mod lifecycle;
mod listings;
mod live;
mod live_page;
mod observability;
mod operations;
mod resilience;
mod room;
mod sse;
mod stock;
mod tls;
mod upgrade;
mod validation;
mod webhooks;
