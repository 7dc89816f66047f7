//! Docker Engine API over its Unix socket: container identity (name, image,
//! Kubernetes pod labels) for alerts, and the calls of the response actions
//! (`pause`, network `disconnect`).
//!
//! The identity cache is filled by [`run_identity_refresher`] from
//! `GET /containers/json` (which carries names, image, labels and networks
//! in one response) every `refresh_s`, and sooner on request when an alert
//! names an unknown container, but never more often than every
//! `min_refresh_s`. Failures are counted (`fedmesh_node_docker_errors_total`)
//! and logged at most once a minute; they never stop detection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::ops::http::HttpError;

/// Largest Docker API response read (the container list of a busy host).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Docker API failures.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Transport failure.
    #[error("docker API {method} {path}: {source}")]
    Http {
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// Cause.
        source: HttpError,
    },
    /// Non-success status.
    #[error("docker API {method} {path}: status {status}: {message}")]
    Status {
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// Status.
        status: StatusCode,
        /// Daemon's message (truncated).
        message: String,
    },
    /// The response did not decode.
    #[error("docker API {path}: undecodable response: {message}")]
    Decode {
        /// Path.
        path: String,
        /// Cause.
        message: String,
    },
    /// A response action needs the Docker API but no `[docker]` section is set.
    #[error("no [docker] section configured: cannot act on container {0}")]
    NotConfigured(String),
    /// A container id or network name that cannot go into a URL path.
    #[error("refusing to call the docker API for {0:?}: not a container or network name")]
    BadName(String),
}

/// `[docker]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker Engine API socket.
    #[serde(default = "d_socket")]
    pub socket: PathBuf,
    /// Seconds between container list refreshes.
    #[serde(default = "d_refresh")]
    pub refresh_s: u64,
    /// Shortest pause between two refreshes (on-demand ones included).
    #[serde(default = "d_min_refresh")]
    pub min_refresh_s: u64,
    /// Timeout of one API call in milliseconds.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
}

fn d_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}
fn d_refresh() -> u64 {
    30
}
fn d_min_refresh() -> u64 {
    5
}
fn d_timeout() -> u64 {
    2_000
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            socket: d_socket(),
            refresh_s: d_refresh(),
            min_refresh_s: d_min_refresh(),
            timeout_ms: d_timeout(),
        }
    }
}

impl DockerConfig {
    /// Problems with this section.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.refresh_s == 0 {
            errs.push("docker.refresh_s must be positive".into());
        }
        if self.min_refresh_s > self.refresh_s {
            errs.push("docker.min_refresh_s must not exceed docker.refresh_s".into());
        }
        if self.timeout_ms == 0 {
            errs.push("docker.timeout_ms must be positive".into());
        }
        if self.socket.as_os_str().is_empty() {
            errs.push("docker.socket must not be empty".into());
        }
        errs
    }
}

