//! The node's side of a plaintext round (bucket size k = 1): bring the
//! model to the round's base version, train, send the update.

use fedmesh_proto::v1;
use tonic::Code;
use tracing::{info, warn};

use crate::agent::{AgentError, SharedAgent, lock};
use crate::federation::round::{FederationSettings, SessionError, sync_model, train_and_rewrite};
use crate::sim::hook::{SimPresence, SimSend};

/// Takes part in the plaintext round `open` (this node is selected).
pub(crate) async fn participate(
    agent: &SharedAgent,
    fs: &FederationSettings,
    client: &mut v1::federation_client::FederationClient<tonic::transport::Channel>,
    open: &v1::RoundOpen,
) -> Result<(), SessionError> {
    if lock(agent).global_version() != Some(open.base_version) {
        sync_model(agent, fs, client, open.base_version).await?;
    }
    let presence = fs.presence(open.round);
    if matches!(presence, SimPresence::Dropped | SimPresence::Straggler) {
        info!(
            round = open.round,
            ?presence,
            "simulated: not taking part in this round"
        );
        return Ok(());
    }
    let training = open.training.unwrap_or_default();
    let job = {
        let a = lock(agent);
        let Some(base) = a.global() else {
            return Ok(());
        };
        if base.version != open.base_version {
            warn!(
                have = base.version,
                want = open.base_version,
                "cannot train from the round's base version"
            );
            return Ok(());
        }
        match a.training_job(base, &training, open.round) {
            Ok(job) => job,
            Err(AgentError::NotEnoughData { have, need }) => {
                info!(have, need, "not enough local windows to train this round");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (update, send) = train_and_rewrite(job, fs.hook(), open.round).await?;
    if send == SimSend::Nothing {
        info!(round = open.round, "simulated: sending nothing this round");
        return Ok(());
    }
    let (tenant, node, schema) = {
        let a = lock(agent);
        let schema = a
            .global()
            .map(|g| g.schema_hash.to_vec())
            .unwrap_or_default();
        (
            a.settings().tenant.clone(),
            a.settings().node.clone(),
            schema,
        )
    };
    let req = v1::UpdateRequest {
        tenant,
        node,
        round: open.round,
        base_version: open.base_version,
        delta: Some(fedmesh_proto::encode_f32(
            &update.delta,
            &[update.delta.len() as u64],
        )),
        num_samples: update.num_samples,
        scaler_stats: (send == SimSend::Update).then(|| v1::ScalerStats {
            count: update.stats.count,
            sum: update.stats.sum.clone(),
            sum_sq: update.stats.sum_sq.clone(),
        }),
        train_loss: update.train_loss,
        schema_hash: schema,
    };
    match client.submit_update(req).await {
        Ok(ack) => {
            let ack = ack.into_inner();
            lock(agent).note_trained(update.train_loss);
            info!(
                loss = update.train_loss,
                samples = update.num_samples,
                received = ack.received,
                expected = ack.expected,
                "update submitted"
            );
            Ok(())
        }
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists) => {
            info!(status = %s, "update not accepted for this round");
            Ok(())
        }
        Err(s) => Err(SessionError::Rpc {
            rpc: "SubmitUpdate",
            status: s,
        }),
    }
}
