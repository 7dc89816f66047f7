//! A whole node: [`Node::open`] assembles it from a validated
//! [`NodeConfig`] (identity, store, agent, sinks, webhook, Docker, responses,
//! sources, metrics, federation), [`Node::start`] spawns its tasks and
//! [`Node::run`] runs it until a shutdown signal. The binary, the demo and
//! the network engine all build their nodes here; the harness starts from
//! an [`Agent`] it drives itself ([`Node::new`], [`Node::with_federation`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmesh_crypto::{CertSigner, CertVerifier, CryptoError, Identity, SecretPem, TlsFiles};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentError, AgentSettings, SharedAgent, lock};
use crate::alerting::pipeline::AlertPipeline;
use crate::alerting::response::{Responder, ResponseMemory, ResponseMode, run_responses};
use crate::alerting::sink::{AlertError, AlertSinks};
use crate::alerting::webhook::{Outbox, Webhook, WebhookError, run_delivery};
use crate::config::{NodeConfig, SourceConfig};
use crate::detection::rules::RuleEngine;
use crate::federation::client::{ClientError, Connector, CredentialError, NodeCredentials};
use crate::federation::round::FederationSettings;
use crate::federation::session::run_federation;
use crate::ops::docker::{DockerClient, IdentityCache, run_identity_refresher};
use crate::ops::exposition::{self, NodeMetrics, OpsMetrics, SourceCounters};
use crate::runtime::detection::run_live_detection;
use crate::runtime::sources::spawn_line_source;
use crate::store::{NodeStore, NodeStoreError};
use crate::telemetry::cgroup::{CgroupCollector, CgroupError};
use crate::telemetry::falco::parse_falco_line;
use crate::telemetry::netns::NetnsCollector;
use crate::telemetry::recording::{Recorder, RecordingError};
use crate::telemetry::tetragon::parse_tetragon_line;

