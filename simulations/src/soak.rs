//! `fedmesh-sim soak`: a long run of the real coordinator over gRPC +
//! mutual TLS on loopback, with `nodes` hand-driven protocol clients (the
//! clients of `bench round`: no training, each sends a fixed update, so the
//! run measures the coordinator and the protocol, not the nodes' CPU). It
//! samples the coordinator's resident memory and the store's size on disk
//! as the rounds go by, and reports the memory growth after a warm-up.
//!
//! By default the coordinator is the real `fedmesh-coordinator` binary,
//! started as a child process with a generated PKI and config in a
//! temporary directory, so its resident memory (`VmRSS` of its
//! `/proc/<pid>/status`) is its own; the clients' memory (this process) is
//! reported beside it. [`CoordinatorProcess::InProcess`] runs both in this
//! process instead (then the memory is theirs together).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa, TenantId};
use serde::Serialize;
use std::sync::Arc;

pub use crate::harness::{CoordinatorProcess, dir_bytes, rss_kib, rss_kib_of, status_kib};
use crate::harness::{Hooks, Running, TENANT, client_loop, connect_retrying, hidden_for};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Clients.
    pub nodes: usize,
    /// Committed rounds.
    pub rounds: u64,
    /// Model bodies the store keeps (`[store] retain_versions`; 0 = all).
    pub retain: u64,
    /// Secure-aggregation bucket size (1 = plaintext updates).
    pub bucket_size: usize,
    /// Approximate model size in parameters.
    pub params: usize,
    /// A sample every this many rounds.
    pub sample_every: u64,
    /// Rounds of warm-up: memory growth is measured from the sample at
    /// this round.
    pub warmup: u64,
    /// Seed of the clients' updates and protocol randomness.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Where the coordinator runs.
    pub coordinator: CoordinatorProcess,
}

impl Default for SoakOptions {
    fn default() -> Self {
        Self {
            nodes: 20,
            rounds: 10_000,
            retain: 100,
            bucket_size: 1,
            params: 2_000,
            sample_every: 500,
            warmup: 1_000,
            seed: 42,
            progress: true,
            coordinator: CoordinatorProcess::InProcess,
        }
    }
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Committed version.
    pub round: u64,
    /// Seconds since the first round opened.
    pub elapsed_s: f64,
    /// Resident memory of the coordinator's process, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Resident memory of this process (clients and harness), KiB; the
    /// same as `rss_kib` when the coordinator runs in this process.
    pub clients_rss_kib: u64,
    /// Bytes of the data directory on disk (sled and the audit logs).
    pub store_bytes: u64,
    /// Of which the audit logs (one JSON line per version, kept forever).
    pub audit_log_bytes: u64,
    /// Model bodies in the store.
    pub model_bodies: usize,
}

/// The result of a soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Clients.
    pub nodes: usize,
    /// Committed rounds.
    pub rounds: u64,
    /// Parameters of the model.
    pub params: usize,
    /// Retention (0 = all).
    pub retain: u64,
    /// Bucket size.
    pub bucket_size: usize,
    /// Whether the coordinator ran as its own process (else the memory
    /// figures are coordinator and clients together).
    pub separate_process: bool,
    /// Samples, in round order.
    pub samples: Vec<SoakSample>,
    /// Resident memory at the end of the warm-up, KiB.
    pub warmup_rss_kib: u64,
    /// Resident memory at the end, KiB.
    pub final_rss_kib: u64,
    /// Growth from warm-up to the end, percent.
    pub rss_growth_pct: f64,
    /// Largest resident memory after the warm-up, KiB.
    pub peak_rss_kib: u64,
    /// Resident memory of the clients' process at the end of the warm-up
    /// and at the end, KiB.
    pub clients_rss_kib: (u64, u64),
    /// Store size at the end, bytes.
    pub final_store_bytes: u64,
    /// Largest store size seen, bytes.
    pub peak_store_bytes: u64,
    /// Versions whose audit entries verified after the run.
    pub audit_verified: usize,
    /// Committed rounds per second.
    pub rounds_per_s: f64,
}

/// The coordinator config of a soak run. `tls` are the paths of the CA
/// certificate, certificate and key (`-` when the PKI is passed in memory).
fn config_text(
    o: &SoakOptions,
    data: &Path,
    tls: [&str; 3],
    listen: &str,
    metrics: Option<&str>,
) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("metrics_listen = \"{m}\"\n"));
    format!(
        "listen = \"{listen}\"\ndata_dir = '{data}'\n{metrics}\
         [tls]\nca_cert = '{ca}'\ncert = '{cert}'\nkey = '{key}'\n\
         [store]\nretain_versions = {retain}\n\
         [[tenants]]\nname = \"{TENANT}\"\nmin_nodes = {n}\nquorum = {n}\n\
         round_timeout_ms = 60000\nround_interval_ms = 0\nmax_rounds = {r}\n\
         max_update_norm = 10.0\n[tenants.model]\nhidden = [{h}]\n\
         [tenants.secure]\nbucket_size = {k}\nclip_norm = 1.0\nphase_timeout_ms = 60000\n",
        data = data.display(),
        ca = tls[0],
        cert = tls[1],
        key = tls[2],
        retain = o.retain,
        n = o.nodes,
        r = o.rounds,
        h = hidden_for(o.params),
        k = o.bucket_size,
    )
}

