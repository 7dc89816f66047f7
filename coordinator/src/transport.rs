//! Server side of the mTLS transport: accepts TCP connections, runs the
//! TLS 1.3 handshake (client certificate required, see
//! `fedmesh_crypto::tls::server_config`) and hands tonic only connections
//! whose certificate carries a fedmesh identity. An unauthenticated client
//! never reaches a handler. Handlers read the identity from the request
//! extensions as [`PeerInfo`]. A connection whose client certificate is
//! revoked while it is open is closed ([`crate::credentials::Revocations`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

/// Limits of the accept loop (see `[limits]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Most handshakes in flight at once; further connections wait in the
    /// kernel backlog.
    pub max_handshakes: usize,
    /// Most handshakes in flight from one address (an IPv4 address, or an
    /// IPv6 /64); further connections from it are closed at once.
    pub max_handshakes_per_address: usize,
    /// A connection that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
}

impl AcceptLimits {
    /// The accept loop's share of the `[limits]` settings.
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            max_handshakes: limits.max_handshakes,
            max_handshakes_per_address: limits.max_handshakes_per_address,
            handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
        }
    }
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            max_handshakes_per_address: 16,
            handshake_timeout: Duration::from_secs(3),
        }
    }
}

pub use crate::error::HandshakeRefusal;

/// Receives every refused connection (for metrics).
pub type RefusalSink = Arc<dyn Fn(HandshakeRefusal) + Send + Sync>;

/// What handshakes from one source are counted under: an IPv4 address
/// (IPv4-mapped IPv6 included) or an IPv6 /64, the block one host
/// typically holds.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Handshakes in flight per address; entries exist only while a
/// handshake from the address is in flight, so the map holds at most
/// `max_handshakes` entries.
#[derive(Default)]
struct InFlight(Mutex<HashMap<IpAddr, usize>>);

/// One in-flight handshake; releases its address's slot when dropped.
struct AddressSlot {
    table: Arc<InFlight>,
    key: IpAddr,
}

impl InFlight {
    fn try_take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Turns a listener into a stream of authenticated connections, within
/// `limits`; `refused` hears of every connection closed before gRPC.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: AcceptLimits,
    refused: RefusalSink,
    revocations: crate::credentials::Revocations,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let in_flight = Arc::new(InFlight::default());
    let per_address = limits.max_handshakes_per_address.max(1);
    let handshake_timeout = limits.handshake_timeout;
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
            let Some(slot) = in_flight.try_take(remote.ip(), per_address) else {
                // Closed at once: one address cannot hold the global
                // permits (the permit goes back with `permit`).
                drop(tcp);
                debug!(%remote, "too many handshakes from this address");
                refused(HandshakeRefusal::PerAddressLimit);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let revocations = revocations.clone();
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let io = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        drop(slot);
                        if is_revoked_error(&e) {
                            debug!(%remote, "client certificate revoked");
                            refused(HandshakeRefusal::Revoked);
                        } else {
                            debug!(%remote, error = %e, "TLS handshake refused");
                            refused(HandshakeRefusal::Tls);
                        }
                        return;
                    }
                    Err(_) => {
                        drop(slot);
                        debug!(%remote, "TLS handshake timed out");
                        refused(HandshakeRefusal::Timeout);
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
                        drop(slot);
                        revocations.register(&serial, &identity);
                        if revocations.is_revoked(&serial) {
                            // Revoked while this handshake ran on the old list.
                            debug!(%remote, "client certificate revoked");
                            refused(HandshakeRefusal::Revoked);
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
                        debug!(%remote, error = %e, "client certificate has no fedmesh identity");
                        refused(HandshakeRefusal::NoIdentity);
                    }
                    None => {
                        debug!(%remote, "no client certificate");
                        refused(HandshakeRefusal::NoIdentity);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Whether a failed handshake failed because rustls found the client
/// certificate on the revocation list.
fn is_revoked_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            )
        })
}

