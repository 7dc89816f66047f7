//! The network engine: the same scenario through the real gRPC mesh over
//! mutual TLS on loopback — a coordinator (`fedmesh_coordinator`) and one
//! `run_federation` task per node, each node an `Agent` with exactly the
//! buffer the in-process engine gives it.
//!
//! It supports the scenarios whose every step the live protocol performs by
//! itself: every node participates every round, no attacker, no dropout,
//! no DP and no bucketing. For those, the global model it ends with is
//! bit-identical to the in-process engine's (a test checks it).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmesh_coordinator::pki::{self, layout};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki};
use fedmesh_crypto::{CertVerifier, MeshCa, NodeId, SecretPem, TenantId};
use fedmesh_node::client::Connector;
use fedmesh_node::runtime::{FederationSettings, lock, run_federation};
use tokio::sync::watch;

use super::derive_seed;
use super::inprocess::{P_GENESIS, TENANT, build_node, sha256_params};
use crate::scenario::Scenario;

/// Network-engine failures (set-up, TLS, gRPC).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The scenario uses something the network engine does not simulate.
    #[error("the network engine does not support {0}")]
    Unsupported(&'static str),
    /// The engine's node set-up failed.
    #[error(transparent)]
    Engine(#[from] super::EngineError),
    /// Mesh set-up or the run failed.
    #[error("{0}")]
    Mesh(String),
}

fn mesh<E: std::fmt::Display>(e: E) -> NetworkError {
    NetworkError::Mesh(e.to_string())
}

/// What a network run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkReport {
    /// Versions committed.
    pub final_version: u64,
    /// Participants per committed round.
    pub participants: Vec<usize>,
    /// SHA-256 of the final global parameters (f32 LE), as held by node 0.
    pub final_params_sha256: String,
}

fn check_supported(s: &Scenario) -> Result<(), NetworkError> {
    let u = NetworkError::Unsupported;
    if s.attack.as_ref().is_some_and(|a| a.fraction > 0.0) {
        return Err(u("attackers"));
    }
    if s.fleet.participation < 1.0 {
        return Err(u("partial participation"));
    }
    if s.dropout.rate > 0.0 || s.dropout.stragglers > 0.0 || !s.dropout.always_offline.is_empty() {
        return Err(u("dropouts"));
    }
    if s.dp.clip.is_some() {
        return Err(u("local DP"));
    }
    if s.bucket_size > 1 {
        return Err(u("buckets (secure aggregation is not in the protocol yet)"));
    }
    Ok(())
}

