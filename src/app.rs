//! Building and running the gateway.
//!
//! `App::build` does everything that can fail at start (connect to Redis,
//! check the partition count, load the scripts, bind the listener), so a bad
//! deployment fails before it takes traffic. `run_until_stopped` serves until
//! the stop future resolves, then shuts down in order: readiness goes 503,
//! in-flight requests finish, background tasks stop, connections close.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Auth,
    config::Settings,
    http::{
        self, AppState,
        state::{Lifecycle, RequestLimits},
    },
    redis::{Redis, sweeper},
};

pub struct App {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.auth.secret.is_none() {
            tracing::warn!(
                "auth.secret is not set: using the public development secret; \
                 anyone can mint tokens. Set FLASHGATE_AUTH__SECRET in production."
            );
        }
        let redis = Redis::connect(&settings)
            .await
            .context("starting the redis layer")?;
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("binding {}", settings.http.listen))?;
        let state = AppState {
            redis: Arc::new(redis),
            auth: Arc::new(Auth::new(settings.auth.secret_or_development())),
            limits: Arc::new(RequestLimits {
                max_qty_per_request: settings.reservation.max_qty_per_request,
            }),
            lifecycle: Arc::new(Lifecycle::default()),
        };
        Ok(Self {
            listener,
            state,
            settings,
        })
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
            state,
            settings,
        } = self;
        let background = CancellationToken::new();
        let sweeper = tokio::spawn(sweeper::run(
            state.redis.clone(),
            Duration::from_millis(settings.expiry.sweep_interval_ms),
            settings.expiry.sweep_skus_max,
            background.clone(),
        ));
        let router = http::router(
            state.clone(),
            settings.http.body_limit_bytes,
            settings.request_timeout(),
        );
        tracing::info!(listen = %listener.local_addr()?, "flashgate is serving");
        let lifecycle = state.lifecycle.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            stop.await;
            tracing::info!("stopping: draining in-flight requests");
            lifecycle.start_draining();
        })
        .await
        .context("serving http")?;
        background.cancel();
        if let Err(e) = sweeper.await {
            tracing::warn!(error = %e, "expiry sweeper ended abnormally");
        }
        state.redis.quit().await;
        tracing::info!("stopped");
        Ok(())
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
