//! Webhook alert sink: every alert is written to an on-disk outbox (a sled
//! tree in the node store) before delivery and deleted only after the
//! receiver answered 2xx, so no alert is lost across a restart.
//!
//! Delivery is **at-least-once, in order**: alerts are posted one at a time
//! in outbox order; a crash between the receiver's 2xx and the outbox delete
//! re-delivers that one alert after the restart. Each POST carries the
//! alert's deterministic id in the JSON body (`id`) and in an
//! `Idempotency-Key` header, so a receiver that drops ids it has seen gets
//! exactly-once.
//!
//! Failures (no connection, timeout, 5xx, 408, 429) are retried with
//! exponential backoff from `initial_backoff_ms` up to `max_backoff_ms`,
//! each pause jittered uniformly in `[d/2, d]`, without limit on the number
//! of attempts: the outbox bound is the limit. Any other 4xx is a permanent
//! refusal: the alert is removed and counted as rejected.
//!
//! The outbox holds at most `max_pending` alerts; when a new alert would
//! exceed it, the **oldest** pending alert is dropped and counted
//! (`fedmesh_node_webhook_dropped_total`): during a long outage the most
//! recent alerts are the ones kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::alerting::alert::Alert;
use crate::alerting::sink::{AlertError, AlertSink};
use crate::ops::docker::BoundedLog;
use crate::ops::http::HttpError;
use crate::store::{NodeStore, NodeStoreError};

/// Webhook failures.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The outbox failed.
    #[error("alert outbox: {0}")]
    Store(#[from] NodeStoreError),
    /// sled failed.
    #[error("alert outbox: {0}")]
    Sled(#[from] sled::Error),
    /// Invalid configuration.
    #[error("alerts.webhook: {0}")]
    Config(String),
    /// A file named in the configuration could not be read.
    #[error("alerts.webhook: cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("webhook POST: {0}")]
    Http(#[from] HttpError),
    /// A blocking outbox operation's thread failed.
    #[error("alert outbox: blocking task failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// `[alerts.webhook]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the alerts are POSTed to.
    pub url: String,
    /// Timeout of one POST (connect, TLS, request, response) in ms.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// First retry pause in ms.
    #[serde(default = "d_initial")]
    pub initial_backoff_ms: u64,
    /// Longest retry pause in ms.
    #[serde(default = "d_max")]
    pub max_backoff_ms: u64,
    /// Outbox bound (oldest dropped beyond it).
    #[serde(default = "d_pending")]
    pub max_pending: usize,
    /// PEM file of the CA certificates trusted for `https` (default: the
    /// system bundle `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File holding a bearer token sent as `Authorization: Bearer …`
    /// (read once at start, kept zeroized, never logged).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

fn d_timeout() -> u64 {
    5_000
}
fn d_initial() -> u64 {
    500
}
fn d_max() -> u64 {
    60_000
}
fn d_pending() -> usize {
    10_000
}

/// System CA bundle used for `https` without `ca_file`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl WebhookConfig {
    /// A config for `url` with every default.
    pub fn for_url(url: &str) -> Self {
        Self {
            url: url.to_string(),
            timeout_ms: d_timeout(),
            initial_backoff_ms: d_initial(),
            max_backoff_ms: d_max(),
            max_pending: d_pending(),
            ca_file: None,
            bearer_token_file: None,
        }
    }

    /// Problems with this section.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = parse_url(&self.url) {
            errs.push(format!("alerts.webhook.url: {e}"));
        }
        if self.timeout_ms == 0 {
            errs.push("alerts.webhook.timeout_ms must be positive".into());
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms {
            errs.push("alerts.webhook: need 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        if self.max_pending == 0 {
            errs.push("alerts.webhook.max_pending must be positive".into());
        }
        errs
    }
}

/// Scheme, host, port and path-and-query of a webhook URL.
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url:?}: scheme must be http or https")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL are not allowed (use bearer_token_file)"
        ));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Target {
        https,
        host: host.to_string(),
        port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// Webhook counters, shared with `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct WebhookCounters {
    /// Alerts delivered (2xx).
    pub delivered: Counter,
    /// Failed delivery attempts (retried).
    pub failed: Counter,
    /// Alerts refused by the receiver with a permanent 4xx (removed).
    pub rejected: Counter,
    /// Alerts dropped from a full outbox (lost).
    pub dropped: Counter,
    /// Alerts pending in the outbox.
    pub depth: Gauge,
}

