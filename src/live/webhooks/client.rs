//! One webhook POST: resolve the target, refuse inward addresses, connect
//! (TLS for `https`), send, read the status. A connection per delivery:
//! deliveries follow status changes, a handful a minute, so nothing is worth
//! pooling, and each connection is checked against the address it reached.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::target::{Reach, Scheme, Target, TargetError};

/// Bytes of a receiver's answer read at most (the rest is dropped).
const RESPONSE_BYTES_MAX: usize = 4096;

/// What a receiver answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
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

/// The headers and body of one message.
pub struct Message<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: Bytes,
}

/// Sends `message` to `url`, all of it within `timeout`.
pub async fn post(
    url: &str,
    reach: Reach,
    tls: &(dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Sync),
    message: Message<'_>,
    timeout: Duration,
) -> Result<Answer, SendError> {
    let target = Target::parse(url)?;
    match tokio::time::timeout(timeout, send(&target, reach, tls, message)).await {
        Ok(result) => result,
        Err(_) => Err(SendError::Timeout),
    }
}

async fn send(
    target: &Target,
    reach: Reach,
    tls: &(dyn Fn() -> Result<Arc<rustls::ClientConfig>, String> + Sync),
    message: Message<'_>,
) -> Result<Answer, SendError> {
    let addresses = target.resolve(reach).await?;
    let tcp = connect(&addresses).await?;
    let request = Request::post(&target.path_and_query)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("flashgate/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", message.id)
        .header("webhook-timestamp", message.timestamp)
        .header("webhook-signature", message.signature)
        .body(Full::new(message.body))
        .map_err(|e| SendError::Http(e.to_string()))?;
    match target.scheme {
        Scheme::Http => exchange(tcp, request).await,
        Scheme::Https => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| SendError::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(tls().map_err(SendError::Tls)?);
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| SendError::Tls(e.to_string()))?;
            exchange(stream, request).await
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

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Answer, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| SendError::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection ends with this exchange; the task with it.
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(http);
    let answer = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read a little of the answer, so a receiver that writes its
            // body before closing is not cut mid-way; never more.
            let _ = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await;
            Ok(Answer { status })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    answer
}