/// Runs the scenario over loopback mTLS; `dir` holds the PKI and stores.
pub async fn run(s: &Scenario, dir: &Path) -> Result<NetworkReport, NetworkError> {
    s.validate().map_err(super::EngineError::from)?;
    check_supported(s)?;
    let now = time::OffsetDateTime::now_utc();
    let pki_dir = dir.join("pki");
    let ca = MeshCa::generate("fedmesh-sim CA", now, 2).map_err(mesh)?;
    pki::write_public(&layout::ca_cert(&pki_dir), ca.cert_pem()).map_err(mesh)?;
    pki::write_secret(&layout::ca_key(&pki_dir), ca.key_pem()).map_err(mesh)?;
    let coord_id: NodeId = "sim".parse().map_err(mesh)?;
    let ip = "127.0.0.1".parse().map_err(mesh)?;
    let coord = ca
        .issue_coordinator(&coord_id, &["localhost".into()], &[ip], now, 1)
        .map_err(mesh)?;
    pki::write_public(&layout::coordinator_cert(&pki_dir), &coord.cert_pem).map_err(mesh)?;
    pki::write_secret(&layout::coordinator_key(&pki_dir), &coord.key_pem).map_err(mesh)?;
    let tenant: TenantId = TENANT.parse().map_err(mesh)?;
    let nodes: Vec<_> = (0..s.fleet.nodes)
        .map(|i| build_node(s, i, None))
        .collect::<Result<_, _>>()?;
    for n in &nodes {
        let id: NodeId = n.name.parse().map_err(mesh)?;
        let c = ca.issue_node(&tenant, &id, now, 1).map_err(mesh)?;
        pki::write_public(&layout::node_cert(&pki_dir, TENANT, &n.name), &c.cert_pem)
            .map_err(mesh)?;
        pki::write_secret(&layout::node_key(&pki_dir, TENANT, &n.name), &c.key_pem)
            .map_err(mesh)?;
    }
    let rule = toml::to_string(&s.rule).map_err(mesh)?;
    let cfg_text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
[[tenants]]
name = "{TENANT}"
min_nodes = {n}
quorum = {n}
round_timeout_ms = 60000
round_interval_ms = 0
max_rounds = {rounds}
seed = {seed}
server_lr = {lr:?}
server_momentum = {beta:?}
max_update_norm = 1.0e30
[tenants.training]
local_epochs = {epochs}
batch_size = {batch}
learning_rate = {tlr:?}
prox_mu = {mu:?}
[tenants.aggregation]
{rule}
"#,
        data = dir.join("coordinator").display(),
        ca = layout::ca_cert(&pki_dir).display(),
        cert = layout::coordinator_cert(&pki_dir).display(),
        key = layout::coordinator_key(&pki_dir).display(),
        n = s.fleet.nodes,
        rounds = s.rounds,
        seed = derive_seed(s.seed, &[P_GENESIS]),
        lr = s.server.lr,
        beta = s.server.momentum,
        epochs = s.training.local_epochs,
        batch = s.training.batch_size,
        tlr = s.training.learning_rate,
        mu = s.training.prox_mu,
    );
    let cfg = CoordinatorConfig::from_toml(&cfg_text, Path::new("sim.toml")).map_err(mesh)?;
    let coord_pki = Pki::load(&cfg.tls.ca_cert, &cfg.tls.cert, &cfg.tls.key).map_err(mesh)?;
    let coordinator = Coordinator::open(&cfg, &coord_pki).map_err(mesh)?;
    let fed = coordinator
        .federation(TENANT)
        .ok_or_else(|| NetworkError::Mesh("tenant missing".into()))?;
    let mut summaries = fed.summaries();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(mesh)?;
    let addr = listener.local_addr().map_err(mesh)?;
    let (coord_stop_tx, coord_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(listener, async move {
        let _ = coord_stop_rx.await;
    }));
    let ca_pem = ca.cert_pem().to_string();
    let verifier = Arc::new(CertVerifier::new(&ca_pem).map_err(mesh)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    let mut tasks = Vec::new();
    for n in nodes {
        let cert =
            std::fs::read_to_string(layout::node_cert(&pki_dir, TENANT, &n.name)).map_err(mesh)?;
        let key = SecretPem::new(
            std::fs::read_to_string(layout::node_key(&pki_dir, TENANT, &n.name)).map_err(mesh)?,
        );
        let tls = fedmesh_crypto::tls::client_config(&ca_pem, &cert, &key).map_err(mesh)?;
        let settings = FederationSettings {
            connector: Connector::new(
                &addr.to_string(),
                "localhost",
                tls,
                fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
            )
            .map_err(mesh)?,
            verifier: verifier.clone(),
            signer: Arc::new(fedmesh_crypto::CertSigner::from_pem(&cert, &key).map_err(mesh)?),
            secagg_seed: None,
            tamper: None,
            max_backoff: Duration::from_secs(2),
        };
        let agent = Arc::new(Mutex::new(n.agent));
        agents.push(agent.clone());
        tasks.push(tokio::spawn(run_federation(
            agent,
            settings,
            stop_rx.clone(),
        )));
    }
    let mut participants = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + 10 * s.rounds);
    while (participants.len() as u64) < s.rounds {
        let summary = tokio::time::timeout_at(deadline, summaries.recv())
            .await
            .map_err(|_| NetworkError::Mesh("rounds did not finish in time".into()))?
            .map_err(mesh)?;
        participants.push(summary.participants);
    }
    let final_version = fed.version();
    for _ in 0..400 {
        if agents
            .iter()
            .all(|a| lock(a).global_version() == Some(final_version))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let params = agents
        .first()
        .and_then(|a| lock(a).global().map(|g| g.params.clone()))
        .unwrap_or_default();
    let behind = agents
        .iter()
        .filter(|a| lock(a).global_version() != Some(final_version))
        .count();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = coord_stop_tx.send(());
    let _ = server.await;
    if behind > 0 {
        return Err(NetworkError::Mesh(format!(
            "{behind} nodes did not install version {final_version}"
        )));
    }
    Ok(NetworkReport {
        final_version,
        participants,
        final_params_sha256: sha256_params(&params),
    })
}