/// The on-disk outbox (cheap to clone; all clones share one queue).
#[derive(Clone)]
pub struct Outbox {
    store: NodeStore,
    tree: sled::Tree,
    max_pending: usize,
    counters: WebhookCounters,
    wake: Arc<Notify>,
    /// Serialises push/remove so the pending count stays exact.
    len: Arc<Mutex<usize>>,
    drop_log: Arc<Mutex<BoundedLog>>,
}

impl Outbox {
    /// Opens the outbox tree of `store`; alerts left from a previous run are
    /// pending again.
    pub fn open(
        store: &NodeStore,
        max_pending: usize,
        counters: WebhookCounters,
    ) -> Result<Self, WebhookError> {
        let tree = store.alert_outbox()?;
        let len = tree.len();
        counters.depth.set(len as i64);
        if len > 0 {
            info!(
                pending = len,
                "alert outbox has undelivered alerts from before; delivering them first"
            );
        }
        Ok(Self {
            store: store.clone(),
            tree,
            max_pending: max_pending.max(1),
            counters,
            wake: Arc::new(Notify::new()),
            len: Arc::new(Mutex::new(len)),
            drop_log: Arc::new(Mutex::new(BoundedLog::new(Duration::from_secs(60)))),
        })
    }

    fn lock_len(&self) -> std::sync::MutexGuard<'_, usize> {
        self.len.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `alert` durably (flushed) before it is delivered; drops the
    /// oldest pending alert when the outbox is full.
    pub fn push(&self, alert: &Alert) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(alert)
            .map_err(|e| WebhookError::Config(format!("alert does not serialize: {e}")))?;
        let mut len = self.lock_len();
        let key = self.store.next_sequence()?.to_be_bytes();
        self.tree.insert(key, body)?;
        *len += 1;
        while *len > self.max_pending {
            match self.tree.pop_min()? {
                Some((k, v)) => {
                    *len -= 1;
                    self.counters.dropped.inc();
                    let id = alert_id(&v);
                    if let Some(suppressed) = self
                        .drop_log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .admit()
                    {
                        warn!(alert = %id, key = %hex::encode(k), max_pending = self.max_pending, suppressed, "alert outbox full: oldest alert dropped");
                    }
                }
                None => {
                    *len = 0;
                    break;
                }
            }
        }
        self.tree.flush()?;
        self.counters.depth.set(*len as i64);
        drop(len);
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest pending alert: its key and JSON body.
    pub fn front(&self) -> Result<Option<(sled::IVec, sled::IVec)>, WebhookError> {
        Ok(self.tree.first()?)
    }

    /// Removes a delivered (or refused) alert.
    pub fn remove(&self, key: &[u8]) -> Result<(), WebhookError> {
        let mut len = self.lock_len();
        if self.tree.remove(key)?.is_some() {
            *len = len.saturating_sub(1);
        }
        self.tree.flush()?;
        self.counters.depth.set(*len as i64);
        Ok(())
    }

    /// [`Outbox::remove`] on a blocking thread (it flushes sled), for the
    /// delivery task.
    pub async fn remove_blocking(&self, key: sled::IVec) -> Result<(), WebhookError> {
        let outbox = self.clone();
        tokio::task::spawn_blocking(move || outbox.remove(&key)).await?
    }

