//! What the coordinator benchmarks share (`bench round`, `soak`,
//! `bench handshake`): the coordinator under test, in this process or as a
//! child `fedmesh-coordinator` process ([`CoordinatorProcess`],
//! [`Running`]); a test PKI ([`pki`]); hand-driven protocol clients over
//! real gRPC + mTLS ([`connect_retrying`], [`client_loop`]: they join and
//! answer every round, plaintext or secure, with a fixed update); and
//! process measurements from `/proc` ([`status_kib`], [`rss_kib`]).
//! Depends on no other benchmark module.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_coordinator::Pki;
use fedmesh_coordinator::pki::layout;
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, RoundSummary};
use fedmesh_crypto::secagg::{
    BucketParams, ClientRound, EncryptedShare, KeyAdvert, QuantConfig, UnmaskRequest,
};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa};
use fedmesh_proto::v1::{self, SecAggPhase, round_event::Event, sec_agg_request::Message as M};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tonic::transport::Channel;

/// A protocol client of the coordinator.
pub(crate) type Client = v1::federation_client::FederationClient<Channel>;

/// Where the coordinator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorProcess {
    /// In this process, beside the clients: the resident memory is theirs
    /// together (an upper bound on the coordinator's).
    InProcess,
    /// This `fedmesh-coordinator` binary, as a child process: the resident
    /// memory is the coordinator's alone.
    Binary(PathBuf),
}

impl CoordinatorProcess {
    /// `fedmesh-coordinator` in the directory of the running executable
    /// (where cargo puts both binaries), if it is there.
    pub fn beside_current_exe() -> Result<Self> {
        let exe = std::env::current_exe().context("locating the running executable")?;
        let bin = exe
            .parent()
            .map(|d| d.join("fedmesh-coordinator"))
            .ok_or_else(|| anyhow!("the running executable has no directory"))?;
        if !bin.is_file() {
            bail!(
                "{} not found: build it (`cargo build --release -p fedmesh-coordinator`), \
                 give --coordinator-bin, or run with --in-process",
                bin.display()
            );
        }
        Ok(Self::Binary(bin))
    }
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> Result<u64> {
    rss_kib_of(None)
}

/// Resident memory of process `pid` (None = this process), KiB.
pub fn rss_kib_of(pid: Option<u32>) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A `KiB` line (`VmRSS`, `VmHWM`, …) of process `pid`'s
/// `/proc/<pid>/status` (None = this process).
pub fn status_kib(pid: Option<u32>, key: &str) -> Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {key} line in {path}"))
}

/// Bytes of the files under `dir` (not following links), bounded to a
/// few thousand entries.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            seen += 1;
            if seen > 100_000 {
                bail!("more than 100000 files under {}", dir.display());
            }
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

pub(crate) fn free_port() -> Result<u16> {
    // Bound and released at once: another process could take the port in
    // between, which would make the coordinator fail to start, loudly.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The coordinator config of a run: given the data directory, the TLS
/// paths (`-` when the PKI is passed in memory), the gRPC listen address
/// and the optional HTTP (`/status`, `/metrics`) address.
pub(crate) type ConfigText<'a> = &'a dyn Fn(&Path, [&str; 3], &str, Option<&str>) -> String;

/// A running coordinator (in this process or a child process).
pub(crate) enum Running {
    InProcess {
        store: fedmesh_coordinator::Store,
        summaries: tokio::sync::broadcast::Receiver<RoundSummary>,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), fedmesh_coordinator::CoordinatorError>>,
    },
    Child {
        child: tokio::process::Child,
        pid: u32,
        status_url: String,
        log: PathBuf,
    },
}

/// The last lines of the coordinator's log, for an error message.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