/// Runs the soak; calls `sample` with every sample as it is taken.
pub async fn run_soak(o: &SoakOptions, mut sample: impl FnMut(&SoakSample)) -> Result<SoakReport> {
    if o.nodes < 2 || o.rounds == 0 || o.sample_every == 0 {
        bail!("need at least 2 nodes, 1 round and a positive sample interval");
    }
    if o.bucket_size == 0 || o.bucket_size > o.nodes {
        bail!("bucket size must be between 1 and the number of nodes");
    }
    let h = hidden_for(o.params);
    let params = fedmesh_proto::model::param_count(22, &[h]).unwrap_or(0);
    let now = time::OffsetDateTime::now_utc();
    let ca = MeshCa::generate("soak CA", now, 2)?;
    let tenant: TenantId = TENANT.parse()?;
    let verifier = Arc::new(CertVerifier::new(ca.cert_pem())?);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let text = |data: &Path, tls: [&str; 3], listen: &str, http: Option<&str>| {
        config_text(o, data, tls, listen, http)
    };
    let (mut coordinator, addr) =
        Running::start(&o.coordinator, &text, &ca, dir.path(), &data).await?;
    let separate_process = matches!(coordinator, Running::Child { .. });
    // The first client reports the committed versions it hears of (used
    // when the coordinator is another process).
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let mut progress_tx = Some(progress_tx);
    let mut clients = Vec::with_capacity(o.nodes);
    for i in 0..o.nodes {
        let name = format!("n{i:04}");
        let c = ca.issue_node(&tenant, &name.parse()?, now, 2)?;
        let tls = fedmesh_crypto::tls::client_config(ca.cert_pem(), &c.cert_pem, &c.key_pem)?;
        let signer = Arc::new(CertSigner::from_pem(&c.cert_pem, &c.key_pem)?);
        let connector = fedmesh_node::federation::client::Connector::new(
            &addr.to_string(),
            "localhost",
            tls,
            fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
        )?;
        let seed = o.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let verifier = verifier.clone();
        let tx = progress_tx.take();
        clients.push(tokio::spawn(async move {
            let client = connect_retrying(&connector, i as u64).await?;
            let hooks = Hooks {
                version: tx,
                sent: None,
            };
            client_loop(client, name, signer, verifier, seed, hooks).await
        }));
    }
    let bar = if o.progress {
        let b = indicatif::ProgressBar::new(o.rounds);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} rounds ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let start = Instant::now();
    let mut samples: Vec<SoakSample> = Vec::new();
    let mut version = 0u64;
    async fn take(
        coordinator: &Running,
        version: u64,
        start: Instant,
        data: &Path,
    ) -> Result<SoakSample> {
        let rss = coordinator.rss_kib()?;
        Ok(SoakSample {
            round: version,
            elapsed_s: start.elapsed().as_secs_f64(),
            rss_kib: rss,
            clients_rss_kib: match coordinator {
                Running::InProcess { .. } => rss,
                Running::Child { .. } => rss_kib()?,
            },
            store_bytes: dir_bytes(data)?,
            audit_log_bytes: match data.join(fedmesh_coordinator::store::AUDIT_DIR) {
                d if d.is_dir() => dir_bytes(&d)?,
                _ => 0,
            },
            model_bodies: coordinator.model_bodies().await?,
        })
    }
    let s = take(&coordinator, 0, start, &data).await?;
    sample(&s);
    samples.push(s);
    while version < o.rounds {
        if clients.iter().any(|c| c.is_finished()) {
            bail!("a client stopped before the run ended");
        }
        coordinator.check_alive()?;
        let wait = Duration::from_secs(120);
        let next = match &mut coordinator {
            Running::InProcess { summaries, .. } => {
                match tokio::time::timeout(wait, summaries.recv()).await {
                    Err(_) => None,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(s)) => Some(s.version),
                }
            }
            Running::Child { .. } => match tokio::time::timeout(wait, progress.changed()).await {
                Err(_) => None,
                Ok(r) => {
                    r.context("the reporting client stopped")?;
                    Some(*progress.borrow_and_update())
                }
            },
        };
        let Some(next) = next else {
            bail!("no round committed for 2 minutes (at version {version})");
        };
        let before = version;
        version = next.max(version);
        if let Some(b) = &bar {
            b.set_position(version);
        }
        // A sample at every multiple of `sample_every` passed.
        if version / o.sample_every > before / o.sample_every || version >= o.rounds {
            let s = take(&coordinator, version, start, &data).await?;
            sample(&s);
            if let Some(b) = &bar {
                b.set_message(format!(
                    "coordinator RSS {:.1} MiB, store {:.2} MiB",
                    s.rss_kib as f64 / 1024.0,
                    s.store_bytes as f64 / 1048576.0
                ));
            }
            samples.push(s);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish();
    }
    for c in &clients {
        c.abort();
    }
    let audit_verified = coordinator.stop_and_verify(&data).await?;
    let warm = samples
        .iter()
        .find(|s| s.round >= o.warmup.min(o.rounds))
        .or(samples.last())
        .ok_or_else(|| anyhow!("no samples"))?
        .clone();
    let last = samples.last().ok_or_else(|| anyhow!("no samples"))?.clone();
    let peak_rss_kib = samples
        .iter()
        .filter(|s| s.round >= warm.round)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let peak_store_bytes = samples.iter().map(|s| s.store_bytes).max().unwrap_or(0);
    Ok(SoakReport {
        nodes: o.nodes,
        rounds: version,
        params,
        retain: o.retain,
        bucket_size: o.bucket_size,
        separate_process,
        warmup_rss_kib: warm.rss_kib,
        final_rss_kib: last.rss_kib,
        rss_growth_pct: (last.rss_kib as f64 - warm.rss_kib as f64) / warm.rss_kib.max(1) as f64
            * 100.0,
        peak_rss_kib,
        clients_rss_kib: (warm.clients_rss_kib, last.clients_rss_kib),
        final_store_bytes: last.store_bytes,
        peak_store_bytes,
        audit_verified,
        rounds_per_s: version as f64 / elapsed.max(1e-9),
        samples,
    })
}

