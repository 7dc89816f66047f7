//! What the session and both kinds of round share: the settings, the
//! session error, fetching and installing a verified model, and training
//! on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use fedmesh_crypto::{CertSigner, CertVerifier};
use fedmesh_proto::v1;

use crate::agent::{AgentError, LocalUpdate, SharedAgent, TrainingJob, lock, verify_global_model};
use crate::federation::client::{ClientError, Connector};
use crate::sim::hook::{SimPresence, SimSend, SimulationHook, Tamper};

/// Federation loop failures within one session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Transport.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// An RPC failed.
    #[error("{rpc}: {status}")]
    Rpc {
        /// Which call.
        rpc: &'static str,
        /// Status.
        status: tonic::Status,
    },
    /// The coordinator's federation does not fit this node.
    #[error("incompatible federation: {0}")]
    Incompatible(String),
    /// Agent failure.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

pub(crate) fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> SessionError {
    move |status| SessionError::Rpc { rpc, status }
}

/// Everything the federation loop needs.
#[derive(Clone)]
pub struct FederationSettings {
    /// How to reach the coordinator.
    pub connector: Connector,
    /// Verifies global-model signatures against the mesh CA (and the
    /// peers' signed secure-aggregation keys).
    pub verifier: Arc<CertVerifier>,
    /// This node's mesh identity key: signs secure-aggregation messages.
    pub signer: Arc<CertSigner>,
    /// Seed for the secure-aggregation randomness (keys, masks, rounding,
    /// DP noise). `None` (production) draws from the OS; simulations set it
    /// so that a run replays bit for bit. Never set it on a real node.
    pub secagg_seed: Option<u64>,
    /// Poisoning for simulated malicious nodes (the harness runs attackers
    /// with the real node code). `None` on every real node; the node binary
    /// has no way to set it.
    pub tamper: Option<Tamper>,
    /// Simulated presence and update rewriting, for the harness's network
    /// engine (attackers that collude, dropouts at chosen protocol phases).
    /// `None` on every real node; the node binary has no way to set it.
    pub hook: Option<Arc<dyn SimulationHook>>,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
}

impl FederationSettings {
    /// This node's presence in `round`: always `Present` on a real node.
    pub(crate) fn presence(&self, round: u64) -> SimPresence {
        self.hook
            .as_ref()
            .map_or(SimPresence::Present, |h| h.presence(round))
    }
}

/// Trains `job` on a blocking thread and passes the update through the
/// simulation hook, if any.
pub(crate) async fn train_and_rewrite(
    job: TrainingJob,
    hook: Option<Arc<dyn SimulationHook>>,
    round: u64,
) -> Result<(LocalUpdate, SimSend), SessionError> {
    tokio::task::spawn_blocking(move || {
        let mut update = job.run()?;
        let send = hook.map_or(SimSend::Update, |h| h.rewrite(round, &mut update));
        Ok::<_, AgentError>((update, send))
    })
    .await
    .map_err(|e| AgentError::Model(format!("training task failed: {e}")))?
    .map_err(SessionError::from)
}

/// Fetches `version` (0 = latest), verifies and installs it if newer.
pub(crate) async fn sync_model(
    agent: &SharedAgent,
    fs: &FederationSettings,
    client: &mut v1::federation_client::FederationClient<tonic::transport::Channel>,
    version: u64,
) -> Result<(), SessionError> {
    let signed = client
        .get_model(v1::GetModelRequest { version })
        .await
        .map_err(rpc("GetModel"))?
        .into_inner();
    let bytes = prost::Message::encode_to_vec(&signed);
    let mut a = lock(agent);
    let have = a.global_version();
    let g = verify_global_model(
        &bytes,
        &fs.verifier,
        &a.settings().tenant.clone(),
        have,
        time::OffsetDateTime::now_utc(),
    )?;
    if have.is_some_and(|h| h >= g.version) {
        return Ok(());
    }
    a.install_global(g)?;
    Ok(())
}
