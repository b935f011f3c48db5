//! The listener's accept loop, with the limits axum's `serve` does not set.
//!
//! - A cap on open connections (`http.max_connections`): at the cap the loop
//!   stops accepting, so new connections wait in the kernel's backlog rather
//!   than each costing a task and buffers.
//! - A header-read timeout (`http.header_read_timeout_ms`): a client that
//!   does not send a whole request head in time (a slow-header attack, or
//!   an idle keep-alive connection) is disconnected.
//! - The peer address reaches handlers as axum's `ConnectInfo`.
//!
//! On stop the loop stops accepting, tells every connection to finish its
//! current request and close, and waits for them at most `drain_timeout`.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{Request, body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt;

/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Longest the shutdown waits for open connections to finish.
    pub drain_timeout: Duration,
}

/// What one connection may buffer, each way: request heads up to this reach
/// the header check (which answers over-large ones with a problem), and a
/// client that stops reading an event stream holds at most this much of it
/// in the gateway (hyper's default, some 400 KB, times 10,000 streams would
/// be 4 GB).
const CONNECTION_BUFFER_BYTES_MAX: usize = 4 * super::middleware::HEADER_BYTES_MAX;

pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    stop: impl Future<Output = ()>,
) {
    // Created here, dropped when the loop ends; each permit lives as long
    // as its connection's task.
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(super::middleware::LISTENER_HEADERS_MAX)
        .max_buf_size(CONNECTION_BUFFER_BYTES_MAX);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed while the loop runs
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = http.serve_connection(TokioIo::new(stream), service(router.clone(), peer));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = limits.drain_timeout.as_millis() as u64,
            "connections still open after the drain timeout; closing them"
        );
    }
}

/// The router as one connection's service, with the peer address attached
/// to each request.
fn service(
    router: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request.map(Body::new))
    })
}
