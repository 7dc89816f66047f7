//! `fedmesh-coordinator`: mesh CA commands, the coordinator server, and
//! offline audit/status commands.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fedmesh_coordinator::pki::{self, layout};
use fedmesh_coordinator::status::offline_status;
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki, Store};
use fedmesh_crypto::{Identity, MeshCa, NodeId, RevocationList, RevokedCert, SecretPem, TenantId};

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
        /// Validity of the coordinator certificate in days (rotate it with
        /// `ca coordinator` before it ends).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Validity of the mesh CA in days.
        #[arg(long, default_value_t = 3650)]
        ca_days: u32,
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
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Replace an existing certificate and key (rotation); the files are
        /// swapped atomically, a running node picks them up.
        #[arg(long)]
        replace: bool,
    },
    /// Issues a new coordinator certificate and key, replacing the current
    /// ones atomically (rotation); a running coordinator picks them up.
    Coordinator {
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
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Revokes certificates: every unexpired certificate issued to
    /// TENANT/NODE (or to the coordinator NAME), or the given serials, and
    /// writes DIR/crl.pem, the CA-signed revocation list (X.509 CRL) that
    /// coordinator and nodes re-read when it changes.
    Revoke {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Tenant of the node to revoke.
        #[arg(long, requires = "node")]
        tenant: Option<String>,
        /// Node to revoke.
        #[arg(long, requires = "tenant")]
        node: Option<String>,
        /// A coordinator name to revoke.
        #[arg(long)]
        coordinator: Option<String>,
        /// Serial numbers (hex) to revoke.
        #[arg(long)]
        serial: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Serve { .. }) {
        limit_malloc_arenas();
    }
    init_tracing(&cli.log, cli.log_json);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc malloc arenas `serve` runs with unless `MALLOC_ARENA_MAX` is set.
const MALLOC_ARENAS: &str = "2";

/// Makes `serve` run with at most [`MALLOC_ARENAS`] glibc malloc arenas.
///
/// glibc gives threads that contend for the allocator arenas of their own
/// (up to 8 per core) and returns little of their free space to the
/// system, so allocations made on one tokio worker and freed on another
/// leave each arena a little fuller: over a 10,000-round soak the
/// coordinator's resident memory crept by about 5 % with a flat live heap
/// (heaptrack) and a bounded store; with two arenas it stays flat
/// (BENCHMARKS.md, soak). glibc reads the limit from the environment when
/// the process starts, before `main`, so `serve` re-executes itself once
/// with it set (same pid, arguments and descriptors). A value set by the
/// operator is kept; if the re-execution fails the process carries on with
/// glibc's defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` returns only if it failed.
    let e = cmd.args(args).env("MALLOC_ARENA_MAX", MALLOC_ARENAS).exec();
    eprintln!(
        "warning: could not re-execute with MALLOC_ARENA_MAX={MALLOC_ARENAS} ({e}); \
         running with glibc's default malloc arenas"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

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
                reload_on_sighup(coordinator.credentials());
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
                    rt.block_on(fedmesh_coordinator::status::fetch_status(&url))?
                }
                (None, Some(dir)) => offline_status(&open_existing(&dir)?)?,
                (None, None) => bail!("give --url (running coordinator) or --data-dir (stopped)"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", fedmesh_coordinator::status::render_status(&out));
            }
            Ok(())
        }
    }
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

fn load_ca(dir: &Path) -> Result<MeshCa> {
    let ca_pem = std::fs::read_to_string(layout::ca_cert(dir)).with_context(|| {
        format!(
            "cannot read {} (run `ca init` first)",
            layout::ca_cert(dir).display()
        )
    })?;
    let key = SecretPem::new(
        std::fs::read_to_string(layout::ca_key(dir))
            .with_context(|| format!("cannot read {}", layout::ca_key(dir).display()))?,
    );
    Ok(MeshCa::from_pem(&ca_pem, &key)?)
}