/// Why a node could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The recording file could not be created.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// A file of the node's identity could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// What the file is.
        what: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The configured certificate is not a node certificate.
    #[error("{} is not a node certificate", .0.display())]
    NotNodeCertificate(PathBuf),
    /// The config names another tenant or node than the certificate.
    #[error("config {field} = {config:?} but the certificate names {cert:?}")]
    IdentityMismatch {
        /// `tenant` or `node`.
        field: &'static str,
        /// Value in the config.
        config: String,
        /// Value in the certificate.
        cert: String,
    },
    /// Without a coordinator the config must name the node.
    #[error("tenant and node must be set in the config when no coordinator/TLS is configured")]
    MissingIdentity,
    /// A certificate, key or CA failed to parse or verify.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The TLS credentials failed to load.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The coordinator endpoint is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The data directory could not be created.
    #[error("cannot create data directory {}", path.display())]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open store in {}", path.display())]
    Store {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: NodeStoreError,
    },
    /// The agent could not be created.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// An alert sink could not be opened.
    #[error(transparent)]
    Alerts(#[from] AlertError),
    /// The webhook sink or its outbox could not be set up.
    #[error("{what}")]
    Webhook {
        /// `webhook sink` or `webhook outbox`.
        what: &'static str,
        /// Cause.
        source: WebhookError,
    },
    /// The metrics listener could not be bound.
    #[error("cannot listen on {addr} for metrics")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The cgroup tree is unusable.
    #[error("cgroup source at {}", root.display())]
    Cgroup {
        /// Root of the tree.
        root: PathBuf,
        /// Cause.
        source: CgroupError,
    },
    /// The synthetic source is exclusive.
    #[error("a synthetic source cannot be combined with other sources")]
    MixedSynthetic,
    /// A synthetic source in a build without the `sim` feature.
    #[error(
        "kind = \"synthetic\" needs a node built with the `sim` feature (release builds have no synthetic workloads)"
    )]
    SimUnavailable,
    /// A synthetic attack does not fit its source.
    #[cfg(feature = "sim")]
    #[error(transparent)]
    Synthetic(#[from] crate::sim::synthetic::SyntheticError),
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;
type Service = Box<dyn FnOnce(watch::Receiver<bool>) -> Task + Send>;

/// An assembled node that has not started: the agent and the tasks that
/// will run around it.
pub struct Node {
    agent: SharedAgent,
    services: Vec<Service>,
    federated: bool,
}

/// A started node: its tasks run until [`RunningNode::stop`].
pub struct RunningNode {
    agent: SharedAgent,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn read(path: &Path, what: &'static str) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|source| NodeError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Federation settings for a node whose identity is in memory (the
/// harness's nodes): mTLS to `endpoint` as `server_name`, models verified
/// by `verifier`, secure-aggregation messages signed with the key.
pub fn federation_from_pem(
    endpoint: &str,
    server_name: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &SecretPem,
    verifier: Arc<CertVerifier>,
    max_backoff: Duration,
) -> Result<FederationSettings, NodeError> {
    let tls = fedmesh_crypto::tls::client_config(ca_pem, cert_pem, key_pem)?;
    Ok(FederationSettings::new(
        Connector::new(
            endpoint,
            server_name,
            tls,
            fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
        )?,
        verifier,
        CertSigner::from_pem(cert_pem, key_pem)?.into(),
        max_backoff,
    ))
}

impl Node {
    /// A node around `agent` with no task yet (the harness feeds the agent
    /// itself).
    pub fn new(agent: Agent) -> Self {
        Self {
            agent: Arc::new(Mutex::new(agent)),
            services: Vec::new(),
            federated: false,
        }
    }

    /// The shared agent (clone it to keep it after [`Node::start`]).
    pub fn agent(&self) -> &SharedAgent {
        &self.agent
    }

    /// Also runs the federation session with `fs`.
    pub fn with_federation(mut self, fs: FederationSettings) -> Self {
        let agent = self.agent.clone();
        self.federated = true;
        self.service(move |stop| Box::pin(run_federation(agent, fs, stop)))
    }

    fn service(
        mut self,
        start: impl FnOnce(watch::Receiver<bool>) -> Task + Send + 'static,
    ) -> Self {
        self.services.push(Box::new(start));
        self
    }

    /// Assembles the node `cfg` describes (`cfg` validated): identity from
    /// the TLS files (the certificate names tenant and node), the store
    /// and agent, the alert sinks and webhook outbox, Docker identity and
    /// responses, the sources and detection loop, the metrics listener
    /// (bound here) and the federation session. Nothing runs before
    /// [`Node::start`].
    pub async fn open(cfg: &NodeConfig) -> Result<Self, NodeError> {
        let (mut tenant, mut node) = (cfg.tenant.clone(), cfg.node.clone());
        let mut federation = None;
        let mut verifier = None;
        let mut credentials = None;
        if let (Some(c), Some(tls)) = (&cfg.coordinator, &cfg.tls) {
            let cert = read(&tls.cert, "certificate")?;
            let der = fedmesh_crypto::tls::cert_der_from_pem(&cert)?;
            let Identity::Node {
                tenant: ct,
                node: cn,
            } = fedmesh_crypto::tls::identity_from_cert_der(&der)?
            else {
                return Err(NodeError::NotNodeCertificate(tls.cert.clone()));
            };
            for (field, cfgv, certv) in [
                ("tenant", &tenant, ct.as_str()),
                ("node", &node, cn.as_str()),
            ] {
                if let Some(v) = cfgv
                    && v != certv
                {
                    return Err(NodeError::IdentityMismatch {
                        field,
                        config: v.clone(),
                        cert: certv.to_string(),
                    });
                }
            }
            tenant = Some(ct.to_string());
            node = Some(cn.to_string());
            let files = TlsFiles {
                ca_cert: tls.ca_cert.clone(),
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                crl: tls.crl.clone(),
            };
            // Stamped before reading, so a change from now on is picked up.
            let stamp = files.stamp();
            let material = files.read().map_err(CredentialError::from)?;
            let creds = Arc::new(NodeCredentials::new(
                &material,
                tls.expiry_warning_days,
                time::OffsetDateTime::now_utc(),
            )?);
            // Clones share the trusted CAs and the revocation list, which
            // follow reloads; so does the signer.
            let v = Arc::new(creds.verifier().clone());
            federation = Some(FederationSettings::new(
                Connector::new(
                    &c.endpoint,
                    &c.server_name,
                    creds.tls_config(),
                    fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
                )?,
                v.clone(),
                creds.signer().clone(),
                Duration::from_millis(c.max_backoff_ms.max(200)),
            ));
            verifier = Some(v);
            let interval = match tls.reload_interval_secs {
                // Only on SIGHUP (and the expiry check about once a day).
                0 => Duration::from_secs(86_400),
                s => Duration::from_secs(s),
            };
            credentials = Some((creds, files, stamp, interval));
        }
        let (Some(tenant), Some(node)) = (tenant, node) else {
            return Err(NodeError::MissingIdentity);
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let store = NodeStore::open(&cfg.data_dir).map_err(|source| NodeError::Store {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let settings = AgentSettings {
            tenant,
            node,
            detector: cfg.detector.clone(),
            incidents: cfg.incidents.clone(),
            seed: cfg.seed,
        };
        let outbox_store = store.clone();
        let agent = Agent::new(
            settings,
            Some(store),
            verifier.as_deref(),
            time::OffsetDateTime::now_utc(),
        )?;
        let mut me = Node::new(agent);
        let ops = OpsMetrics::default();
        let mut sinks = AlertSinks::open(cfg.alerts.stdout, cfg.alerts.file.as_deref())?;
        let node_credentials = credentials.as_ref().map(|c| c.0.clone());
        if let Some((creds, files, stamp, interval)) = credentials {
            let hup = creds.clone();
            me = me.service(move |stop| Box::pin(reload_on_sighup(hup, stop)));
            me = me.service(move |stop| Box::pin(creds.watch_files(files, stamp, interval, stop)));
        }
        let counters = Arc::new(SourceCounters::default());
        if let Some(addr) = cfg.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Listen { addr, source })?;
            let mut m = NodeMetrics::new(me.agent.clone(), counters.clone()).with_ops(&ops);
            if let Some(creds) = &node_credentials {
                m = m.with_credentials(creds.clone());
            }
            let m = Arc::new(m);
            me = me.service(move |mut rx| {
                Box::pin(async move {
                    tracing::info!(%addr, "metrics serving on /metrics");
                    if let Err(e) = exposition::serve(l, m, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
                    {
                        tracing::warn!(error = %e, "metrics server failed");
                    }
                })
            });
        }
        if let Some(w) = &cfg.alerts.webhook {
            let hook = Webhook::new(w).map_err(|source| NodeError::Webhook {
                what: "webhook sink",
                source,
            })?;
            let outbox = Outbox::open(&outbox_store, w.max_pending, ops.webhook.clone()).map_err(
                |source| NodeError::Webhook {
                    what: "webhook outbox",
                    source,
                },
            )?;
            sinks = sinks.with_sink(outbox.clone());
            me = me.service(move |stop| Box::pin(run_delivery(outbox, hook, stop)));
        }
        let rules = RuleEngine::new(&cfg.rules).with_counters(ops.rule_hits.clone());
        let response_sinks = sinks.clone();
        let mut pipeline = AlertPipeline::new(rules, sinks).with_ignore(cfg.alerts.ignore.clone());
        let docker = cfg
            .docker
            .as_ref()
            .map(|d| DockerClient::new(&d.socket, Duration::from_millis(d.timeout_ms)));
        let identity = match (&cfg.docker, &docker) {
            (Some(d), Some(client)) => {
                let cache = IdentityCache::new();
                let (client, c, d, errors) = (
                    client.clone(),
                    cache.clone(),
                    d.clone(),
                    ops.docker_errors.clone(),
                );
                me = me.service(move |stop| {
                    Box::pin(run_identity_refresher(client, c, d, errors, stop))
                });
                pipeline = pipeline.with_identity(cache.clone());
                Some(cache)
            }
            _ => None,
        };
        if cfg.response.mode != ResponseMode::Off {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let tree = outbox_store
                .responses()
                .map_err(|source| NodeError::Store {
                    path: cfg.data_dir.clone(),
                    source,
                })?;
            let (memory, dropped) =
                ResponseMemory::open(tree).map_err(|source| NodeError::Store {
                    path: cfg.data_dir.clone(),
                    source: source.into(),
                })?;
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "undecodable response-memory entries removed from the store"
                );
            }
            let probe = me.agent.clone();
            let responder = Responder::new(
                cfg.response.clone(),
                docker.clone(),
                identity.clone(),
                ops.responses.clone(),
                ops.docker_errors.clone(),
            )
            .with_memory(memory)
            .with_learning(Arc::new(move || lock(&probe).learning()))
            .with_sinks(response_sinks);
            tracing::info!(mode = ?cfg.response.mode, min_severity = %cfg.response.min_severity, "response actions enabled");
            me = me.service(move |stop| Box::pin(run_responses(responder, rx, stop)));
            pipeline = pipeline.with_responses(tx);
        }
        me = me.with_sources(cfg, pipeline, counters)?;
        if let Some(fs) = federation {
            me = me.with_federation(fs);
        }
        Ok(me)
    }

    /// The detection loop over the configured sources: the synthetic
    /// source alone, or the cgroup tree and JSON-line readers.
    fn with_sources(
        mut self,
        cfg: &NodeConfig,
        pipeline: AlertPipeline,
        counters: Arc<SourceCounters>,
    ) -> Result<Self, NodeError> {
        let sources = cfg.all_sources();
        let tick = Duration::from_millis(cfg.tick_ms.unwrap_or(cfg.window_ms).max(1));
        let agent = self.agent.clone();
        #[cfg(feature = "sim")]
        if let [
            SourceConfig::Synthetic {
                seed,
                containers,
                attacks,
            },
        ] = sources.as_slice()
        {
            let list: Vec<(String, _)> = containers
                .iter()
                .map(|c| (c.id.clone(), c.profile))
                .collect();
            let mut source =
                crate::sim::synthetic::SyntheticSource::new(*seed, &list, cfg.window_ms);
            for a in attacks {
                source.inject(&a.container, a.kind, a.start_window, a.duration_windows)?;
            }
            return Ok(self.service(move |stop| {
                Box::pin(crate::runtime::detection::run_synthetic_detection(
                    agent, source, pipeline, tick, stop,
                ))
            }));
        }
        let mut sampled = crate::runtime::detection::Sampled::default();
        let mut process = None;
        let mut readers = Vec::new();
        for src in sources {
            match src {
                #[cfg(feature = "sim")]
                SourceConfig::Synthetic { .. } => return Err(NodeError::MixedSynthetic),
                #[cfg(not(feature = "sim"))]
                SourceConfig::SyntheticUnavailable(_) => return Err(NodeError::SimUnavailable),
                SourceConfig::Cgroup { root, proc_root } => {
                    let c = CgroupCollector::new(root.clone())
                        .map_err(|source| NodeError::Cgroup {
                            root: root.clone(),
                            source,
                        })?
                        .with_proc_root(proc_root.clone());
                    tracing::info!(root = %root.display(), version = ?c.version(), "watching cgroup tree");
                    sampled.cgroup = Some(c);
                }
                SourceConfig::Netns {
                    root,
                    proc_root,
                    max_table_reads,
                } => {
                    let n = NetnsCollector::with_max_table_reads(
                        root.clone(),
                        proc_root.clone(),
                        *max_table_reads,
                    )
                    .map_err(|source| NodeError::Cgroup {
                        root: root.clone(),
                        source,
                    })?;
                    tracing::info!(
                        root = %root.display(),
                        proc_root = %proc_root.display(),
                        host_namespaces = n.host_namespaces().len(),
                        max_table_reads,
                        "watching container network namespaces"
                    );
                    sampled.netns = Some(n);
                }
                SourceConfig::Process { proc_root } => {
                    process = Some(proc_root.clone());
                }
                SourceConfig::Falco { path, from_start } => {
                    readers.push(("falco", path.clone(), *from_start, parse_falco_line as _));
                }
                SourceConfig::Tetragon { path, from_start } => {
                    readers.push((
                        "tetragon",
                        path.clone(),
                        *from_start,
                        parse_tetragon_line as _,
                    ));
                }
            }
        }
        let recorder = match &cfg.record {
            None => None,
            Some(r) => {
                let started = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let rec = Recorder::create(
                    &r.path,
                    cfg.window_ms,
                    started,
                    r.max_mb.saturating_mul(1 << 20),
                )?;
                tracing::info!(path = %r.path.display(), max_mb = r.max_mb, "recording every window's events");
                Some(rec)
            }
        };
        self = self.service(move |stop| {
            let (tx, rx) = tokio::sync::mpsc::channel(65_536);
            for (name, path, from_start, parser) in readers {
                spawn_line_source(
                    name,
                    path,
                    from_start,
                    parser,
                    tx.clone(),
                    stop.clone(),
                    counters.clone(),
                );
            }
            if let Some(root) = process {
                crate::runtime::sources::spawn_process_source(root, tx.clone(), stop.clone());
            }
            drop(tx);
            Box::pin(run_live_detection(
                agent, sampled, rx, pipeline, tick, stop, counters, recorder,
            ))
        });
        Ok(self)
    }

    /// Spawns every task of the node (on the current tokio runtime).
    pub fn start(self) -> RunningNode {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = self
            .services
            .into_iter()
            .map(|s| tokio::spawn(s(stop_rx.clone())))
            .collect();
        RunningNode {
            agent: self.agent,
            stop,
            tasks,
        }
    }

    /// Starts the node, runs it until `shutdown` completes, then stops it
    /// and waits for its tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let federated = self.federated;
        let running = self.start();
        {
            let a = lock(&running.agent);
            let (tenant, node) = (&a.settings().tenant, &a.settings().node);
            if !federated {
                tracing::info!("no coordinator configured: running stand-alone");
            }
            tracing::info!(%tenant, %node, "node running");
        }
        shutdown.await;
        running.shutdown().await;
    }
}

/// SIGHUP makes the node re-read its TLS files and revocation list (until
/// `stop`).
async fn reload_on_sighup(credentials: Arc<NodeCredentials>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; TLS files are still polled");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading TLS credentials");
                credentials.request_reload();
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl RunningNode {
    /// The shared agent.
    pub fn agent(&self) -> &SharedAgent {
        &self.agent
    }

    /// Tells every task to stop (returns at once).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every task to end.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// [`RunningNode::stop`], then [`RunningNode::join`].
    pub async fn shutdown(self) {
        self.stop();
        self.join().await;
    }
}