impl Running {
    /// Starts the coordinator with the config `config` makes; returns it
    /// and the address of its gRPC listener.
    pub(crate) async fn start(
        process: &CoordinatorProcess,
        config: ConfigText<'_>,
        ca: &MeshCa,
        dir: &Path,
        data: &Path,
    ) -> Result<(Self, std::net::SocketAddr)> {
        match process {
            CoordinatorProcess::InProcess => {
                let text = config(data, ["-", "-", "-"], "127.0.0.1:0", None);
                let cfg = CoordinatorConfig::from_toml(&text, Path::new("soak.toml"))?;
                let coordinator = Coordinator::open(&cfg, &pki(ca)?)?;
                let store = coordinator.store().clone();
                let summaries = coordinator
                    .federation(TENANT)
                    .ok_or_else(|| anyhow!("soak tenant missing"))?
                    .summaries();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(coordinator.serve(listener, async move {
                    let _ = stop_rx.await;
                }));
                Ok((
                    Self::InProcess {
                        store,
                        summaries,
                        stop,
                        server,
                    },
                    addr,
                ))
            }
            CoordinatorProcess::Binary(bin) => {
                let pki_dir = dir.join("pki");
                let p = pki(ca)?;
                let (ca_path, cert_path, key_path) = (
                    layout::ca_cert(&pki_dir),
                    layout::coordinator_cert(&pki_dir),
                    layout::coordinator_key(&pki_dir),
                );
                fedmesh_coordinator::pki::write_public(&ca_path, &p.ca_pem)?;
                fedmesh_coordinator::pki::write_public(&cert_path, &p.cert_pem)?;
                fedmesh_coordinator::pki::write_secret(&key_path, &p.key_pem)?;
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
                let http = format!("127.0.0.1:{}", free_port()?);
                let text = config(
                    data,
                    [
                        &ca_path.display().to_string(),
                        &cert_path.display().to_string(),
                        &key_path.display().to_string(),
                    ],
                    &addr.to_string(),
                    Some(&http),
                );
                let cfg_path = dir.join("coordinator.toml");
                std::fs::write(&cfg_path, text)?;
                let log = dir.join("coordinator.log");
                let child = tokio::process::Command::new(bin)
                    .arg("serve")
                    .arg("--config")
                    .arg(&cfg_path)
                    .env("FEDMESH_LOG", "warn")
                    .env_remove("FEDMESH_LISTEN")
                    .env_remove("FEDMESH_DATA_DIR")
                    .env_remove("FEDMESH_LOG_JSON")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(&log)?)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting {}", bin.display()))?;
                let pid = child
                    .id()
                    .ok_or_else(|| anyhow!("the coordinator exited at once"))?;
                let mut running = Self::Child {
                    child,
                    pid,
                    status_url: format!("http://{http}"),
                    log,
                };
                running.wait_ready().await?;
                Ok((running, addr))
            }
        }
    }

    /// Waits until a child coordinator answers `/status` (30 s at most).
    async fn wait_ready(&mut self) -> Result<()> {
        let Self::Child {
            child,
            status_url,
            log,
            ..
        } = self
        else {
            return Ok(());
        };
        for _ in 0..600 {
            if let Some(code) = child.try_wait()? {
                bail!("the coordinator exited ({code}):\n{}", log_tail(log));
            }
            if fedmesh_coordinator::status::fetch_status(status_url)
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the coordinator did not answer /status within 30 s")
    }

    /// The last lines of a child coordinator's log (empty in process).
    pub(crate) fn log_tail(&self) -> String {
        match self {
            Self::InProcess { .. } => String::new(),
            Self::Child { log, .. } => log_tail(log),
        }
    }

    /// The child coordinator's process id (None in process).
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess { .. } => None,
            Self::Child { pid, .. } => Some(*pid),
        }
    }

    /// Committed-round summaries of an in-process coordinator.
    pub(crate) fn summaries(
        &mut self,
    ) -> Option<&mut tokio::sync::broadcast::Receiver<RoundSummary>> {
        match self {
            Self::InProcess { summaries, .. } => Some(summaries),
            Self::Child { .. } => None,
        }
    }

    /// Fails if a child coordinator has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Self::Child { child, log, .. } = self
            && let Some(code) = child.try_wait()?
        {
            bail!("the coordinator exited ({code}):\n{}", log_tail(log));
        }
        Ok(())
    }

    /// Resident memory of the coordinator, KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        match self {
            Self::InProcess { .. } => rss_kib(),
            Self::Child { pid, .. } => rss_kib_of(Some(*pid)),
        }
    }

    /// Model bodies in the store: counted in process, from `/status`
    /// (version + 1 − oldest kept version) for a child.
    pub(crate) async fn model_bodies(&self) -> Result<usize> {
        match self {
            Self::InProcess { store, .. } => Ok(store.model_count(TENANT)),
            Self::Child { status_url, .. } => {
                let s = fedmesh_coordinator::status::fetch_status(status_url).await?;
                let t = s
                    .first()
                    .ok_or_else(|| anyhow!("/status lists no tenant"))?;
                let version = t.version.unwrap_or(0);
                let oldest = t.oldest_kept_version;
                Ok(usize::try_from((version + 1).saturating_sub(oldest))?)
            }
        }
    }

    /// Stops the coordinator (SIGTERM for a child, then SIGKILL after 30 s)
    /// and verifies the audit chain of the store it leaves.
    pub(crate) async fn stop_and_verify(self, data: &Path) -> Result<usize> {
        match self {
            Self::InProcess {
                store,
                stop,
                server,
                ..
            } => {
                let _ = stop.send(());
                let _ = server.await;
                Ok(store.verify_chain(TENANT)?)
            }
            Self::Child { mut child, pid, .. } => {
                // No unsafe code for kill(2): the `kill` utility sends it.
                let _ = tokio::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
                if tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .is_err()
                {
                    child.kill().await?;
                }
                let store = fedmesh_coordinator::Store::open(data)?;
                Ok(store.verify_chain(TENANT)?)
            }
        }
    }
}

