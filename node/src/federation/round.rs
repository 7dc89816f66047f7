//! What the session and both kinds of round share: the settings, the
//! session error, fetching and installing a verified model, and training
//! on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use fedmesh_crypto::{CertVerifier, SharedSigner};
use fedmesh_proto::v1;

use crate::agent::{AgentError, LocalUpdate, SharedAgent, TrainingJob, lock, verify_global_model};
use crate::federation::client::{ClientError, Connector};
use crate::sim::hook::{SimPresence, SimSend, SimulationHook};

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
    /// Shared with [`crate::federation::client::NodeCredentials`], so a
    /// rotated certificate and key sign from the next secure round on (a
    /// round keeps the signer it advertised with).
    pub signer: SharedSigner,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// The simulation hook (the harness runs simulated, possibly malicious
    /// nodes with the real node code): presence per round, update
    /// rewriting and poisoning, share corruption, the secure-aggregation
    /// seed. Only with the `sim` feature, which release builds leave off:
    /// a real node has no such field.
    #[cfg(feature = "sim")]
    pub sim: Option<Arc<dyn SimulationHook>>,
}

impl FederationSettings {
    /// Settings without a simulation hook.
    pub fn new(
        connector: Connector,
        verifier: Arc<CertVerifier>,
        signer: SharedSigner,
        max_backoff: Duration,
    ) -> Self {
        Self {
            connector,
            verifier,
            signer,
            max_backoff,
            #[cfg(feature = "sim")]
            sim: None,
        }
    }

    /// The simulation hook, if any (never on a real node).
    pub(crate) fn hook(&self) -> Option<Arc<dyn SimulationHook>> {
        #[cfg(feature = "sim")]
        return self.sim.clone();
        #[cfg(not(feature = "sim"))]
        None
    }

    /// This node's presence in `round`: always `Present` on a real node.
    pub(crate) fn presence(&self, round: u64) -> SimPresence {
        self.hook()
            .map_or(SimPresence::Present, |h| h.presence(round))
    }

    /// k > 1: whether this node spoils its Shamir shares in `round` (never
    /// on a real node).
    pub(crate) fn corrupts_shares(&self, round: u64) -> bool {
        self.hook().is_some_and(|h| h.corrupt_shares(round))
    }

    /// Seed of the secure-aggregation randomness (keys, masks, rounding,
    /// DP noise): `None` on a real node (drawn from the OS).
    pub(crate) fn secagg_seed(&self) -> Option<u64> {
        self.hook().and_then(|h| h.secagg_seed())
    }

    /// How much larger than the round's clip norm this node quantizes: 1
    /// on a real node.
    pub(crate) fn clip_factor(&self) -> f64 {
        self.hook().map_or(1.0, |h| h.clip_factor())
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
    let (agent, verifier) = (agent.clone(), fs.verifier.clone());
    // Verifying, calibrating on the benign buffer and the store's flush
    // take milliseconds under the agent lock: a blocking thread, not an
    // async worker.
    tokio::task::spawn_blocking(move || -> Result<(), SessionError> {
        let mut a = lock(&agent);
        let have = a.global_version();
        let g = verify_global_model(
            &bytes,
            &verifier,
            &a.settings().tenant.clone(),
            have,
            time::OffsetDateTime::now_utc(),
        )?;
        if have.is_some_and(|h| h >= g.version) {
            return Ok(());
        }
        a.install_global(g)?;
        Ok(())
    })
    .await
    .map_err(|e| AgentError::Model(format!("model installation task failed: {e}")))?
}