/// What the runtime tells about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: Option<String>,
    /// Image reference.
    pub image: Option<String>,
    /// `io.kubernetes.pod.name` label.
    pub pod: Option<String>,
    /// `io.kubernetes.pod.namespace` label.
    pub namespace: Option<String>,
    /// Networks the container is attached to.
    pub networks: Vec<String>,
    /// When the container last started (Unix ms; `GET /containers/{id}/json`
    /// only, `None` from the list or when it never started).
    pub started_unix_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Summary {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
    #[serde(default)]
    network_settings: Option<NetworkSettings>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettings {
    #[serde(default)]
    networks: Option<HashMap<String, serde_json::Value>>,
}

impl From<Summary> for ContainerInfo {
    fn from(s: Summary) -> Self {
        let labels = s.labels.unwrap_or_default();
        let mut networks: Vec<String> = s
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default();
        networks.sort();
        ContainerInfo {
            id: s.id,
            name: s
                .names
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .filter(|n| !n.is_empty()),
            image: s.image.filter(|i| !i.is_empty()),
            pod: labels.get("io.kubernetes.pod.name").cloned(),
            namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
            networks,
            started_unix_ms: None,
        }
    }
}

/// Parses a `GET /containers/json` response.
pub fn parse_container_list(body: &[u8]) -> Result<Vec<ContainerInfo>, DockerError> {
    let list: Vec<Summary> = serde_json::from_slice(body).map_err(|e| DockerError::Decode {
        path: "/containers/json".into(),
        message: e.to_string(),
    })?;
    Ok(list.into_iter().map(ContainerInfo::from).collect())
}

/// Whether `s` may be put into a Docker API path (container ids and names,
/// network names: `[A-Za-z0-9_.-]`, not starting with `.` or `-`).
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Docker Engine API client over a Unix socket.
#[derive(Debug, Clone)]
pub struct DockerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl DockerClient {
    /// A client for `socket` with a per-call `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, DockerError> {
        let http = |source| DockerError::Http {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "docker");
        let bytes = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| http(HttpError::Request(e)))?;
        let socket = self.socket.clone();
        let exchange = async move {
            let io = tokio::net::UnixStream::connect(&socket)
                .await
                .map_err(|source| HttpError::Connect {
                    target: socket.display().to_string(),
                    source,
                })?;
            crate::ops::http::send(io, req, MAX_BODY).await
        };
        let resp = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| http(HttpError::Timeout(self.timeout)))?
            .map_err(http)?;
        if !resp.status.is_success() {
            let text = String::from_utf8_lossy(&resp.body);
            return Err(DockerError::Status {
                method,
                path: path.to_string(),
                status: resp.status,
                message: text.chars().take(200).collect(),
            });
        }
        Ok(resp.body)
    }

    /// `GET /containers/json?all=1`: every container, stopped ones too, so
    /// a container that is restarted (same id) keeps its name in the cache
    /// while it comes back.
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        let body = self
            .call(Method::GET, "/containers/json?all=1", None)
            .await?;
        parse_container_list(&body)
    }

    /// `GET /containers/{id}/json`: one container (its networks included).
    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, DockerError> {
        if !safe_name(id) {
            return Err(DockerError::BadName(id.to_string()));
        }
        let path = format!("/containers/{id}/json");
        let body = self.call(Method::GET, &path, None).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            id: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            config: Option<InspectConfig>,
            #[serde(default)]
            network_settings: Option<NetworkSettings>,
            #[serde(default)]
            state: Option<InspectState>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct InspectState {
            #[serde(default)]
            started_at: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct InspectConfig {
            #[serde(default)]
            image: Option<String>,
            #[serde(default)]
            labels: Option<HashMap<String, String>>,
        }
        let i: Inspect = serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (image, labels) = i
            .config
            .map(|c| (c.image, c.labels))
            .unwrap_or((None, None));
        // Docker reports a container that never started as year 1.
        let started_unix_ms = i
            .state
            .and_then(|s| s.started_at)
            .and_then(|t| crate::telemetry::events::normalize::parse_rfc3339_ms(&t))
            .filter(|ms| *ms > 0);
        let mut info = ContainerInfo::from(Summary {
            id: i.id,
            names: i.name.into_iter().collect(),
            image,
            labels,
            network_settings: i.network_settings,
        });
        info.started_unix_ms = started_unix_ms;
        Ok(info)
    }

    /// `POST /containers/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Result<(), DockerError> {
        if !safe_name(id) {
            return Err(DockerError::BadName(id.to_string()));
        }
        self.call(Method::POST, &format!("/containers/{id}/pause"), None)
            .await
            .map(|_| ())
    }

    /// `POST /networks/{network}/disconnect` with `{"Container": id, "Force": true}`.
    pub async fn disconnect(&self, network: &str, id: &str) -> Result<(), DockerError> {
        for s in [network, id] {
            if !safe_name(s) {
                return Err(DockerError::BadName(s.to_string()));
            }
        }
        self.call(
            Method::POST,
            &format!("/networks/{network}/disconnect"),
            Some(serde_json::json!({ "Container": id, "Force": true })),
        )
        .await
        .map(|_| ())
    }
}

