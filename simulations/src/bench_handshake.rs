//! `fedmesh-sim bench handshake`: how long a legitimate node takes to get
//! a connection through to the real coordinator's gRPC server while
//! another address holds `stalled` TCP connections that never send a
//! ClientHello.
//!
//! The stalled sockets come from 127.0.0.1, the node dials from 127.0.0.2
//! (any 127/8 address is local on Linux). A sample is TCP connect, the
//! mutual-TLS handshake and the HTTP/2 preface until the server's first
//! SETTINGS frame arrives, which it sends only once the accept loop has
//! handed the connection to gRPC.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_coordinator::transport::HandshakeRefusal;
use fedmesh_coordinator::{Coordinator, CoordinatorConfig};
use fedmesh_crypto::{MeshCa, TenantId};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TENANT, pki};

/// One accept-loop configuration to measure.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// `[limits] max_handshakes`.
    pub max_handshakes: usize,
    /// `[limits] max_handshakes_per_address`.
    pub per_address: usize,
    /// `[limits] handshake_timeout_ms`.
    pub timeout_ms: u64,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct HandshakeBench {
    /// Stalled connections from 127.0.0.1.
    pub stalled: usize,
    /// Legitimate connections timed (one after the other).
    pub samples: usize,
    /// Configurations, each on a fresh coordinator.
    pub limits: Vec<HandshakeLimits>,
}

/// One configuration's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeRow {
    /// Stalled connections.
    pub stalled: usize,
    /// `max_handshakes`.
    pub max_handshakes: usize,
    /// `max_handshakes_per_address`.
    pub per_address: usize,
    /// `handshake_timeout_ms`.
    pub timeout_ms: u64,
    /// Stalled connections the coordinator closed at once.
    pub closed_at_once: u64,
    /// The first legitimate connection after the stalled ones, ms.
    pub first_ms: f64,
    /// Median over the samples, ms.
    pub median_ms: f64,
    /// Slowest sample, ms.
    pub max_ms: f64,
    /// Samples that did not get through within 30 s.
    pub failed: usize,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Connect, handshake and read the server's first HTTP/2 frame header.
async fn legitimate(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind("127.0.0.2:0".parse()?)
        .context("binding 127.0.0.2 (Linux loopback)")?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(PREFACE).await?;
    tls.write_all(&SETTINGS).await?;
    tls.flush().await?;
    let mut header = [0u8; 9];
    tls.read_exact(&mut header).await?;
    if header[3] != 4 {
        bail!("the server's first frame is not SETTINGS");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs every configuration; prints nothing.
pub async fn run_handshake_bench(b: &HandshakeBench) -> Result<Vec<HandshakeRow>> {
    if b.samples == 0 || b.limits.is_empty() {
        bail!("need at least one sample and one configuration");
    }
    let now = time::OffsetDateTime::now_utc();
    let ca = MeshCa::generate("bench CA", now, 1)?;
    let tenant: TenantId = TENANT.parse()?;
    let node = ca.issue_node(&tenant, &"n0000".parse()?, now, 1)?;
    let client = fedmesh_crypto::tls::client_config(ca.cert_pem(), &node.cert_pem, &node.key_pem)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut rows = Vec::new();
    for l in &b.limits {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = '{data}'\n\
             [tls]\nca_cert = \"-\"\ncert = \"-\"\nkey = \"-\"\n\
             [limits]\nmax_handshakes = {}\nmax_handshakes_per_address = {}\n\
             handshake_timeout_ms = {}\n\
             [[tenants]]\nname = \"{TENANT}\"\nmin_nodes = 1\nquorum = 1\nmax_rounds = 1\n",
            l.max_handshakes,
            l.per_address,
            l.timeout_ms,
            data = dir.path().join("data").display(),
        );
        let cfg = CoordinatorConfig::from_toml(&text, Path::new("bench.toml"))?;
        let coordinator = Coordinator::open(&cfg, &pki(&ca)?)?;
        let metrics = coordinator.metrics();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(coordinator.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let mut stalled = Vec::with_capacity(b.stalled);
        for _ in 0..b.stalled {
            stalled.push(tokio::net::TcpStream::connect(addr).await?);
        }
        // Let the accept loop see them (bounded: at most 2 s).
        let expect = b.stalled.saturating_sub(l.per_address) as u64;
        for _ in 0..200 {
            if metrics.handshakes_refused(HandshakeRefusal::PerAddressLimit) >= expect {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut times = Vec::with_capacity(b.samples);
        let mut failed = 0;
        for _ in 0..b.samples {
            let t = Instant::now();
            match tokio::time::timeout(Duration::from_secs(30), legitimate(addr, &connector)).await
            {
                Ok(Ok(())) => times.push(t.elapsed().as_secs_f64() * 1e3),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "legitimate connection failed");
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
        }
        let closed_at_once = metrics.handshakes_refused(HandshakeRefusal::PerAddressLimit);
        drop(stalled);
        let _ = stop_tx.send(());
        let _ = server.await;
        let first_ms = times.first().copied().unwrap_or(f64::NAN);
        let max_ms = times.iter().copied().fold(f64::NAN, f64::max);
        rows.push(HandshakeRow {
            stalled: b.stalled,
            max_handshakes: l.max_handshakes,
            per_address: l.per_address,
            timeout_ms: l.timeout_ms,
            closed_at_once,
            first_ms,
            median_ms: median(times),
            max_ms,
            failed,
        });
    }
    if rows.is_empty() {
        return Err(anyhow!("nothing measured"));
    }
    Ok(rows)
}

/// The results as a Markdown table.
pub fn markdown(rows: &[HandshakeRow]) -> String {
    let mut out = String::from(
        "| stalled sockets (127.0.0.1) | max_handshakes | per address | handshake timeout ms | closed at once | first legitimate ms | median ms | slowest ms | failed |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.stalled,
            r.max_handshakes,
            r.per_address,
            r.timeout_ms,
            r.closed_at_once,
            r.first_ms,
            r.median_ms,
            r.max_ms,
            r.failed
        ));
    }
    out
}
