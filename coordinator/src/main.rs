//! `fedmesh-coordinator`: mesh CA commands, the coordinator server, and
//! offline audit/status commands.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fedmesh_coordinator::pki::{self, layout};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki, Store};
use fedmesh_crypto::{MeshCa, NodeId, SecretPem, TenantId};

#[derive(Parser)]
#[command(
    name = "fedmesh-coordinator",
    version,
    about = "fedmesh coordinator: aggregates encrypted model updates from edge nodes"
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
    /// Mesh certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Serves the federation.
    Serve {
        /// Config file (TOML).
        #[arg(long, env = "FEDMESH_CONFIG")]
        config: PathBuf,
        /// Overrides `listen`.
        #[arg(long, env = "FEDMESH_LISTEN")]
        listen: Option<SocketAddr>,
        /// Overrides `data_dir`.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Verifies the hash-chained audit log of every tenant (coordinator stopped).
    AuditVerify {
        /// Data directory.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Prints the federation state: live from a running coordinator's
    /// `/status` (`--url`, the `metrics_listen` address), or from a stopped
    /// coordinator's store (`--data-dir`).
    Status {
        /// Base URL of a running coordinator's metrics listener, e.g.
        /// `http://127.0.0.1:9464`.
        #[arg(long, env = "FEDMESH_STATUS_URL", conflicts_with = "data_dir")]
        url: Option<String>,
        /// Data directory of a stopped coordinator.
        #[arg(long, env = "FEDMESH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Creates a mesh CA and the coordinator's certificate in DIR.
    Init {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Coordinator name.
        #[arg(long, default_value = "main")]
        name: String,
        /// DNS names and IP addresses the coordinator is reached at.
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issues a node certificate for TENANT/NODE.
    Issue {
        /// PKI directory holding ca.crt and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Node.
        #[arg(long)]
        node: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Ca { cmd } => ca(cmd),
        Cmd::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = CoordinatorConfig::load(&config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            let pki = Pki::load(&cfg.tls.ca_cert, &cfg.tls.cert, &cfg.tls.key)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let coordinator = Coordinator::open(&cfg, &pki)?;
                let listener = tokio::net::TcpListener::bind(cfg.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", cfg.listen))?;
                coordinator.serve(listener, shutdown_signal()).await?;
                Ok(())
            })
        }
        Cmd::AuditVerify { data_dir } => {
            let store = open_existing(&data_dir)?;
            let tenants = store.tenants()?;
            if tenants.is_empty() {
                bail!(
                    "no tenant has a committed version in {}",
                    data_dir.display()
                );
            }
            for t in tenants {
                let n = store.verify_chain(&t)?;
                println!("tenant {t}: audit chain OK ({n} versions)");
            }
            Ok(())
        }
        Cmd::Status {
            url,
            data_dir,
            json,
        } => {
            let out = match (url, data_dir) {
                (Some(url), _) => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(fedmesh_coordinator::metrics::fetch_status(&url))?
                }
                (None, Some(dir)) => offline_status(&open_existing(&dir)?)?,
                (None, None) => bail!("give --url (running coordinator) or --data-dir (stopped)"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", fedmesh_coordinator::metrics::render_status(&out));
            }
            Ok(())
        }
    }
}

/// The same JSON shape as `/status`, from a stopped coordinator's store.
fn offline_status(store: &Store) -> Result<serde_json::Value> {
    let mut out = Vec::new();
    for t in store.tenants()? {
        let latest = store.latest_audit(&t)?;
        let reputation: serde_json::Value = match store.reputation_state(&t)? {
            Some(b) => serde_json::from_slice(&b).context("stored reputation state")?,
            None => serde_json::json!({}),
        };
        let quarantined: Vec<String> = reputation
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| !r["quarantined_at"].is_null())
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.push(serde_json::json!({
            "tenant": t,
            "version": latest.as_ref().map(|e| e.version),
            "round": {
                "state": "stopped",
                "last_round": latest.as_ref().map(|e| e.round),
                "next_round": store.next_round(&t)?,
                "participants": latest.as_ref().map(|e| e.participants.clone()),
                "excluded": latest.as_ref().map(|e| e.excluded.clone()),
            },
            "connected": [],
            "quarantined": quarantined,
            "reputation": reputation,
        }));
    }
    Ok(serde_json::Value::Array(out))
}

fn open_existing(dir: &Path) -> Result<Store> {
    if !dir.is_dir() {
        bail!("data directory {} does not exist", dir.display());
    }
    Store::open(dir).with_context(|| {
        format!(
            "cannot open store in {} (is the coordinator still running?)",
            dir.display()
        )
    })
}

fn ca(cmd: CaCmd) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    match cmd {
        CaCmd::Init {
            dir,
            name,
            sans,
            days,
        } => {
            if layout::ca_key(&dir).exists() {
                bail!(
                    "{} already exists; refusing to replace the mesh CA",
                    layout::ca_key(&dir).display()
                );
            }
            let ca = MeshCa::generate("fedmesh mesh CA", now, days * 10)?;
            let name: NodeId = name.parse()?;
            let (ips, dns): (Vec<_>, Vec<_>) =
                sans.into_iter().partition(|s| s.parse::<IpAddr>().is_ok());
            let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
            let coord = ca.issue_coordinator(&name, &dns, &ips, now, days)?;
            pki::write_secret(&layout::ca_key(&dir), ca.key_pem())?;
            pki::write_public(&layout::ca_cert(&dir), ca.cert_pem())?;
            pki::write_secret(&layout::coordinator_key(&dir), &coord.key_pem)?;
            pki::write_public(&layout::coordinator_cert(&dir), &coord.cert_pem)?;
            println!("mesh CA created in {}", dir.display());
            println!(
                "  CA certificate:          {}",
                layout::ca_cert(&dir).display()
            );
            println!(
                "  coordinator certificate: {}",
                layout::coordinator_cert(&dir).display()
            );
            Ok(())
        }
        CaCmd::Issue {
            dir,
            tenant,
            node,
            days,
        } => {
            let tenant: TenantId = tenant.parse()?;
            let node: NodeId = node.parse()?;
            let ca_pem = std::fs::read_to_string(layout::ca_cert(&dir)).with_context(|| {
                format!(
                    "cannot read {} (run `ca init` first)",
                    layout::ca_cert(&dir).display()
                )
            })?;
            let key = SecretPem::new(
                std::fs::read_to_string(layout::ca_key(&dir))
                    .with_context(|| format!("cannot read {}", layout::ca_key(&dir).display()))?,
            );
            let ca = MeshCa::from_pem(&ca_pem, &key)?;
            let cert = ca.issue_node(&tenant, &node, now, days)?;
            let (cp, kp) = (
                layout::node_cert(&dir, tenant.as_str(), node.as_str()),
                layout::node_key(&dir, tenant.as_str(), node.as_str()),
            );
            pki::write_secret(&kp, &cert.key_pem)?;
            pki::write_public(&cp, &cert.cert_pem)?;
            println!("issued {tenant}/{node}: {} {}", cp.display(), kp.display());
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
