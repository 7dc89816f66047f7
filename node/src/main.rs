//! `fedmesh-node`: the edge agent. `run` watches containers, scores them,
//! raises alerts and takes part in federated rounds; `replay` runs a
//! recording of a live run through a fresh detector; `inspect` and (built
//! with the `sim` feature) `evaluate` read a stopped node's store. This
//! file is compiled by the node crate and by the e2e tests crate: each
//! defines a `sim` feature.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fedmesh_crypto::CertVerifier;
use fedmesh_node::agent::{Agent, AgentSettings, verify_global_model};
use fedmesh_node::config::NodeConfig;
#[cfg(feature = "sim")]
use fedmesh_node::sim::synthetic::Profile;
use fedmesh_node::store::NodeStore;

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
    /// Replays a recording (`[record]` in a node's config) through a fresh
    /// detector built from this config's detector, rules and seed: alert
    /// JSON lines on stdout (or to --alerts), a JSON summary on stderr. The
    /// same recording and config give the same alerts.
    Replay {
        /// Config file (TOML): its detector, rules, ignore list and seed.
        #[arg(long)]
        config: PathBuf,
        /// Recording file.
        #[arg(long)]
        recording: PathBuf,
        /// Writes the alerts to this file instead of stdout.
        #[arg(long)]
        alerts: Option<PathBuf>,
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
    #[cfg(feature = "sim")]
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
        incidents: Default::default(),
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
        Cmd::Replay {
            config,
            recording,
            alerts,
        } => {
            let cfg = NodeConfig::load(&config)?;
            cfg.validate()?;
            let reader = fedmesh_node::telemetry::recording::RecordingReader::open(&recording)?;
            let sinks = match &alerts {
                Some(p) => {
                    // A fresh file per replay, not appended to an old one.
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    fedmesh_node::alerting::sink::AlertSinks::open(false, Some(p))?
                }
                None => fedmesh_node::alerting::sink::AlertSinks::open(true, None)?,
            };
            let summary = fedmesh_node::runtime::replay::replay(&cfg, reader, sinks)
                .with_context(|| format!("replaying {}", recording.display()))?;
            eprintln!("{}", serde_json::to_string(&summary)?);
            Ok(())
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
        #[cfg(feature = "sim")]
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
    let node = fedmesh_node::Node::open(&cfg).await?;
    node.run(shutdown_signal()).await;
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
