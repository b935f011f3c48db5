//! The command line: `flashgate [--config FILE] <command>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flashgate",
    version,
    about = "Redis-first flash-sale contention gateway"
)]
pub struct Cli {
    /// A TOML file layered over config/default.toml (env vars win over both).
    #[arg(long, global = true, env = "FLASHGATE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// What `flashgate healthcheck` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    Readyz,
    Healthz,
}

impl Probe {
    pub fn path(self) -> &'static str {
        match self {
            Self::Readyz => "/readyz",
            Self::Healthz => "/healthz",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or Ctrl-C.
    Serve,
    /// Create or update the journal tables in Postgres, then exit.
    Migrate,
    /// One reconcile pass over every partition: bring what Postgres lacks
    /// from the streams, then compare Redis and Postgres per SKU. Exits 3
    /// when it finds drift or a gap.
    Reconcile,
    /// Restore SKU state in Redis from the Postgres journal after Redis lost
    /// data. SKUs that Redis holds at the same or a newer version are left
    /// alone unless --force.
    Rebuild {
        /// Only these SKUs (repeatable); all SKUs the journal knows otherwise.
        #[arg(long = "sku")]
        skus: Vec<String>,
        /// Also overwrite SKUs whose Redis version is the same or newer.
        #[arg(long)]
        force: bool,
    },
    /// Exit 0 when the gateway at http.listen answers 200 (for container
    /// healthchecks: no curl needed in the image), 1 otherwise.
    Healthcheck {
        /// `readyz` (Redis, Postgres, journal lag: the default) or `healthz`
        /// (the process answers).
        #[arg(long, value_enum, default_value_t = Probe::Readyz)]
        probe: Probe,
        /// Give up after this long.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print the OpenAPI 3.1 description of the HTTP API (what
    /// `GET /openapi.json` serves; openapi.json is a committed copy).
    Openapi,
    /// Print a token signed with the configured auth.secret.
    Token {
        /// The account id (the token's `sub`).
        #[arg(long)]
        account: String,
        /// Grant the inventory:admin scope.
        #[arg(long)]
        admin: bool,
        /// More scopes, space-separated, e.g. "inventory:read" or
        /// "inventory:write:location:east".
        #[arg(long)]
        scope: Option<String>,
        /// Act for this marketplace seller: adds the inventory:seller scope
        /// and the `seller` claim.
        #[arg(long)]
        seller: Option<String>,
        /// How long the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
}
