//! A keep-alive HTTP/1.1 client connection for the load generator and the
//! demo: one TCP connection, one request at a time, reconnected after an
//! error. Nothing is pooled or retried behind the caller's back, so every
//! request the generator times is exactly one request on the wire.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest wait for one response (connect included) before it counts as an
/// error; well past any latency worth reporting.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("no response within {RESPONSE_TIMEOUT:?}")]
    Timeout,
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A response reduced to what the callers read.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    /// The problem code (the last segment of `type`) of an error response.
    pub fn problem_code(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Problem<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        let problem: Problem<'_> = serde_json::from_slice(&self.body).ok()?;
        problem.kind.rsplit('/').next().map(str::to_owned)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection that is opened on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        let sender = match self.sender.take() {
            Some(open) if !open.is_closed() => open,
            _ => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| ClientError::Connect(self.addr, e))?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                // Ends when the connection closes or the sender is dropped.
                tokio::spawn(connection);
                sender
            }
        };
        Ok(self.sender.insert(sender))
    }

    /// Sends one request and reads the whole response. On any error the
    /// connection is dropped, and the next request opens a new one.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<Response, ClientError> {
        self.send_with(method, path, token, &[], body).await
    }

    /// `send` with more request headers.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Response, ClientError> {
        let exchange = self.exchange(method, path, token, headers, body);
        let result = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Sends a JSON body and returns the JSON answer, failing unless 200.
    pub async fn expect_ok(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .send(method, path, Some(token), Some(body.to_string()))
            .await?;
        if response.status != StatusCode::OK {
            anyhow::bail!(
                "{path}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        response
            .json()
            .ok_or_else(|| anyhow::anyhow!("{path}: the answer is not JSON"))
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Response, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let sender = self.sender().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Response { status, body })
    }
}
