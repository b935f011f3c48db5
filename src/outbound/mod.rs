//! Outbound HTTP: the one client the gateway uses to reach other services
//! (webhook receivers, an identity provider's JWKS). Resolve the target,
//! refuse inward addresses where asked (`target`), connect (TLS for
//! `https`), send one request, read the status and at most a bounded body.
//! A connection per request: these calls are rare (a few a minute), so
//! nothing is worth pooling, and each connection is checked against the
//! address it reached.

pub mod target;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use self::target::{Reach, Scheme, Target, TargetError};

/// Where `https` certificates are checked: a client configuration, built
/// when first needed (or the reason it cannot be).
pub type TlsSource<'a> = &'a (dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Sync);

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// At most the request's `body_bytes_max`; `None` when it was longer.
    pub body: Option<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("could not connect to {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within the timeout")]
    Timeout,
}

/// One request.
pub struct Outbound<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: Vec<(&'static str, String)>,
    /// Sent as `application/json` when present.
    pub json: Option<Bytes>,
    /// Bytes of the answer read at most.
    pub body_bytes_max: usize,
}

/// Sends `request`, all of it within `timeout`.
pub async fn send(
    request: Outbound<'_>,
    reach: Reach,
    tls: TlsSource<'_>,
    timeout: Duration,
) -> Result<Answer, SendError> {
    let target = Target::parse(request.url)?;
    match tokio::time::timeout(timeout, exchange_with(&target, reach, tls, request)).await {
        Ok(result) => result,
        Err(_) => Err(SendError::Timeout),
    }
}

async fn exchange_with(
    target: &Target,
    reach: Reach,
    tls: TlsSource<'_>,
    outbound: Outbound<'_>,
) -> Result<Answer, SendError> {
    let addresses = target.resolve(reach).await?;
    let tcp = connect(&addresses).await?;
    let mut request = Request::builder()
        .method(outbound.method)
        .uri(&target.path_and_query)
        .header(header::HOST, &target.authority)
        .header(
            header::USER_AGENT,
            concat!("flashgate/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &outbound.headers {
        request = request.header(*name, value);
    }
    if outbound.json.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(outbound.json.unwrap_or_default()))
        .map_err(|e| SendError::Http(e.to_string()))?;
    let limit = outbound.body_bytes_max;
    match target.scheme {
        Scheme::Http => exchange(tcp, request, limit).await,
        Scheme::Https => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| SendError::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(tls().map_err(SendError::Tls)?);
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| SendError::Tls(e.to_string()))?;
            exchange(stream, request, limit).await
        }
    }
}

/// The first of `addresses` that accepts a connection.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, SendError> {
    let mut last = String::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(SendError::Connect(last))
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    body_bytes_max: usize,
) -> Result<Answer, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| SendError::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection ends with this exchange; the task with it.
    let driver = tokio::spawn(connection);
    let answer = match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the answer up to the bound, so a server that writes its
            // body before closing is not cut mid-way; never more.
            let body = http_body_util::Limited::new(response.into_body(), body_bytes_max)
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes());
            Ok(Answer { status, body })
        }
        Err(e) => Err(http(e)),
    };
    driver.abort();
    answer
}
