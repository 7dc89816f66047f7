//! `fedmesh-node`: the edge agent. `run` watches containers, scores them,
//! raises alerts and takes part in federated rounds; `inspect` and
//! `evaluate` read a stopped node's store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fedmesh_crypto::{CertVerifier, Identity, SecretPem};
use fedmesh_node::agent::{Agent, AgentSettings, verify_global_model};
use fedmesh_node::alerting::pipeline::AlertPipeline;
use fedmesh_node::alerting::response::{Responder, ResponseMode, run_responses};
use fedmesh_node::alerting::sink::AlertSinks;
use fedmesh_node::alerting::webhook::{Outbox, Webhook, run_delivery};
use fedmesh_node::config::{NodeConfig, SourceConfig};
use fedmesh_node::detection::rules::RuleEngine;
use fedmesh_node::federation::client::Connector;
use fedmesh_node::federation::round::FederationSettings;
use fedmesh_node::federation::session::run_federation;
use fedmesh_node::ops::docker::{DockerClient, IdentityCache, run_identity_refresher};
use fedmesh_node::ops::exposition::OpsMetrics;
use fedmesh_node::ops::exposition::{self, NodeMetrics, SourceCounters};
use fedmesh_node::runtime::detection::{run_live_detection, run_synthetic_detection};
use fedmesh_node::runtime::sources::spawn_line_source;
use fedmesh_node::sim::synthetic::{Profile, SyntheticSource};
use fedmesh_node::store::NodeStore;
use fedmesh_node::telemetry::cgroup::CgroupCollector;
use fedmesh_node::telemetry::falco::parse_falco_line;
use fedmesh_node::telemetry::tetragon::parse_tetragon_line;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "fedmesh-node",
    version,
    about = "fedmesh edge node: detects container attacks and learns with its federation"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "FEDMESH_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "FEDMESH_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the agent.
    Run {
        /// Config file (TOML).
        #[arg(long, env = "FEDMESH_CONFIG")]
        config: PathBuf,
        /// Overrides `data_dir`.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Overrides `coordinator.endpoint`.
        #[arg(long, env = "FEDMESH_COORDINATOR")]
        coordinator: Option<String>,
    },
    /// Prints the stored global model of a stopped node (JSON).
    Inspect {
        /// Data directory.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: PathBuf,
        /// Mesh CA certificate, to verify the model's signature.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Tenant the model must belong to.
        #[arg(long)]
        tenant: String,
    },
    /// Evaluates a stopped node's detector on a synthetic held-out set with
    /// every attack kind (JSON).
    Evaluate {
        /// Data directory.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: PathBuf,
        /// Mesh CA certificate.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Seed of the held-out set.
        #[arg(long, default_value_t = 9001)]
        seed: u64,
        /// Workload profiles of the held-out containers (comma-separated).
        #[arg(long, value_delimiter = ',', default_values = ["web", "database", "batch", "ml"])]
        profiles: Vec<Profile>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        b.json().init()
    } else {
        b.init()
    }
    match run(cli.cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read(p: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {what} {}", p.display()))
}

/// Opens a stopped node's store and agent; also returns the CA verifier so
/// callers need not read and parse the CA file again.
fn open_agent_offline(
    data_dir: &Path,
    ca_cert: &Path,
    tenant: &str,
) -> Result<(Agent, NodeStore, CertVerifier)> {
    if !data_dir.is_dir() {
        bail!("data directory {} does not exist", data_dir.display());
    }
    let store = NodeStore::open(data_dir).with_context(|| {
        format!(
            "cannot open {} (is the node still running?)",
            data_dir.display()
        )
    })?;
    let verifier = CertVerifier::new(&read(ca_cert, "CA certificate")?)?;
    let settings = AgentSettings {
        tenant: tenant.to_string(),
        node: String::new(),
        detector: Default::default(),
        seed: 0,
    };
    let agent = Agent::new(
        settings,
        Some(store.clone()),
        Some(&verifier),
        time::OffsetDateTime::now_utc(),
    )?;
    Ok((agent, store, verifier))
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run {
            config,
            data_dir,
            coordinator,
        } => {
            let mut cfg = NodeConfig::load(&config)?;
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let (Some(ep), Some(c)) = (coordinator, cfg.coordinator.as_mut()) {
                c.endpoint = ep;
            }
            cfg.validate()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(run_node(cfg))
        }
        Cmd::Inspect {
            data_dir,
            ca_cert,
            tenant,
        } => {
            let (agent, store, verifier) = open_agent_offline(&data_dir, &ca_cert, &tenant)?;
            let Some(bytes) = store.global_model()? else {
                println!(
                    "{}",
                    serde_json::json!({ "version": null, "verified": false })
                );
                return Ok(());
            };
            let verified = verify_global_model(
                &bytes,
                &verifier,
                &tenant,
                None,
                time::OffsetDateTime::now_utc(),
            );
            println!(
                "{}",
                serde_json::json!({
                    "version": agent.global_version(),
                    "round": agent.global().map(|g| g.round),
                    "sha256": fedmesh_crypto::sha256_hex(&bytes),
                    "verified": verified.is_ok(),
                    "error": verified.err().map(|e| e.to_string()),
                    "threshold": agent.detector().map(|d| d.threshold),
                })
            );
            Ok(())
        }
        Cmd::Evaluate {
            data_dir,
            ca_cert,
            tenant,
            seed,
            profiles,
        } => {
            let (agent, _, _) = open_agent_offline(&data_dir, &ca_cert, &tenant)?;
            let Some(det) = agent.detector() else {
                bail!("the node in {} has no model yet", data_dir.display());
            };
            let data = fedmesh_node::sim::eval::standard_heldout(seed, &profiles, 2, 60, 10_000)?;
            let report = fedmesh_node::sim::eval::evaluate(det, &data)?;
            println!(
                "{}",
                serde_json::to_string(
                    &serde_json::json!({ "version": agent.global_version(), "report": report })
                )?
            );
            Ok(())
        }
    }
}