/// Copies an issued certificate into the ledger `ca revoke` searches.
fn record_issued(dir: &Path, cert_pem: &str) -> Result<String> {
    let der = fedmesh_crypto::tls::cert_der_from_pem(cert_pem)?;
    let serial = fedmesh_crypto::crl::serial_hex(&fedmesh_crypto::crl::cert_serial(&der)?);
    pki::write_public(&layout::issued_cert(dir, &serial), cert_pem)?;
    Ok(serial)
}

fn issue_coordinator(
    ca: &MeshCa,
    name: &str,
    sans: Vec<String>,
    now: time::OffsetDateTime,
    days: u32,
) -> Result<fedmesh_crypto::IssuedCert> {
    let name: NodeId = name.parse()?;
    let (ips, dns): (Vec<_>, Vec<_>) = sans.into_iter().partition(|s| s.parse::<IpAddr>().is_ok());
    let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
    Ok(ca.issue_coordinator(&name, &dns, &ips, now, days)?)
}

/// Serials of the unexpired certificates in the ledger (and at `current`)
/// that carry `identity`.
fn ledger_serials(
    dir: &Path,
    current: &Path,
    identity: &Identity,
    now: time::OffsetDateTime,
) -> Result<BTreeSet<Vec<u8>>> {
    let mut files = vec![current.to_owned()];
    if let Ok(rd) = std::fs::read_dir(layout::issued_dir(dir)) {
        for e in rd.flatten() {
            files.push(e.path());
        }
    }
    let mut out = BTreeSet::new();
    for f in files {
        let Ok(pem) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(der) = fedmesh_crypto::tls::cert_der_from_pem(&pem) else {
            continue;
        };
        let (Ok(id), Ok(serial), Ok(not_after)) = (
            fedmesh_crypto::tls::identity_from_cert_der(&der),
            fedmesh_crypto::crl::cert_serial(&der),
            fedmesh_crypto::crl::cert_not_after(&der),
        ) else {
            continue;
        };
        if &id == identity && not_after >= now {
            out.insert(serial);
        }
    }
    Ok(out)
}

