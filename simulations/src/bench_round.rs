//! `fedmesh-sim bench round`: time of whole federated rounds on the real
//! coordinator (gRPC + mutual TLS on loopback) with `nodes` clients and a
//! model of about `params` parameters, plaintext updates (k = 1) against
//! secure aggregation in buckets (k > 1), measured in the same run.
//!
//! The clients are hand-driven protocol clients (no training: each sends a
//! fixed random update of norm 0.5), so the figure is the protocol's cost:
//! TLS, encoding, key agreement, Shamir sharing, masking, signatures,
//! unmasking, aggregation, signing and storing the version. Clients and
//! coordinator share this machine's cores, so the client-side masking cost,
//! which a real fleet spreads over its nodes, is counted here in full.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki};
use fedmesh_crypto::secagg::{
    BucketParams, ClientRound, EncryptedShare, KeyAdvert, QuantConfig, UnmaskRequest,
};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa, TenantId};
use fedmesh_proto::v1::{self, SecAggPhase, round_event::Event, sec_agg_request::Message as M};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tonic::transport::Channel;

type Client = v1::federation_client::FederationClient<Channel>;

pub(crate) const TENANT: &str = "bench";

/// What to measure.
#[derive(Debug, Clone)]
pub struct RoundBench {
    /// Clients.
    pub nodes: usize,
    /// Approximate parameter count (the model is `[22 → h → 22]`).
    pub params: usize,
    /// Bucket sizes to compare (1 = plaintext).
    pub bucket_sizes: Vec<usize>,
    /// Committed rounds per bucket size.
    pub rounds: u64,
    /// Seed of the updates and of the clients' protocol randomness.
    pub seed: u64,
}

/// One bucket size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    /// Bucket size.
    pub k: usize,
    /// Clients.
    pub nodes: usize,
    /// Exact parameter count.
    pub params: usize,
    /// Rounds measured.
    pub rounds: usize,
    /// Median round time (open → commit), ms.
    pub median_ms: f64,
    /// Fastest round, ms.
    pub min_ms: f64,
    /// Client → coordinator bytes per node per parameter.
    pub bytes_per_param: f64,
    /// Median time over the k = 1 median of the same run.
    pub ratio_to_plain: Option<f64>,
    /// Median CPU time per round of everything but the clients (the
    /// coordinator: gRPC, TLS, checks, unmasking, aggregation, storage), ms.
    pub coordinator_cpu_ms: f64,
    /// Median CPU time per round of one client (all clients ÷ nodes), ms.
    pub node_cpu_ms: f64,
    /// Coordinator CPU over the k = 1 coordinator CPU of the same run.
    pub coordinator_cpu_ratio: Option<f64>,
}

/// Name of the client runtime's threads (their CPU time is the clients').
const CLIENT_THREAD: &str = "fm-bench-client";

/// CPU time (ns) of this process's threads so far: (all, client threads).
/// Read from `/proc/self/task/*/schedstat` (run time in ns, first field);
/// threads that have exited are lost, so the runtimes keep theirs alive.
fn cpu_ns() -> Result<(u64, u64)> {
    let mut all = 0u64;
    let mut clients = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let dir = task?.path();
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("comm")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected schedstat line {stat:?}"))?;
        all += ns;
        // `comm` is truncated to 15 bytes.
        if CLIENT_THREAD.starts_with(comm.trim_end()) && !comm.trim_end().is_empty() {
            clients += ns;
        }
    }
    Ok((all, clients))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

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