async fn run_node(cfg: NodeConfig) -> Result<()> {
    let (mut tenant, mut node) = (cfg.tenant.clone(), cfg.node.clone());
    let mut federation = None;
    let mut verifier = None;
    let mut credentials = None;
    if let (Some(c), Some(tls)) = (&cfg.coordinator, &cfg.tls) {
        let cert = read(&tls.cert, "certificate")?;
        let key = SecretPem::new(read(&tls.key, "private key")?);
        let der = fedmesh_crypto::tls::cert_der_from_pem(&cert)?;
        let Identity::Node {
            tenant: ct,
            node: cn,
        } = fedmesh_crypto::tls::identity_from_cert_der(&der)?
        else {
            bail!("{} is not a node certificate", tls.cert.display());
        };
        for (field, cfgv, certv) in [
            ("tenant", &tenant, ct.as_str()),
            ("node", &node, cn.as_str()),
        ] {
            if let Some(v) = cfgv
                && v != certv
            {
                bail!("config {field} = {v:?} but the certificate names {certv:?}");
            }
        }
        tenant = Some(ct.to_string());
        node = Some(cn.to_string());
        let files = fedmesh_node::federation::client::NodeTlsFiles {
            ca_cert: tls.ca_cert.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            crl: tls.crl.clone(),
        };
        let stamp = files.stamp();
        let material = files.read()?;
        let creds = Arc::new(fedmesh_node::federation::client::NodeCredentials::new(
            &material,
            tls.expiry_warning_days,
            time::OffsetDateTime::now_utc(),
        )?);
        // Clones share the revocation list, which follows reloads.
        let v = Arc::new(creds.verifier().clone());
        let client_tls = creds.tls_config();
        if tls.reload_interval_secs > 0 {
            credentials = Some((
                creds,
                files,
                stamp,
                Duration::from_secs(tls.reload_interval_secs),
            ));
        }
        federation = Some(FederationSettings {
            connector: Connector::new(
                &c.endpoint,
                &c.server_name,
                client_tls,
                fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
            )?,
            verifier: v.clone(),
            signer: Arc::new(fedmesh_crypto::CertSigner::from_pem(&cert, &key)?),
            secagg_seed: None,
            tamper: None,
            hook: None,
            max_backoff: Duration::from_millis(c.max_backoff_ms.max(200)),
        });
        verifier = Some(v);
    }
    let (Some(tenant), Some(node)) = (tenant, node) else {
        bail!("tenant and node must be set in the config when no coordinator/TLS is configured");
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let store = NodeStore::open(&cfg.data_dir)
        .with_context(|| format!("cannot open store in {}", cfg.data_dir.display()))?;
    let settings = AgentSettings {
        tenant: tenant.clone(),
        node: node.clone(),
        detector: cfg.detector.clone(),
        seed: cfg.seed,
    };
    let outbox_store = store.clone();
    let agent = Agent::new(
        settings,
        Some(store),
        verifier.as_deref(),
        time::OffsetDateTime::now_utc(),
    )?;
    let agent = Arc::new(Mutex::new(agent));
    let ops = OpsMetrics::default();
    let mut sinks = AlertSinks::open(cfg.alerts.stdout, cfg.alerts.file.as_deref())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some((creds, files, stamp, interval)) = credentials {
        tasks.push(tokio::spawn(creds.watch_files(
            files,
            stamp,
            interval,
            stop_rx.clone(),
        )));
    }
    let counters = Arc::new(SourceCounters::default());
    if let Some(addr) = cfg.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let m = Arc::new(NodeMetrics::new(agent.clone(), counters.clone()).with_ops(&ops));
        let mut rx = stop_rx.clone();
        tracing::info!(%addr, "metrics serving on /metrics");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = exposition::serve(l, m, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            {
                tracing::warn!(error = %e, "metrics server failed");
            }
        }));
    }
    if let Some(w) = &cfg.alerts.webhook {
        let hook = Webhook::new(w).context("webhook sink")?;
        let outbox = Outbox::open(&outbox_store, w.max_pending, ops.webhook.clone())
            .context("webhook outbox")?;
        sinks = sinks.with_sink(outbox.clone());
        tasks.push(tokio::spawn(run_delivery(outbox, hook, stop_rx.clone())));
    }
    let rules = RuleEngine::new(&cfg.rules).with_counters(ops.rule_hits.clone());
    let mut pipeline = AlertPipeline::new(rules, sinks).with_ignore(cfg.alerts.ignore.clone());
    let docker = cfg
        .docker
        .as_ref()
        .map(|d| DockerClient::new(&d.socket, Duration::from_millis(d.timeout_ms)));
    let identity = match (&cfg.docker, &docker) {
        (Some(d), Some(client)) => {
            let cache = IdentityCache::new();
            tasks.push(tokio::spawn(run_identity_refresher(
                client.clone(),
                cache.clone(),
                d.clone(),
                ops.docker_errors.clone(),
                stop_rx.clone(),
            )));
            pipeline = pipeline.with_identity(cache.clone());
            Some(cache)
        }
        _ => None,
    };
    if cfg.response.mode != ResponseMode::Off {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let responder = Responder::new(
            cfg.response.clone(),
            docker.clone(),
            identity.clone(),
            ops.responses.clone(),
            ops.docker_errors.clone(),
        );
        tracing::info!(mode = ?cfg.response.mode, min_severity = %cfg.response.min_severity, "response actions enabled");
        tasks.push(tokio::spawn(run_responses(responder, rx, stop_rx.clone())));
        pipeline = pipeline.with_responses(tx);
    }
    let sources = cfg.all_sources();
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
        let mut source = SyntheticSource::new(*seed, &list, cfg.window_ms);
        for a in attacks {
            source.inject(&a.container, a.kind, a.start_window, a.duration_windows)?;
        }
        let tick = Duration::from_millis(cfg.tick_ms.unwrap_or(cfg.window_ms).max(1));
        tasks.push(tokio::spawn(run_synthetic_detection(
            agent.clone(),
            source,
            pipeline,
            tick,
            stop_rx.clone(),
        )));
    } else {
        let mut cgroup = None;
        let (tx, rx) = tokio::sync::mpsc::channel(65_536);
        for src in sources {
            match src {
                SourceConfig::Synthetic { .. } => {
                    bail!("a synthetic source cannot be combined with other sources")
                }
                SourceConfig::Cgroup { root, proc_root } => {
                    let c = CgroupCollector::new(root.clone())
                        .with_context(|| format!("cgroup source at {}", root.display()))?
                        .with_proc_root(proc_root.clone());
                    tracing::info!(root = %root.display(), version = ?c.version(), "watching cgroup tree");
                    cgroup = Some(c);
                }
                SourceConfig::Falco { path, from_start } => {
                    spawn_line_source(
                        "falco",
                        path.clone(),
                        *from_start,
                        parse_falco_line,
                        tx.clone(),
                        stop_rx.clone(),
                        counters.clone(),
                    );
                }
                SourceConfig::Tetragon { path, from_start } => {
                    spawn_line_source(
                        "tetragon",
                        path.clone(),
                        *from_start,
                        parse_tetragon_line,
                        tx.clone(),
                        stop_rx.clone(),
                        counters.clone(),
                    );
                }
            }
        }
        drop(tx);
        let tick = Duration::from_millis(cfg.tick_ms.unwrap_or(cfg.window_ms).max(1));
        tasks.push(tokio::spawn(run_live_detection(
            agent.clone(),
            cgroup,
            rx,
            pipeline,
            tick,
            stop_rx.clone(),
            counters.clone(),
        )));
    }
    if let Some(fs) = federation {
        tasks.push(tokio::spawn(run_federation(
            agent.clone(),
            fs,
            stop_rx.clone(),
        )));
    } else {
        tracing::info!("no coordinator configured: running stand-alone");
    }
    tracing::info!(%tenant, %node, "node running");
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
