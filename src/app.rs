//! Building and running the gateway.
//!
//! `App::build` does everything that can fail at start (connect to Redis,
//! check the partition count, load the scripts, migrate the journal, bind
//! the listener), so a bad deployment fails before it takes traffic. A
//! Postgres that cannot be reached at start does not stop the gateway
//! (Redis-first): the migration is retried in the background and the
//! streams keep every event meanwhile. `run_until_stopped` serves until the
//! stop future resolves, then shuts down in order: readiness goes 503,
//! in-flight requests finish, the sweeper stops, the journal drains within
//! its grace period, connections close.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use fred::clients::SubscriberClient;

use crate::{
    auth::{Auth, jwks},
    config::Settings,
    events::Event,
    http::{
        self, AppState,
        serve::{ListenerLimits, serve},
        state::{Lifecycle, RequestLimits, Shared},
    },
    journal::{
        Journal, JournalAccess, JournalQueue, JournalStatus, Store,
        commits::{GroupCommit, GroupLimits},
    },
    limits::Admission,
    live::{announcements, webhooks::deliverer::Deliverer},
    redis::Redis,
    service::{self, sweeper},
};

pub struct App {
    listener: TcpListener,
    /// `metrics.listen`, when set.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    settings: Settings,
    journal_rx: mpsc::Receiver<Event>,
    journal_queue: JournalQueue,
    migration: Migration,
    /// Stock announcements for the sold-out short-circuit.
    subscriber: SubscriberClient,
}

/// Whether the journal schema was in place when the gateway started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migration {
    Done,
    /// Postgres was unreachable; retried in the background.
    Pending,
}

/// Descriptors the gateway needs beside its client connections: Redis and
/// Postgres pools, listeners, the subscriber, files.
const DESCRIPTORS_BESIDE_CONNECTIONS: u64 = 512;