/// The identity and (normalized) serial number of a verified client certificate.
fn peer_identity(der: &[u8]) -> Result<(Identity, Vec<u8>), fedmesh_crypto::CryptoError> {
    Ok((
        fedmesh_crypto::tls::identity_from_cert_der(der)?,
        fedmesh_crypto::crl::cert_serial(der)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    #[test]
    fn addresses_group_by_ipv4_and_ipv6_slash_64() {
        let k = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }

    #[test]
    fn address_slots_are_capped_and_released() {
        let t = Arc::new(InFlight::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = t.try_take(ip, 2).unwrap();
        let b = t.try_take(ip, 2).unwrap();
        assert!(t.try_take(ip, 2).is_none());
        assert!(t.try_take("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(t.try_take(ip, 2).is_some());
        drop(b);
        // Entries go away with their last slot: the table stays bounded.
        assert!(t.0.lock().unwrap().is_empty());
    }

    /// Hundreds of connections from 127.0.0.1 that never send a
    /// ClientHello: all but the per-address cap are closed at once, the
    /// capped ones are still held (the handshake timeout is long here),
    /// and a node dialling from 127.0.0.2 meanwhile completes its mTLS
    /// handshake and reaches the server. With one global cap only (the old
    /// accept loop), the stalled sockets held every permit and the node
    /// waited for the handshake timeout (60 s here, far beyond the
    /// client's 20 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_sockets_from_one_address_do_not_block_another() {
        const STALLED: usize = 300;
        const CAP: usize = 16;
        let now = time::OffsetDateTime::now_utc();
        let ca = fedmesh_crypto::MeshCa::generate("test CA", now, 1).unwrap();
        let coord = ca
            .issue_coordinator(
                &"c".parse().unwrap(),
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                now,
                1,
            )
            .unwrap();
        let server =
            fedmesh_crypto::tls::server_config(ca.cert_pem(), &coord.cert_pem, &coord.key_pem)
                .unwrap();
        let node = ca
            .issue_node(&"t".parse().unwrap(), &"n1".parse().unwrap(), now, 1)
            .unwrap();
        let client =
            fedmesh_crypto::tls::client_config(ca.cert_pem(), &node.cert_pem, &node.key_pem)
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_address = Arc::new(AtomicUsize::new(0));
        let counted = per_address.clone();
        let mut incoming = tls_incoming(
            listener,
            Arc::new(server),
            AcceptLimits {
                max_handshakes: 256,
                max_handshakes_per_address: CAP,
                handshake_timeout: Duration::from_secs(60),
            },
            Arc::new(move |r| {
                if r == HandshakeRefusal::PerAddressLimit {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }),
            crate::credentials::Revocations::default(),
        );
        let mut stalled = Vec::with_capacity(STALLED);
        for _ in 0..STALLED {
            stalled.push(TcpStream::connect(addr).await.unwrap());
        }
        // Every connection beyond the cap is refused (bounded wait).
        for _ in 0..2000 {
            if per_address.load(Ordering::SeqCst) >= STALLED - CAP {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(per_address.load(Ordering::SeqCst), STALLED - CAP);

        // The node, from another address, while the stalled sockets are held.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let _tls = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
            .await
            .expect("client handshake held up")
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(20), incoming.next())
            .await
            .expect("server handshake held up")
            .unwrap()
            .unwrap();
        assert!(matches!(
            &conn.info.identity,
            Identity::Node { node, .. } if node.as_str() == "n1"
        ));
        assert_eq!(
            conn.info.remote.ip(),
            "127.0.0.2".parse::<IpAddr>().unwrap()
        );

        // The refused sockets see the server's close; the capped ones are
        // still open (their handshake has 60 s).
        let reads = stalled.iter_mut().map(|s| async move {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => true,
                Ok(Ok(_)) | Err(_) => false,
            }
        });
        let closed = futures::future::join_all(reads)
            .await
            .into_iter()
            .filter(|c| *c)
            .count();
        assert_eq!(closed, STALLED - CAP);
    }
}