pub(crate) const TENANT: &str = "bench";

/// Hidden width giving about `params` parameters for input width 22.
pub(crate) fn hidden_for(params: usize) -> usize {
    // 22·h + h + h·22 + 22 = 45h + 22.
    params.saturating_sub(22).div_ceil(45).max(1)
}

pub(crate) fn pki(ca: &MeshCa) -> Result<Pki> {
    let now = time::OffsetDateTime::now_utc();
    let issued = ca.issue_coordinator(
        &"bench".parse()?,
        &["localhost".into()],
        &["127.0.0.1".parse()?],
        now,
        1,
    )?;
    Ok(Pki {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// What a client reports to the harness.
#[derive(Default)]
pub(crate) struct Hooks {
    /// The newest committed version the client hears of (from commit,
    /// idle and round-open events).
    pub version: Option<tokio::sync::watch::Sender<u64>>,
    /// Bytes of the requests the client sent (encoded length).
    pub sent: Option<Arc<AtomicU64>>,
}

/// Connects, retrying for a few seconds: the coordinator closes
/// handshakes beyond `[limits] max_handshakes_per_address` from one
/// address at once, and every client here dials from 127.0.0.1. `salt`
/// (the client's index) spreads the clients' retries.
pub(crate) async fn connect_retrying(
    connector: &fedmesh_node::federation::client::Connector,
    salt: u64,
) -> Result<Client> {
    let mut attempt = 0u64;
    loop {
        match connector.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if attempt >= 100 => return Err(e.into()),
            Err(_) => {
                attempt += 1;
                // Spread the retries of many clients (10..=200 ms).
                let ms = 10 + (attempt * 37 + salt * 53) % 191;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}

/// A protocol client: joins, then answers every round it is selected for
/// until the task is aborted. With `progress`, it reports the newest
/// committed version it hears of (from commit, idle and round-open events).
pub(crate) async fn client_loop(
    mut client: Client,
    name: String,
    signer: Arc<CertSigner>,
    verifier: Arc<CertVerifier>,
    seed: u64,
    hooks: Hooks,
) -> Result<()> {
    let count = |n: usize| {
        if let Some(s) = &hooks.sent {
            s.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let join = client
        .join(v1::JoinRequest {
            tenant: TENANT.into(),
            node: name.clone(),
            feature_schema: hex::decode(fedmesh_proto::model::FEATURE_SCHEMA_V1_DIGEST)?,
            agent_version: "bench".into(),
        })
        .await?
        .into_inner();
    let spec = join.model_spec.unwrap_or_default();
    let hidden: Vec<usize> = spec.hidden.iter().map(|&w| w as usize).collect();
    let p = fedmesh_proto::model::param_count(spec.input_dim as usize, &hidden)
        .ok_or_else(|| anyhow!("model size"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let scale = 0.5 / (p as f32).sqrt();
    let update: Vec<f32> = (0..p).map(|_| rng.random_range(-scale..scale)).collect();
    let mut stream = client
        .watch_rounds(v1::WatchRoundsRequest::default())
        .await?
        .into_inner();
    let mut state: Option<(u64, ClientRound, u8)> = None;
    while let Some(ev) = stream.message().await? {
        if let Some(tx) = &hooks.version {
            let seen = match &ev.event {
                Some(Event::Open(o)) => Some(o.base_version),
                Some(Event::Committed(c)) => Some(c.version),
                Some(Event::Idle(i)) => Some(i.current_version),
                _ => None,
            };
            if let Some(v) = seen {
                tx.send_if_modified(|cur| {
                    let newer = v > *cur;
                    if newer {
                        *cur = v;
                    }
                    newer
                });
            }
        }
        let Some(Event::Open(o)) = ev.event else {
            continue;
        };
        if !o.selected {
            continue;
        }
        let Some(sr) = o.secure.as_ref() else {
            let req = v1::UpdateRequest {
                tenant: TENANT.into(),
                node: name.clone(),
                round: o.round,
                base_version: o.base_version,
                delta: Some(fedmesh_proto::encode_f32(&update, &[p as u64])),
                num_samples: 100,
                scaler_stats: None,
                train_loss: 0.1,
                schema_hash: join.schema_hash.clone(),
            };
            count(req.encoded_len());
            client.submit_update(req).await?;
            continue;
        };
        let Some(bv) = sr.bucket.as_ref() else {
            continue;
        };
        let send = |message: M| {
            let req = v1::SecAggRequest {
                tenant: TENANT.into(),
                node: name.clone(),
                round: o.round,
                bucket: bv.id,
                message: Some(message),
            };
            count(req.encoded_len());
            req
        };
        let now = time::OffsetDateTime::now_utc();
        if state.as_ref().is_none_or(|(r, _, _)| *r != o.round) {
            // Phase 0: keys (the bench trusts the announced bucket; the
            // node's own check is exercised by the node and the e2e tests).
            let bucket = fedmesh_node::federation::secure::announced_bucket(bv)
                .map_err(anyhow::Error::msg)?;
            let params = BucketParams::new(
                TENANT.parse()?,
                o.round,
                o.base_version,
                bucket.id,
                bucket.members,
                None,
                p,
                QuantConfig::new(sr.clip_norm, sr.quant_scale)?,
                None,
            )?
            .with_extra_words(sr.extra_words as usize)?;
            let c = ClientRound::new(params, name.parse()?, &mut rng)?;
            client
                .sec_agg(send(M::Advert(c.advertise(&signer)?.encode())))
                .await?;
            state = Some((o.round, c, 0));
        }
        let Some((_, c, stage)) = state.as_mut() else {
            continue;
        };
        if *stage == 0 && sr.phase >= SecAggPhase::Share as i32 && !bv.adverts.is_empty() {
            let adverts = bv
                .adverts
                .iter()
                .map(|a| KeyAdvert::decode(a))
                .collect::<Result<Vec<_>, _>>()?;
            c.receive_adverts(&adverts, &verifier, now)?;
            let shares = c.share_keys(&mut rng)?;
            client
                .sec_agg(send(M::Shares(v1::ShareBundle {
                    shares: shares.iter().map(|s| s.encode()).collect(),
                })))
                .await?;
            *stage = 1;
        }
        if *stage == 1 && sr.phase >= SecAggPhase::Mask as i32 {
            let shares = bv
                .shares
                .iter()
                .map(|s| EncryptedShare::decode(s))
                .collect::<Result<Vec<_>, _>>()?;
            c.receive_shares(&shares)?;
            let extra = vec![0u32; sr.extra_words as usize];
            let y = c.mask_update_with_extra(&update, &extra, &signer, &mut rng)?;
            client.sec_agg(send(M::Masked(y.encode()))).await?;
            *stage = 2;
        }
        if *stage == 2 && sr.phase == SecAggPhase::Unmask as i32 && !bv.unmask_request.is_empty() {
            let request = UnmaskRequest::decode(&bv.unmask_request)?;
            let r = c.unmask(&request, &signer)?;
            client.sec_agg(send(M::UnmaskResponse(r.encode()))).await?;
            *stage = 3;
        }
    }
    Ok(())
}