/// Logs a recurring failure at most once per period, counting the rest.
#[derive(Debug)]
pub(crate) struct BoundedLog {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl BoundedLog {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last log)` when this failure should be logged.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.period)
        {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[derive(Debug, Default)]
struct CacheInner {
    by_key: RwLock<HashMap<String, ContainerInfo>>,
    wanted: Notify,
}

/// Container identities by full id, 12-hex short id and name; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct IdentityCache {
    inner: Arc<CacheInner>,
}

impl IdentityCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The container known by `key` (full id, short id or name).
    pub fn get(&self, key: &str) -> Option<ContainerInfo> {
        let map = self.inner.by_key.read().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .or_else(|| map.get(&key.to_ascii_lowercase()))
            .cloned()
    }

    /// Replaces the contents with `list`.
    pub fn replace(&self, list: Vec<ContainerInfo>) {
        let mut map = HashMap::with_capacity(list.len() * 3);
        for c in list {
            let short: String =
                c.id.chars()
                    .take(crate::telemetry::events::SHORT_ID_LEN)
                    .collect();
            if let Some(n) = &c.name {
                map.insert(n.clone(), c.clone());
            }
            map.insert(short, c.clone());
            map.insert(c.id.clone(), c);
        }
        *self.inner.by_key.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Asks the refresher for an early refresh (rate-bounded by it).
    pub fn request_refresh(&self) {
        self.inner.wanted.notify_one();
    }
}

/// Keeps `cache` filled from the Docker API until `shutdown`.
pub async fn run_identity_refresher(
    client: DockerClient,
    cache: IdentityCache,
    cfg: DockerConfig,
    errors: Counter,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(cfg.refresh_s.max(1));
    let min_gap = Duration::from_secs(cfg.min_refresh_s);
    let mut log = BoundedLog::new(Duration::from_secs(60));
    let mut ok_before = false;
    loop {
        let started = Instant::now();
        match client.list_containers().await {
            Ok(list) => {
                if !ok_before {
                    info!(socket = %client.socket().display(), containers = list.len(), "docker API reachable: naming containers");
                }
                ok_before = true;
                debug!(containers = list.len(), "container identities refreshed");
                cache.replace(list);
            }
            Err(e) => {
                errors.inc();
                ok_before = false;
                if let Some(suppressed) = log.admit() {
                    warn!(error = %e, suppressed, "docker API unavailable; alerts carry container ids only");
                }
            }
        }
        let next_regular = started + every;
        tokio::select! {
            _ = tokio::time::sleep_until(next_regular.into()) => {}
            _ = cache.inner.wanted.notified() => {
                let earliest = started + min_gap;
                tokio::select! {
                    _ = tokio::time::sleep_until(earliest.into()) => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake Docker Engine API on a Unix socket: records every request
    /// (`METHOD path body`) and answers the container list with `list`.
    pub(crate) struct FakeDocker {
        /// Keeps the socket directory alive.
        pub _dir: tempfile::TempDir,
        pub socket: PathBuf,
        pub requests: Arc<Mutex<Vec<String>>>,
        /// While set, pause answers 500.
        pub fail_pause: Arc<std::sync::atomic::AtomicBool>,
        pub task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeDocker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub(crate) async fn fake_docker(list: serde_json::Value) -> FakeDocker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let mut fake = fake_docker_at(&socket, list).await;
        fake._dir = dir;
        fake
    }

    /// [`fake_docker`] listening on `socket`.
    pub(crate) async fn fake_docker_at(socket: &Path, list: serde_json::Value) -> FakeDocker {
        use axum::extract::{Path as AxPath, State};
        use axum::routing::{get, post};
        use std::sync::atomic::{AtomicBool, Ordering};
        type Log = Arc<Mutex<Vec<String>>>;
        let dir = tempfile::tempdir().unwrap();
        let socket = socket.to_path_buf();
        let fail_pause = Arc::new(AtomicBool::new(false));
        let requests: Log = Arc::default();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let list = Arc::new(list);
        let app = axum::Router::new()
            .route(
                "/containers/json",
                get({
                    let list = list.clone();
                    move |State(log): State<Log>| async move {
                        log.lock().unwrap().push("GET /containers/json".into());
                        axum::Json((*list).clone())
                    }
                }),
            )
            .route(
                "/containers/{id}/json",
                get({
                    let list = list.clone();
                    move |State(log): State<Log>, AxPath(id): AxPath<String>| async move {
                        log.lock()
                            .unwrap()
                            .push(format!("GET /containers/{id}/json"));
                        let found = list.as_array().and_then(|a| {
                            a.iter()
                                .find(|c| c["Id"].as_str().is_some_and(|i| i.starts_with(&id)))
                                .cloned()
                        });
                        match found {
                            Some(c) => (
                                StatusCode::OK,
                                axum::Json(serde_json::json!({
                                    "Id": c["Id"],
                                    "Name": c["Names"][0],
                                    "Config": {"Image": c["Image"], "Labels": c["Labels"]},
                                    "NetworkSettings": c["NetworkSettings"],
                                    "State": {"StartedAt": c.get("StartedAt").cloned()
                                        .unwrap_or_else(|| "2020-01-01T00:00:00Z".into())},
                                })),
                            ),
                            None => (
                                StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({"message": "No such container"})),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/containers/{id}/pause",
                post({
                    let fail = fail_pause.clone();
                    move |State(log): State<Log>, AxPath(id): AxPath<String>| async move {
                        log.lock()
                            .unwrap()
                            .push(format!("POST /containers/{id}/pause"));
                        if fail.load(Ordering::SeqCst) {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        }
                    }
                }),
            )
            .route(
                "/networks/{net}/disconnect",
                post(
                    |State(log): State<Log>, AxPath(net): AxPath<String>, body: String| async move {
                        log.lock()
                            .unwrap()
                            .push(format!("POST /networks/{net}/disconnect {body}"));
                        StatusCode::OK
                    },
                ),
            )
            .with_state(requests.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDocker {
            _dir: dir,
            socket,
            requests,
            fail_pause,
            task,
        }
    }

    pub(crate) fn sample_list() -> serde_json::Value {
        serde_json::json!([
            {
                "Id": "28c0c7a20575aa11bb22cc33dd44ee55ff6677889900aabbccddeeff00112233",
                "Names": ["/shop-web"],
                "Image": "nginx:1.27",
                "Labels": {"io.kubernetes.pod.name": "shop-web-7d9f", "io.kubernetes.pod.namespace": "prod"},
                "NetworkSettings": {"Networks": {"frontend": {}, "backend": {}}}
            },
            {
                "Id": "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3",
                "Names": ["/db"],
                "Image": "postgres:16",
                "Labels": null,
                "NetworkSettings": {"Networks": {"backend": {}}}
            }
        ])
    }

    #[tokio::test]
    async fn lists_and_names_containers_over_the_socket() {
        let fake = fake_docker(sample_list()).await;
        let client = DockerClient::new(&fake.socket, Duration::from_secs(2));
        let list = client.list_containers().await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name.as_deref(), Some("shop-web"));
        assert_eq!(list[0].pod.as_deref(), Some("shop-web-7d9f"));
        assert_eq!(list[0].namespace.as_deref(), Some("prod"));
        assert_eq!(list[0].networks, vec!["backend", "frontend"]);
        assert_eq!(list[1].pod, None);
        let cache = IdentityCache::new();
        cache.replace(list);
        let by_short = cache.get("28c0c7a20575").unwrap();
        assert_eq!(by_short.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(cache.get("db").unwrap().id, by_short_id_of_db());
        assert!(cache.get("nope").is_none());
        let one = client.inspect("551e161c47d8").await.unwrap();
        assert_eq!(one.name.as_deref(), Some("db"));
        assert_eq!(one.networks, vec!["backend"]);
        let e = client
            .inspect("ffffffffffff")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("404") && e.contains("No such container"), "{e}");
        let e = client.pause("../../etc").await.unwrap_err();
        assert!(matches!(e, DockerError::BadName(_)));
        assert_eq!(
            fake.requests.lock().unwrap().clone(),
            vec![
                "GET /containers/json",
                "GET /containers/551e161c47d8/json",
                "GET /containers/ffffffffffff/json"
            ]
        );
    }

    fn by_short_id_of_db() -> String {
        "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3".into()
    }

    #[tokio::test]
    async fn missing_socket_is_an_error_and_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let client = DockerClient::new(dir.path().join("none.sock"), Duration::from_millis(500));
        let e = client.list_containers().await.unwrap_err().to_string();
        assert!(
            e.contains("cannot connect") && e.contains("none.sock"),
            "{e}"
        );
        let errors = Counter::default();
        let (tx, rx) = watch::channel(false);
        let cache = IdentityCache::new();
        let task = tokio::spawn(run_identity_refresher(
            client,
            cache.clone(),
            DockerConfig {
                refresh_s: 1,
                min_refresh_s: 0,
                ..DockerConfig::default()
            },
            errors.clone(),
            rx,
        ));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        assert!(errors.get() >= 2, "{}", errors.get());
        assert!(cache.get("x").is_none());
    }

    #[test]
    fn bounded_log_admits_once_per_period() {
        let mut l = BoundedLog::new(Duration::from_secs(3600));
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        let mut l2 = BoundedLog::new(Duration::ZERO);
        assert_eq!(l2.admit(), Some(0));
        assert_eq!(l2.admit(), Some(0));
    }
}