/// Raises the soft open-files limit to the hard one, as a server that holds
/// one descriptor per connection (and an SSE stream is a long one) must: the
/// usual soft default of 1,024 would refuse connections far below
/// `http.max_connections`. Says so when even the hard limit is too low.
fn raise_open_files_limit(max_connections: usize) {
    let wanted = max_connections as u64 + DESCRIPTORS_BESIDE_CONNECTIONS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            wanted,
            "the open-files limit is below http.max_connections plus what the pools need: \
             connections past it are refused; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        // Before anything registers a metric: handles made earlier would
        // record into nothing.
        crate::metrics::install();
        raise_open_files_limit(settings.http.max_connections);
        if settings.auth.secret.is_none() {
            tracing::warn!(
                "auth.secret is not set: using the public development secret; \
                 anyone can mint tokens. Set FLASHGATE_AUTH__SECRET in production."
            );
        }
        let (journal_queue, journal_rx) = JournalQueue::bounded(settings.journal.queue_capacity);
        let redis = Redis::connect(&settings)
            .await
            .context("starting the redis layer")?;
        let store = Store::new(&settings.postgres)?;
        let migration = match store.migrate(settings.redis.partitions).await {
            Ok(()) => Migration::Done,
            Err(e) if store.ping().await.is_err() => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "postgres is unreachable: serving anyway; events wait in the streams \
                     and the journal catches up once postgres answers"
                );
                Migration::Pending
            }
            Err(e) => return Err(e.context("migrating the journal")),
        };
        let commits = GroupCommit::start(
            store.clone(),
            GroupLimits {
                pending_max: settings.journal.confirm_pending_max,
                group_max: settings.journal.confirm_group_max,
                in_flight_max: settings.journal.confirm_groups_in_flight,
            },
        );
        let journal = JournalAccess {
            store,
            commits,
            status: Arc::new(JournalStatus::default()),
            durability: settings.journal.confirm_durability,
            queue: journal_queue.clone(),
        };
        let subscriber = crate::redis::build_subscriber(&settings.redis)?;
        let admission = Arc::new(Admission::new(
            &settings.limits,
            &settings.http.trusted_proxies,
        ));
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("binding {}", settings.http.listen))?;
        let metrics_listener = match settings.metrics.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics.listen {addr}"))?,
            ),
            None => None,
        };
        let redis = Arc::new(redis);
        let views = Arc::new(crate::live::views::Views::new(&settings.live));
        let live = Arc::new(crate::live::feed::Feed::new(
            &settings.live,
            redis.clone(),
            views.clone(),
        ));
        let inventory = service::Inventory {
            redis,
            journal: journal.clone(),
            sold_out: admission.sold_out.clone(),
            orphans: Arc::default(),
            views,
            layouts: Arc::default(),
        };
        let mut auth = Auth::new(settings.auth.secret_or_development())
            .with_max_lifetime(settings.auth.max_token_lifetime_seconds);
        let jwks_source = match (&settings.auth.jwks_file, &settings.auth.jwks_url) {
            (Some(path), _) => Some(jwks::Source::File(path.clone())),
            (None, Some(url)) => Some(jwks::Source::Url(url.clone())),
            (None, None) => None,
        };
        if let Some(source) = jwks_source {
            let keys = jwks::Jwks::load(source).await?;
            auth = auth.with_provider(
                keys,
                settings.auth.issuer.as_deref(),
                settings.auth.audience.as_deref(),
            );
        }
        let carts = service::carts::Carts {
            inventory: inventory.clone(),
            settings: settings.cart.clone(),
        };
        let state = AppState::new(Shared {
            room_admissions: Arc::new(service::room::Admissions::new(
                settings.auth.secret_or_development(),
            )),
            carts,
            inventory,
            auth: Arc::new(auth),
            limits: Arc::new(RequestLimits {
                max_qty_per_request: settings.reservation.max_qty_per_request,
                max_extend_seconds: settings.reservation.max_extend_seconds,
                max_hold_seconds: settings.reservation.max_hold_seconds,
                max_cart_lines: settings.cart.max_lines,
                import_lines_max: settings.admin.import_lines_max,
            }),
            lifecycle: Arc::new(Lifecycle::default()),
            webhooks: Arc::new(crate::live::webhooks::Webhooks::new(
                journal.store.pool().clone(),
                &settings.webhooks,
            )),
            journal,
            admission,
            live,
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
            settings,
            journal_rx,
            journal_queue,
            migration,
            subscriber,
        })
    }

    /// The address of `metrics.listen`, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or(self.settings.http.listen)
    }

    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            metrics_listener,
            state,
            settings,
            journal_rx,
            journal_queue,
            migration,
            subscriber,
        } = self;
        let background = CancellationToken::new();
        if migration == Migration::Pending {
            tokio::spawn(migrate_until_done(
                state.journal.store.clone(),
                settings.redis.partitions,
                Duration::from_millis(settings.journal.retry_backoff_ms),
                background.clone(),
            ));
        }
        let journal = Journal::start(
            &settings.journal,
            &state.journal,
            state.inventory.redis.clone(),
            &journal_queue,
            journal_rx,
        );
        let sweeper = tokio::spawn(sweeper::run(
            state.inventory.clone(),
            Duration::from_millis(settings.expiry.sweep_interval_ms),
            settings.expiry.sweep_skus_max,
            background.clone(),
        ));
        let orphans = tokio::spawn(service::orphans::run(
            state.inventory.clone(),
            background.clone(),
        ));
        let cart_sweep = tokio::spawn(service::carts::run(state.carts.clone(), background.clone()));
        tokio::spawn(service::buckets::run(
            state.inventory.clone(),
            settings.buckets.clone(),
            background.clone(),
        ));
        let recovery = tokio::spawn(service::recovery::run(
            state.inventory.redis.clone(),
            state.journal.clone(),
            Journal::reconcile_limits(&settings.journal),
            background.clone(),
        ));
        let follower = tokio::spawn(announcements::follow(
            vec![state.admission.sold_out.clone(), state.live.clone()],
            subscriber,
            state.inventory.redis.keys().clone(),
            background.clone(),
        ));
        let deliverer = tokio::spawn(
            Deliverer::new(state.journal.store.pool().clone(), &settings.webhooks)
                .run(state.journal.store.notified(), background.clone()),
        );
        if let Some(keys) = state.auth.jwks() {
            let every = Duration::from_secs(settings.auth.jwks_refresh_seconds);
            tokio::spawn(keys.clone().run(every, background.clone()));
        }
        tokio::spawn(state.admission.clone().housekeep(background.clone()));
        tokio::spawn(crate::metrics::upkeep(background.clone()));
        http::queue::export_metrics();
        let router = http::router(
            state.clone(),
            settings.http.body_limit_bytes,
            http::middleware::Deadlines {
                request: settings.request_timeout(),
                import: Duration::from_millis(settings.admin.import_timeout_ms),
            },
        );
        tracing::info!(listen = %listener.local_addr()?, "flashgate is serving");
        let lifecycle = state.lifecycle.clone();
        let live = state.live.clone();
        let limits = ListenerLimits {
            max_connections: settings.http.max_connections,
            header_read_timeout: Duration::from_millis(settings.http.header_read_timeout_ms),
            // In-flight requests end within their deadline; twice that is
            // generous, and bounds a stuck client.
            drain_timeout: settings.request_timeout() * 2,
        };
        let metrics_server = metrics_listener.map(|listener| {
            let router = http::metrics_router(state.clone());
            let stop = background.clone();
            tokio::spawn(serve(listener, router, limits, stop.cancelled_owned()))
        });
        serve(listener, router, limits, async move {
            stop.await;
            tracing::info!("stopping: draining in-flight requests");
            lifecycle.start_draining();
            // SSE streams would hold their connections open until the
            // drain timeout: end them now.
            live.close();
        })
        .await;
        background.cancel();
        if let Some(server) = metrics_server
            && let Err(e) = server.await
        {
            tracing::warn!(error = %e, "metrics listener ended abnormally");
        }
        if let Err(e) = sweeper.await {
            tracing::warn!(error = %e, "expiry sweeper ended abnormally");
        }
        if let Err(e) = orphans.await {
            tracing::warn!(error = %e, "orphan hold releaser ended abnormally");
        }
        if let Err(e) = cart_sweep.await {
            tracing::warn!(error = %e, "cart sweep ended abnormally");
        }
        if let Err(e) = recovery.await {
            tracing::warn!(error = %e, "failover check ended abnormally");
        }
        if let Err(e) = follower.await {
            tracing::warn!(error = %e, "stock announcement follower ended abnormally");
        }
        if let Err(e) = deliverer.await {
            tracing::warn!(error = %e, "webhook deliverer ended abnormally");
        }
        journal.stop().await;
        state.inventory.redis.quit().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Retries the journal migration until it succeeds or the gateway stops.
async fn migrate_until_done(
    store: Store,
    partitions: u32,
    pause: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        match store.migrate(partitions).await {
            Ok(()) => {
                tracing::info!("journal migrated; postgres is back");
                return;
            }
            Err(e) => tracing::debug!(error = format!("{e:#}"), "journal migration retry"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