/// The samples and the summary as Markdown.
pub fn markdown(r: &SoakReport) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = if r.separate_process {
        String::from(
            "| round | elapsed s | coordinator RSS MiB | clients RSS MiB | store MiB | of which audit log MiB | model bodies |\n\
             |---|---|---|---|---|---|---|\n",
        )
    } else {
        String::from(
            "| round | elapsed s | RSS MiB (coordinator + clients) | store MiB | of which audit log MiB | model bodies |\n\
             |---|---|---|---|---|---|\n",
        )
    };
    for s in &r.samples {
        let clients = if r.separate_process {
            format!(" {:.1} |", mib(s.clients_rss_kib))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} |{clients} {:.2} | {:.2} | {} |\n",
            s.round,
            s.elapsed_s,
            mib(s.rss_kib),
            s.store_bytes as f64 / 1048576.0,
            s.audit_log_bytes as f64 / 1048576.0,
            s.model_bodies
        ));
    }
    let whose = if r.separate_process {
        "coordinator RSS"
    } else {
        "RSS (coordinator and clients in one process)"
    };
    out.push_str(&format!(
        "\n{} rounds, {} nodes, {} parameters, k = {}, retain_versions = {}: {:.1} rounds/s; \
         {whose} {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.2} %), peak {:.1} MiB; \
         store {:.2} MiB at the end, peak {:.2} MiB; audit chain OK ({} versions)\n",
        r.rounds,
        r.nodes,
        r.params,
        r.bucket_size,
        r.retain,
        r.rounds_per_s,
        mib(r.warmup_rss_kib),
        mib(r.final_rss_kib),
        r.rss_growth_pct,
        mib(r.peak_rss_kib),
        r.final_store_bytes as f64 / 1048576.0,
        r.peak_store_bytes as f64 / 1048576.0,
        r.audit_verified,
    ));
    if r.separate_process {
        out.push_str(&format!(
            "clients' process: {:.1} MiB after warm-up, {:.1} MiB at the end\n",
            mib(r.clients_rss_kib.0),
            mib(r.clients_rss_kib.1)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short soak: every round commits over real gRPC + mTLS, the store
    /// keeps only `retain` model bodies once that many versions exist, and
    /// the audit chain of every version still verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_soak_commits_and_keeps_the_store_bounded() {
        let o = SoakOptions {
            nodes: 4,
            rounds: 30,
            retain: 5,
            bucket_size: 1,
            params: 500,
            sample_every: 5,
            warmup: 10,
            seed: 7,
            progress: false,
            coordinator: CoordinatorProcess::InProcess,
        };
        let mut seen = Vec::new();
        let r = run_soak(&o, |s| seen.push(s.round)).await.unwrap();
        assert_eq!(r.rounds, 30);
        assert_eq!(r.audit_verified, 31);
        assert_eq!(seen, vec![0, 5, 10, 15, 20, 25, 30]);
        for s in &r.samples {
            // Genesis plus the versions so far, capped by the retention.
            assert_eq!(s.model_bodies as u64, (s.round + 1).min(5), "{s:?}");
            assert!(s.rss_kib > 0);
            assert_eq!(s.clients_rss_kib, s.rss_kib);
            assert!(s.audit_log_bytes <= s.store_bytes);
        }
        // The audit log (outside sled) grows with every version.
        let logs: Vec<u64> = r.samples.iter().map(|s| s.audit_log_bytes).collect();
        assert!(logs.windows(2).all(|w| w[0] < w[1]), "{logs:?}");
        assert!(!r.separate_process);
        assert!(markdown(&r).contains("audit chain OK (31 versions)"));
    }
}