fn ca(cmd: CaCmd) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    match cmd {
        CaCmd::Init {
            dir,
            name,
            sans,
            days,
            ca_days,
        } => {
            if layout::ca_key(&dir).exists() {
                bail!(
                    "{} already exists; refusing to replace the mesh CA",
                    layout::ca_key(&dir).display()
                );
            }
            let ca = MeshCa::generate("fedmesh mesh CA", now, ca_days)?;
            let coord = issue_coordinator(&ca, &name, sans, now, days)?;
            pki::write_secret(&layout::ca_key(&dir), ca.key_pem())?;
            pki::write_public(&layout::ca_cert(&dir), ca.cert_pem())?;
            pki::write_secret(&layout::coordinator_key(&dir), &coord.key_pem)?;
            pki::write_public(&layout::coordinator_cert(&dir), &coord.cert_pem)?;
            record_issued(&dir, &coord.cert_pem)?;
            println!("mesh CA created in {}", dir.display());
            println!(
                "  CA certificate:          {}",
                layout::ca_cert(&dir).display()
            );
            println!(
                "  coordinator certificate: {} ({days} days)",
                layout::coordinator_cert(&dir).display()
            );
            Ok(())
        }
        CaCmd::Issue {
            dir,
            tenant,
            node,
            days,
            replace,
        } => {
            let tenant: TenantId = tenant.parse()?;
            let node: NodeId = node.parse()?;
            let ca = load_ca(&dir)?;
            let cert = ca.issue_node(&tenant, &node, now, days)?;
            let (cp, kp) = (
                layout::node_cert(&dir, tenant.as_str(), node.as_str()),
                layout::node_key(&dir, tenant.as_str(), node.as_str()),
            );
            if replace {
                pki::replace_secret(&kp, &cert.key_pem)?;
                pki::replace_public(&cp, cert.cert_pem.as_bytes())?;
            } else {
                pki::write_secret(&kp, &cert.key_pem)?;
                pki::write_public(&cp, &cert.cert_pem)?;
            }
            let serial = record_issued(&dir, &cert.cert_pem)?;
            println!(
                "issued {tenant}/{node} (serial {serial}, {days} days): {} {}",
                cp.display(),
                kp.display()
            );
            Ok(())
        }
        CaCmd::Coordinator {
            dir,
            name,
            sans,
            days,
        } => {
            let ca = load_ca(&dir)?;
            let coord = issue_coordinator(&ca, &name, sans, now, days)?;
            pki::replace_secret(&layout::coordinator_key(&dir), &coord.key_pem)?;
            pki::replace_public(&layout::coordinator_cert(&dir), coord.cert_pem.as_bytes())?;
            let serial = record_issued(&dir, &coord.cert_pem)?;
            println!(
                "issued coordinator/{name} (serial {serial}, {days} days): {}",
                layout::coordinator_cert(&dir).display()
            );
            Ok(())
        }
        CaCmd::Revoke {
            dir,
            tenant,
            node,
            coordinator,
            serial,
        } => {
            let ca = load_ca(&dir)?;
            let mut targets = BTreeSet::new();
            for s in &serial {
                targets.insert(
                    fedmesh_crypto::crl::parse_serial_hex(s)
                        .with_context(|| format!("serial {s:?}"))?,
                );
            }
            if let (Some(t), Some(n)) = (&tenant, &node) {
                let identity = Identity::Node {
                    tenant: t.parse()?,
                    node: n.parse()?,
                };
                let found = ledger_serials(&dir, &layout::node_cert(&dir, t, n), &identity, now)?;
                if found.is_empty() {
                    bail!(
                        "no unexpired certificate of {identity} found in {}",
                        dir.display()
                    );
                }
                targets.extend(found);
            }
            if let Some(name) = &coordinator {
                let identity = Identity::Coordinator {
                    name: name.parse()?,
                };
                let found = ledger_serials(&dir, &layout::coordinator_cert(&dir), &identity, now)?;
                if found.is_empty() {
                    bail!(
                        "no unexpired certificate of {identity} found in {}",
                        dir.display()
                    );
                }
                targets.extend(found);
            }
            if targets.is_empty() {
                bail!("nothing to revoke: give --tenant and --node, --coordinator or --serial");
            }
            let crl_path = layout::crl(&dir);
            let (mut entries, number) = match std::fs::read(&crl_path) {
                Ok(bytes) => {
                    let old = RevocationList::from_pem(&bytes, ca.cert_pem())
                        .with_context(|| format!("existing {}", crl_path.display()))?;
                    (old.entries().to_vec(), old.number() + 1)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 1),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", crl_path.display()));
                }
            };
            let known: BTreeSet<Vec<u8>> = entries.iter().map(|e| e.serial.clone()).collect();
            let mut added = 0;
            for s in targets {
                if !known.contains(&s) {
                    println!("revoking serial {}", fedmesh_crypto::crl::serial_hex(&s));
                    entries.push(RevokedCert {
                        serial: s,
                        revoked_at: now,
                    });
                    added += 1;
                }
            }
            let pem = ca.issue_crl(&entries, number, now)?;
            pki::replace_public(&crl_path, pem.as_bytes())?;
            println!(
                "{}: revocation list #{number}, {} certificates ({added} new). \
                 Copy it to every node's [tls] crl path; the coordinator re-reads its [tls] crl.",
                crl_path.display(),
                entries.len()
            );
            Ok(())
        }
    }
}

/// SIGHUP makes the coordinator re-read its TLS files and revocation list.
fn reload_on_sighup(credentials: std::sync::Arc<fedmesh_coordinator::credentials::Credentials>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading TLS credentials");
                    credentials.request_reload();
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = credentials;
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
