//! A minimal HTTP/1.1 client over any byte stream (a Unix socket for the
//! Docker Engine API, TCP or TLS for the webhook), built on hyper's
//! connection-level client: one connection per request, bounded response
//! body, the caller applies the timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Failures of one exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be made.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Socket path or address.
        target: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS with {host}: {message}")]
    Tls {
        /// Server name.
        host: String,
        /// What failed.
        message: String,
    },
    /// HTTP protocol failure.
    #[error("HTTP exchange failed: {0}")]
    Protocol(#[from] hyper::Error),
    /// The request could not be built.
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The response body was too large or broken.
    #[error("response body: {0}")]
    Body(String),
    /// No answer in time.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
}

/// Status and body of a response.
#[derive(Debug)]
pub(crate) struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Body (at most the requested limit).
    pub body: Bytes,
}

/// Sends `req` over `io` and reads the response body (at most `max_body`
/// bytes).
pub(crate) async fn send<S>(
    io: S,
    req: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}