/// Runs the benchmark; prints nothing.
pub async fn run_round_bench(b: &RoundBench) -> Result<Vec<RoundRow>> {
    if b.nodes < 2 || b.rounds == 0 || b.bucket_sizes.is_empty() {
        bail!("need at least 2 nodes, 1 round and one bucket size");
    }
    if let Some(k) = b.bucket_sizes.iter().find(|k| **k == 0 || **k > b.nodes) {
        bail!("bucket size {k} must be between 1 and the number of nodes");
    }
    let h = hidden_for(b.params);
    let now = time::OffsetDateTime::now_utc();
    let ca = MeshCa::generate("bench CA", now, 1)?;
    let tenant: TenantId = TENANT.parse()?;
    let mut identities = Vec::with_capacity(b.nodes);
    for i in 0..b.nodes {
        let name = format!("n{i:04}");
        let c = ca.issue_node(&tenant, &name.parse()?, now, 1)?;
        let tls = fedmesh_crypto::tls::client_config(ca.cert_pem(), &c.cert_pem, &c.key_pem)?;
        let signer = Arc::new(CertSigner::from_pem(&c.cert_pem, &c.key_pem)?);
        identities.push((name, tls, signer));
    }
    let verifier = Arc::new(CertVerifier::new(ca.cert_pem())?);
    let pki = pki(&ca)?;
    let mut rows = Vec::new();
    for &k in &b.bucket_sizes {
        let dir = tempfile::tempdir()?;
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = '{data}'\n\
             [tls]\nca_cert = \"-\"\ncert = \"-\"\nkey = \"-\"\n\
             [[tenants]]\nname = \"{TENANT}\"\nmin_nodes = {n}\nquorum = {n}\n\
             round_timeout_ms = 120000\nround_interval_ms = 0\nmax_rounds = {r}\n\
             max_update_norm = 10.0\n[tenants.model]\nhidden = [{h}]\n\
             [tenants.secure]\nbucket_size = {k}\nclip_norm = 1.0\nphase_timeout_ms = 60000\n",
            data = dir.path().join("data").display(),
            n = b.nodes,
            r = b.rounds,
        );
        let cfg = CoordinatorConfig::from_toml(&text, Path::new("bench.toml"))?;
        let coordinator = Coordinator::open(&cfg, &pki)?;
        let fed = coordinator
            .federation(TENANT)
            .ok_or_else(|| anyhow!("bench tenant missing"))?;
        let mut summaries = fed.summaries();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(coordinator.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        // The clients get their own runtime (threads named CLIENT_THREAD),
        // so the CPU time of the coordinator and of the clients can be told
        // apart; both still share this machine's cores.
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(CLIENT_THREAD)
            .enable_all()
            .build()?;
        let mut clients = Vec::new();
        for (i, (name, tls, signer)) in identities.iter().enumerate() {
            let connector = fedmesh_node::federation::client::Connector::new(
                &addr.to_string(),
                "localhost",
                tls.clone(),
                fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
            )?;
            let seed = b.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64;
            let (name, signer, verifier) = (name.clone(), signer.clone(), verifier.clone());
            clients.push(client_rt.spawn(async move {
                let client = connect_retrying(&connector, i as u64).await?;
                client_loop(client, name, signer, verifier, seed, None).await
            }));
        }
        let mut times = Vec::new();
        let mut coordinator_cpu = Vec::new();
        let mut client_cpu = Vec::new();
        let mut bytes = 0u64;
        let mut params = 0;
        let mut last = cpu_ns()?;
        for round in 0..b.rounds {
            let s = tokio::time::timeout(Duration::from_secs(600), summaries.recv())
                .await
                .context("a round did not commit within 10 minutes")??;
            let now = cpu_ns()?;
            // The first round also carries the clients' connections and
            // joins; it counts for time but not for CPU when others exist.
            if round > 0 || b.rounds == 1 {
                let (all, cl) = (now.0 - last.0, now.1 - last.1);
                coordinator_cpu.push(all.saturating_sub(cl) as f64 / 1e6);
                client_cpu.push(cl as f64 / 1e6 / b.nodes as f64);
            }
            last = now;
            times.push(s.duration.as_secs_f64() * 1e3);
            bytes += s.bytes_received;
            params = fedmesh_proto::model::param_count(22, &[h]).unwrap_or(0);
        }
        let _ = stop_tx.send(());
        for c in clients {
            c.abort();
        }
        client_rt.shutdown_background();
        let _ = server.await;
        let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push(RoundRow {
            k,
            nodes: b.nodes,
            params,
            rounds: times.len(),
            median_ms: median(times),
            min_ms,
            bytes_per_param: bytes as f64 / (b.rounds as f64 * b.nodes as f64 * params as f64),
            ratio_to_plain: None,
            coordinator_cpu_ms: median(coordinator_cpu),
            node_cpu_ms: median(client_cpu),
            coordinator_cpu_ratio: None,
        });
    }
    if let Some(plain) = rows.iter().find(|r| r.k == 1).cloned() {
        for r in &mut rows {
            r.ratio_to_plain = Some(r.median_ms / plain.median_ms);
            r.coordinator_cpu_ratio = Some(r.coordinator_cpu_ms / plain.coordinator_cpu_ms);
        }
    }
    Ok(rows)
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
    progress: Option<tokio::sync::watch::Sender<u64>>,
) -> Result<()> {
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
        if let Some(tx) = &progress {
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
            client.submit_update(req).await?;
            continue;
        };
        let Some(bv) = sr.bucket.as_ref() else {
            continue;
        };
        let send = |message: M| v1::SecAggRequest {
            tenant: TENANT.into(),
            node: name.clone(),
            round: o.round,
            bucket: bv.id,
            message: Some(message),
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

/// The results as a Markdown table.
pub fn markdown(rows: &[RoundRow]) -> String {
    let mut out = String::from(
        "| k | nodes | params | rounds | median round ms | fastest ms | client→coordinator bytes/param/node | × k = 1 | coordinator CPU ms/round | × k = 1 | CPU ms/round/node |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ratio = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |x| format!("{x:.2}"));
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {:.1} | {} | {:.2} |\n",
            r.k,
            r.nodes,
            r.params,
            r.rounds,
            r.median_ms,
            r.min_ms,
            r.bytes_per_param,
            ratio(r.ratio_to_plain),
            r.coordinator_cpu_ms,
            ratio(r.coordinator_cpu_ratio),
            r.node_cpu_ms,
        ));
    }
    out
}
