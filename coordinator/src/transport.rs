//! Server side of the mTLS transport: accepts TCP connections, runs the
//! TLS 1.3 handshake (client certificate required, see
//! `fedmesh_crypto::tls::server_config`) and hands tonic only connections
//! whose certificate carries a fedmesh identity. An unauthenticated client
//! never reaches a handler. Handlers read the identity from the request
//! extensions as [`PeerInfo`]. A connection whose client certificate is
//! revoked while it is open is closed ([`crate::credentials::Revocations`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fedmesh_crypto::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

/// The verified peer of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Identity from the client certificate.
    pub identity: Identity,
    /// Remote address.
    pub remote: SocketAddr,
}

/// An authenticated TLS connection.
pub struct TlsConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Resolves when the client certificate is revoked: the connection then
    /// fails every read and write, and the server drops it.
    revoked: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
}

impl TlsConn {
    fn check_revoked(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.revoked.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "client certificate revoked",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_revoked(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_revoked(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Most handshakes in flight at once; further connections wait in the
/// kernel backlog.
const MAX_HANDSHAKES: usize = 256;

/// Turns a listener into a stream of authenticated connections.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    revocations: crate::credentials::Revocations,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let revocations = revocations.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let io = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        debug!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = {
                    let (_, conn) = io.get_ref();
                    conn.peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| peer_identity(c.as_ref()))
                };
                match identity {
                    Some(Ok((identity, serial))) => {
                        revocations.register(&serial, &identity);
                        if revocations.is_revoked(&serial) {
                            // Revoked while this handshake ran on the old list.
                            debug!(%remote, "client certificate revoked");
                            return;
                        }
                        let _ = tx
                            .send(Ok(TlsConn {
                                io,
                                info: PeerInfo { identity, remote },
                                revoked: Box::pin(revocations.revoked(serial)),
                            }))
                            .await;
                    }
                    Some(Err(e)) => {
                        debug!(%remote, error = %e, "client certificate has no fedmesh identity")
                    }
                    None => debug!(%remote, "no client certificate"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The identity and (normalized) serial number of a verified client certificate.
fn peer_identity(der: &[u8]) -> Result<(Identity, Vec<u8>), fedmesh_crypto::CryptoError> {
    Ok((
        fedmesh_crypto::tls::identity_from_cert_der(der)?,
        fedmesh_crypto::crl::cert_serial(der)?,
    ))
}
