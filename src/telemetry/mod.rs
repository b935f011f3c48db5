//! Logs: `tracing` to stderr, as text or JSON, filtered by `log.level` (or
//! `RUST_LOG` when set).
//!
//! Two targets are shaped here rather than at their call sites: the access
//! log (`flashgate::access`, one line per request) is off unless
//! `log.access`, and the NOTICEs Postgres sends (which tokio-postgres logs
//! at INFO, e.g. on every migration run) show only when the level asks for
//! debug.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use tracing_subscriber::{EnvFilter, filter::Directive, fmt};

use crate::config::{LogFormat, LogSettings};

/// The target of the access log's lines.
pub const ACCESS_TARGET: &str = "flashgate::access";

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(settings: &LogSettings) {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    let mut filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let verbose = level.contains("debug") || level.contains("trace");
    let mut extra = Vec::new();
    if !verbose {
        extra.push("tokio_postgres::connection=warn");
    }
    if !settings.access {
        extra.push("flashgate::access=off");
    }
    for directive in extra {
        if let Ok(d) = directive.parse::<Directive>() {
            filter = filter.add_directive(d);
        }
    }
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match settings.format {
        LogFormat::Auto => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        INSTALLED.store(true, Ordering::Release);
    }
}

/// Whether `init` installed the subscriber (errors are then logged, not
/// printed a second time).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

pub mod outage;
