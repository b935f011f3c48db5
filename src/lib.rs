//! flashgate: a Redis-first flash-sale contention gateway. The demo, the
//! bench and the throwaway servers the tests use live in the workspace's
//! `flashgate-dev` crate (crates/flashgate-dev).
//!
//! - `config`: settings, layered from file and environment, validated once.
//! - `secret`: settings that never reach a log (the token secret, URLs with passwords).
//! - `app`: builds the gateway (connect, load scripts, bind) and runs it until stopped.
//! - `cli`: the command line (`serve`, `token`, `migrate`, `reconcile`, `rebuild`).
//! - `clock`: the gateway's wall clock.
//! - `auth`: bearer tokens (HS256, or RS256/ES256 from a JWKS), shopper and admin roles.
//! - `inventory`: domain types parsed at the edge, and the inventory view.
//! - `events`: the inventory event both the Redis layer and the journal speak.
//! - `service`: the use cases handlers call: Redis, then the journal and the sold-out cache.
//! - `redis`: client, key layout, Lua script registry, per-partition batcher, typed calls
//!   and the parsing of their replies.
//! - `journal`: bounded queue, batch writer, reconciler, Postgres store, rebuild.
//! - `live`: live stock: cached inventory views, SSE streams, stock webhooks.
//! - `outbound`: the HTTP client for other services (webhook receivers, a JWKS), with its
//!   address checks.
//! - `limits`: admission control: rate limits, load shedding, the sold-out short-circuit.
//! - `metrics`: every metric name, the Prometheus recorder.
//! - `http`: router, accept loop, middleware, extractors, problem errors, OpenAPI, one file per route area.
//! - `tools`: the one-shot operator commands (`migrate`, `reconcile`, `rebuild`).
//! - `telemetry`: log set-up.
//! - `tls`: client TLS (rustls) for Redis and Postgres.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod events;
pub mod http;
pub mod inventory;
pub mod journal;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod outbound;
pub mod redis;
pub mod secret;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod tools;