    /// Pending alerts.
    pub fn len(&self) -> usize {
        *self.lock_len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AlertSink for Outbox {
    fn emit(&mut self, alert: &Alert) -> Result<(), AlertError> {
        self.push(alert).map_err(|e| AlertError::Sink(Box::new(e)))
    }
}

fn alert_id(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// A resolved webhook endpoint: address, TLS, token, timing.
pub struct Webhook {
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<Zeroizing<String>>,
    timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("path", &self.target.path)
            .field("https", &self.target.https)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What one POST came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx.
    Delivered,
    /// Retry later (connection failure, timeout, 5xx, 408, 429).
    Retry,
    /// Permanent refusal (other 4xx): drop it.
    Rejected(u16),
}

impl Webhook {
    /// Resolves `cfg`: parses the URL, loads the CA file for `https` and
    /// the bearer token.
    pub fn new(cfg: &WebhookConfig) -> Result<Self, WebhookError> {
        let target = parse_url(&cfg.url).map_err(WebhookError::Config)?;
        let tls = if target.https {
            let path = cfg
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let pem = std::fs::read(&path).map_err(|source| WebhookError::Read {
                path: path.clone(),
                source,
            })?;
            let mut roots = rustls::RootCertStore::empty();
            let mut n = 0usize;
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls_pki_types::CertificateDer<'static> = cert.map_err(|e| {
                    WebhookError::Config(format!("{}: bad PEM: {e}", path.display()))
                })?;
                if roots.add(cert).is_ok() {
                    n += 1;
                }
            }
            if n == 0 {
                return Err(WebhookError::Config(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let token = match &cfg.bearer_token_file {
            None => None,
            Some(p) => {
                let raw = Zeroizing::new(std::fs::read_to_string(p).map_err(|source| {
                    WebhookError::Read {
                        path: p.clone(),
                        source,
                    }
                })?);
                let t = Zeroizing::new(raw.trim().to_string());
                if t.is_empty() {
                    return Err(WebhookError::Config(format!(
                        "{}: empty token",
                        p.display()
                    )));
                }
                Some(t)
            }
        };
        Ok(Self {
            target,
            tls,
            token,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            initial_backoff: Duration::from_millis(cfg.initial_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(
                cfg.max_backoff_ms.max(cfg.initial_backoff_ms).max(1),
            ),
        })
    }

    /// POSTs one alert body.
    pub async fn post(&self, body: Bytes, id: &str) -> Result<Delivery, WebhookError> {
        let t = &self.target;
        let host_header = if (t.https && t.port == 443) || (!t.https && t.port == 80) {
            t.host.clone()
        } else if t.host.contains(':') {
            format!("[{}]:{}", t.host, t.port)
        } else {
            format!("{}:{}", t.host, t.port)
        };
        let mut req = Request::post(t.path.as_str())
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("fedmesh-node/", env!("CARGO_PKG_VERSION")),
            )
            .header("Idempotency-Key", id);
        if let Some(tok) = &self.token {
            let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {}", tok.as_str()))
                .map_err(|_| {
                WebhookError::Config("bearer token is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            req = req.header(hyper::header::AUTHORIZATION, v);
        }
        let req = req.body(Full::new(body)).map_err(HttpError::from)?;
        let exchange = async {
            let target = format!("{}:{}", t.host, t.port);
            let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|source| HttpError::Connect {
                    target: target.clone(),
                    source,
                })?;
            match &self.tls {
                None => crate::ops::http::send(tcp, req, 64 * 1024).await,
                Some(conn) => {
                    let name =
                        rustls_pki_types::ServerName::try_from(t.host.clone()).map_err(|e| {
                            HttpError::Tls {
                                host: t.host.clone(),
                                message: e.to_string(),
                            }
                        })?;
                    let tls = conn.connect(name, tcp).await.map_err(|e| HttpError::Tls {
                        host: t.host.clone(),
                        message: e.to_string(),
                    })?;
                    crate::ops::http::send(tls, req, 64 * 1024).await
                }
            }
        };
        let resp = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))??;
        let s = resp.status;
        Ok(if s.is_success() {
            Delivery::Delivered
        } else if s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429 {
            Delivery::Rejected(s.as_u16())
        } else {
            Delivery::Retry
        })
    }

    /// Pause before retry number `attempt` (0-based): exponential, capped,
    /// jittered in `[d/2, d]`.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max_backoff);
        let ms = base.as_millis() as u64;
        Duration::from_millis(rng.random_range(ms / 2..=ms.max(1)))
    }
}

/// Delivers the outbox to `hook` in order until `shutdown`; see the module
/// documentation for the retry and loss policy.
pub async fn run_delivery(outbox: Outbox, hook: Webhook, mut shutdown: watch::Receiver<bool>) {
    let mut attempt = 0u32;
    // Jitter only: seeded from the OS, not reproducible on purpose.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let mut fail_log = BoundedLog::new(Duration::from_secs(60));
    info!(webhook = ?hook, pending = outbox.len(), "webhook delivery started");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let front = match outbox.front() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "alert outbox unreadable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let Some((key, body)) = front else {
            tokio::select! {
                _ = outbox.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        let id = alert_id(&body);
        let outcome = tokio::select! {
            r = hook.post(Bytes::copy_from_slice(&body), &id) => r,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(Delivery::Delivered) => {
                if let Err(e) = outbox.remove_blocking(key.clone()).await {
                    warn!(error = %e, alert = %id, "delivered alert could not be removed from the outbox; it will be re-delivered");
                }
                outbox.counters.delivered.inc();
                debug!(alert = %id, "alert delivered");
                attempt = 0;
                continue;
            }
            Ok(Delivery::Rejected(status)) => {
                warn!(alert = %id, status, "webhook refused the alert permanently; removed from the outbox");
                outbox.counters.rejected.inc();
                if let Err(e) = outbox.remove_blocking(key.clone()).await {
                    warn!(error = %e, alert = %id, "refused alert could not be removed from the outbox");
                }
                attempt = 0;
                continue;
            }
            Ok(Delivery::Retry) => {
                outbox.counters.failed.inc();
                if let Some(suppressed) = fail_log.admit() {
                    warn!(alert = %id, suppressed, pending = outbox.len(), "webhook answered with a retryable status; retrying with backoff");
                }
            }
            Err(e) => {
                outbox.counters.failed.inc();
                if let Some(suppressed) = fail_log.admit() {
                    warn!(alert = %id, error = %e, suppressed, pending = outbox.len(), "webhook delivery failed; retrying with backoff");
                }
            }
        }
        let pause = hook.backoff(attempt, &mut rng);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};

    fn alert(i: u64) -> Alert {
        crate::alerting::alert::tests::open(&format!("c{i}"), 1000 + i, 2.0, None)
    }

    /// Reopens a sled store dropped a moment ago (its lock is released
    /// asynchronously).
    fn reopen(dir: &std::path::Path) -> NodeStore {
        for _ in 0..50 {
            if let Ok(s) = NodeStore::open(dir) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        NodeStore::open(dir).unwrap()
    }

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A receiver that records `(Idempotency-Key, body id)` of accepted
    /// alerts; answers 503 to the first `fail_first` requests, and `status`
    /// afterwards.
    async fn receiver(
        listener: tokio::net::TcpListener,
        fail_first: usize,
        status: StatusCode,
    ) -> (Seen, tokio::task::JoinHandle<()>) {
        let seen: Seen = Arc::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = s2.clone();
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail_first {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    if status.is_success() {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let a: Alert = serde_json::from_str(&body).unwrap();
                        seen.lock().unwrap().push((key, a.id));
                    }
                    status
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (seen, task)
    }

    async fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn fast(url: &str) -> WebhookConfig {
        WebhookConfig {
            initial_backoff_ms: 10,
            max_backoff_ms: 80,
            timeout_ms: 1_000,
            ..WebhookConfig::for_url(url)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_lost_across_a_restart_with_an_unreachable_webhook() {
        let dir = tempfile::tempdir().unwrap();
        // A port with no listener: bind, note, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = fast(&format!("http://127.0.0.1:{port}/hook"));
        let mut ids = Vec::new();
        {
            let store = NodeStore::open(dir.path()).unwrap();
            let counters = WebhookCounters::default();
            let outbox = Outbox::open(&store, 100, counters.clone()).unwrap();
            for i in 0..5 {
                let a = alert(i);
                ids.push(a.id.clone());
                outbox.push(&a).unwrap();
            }
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(run_delivery(
                outbox.clone(),
                Webhook::new(&cfg).unwrap(),
                rx,
            ));
            wait_until(|| counters.failed.get() >= 3).await;
            tx.send(true).unwrap();
            task.await.unwrap();
            assert!(
                counters.failed.get() >= 3,
                "retried: {}",
                counters.failed.get()
            );
            assert_eq!(counters.delivered.get(), 0);
            assert_eq!(counters.depth.get(), 5);
        }
        // Restart: the receiver is up now (on the same port), first answer 503.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (seen, server) = receiver(listener, 1, StatusCode::OK).await;
        let store = reopen(dir.path());
        let counters = WebhookCounters::default();
        let outbox = Outbox::open(&store, 100, counters.clone()).unwrap();
        assert_eq!(outbox.len(), 5, "pending alerts survived the restart");
        assert_eq!(counters.depth.get(), 5);
        for i in 5..7 {
            let a = alert(i);
            ids.push(a.id.clone());
            outbox.push(&a).unwrap();
        }
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run_delivery(
            outbox.clone(),
            Webhook::new(&cfg).unwrap(),
            rx,
        ));
        wait_until(|| outbox.is_empty()).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        server.abort();
        let seen = seen.lock().unwrap().clone();
        let got: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(got, ids, "every alert exactly once, in order");
        assert!(
            seen.iter().all(|(k, id)| k == id),
            "Idempotency-Key is the alert id"
        );
        assert_eq!(counters.delivered.get(), 7);
        assert_eq!(counters.failed.get(), 1, "the one 503");
        assert_eq!(counters.depth.get(), 0);
    }

    #[tokio::test]
    async fn full_outbox_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let counters = WebhookCounters::default();
        let outbox = Outbox::open(&store, 3, counters.clone()).unwrap();
        for i in 0..5 {
            outbox.push(&alert(i)).unwrap();
        }
        assert_eq!(outbox.len(), 3);
        assert_eq!(counters.dropped.get(), 2);
        assert_eq!(counters.depth.get(), 3);
        let (_, body) = outbox.front().unwrap().unwrap();
        assert_eq!(alert_id(&body), alert(2).id, "the newest three are kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permanent_refusals_are_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, server) = receiver(listener, 0, StatusCode::BAD_REQUEST).await;
        let store = NodeStore::open(dir.path()).unwrap();
        let counters = WebhookCounters::default();
        let outbox = Outbox::open(&store, 10, counters.clone()).unwrap();
        outbox.push(&alert(1)).unwrap();
        outbox.push(&alert(2)).unwrap();
        let (tx, rx) = watch::channel(false);
        let hook = Webhook::new(&fast(&format!("http://127.0.0.1:{port}/hook"))).unwrap();
        let task = tokio::spawn(run_delivery(outbox.clone(), hook, rx));
        wait_until(|| outbox.is_empty()).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        server.abort();
        assert_eq!(counters.rejected.get(), 2);
        assert_eq!(counters.delivered.get(), 0);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn urls_backoff_and_secrets() {
        assert!(
            WebhookConfig::for_url("http://127.0.0.1:9/x")
                .problems()
                .is_empty()
        );
        for bad in ["ftp://h/x", "not a url", "http://user:pw@h/x", "/relative"] {
            let p = WebhookConfig::for_url(bad).problems();
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
        }
        let t = parse_url("https://hooks.example.invalid/a?b=1").unwrap();
        assert!(t.https);
        assert_eq!((t.port, t.path.as_str()), (443, "/a?b=1"));
        let t = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "s3cret-token\n").unwrap();
        let hook = Webhook::new(&WebhookConfig {
            bearer_token_file: Some(tok),
            ..fast("http://127.0.0.1:9/x")
        })
        .unwrap();
        let dbg = format!("{hook:?}");
        assert!(!dbg.contains("s3cret") && dbg.contains("redacted"), "{dbg}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        use rand::SeedableRng;
        let d: Vec<u128> = (0..8)
            .map(|a| hook.backoff(a, &mut rng).as_millis())
            .collect();
        assert!((5..=10).contains(&d[0]), "{d:?}");
        assert!((10..=20).contains(&d[1]), "{d:?}");
        assert!(
            d[4..].iter().all(|&x| (40..=80).contains(&x)),
            "capped: {d:?}"
        );
        let e = Webhook::new(&WebhookConfig {
            ca_file: Some(dir.path().join("missing.pem")),
            ..fast("https://127.0.0.1:9/x")
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    /// A one-connection-per-request HTTPS receiver (TLS from the mesh CA's
    /// tooling) that answers 204 and records each request head.
    async fn tls_receiver(
        cert_pem: String,
        key_pem: String,
    ) -> (u16, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        use rustls_pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let certs =
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and the Content-Length body.
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            s2.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        (port, seen, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_delivery_with_a_private_ca_and_bearer_token() {
        let now = time::OffsetDateTime::now_utc();
        let ca = fedmesh_crypto::MeshCa::generate("siem test CA", now, 1).unwrap();
        let name: fedmesh_crypto::NodeId = "siem".parse().unwrap();
        let server = ca
            .issue_coordinator(&name, &["localhost".into()], &[], now, 1)
            .unwrap();
        let (port, seen, task) =
            tls_receiver(server.cert_pem.clone(), server.key_pem.expose().to_string()).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "tok-123\n").unwrap();
        let cfg = WebhookConfig {
            ca_file: Some(ca_file.clone()),
            bearer_token_file: Some(tok),
            ..fast(&format!("https://localhost:{port}/ingest"))
        };
        let hook = Webhook::new(&cfg).unwrap();
        let a = alert(1);
        let body = Bytes::from(serde_json::to_vec(&a).unwrap());
        assert_eq!(
            hook.post(body.clone(), &a.id).await.unwrap(),
            Delivery::Delivered
        );
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("POST /ingest HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer tok-123"), "{head}");
        assert!(
            lower.contains(&format!("idempotency-key: {}", a.id)),
            "{head}"
        );
        assert!(head.contains(&a.id));
        // A CA that did not sign the server certificate: TLS fails, retryable.
        let other = fedmesh_crypto::MeshCa::generate("other CA", now, 1).unwrap();
        std::fs::write(&ca_file, other.cert_pem()).unwrap();
        let wrong = Webhook::new(&cfg).unwrap();
        let e = wrong.post(body, &a.id).await.unwrap_err().to_string();
        assert!(e.contains("TLS"), "{e}");
        task.abort();
    }
}
