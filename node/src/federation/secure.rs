//! The node's side of a securely aggregated round (bucket size k > 1).
//!
//! On a `RoundOpen` carrying a `SecureRound`, the node recomputes the bucket
//! assignment from the committed participant list and the base model's
//! digest and refuses a bucket that differs or is too small; it then
//! advertises its per-round keys at once and trains in the background while
//! the keys and shares are exchanged. Each later event of the round is
//! cumulative, so the node advances as far as the event allows: encrypted
//! shares after the adverts, the masked update (clipped, quantized, with its
//! DP noise share, masked and signed; the scaler moments and training loss
//! ride along as extra words) after the shares, the unmask response after
//! the request. The masks, which do not depend on the update, are expanded
//! on a blocking thread as soon as the shares are in, while training
//! finishes. The plaintext update never leaves the node.
//!
//! A protocol failure (a peer's bad advert, a dropped bucket, a phase that
//! closed before this node answered) abandons the round, not the session.

use fedmesh_crypto::NodeId;
use fedmesh_crypto::secagg::{
    AssignmentInput, Bucket, BucketParams, ClientRound, EncryptedShare, KeyAdvert, ListDelta,
    QuantConfig, SecAggError, UnmaskRequest, apply_list_delta, participant_list_digest,
    verify_own_bucket,
};
use fedmesh_proto::v1::{self, round_event::Event as Ev, sec_agg_request::Message as M};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::agent::{AgentError, LocalUpdate, SharedAgent, lock};
use crate::detection::features::NUM_FEATURES;
use crate::federation::round::{FederationSettings, SessionError, sync_model, train_and_rewrite};
use crate::sim::hook::{SimPresence, SimSend};

type Client = v1::federation_client::FederationClient<Channel>;

/// Why this node leaves a round early (logged; the session goes on).
#[derive(Debug, thiserror::Error)]
enum Abandon {
    #[error("secure aggregation: {0}")]
    Protocol(#[from] SecAggError),
    #[error("{0}")]
    Refused(String),
}

struct Round {
    tenant: String,
    node: String,
    round: u64,
    bucket: u32,
}

impl Round {
    /// Sends one message; `Ok(false)` when the coordinator refused it as
    /// out of phase (the round goes on without this node).
    async fn send(&self, client: &mut Client, message: M) -> Result<bool, SessionError> {
        let req = v1::SecAggRequest {
            tenant: self.tenant.clone(),
            node: self.node.clone(),
            round: self.round,
            bucket: self.bucket,
            message: Some(message),
        };
        match client.sec_agg(req).await {
            Ok(_) => Ok(true),
            Err(s)
                if matches!(
                    s.code(),
                    Code::FailedPrecondition | Code::AlreadyExists | Code::InvalidArgument
                ) =>
            {
                warn!(status = %s, "secure-aggregation message refused; leaving this round");
                Ok(false)
            }
            Err(status) => Err(SessionError::Rpc {
                rpc: "SecAgg",
                status,
            }),
        }
    }

    /// The bucket parameters after checking the announced bucket against
    /// the committed list (sent whole, or as a change to one in `known`,
    /// where the checked list is then remembered), and whether `known`
    /// changed.
    fn params(
        &self,
        sr: &v1::SecureRound,
        base_version: u64,
        dim: usize,
        digest: [u8; 32],
        clip_factor: f64,
        known: &mut Vec<Vec<NodeId>>,
    ) -> Result<(BucketParams, NodeId, bool), Abandon> {
        let parse = |s: &String| {
            s.parse::<NodeId>()
                .map_err(|e| Abandon::Refused(format!("bad node id {s:?}: {e}")))
        };
        let tenant = self
            .tenant
            .parse()
            .map_err(|e| Abandon::Refused(format!("bad tenant: {e}")))?;
        let me: NodeId = parse(&self.node)?;
        let participants = committed_list(sr, known).map_err(Abandon::Refused)?;
        let bv = sr
            .bucket
            .as_ref()
            .ok_or_else(|| Abandon::Refused("no bucket announced for this node".into()))?;
        let announced = announced_bucket(bv).map_err(Abandon::Refused)?;
        let input = AssignmentInput {
            tenant: &tenant,
            round: self.round,
            participants: &participants,
            model_digest: digest,
            bucket_size: sr.bucket_size as usize,
        };
        let mine = verify_own_bucket(&input, &me, &announced, sr.min_bucket_size.max(2) as usize)?;
        let known_changed = remember_list(known, participants);
        let extra = fedmesh_proto::secure::extra_words(NUM_FEATURES);
        if sr.extra_words as usize != extra {
            return Err(Abandon::Refused(format!(
                "round expects {} extra words, this node sends {extra}",
                sr.extra_words
            )));
        }
        let noise = (sr.noise_multiplier > 0.0).then_some(sr.noise_multiplier);
        let params = BucketParams::new(
            tenant,
            self.round,
            base_version,
            mine.id,
            mine.members,
            None,
            dim,
            QuantConfig::new(sr.clip_norm * clip_factor, sr.quant_scale)?,
            noise,
        )?
        .with_extra_words(extra)?;
        if params.threshold() != bv.threshold as usize {
            return Err(Abandon::Refused(format!(
                "announced threshold {} differs from the protocol's {}",
                bv.threshold,
                params.threshold()
            )));
        }
        Ok((params, me, known_changed))
    }
}

fn extra_words(update: &LocalUpdate) -> Vec<u32> {
    let n = update.stats.count.max(1) as f64;
    let mean: Vec<f64> = update.stats.sum.iter().map(|s| s / n).collect();
    let mean_sq: Vec<f64> = update.stats.sum_sq.iter().map(|s| s / n).collect();
    fedmesh_proto::secure::encode_extra(update.train_loss, &mean, &mean_sq)
}

/// The round's committed participant list from its advert-phase event:
/// sent whole, or as a change to one of the lists this node checked its
/// bucket against last (`known`, newest first: the last two, so a node
/// that reconnects during a round's advert phase still holds the base);
/// refused when it is neither, or the change names no list held.
pub fn committed_list(sr: &v1::SecureRound, known: &[Vec<NodeId>]) -> Result<Vec<NodeId>, String> {
    let parse = |s: &String| {
        s.parse::<NodeId>()
            .map_err(|e| format!("bad node id {s:?}: {e}"))
    };
    let parse_all = |v: &[String]| v.iter().map(parse).collect::<Result<Vec<_>, _>>();
    match &sr.participants_delta {
        None => parse_all(&sr.participants),
        Some(_) if !sr.participants.is_empty() => {
            Err("both a participant list and a change to one".into())
        }
        Some(d) => {
            let base_digest: [u8; 32] = d
                .base_digest
                .as_slice()
                .try_into()
                .map_err(|_| "participant list change: digest is not 32 bytes".to_string())?;
            let base = known
                .iter()
                .find(|k| participant_list_digest(k).ok() == Some(base_digest))
                .ok_or("the participant list comes as a change to a list this node does not hold (it will get the whole list next round)")?;
            let delta = ListDelta {
                base_digest,
                added: parse_all(&d.added)?,
                removed: parse_all(&d.removed)?,
            };
            apply_list_delta(base, &delta).map_err(|e| e.to_string())
        }
    }
}

/// Lists a node keeps for [`committed_list`].
pub const KNOWN_LISTS: usize = 2;

/// Remembers `list` as the newest list held (at most [`KNOWN_LISTS`]);
/// false if it already was (nothing changed, nothing to store).
pub fn remember_list(known: &mut Vec<Vec<NodeId>>, list: Vec<NodeId>) -> bool {
    if known.first() == Some(&list) {
        return false;
    }
    known.retain(|k| *k != list);
    known.insert(0, list);
    known.truncate(KNOWN_LISTS);
    true
}

/// The bucket the coordinator announced to this node (its id and members),
/// before any check; a member name that is not a node id is refused.
pub fn announced_bucket(bv: &v1::BucketView) -> Result<Bucket, String> {
    let members = bv
        .members
        .iter()
        .map(|m| {
            m.parse::<NodeId>()
                .map_err(|e| format!("bad node id {m:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bucket { id: bv.id, members })
}

/// Takes part in the secure round `open`, reading the round's later events
/// from `stream`. Returns the first event that does not belong to the
/// round (for the session loop to handle), or `None`.
pub(crate) async fn participate(
    agent: &SharedAgent,
    fs: &FederationSettings,
    client: &mut Client,
    stream: &mut tonic::Streaming<v1::RoundEvent>,
    open: &v1::RoundOpen,
    known: &mut Vec<Vec<NodeId>>,
) -> Result<Option<v1::RoundEvent>, SessionError> {
    if lock(agent).global_version() != Some(open.base_version) {
        sync_model(agent, fs, client, open.base_version).await?;
    }
    let Some(sr) = open.secure.as_ref() else {
        return Ok(None);
    };
    let training = open.training.unwrap_or_default();
    let (tenant, node, job, digest, dim) = {
        let a = lock(agent);
        let Some(base) = a.global() else {
            return Ok(None);
        };
        if base.version != open.base_version {
            warn!(
                have = base.version,
                want = open.base_version,
                "cannot train from the round's base version"
            );
            return Ok(None);
        }
        let job = match a.training_job(base, &training, open.round) {
            Ok(job) => job,
            Err(AgentError::NotEnoughData { have, need }) => {
                info!(have, need, "not enough local windows to train this round");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        (
            a.settings().tenant.clone(),
            a.settings().node.clone(),
            job,
            fedmesh_proto::secure::model_digest(base.version, &base.params),
            base.params.len(),
        )
    };
    let mut r = Round {
        tenant,
        node,
        round: open.round,
        bucket: 0,
    };
    let presence = fs.presence(open.round);
    if presence == SimPresence::Dropped {
        info!(
            round = open.round,
            "simulated: dropping out before the advert"
        );
        return Ok(None);
    }
    if sr.phase > v1::SecAggPhase::Advertise as i32 {
        // Joined after the advert phase (the event no longer carries the
        // participant list): this round goes on without this node.
        info!(
            round = open.round,
            "secure round past its advert phase; waiting for the next round"
        );
        return Ok(None);
    }
    let clip_factor = fs.clip_factor();
    let (params, me, known_changed) =
        match r.params(sr, open.base_version, dim, digest, clip_factor, known) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "refusing the announced bucket");
                return Ok(None);
            }
        };
    r.bucket = params.bucket();
    if known_changed {
        lock(agent).store_participant_lists(known);
    }
    // Mask seeds, keys and rounding come from the OS; simulations that
    // must replay bit for bit pass a seed.
    let mut rng = match fs.secagg_seed() {
        Some(seed) => {
            ChaCha20Rng::seed_from_u64(seed ^ r.round.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
        None => ChaCha20Rng::from_os_rng(),
    };
    let mut c = match ClientRound::new(params, me, &mut rng) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot start secure aggregation");
            return Ok(None);
        }
    };
    // One certificate and key for the whole round: the masked input and the
    // unmask response are checked against the certificate in the advert,
    // so a rotation during the round takes effect at the next one.
    let signer = fs.signer.current();
    let advert = match c.advertise(&signer) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot sign the key advert");
            return Ok(None);
        }
    };
    if !r.send(client, M::Advert(advert.encode())).await? {
        return Ok(None);
    }
    debug!(bucket = r.bucket, "keys advertised; training");
    let mut training = Some(tokio::spawn(train_and_rewrite(job, fs.hook(), r.round)));
    let (mut shared, mut masked) = (false, false);
    loop {
        let Some(ev) = stream.message().await.map_err(|status| SessionError::Rpc {
            rpc: "WatchRounds",
            status,
        })?
        else {
            return Ok(None);
        };
        let o = match &ev.event {
            Some(Ev::Open(o)) if o.round == r.round => o,
            _ => return Ok(Some(ev)),
        };
        let Some(bv) = o.secure.as_ref().and_then(|s| s.bucket.as_ref()) else {
            continue;
        };
        if bv.dropped {
            info!(bucket = r.bucket, "bucket dropped by the coordinator");
            return Ok(None);
        }
        let phase = o.secure.as_ref().map_or(0, |s| s.phase);
        let step = async {
            if !shared && phase >= v1::SecAggPhase::Share as i32 && !bv.adverts.is_empty() {
                let adverts = bv
                    .adverts
                    .iter()
                    .map(|a| KeyAdvert::decode(a))
                    .collect::<Result<Vec<_>, _>>()?;
                c.receive_adverts(&adverts, &fs.verifier, time::OffsetDateTime::now_utc())?;
                let mut shares = c.share_keys(&mut rng)?;
                if fs.corrupts_shares(r.round) {
                    info!(bucket = r.bucket, "simulated: sending spoiled shares");
                    for share in &mut shares {
                        if let Some(b) = share.ciphertext.first_mut() {
                            *b ^= 0x55;
                        }
                    }
                }
                let bundle = v1::ShareBundle {
                    shares: shares.iter().map(|s| s.encode()).collect(),
                };
                shared = true;
                if !r.send(client, M::Shares(bundle)).await? {
                    return Ok(Some(()));
                }
            }
            if shared && !masked && phase >= v1::SecAggPhase::Mask as i32 {
                let shares = bv
                    .shares
                    .iter()
                    .map(|s| EncryptedShare::decode(s))
                    .collect::<Result<Vec<_>, _>>()?;
                c.receive_shares(&shares)?;
                let Some(job) = training.take() else {
                    return Ok(Some(()));
                };
                if presence == SimPresence::Straggler {
                    info!(bucket = r.bucket, "simulated: stopping after the shares");
                    return Ok(Some(()));
                }
                // The masks do not depend on the update: expand them while
                // training finishes.
                let plan = c.mask_plan()?;
                let mask = tokio::task::spawn_blocking(move || plan.expand());
                let (update, send) = job
                    .await
                    .map_err(|e| AgentError::Model(format!("training task failed: {e}")))??;
                let mask = mask
                    .await
                    .map_err(|e| AgentError::Model(format!("mask expansion failed: {e}")))?;
                if send == SimSend::Nothing {
                    info!(bucket = r.bucket, "simulated: sending nothing this round");
                    return Ok(Some(()));
                }
                let y = c.mask_update_with_mask(
                    &update.delta,
                    &extra_words(&update),
                    &mask,
                    &signer,
                    &mut rng,
                )?;
                drop(mask);
                masked = true;
                if !r.send(client, M::Masked(y.encode())).await? {
                    return Ok(Some(()));
                }
                lock(agent).note_trained(update.train_loss);
                info!(
                    loss = update.train_loss,
                    samples = update.num_samples,
                    bucket = r.bucket,
                    "masked update submitted"
                );
            }
            if masked && presence == SimPresence::NoUnmask {
                info!(
                    bucket = r.bucket,
                    "simulated: not answering the unmask request"
                );
                return Ok(Some(()));
            }
            if masked && phase == v1::SecAggPhase::Unmask as i32 && !bv.unmask_request.is_empty() {
                let request = UnmaskRequest::decode(&bv.unmask_request)?;
                let response = c.unmask(&request, &signer)?;
                r.send(client, M::UnmaskResponse(response.encode())).await?;
                return Ok(Some(()));
            }
            Ok::<Option<()>, StepError>(None)
        };
        match step.await {
            Ok(Some(())) => return Ok(None),
            Ok(None) => {}
            Err(StepError::Session(e)) => return Err(e),
            Err(StepError::Abandon(e)) => {
                warn!(error = %e, bucket = r.bucket, "leaving the secure round");
                return Ok(None);
            }
        }
    }
}

enum StepError {
    Session(SessionError),
    Abandon(Abandon),
}

impl From<SessionError> for StepError {
    fn from(e: SessionError) -> Self {
        StepError::Session(e)
    }
}

impl From<SecAggError> for StepError {
    fn from(e: SecAggError) -> Self {
        StepError::Abandon(Abandon::Protocol(e))
    }
}

impl From<AgentError> for StepError {
    fn from(e: AgentError) -> Self {
        StepError::Session(SessionError::Agent(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_crypto::secagg::list_delta;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn names(v: &[NodeId]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_committed_list_comes_whole_or_as_a_change_to_the_one_held() {
        let old = ids(&["a", "b", "c"]);
        let new = ids(&["b", "c", "d"]);
        let whole = v1::SecureRound {
            participants: names(&new),
            ..Default::default()
        };
        assert_eq!(committed_list(&whole, &[]).unwrap(), new);
        let d = list_delta(&old, &new).unwrap();
        let change = v1::SecureRound {
            participants_delta: Some(v1::ParticipantsDelta {
                base_round: 3,
                base_digest: d.base_digest.to_vec(),
                added: names(&d.added),
                removed: names(&d.removed),
            }),
            ..Default::default()
        };
        assert_eq!(
            committed_list(&change, std::slice::from_ref(&old)).unwrap(),
            new
        );
        // Nothing held, another list held, a bad digest, a bad name, or
        // both forms at once: refused with a reason.
        assert!(committed_list(&change, &[]).is_err());
        assert!(committed_list(&change, std::slice::from_ref(&new)).is_err());
        let mut bad = change.clone();
        if let Some(d) = bad.participants_delta.as_mut() {
            d.base_digest.truncate(5);
        }
        assert!(committed_list(&bad, std::slice::from_ref(&old)).is_err());
        let mut bad = change.clone();
        if let Some(d) = bad.participants_delta.as_mut() {
            d.added.push("not a name!".into());
        }
        assert!(committed_list(&bad, std::slice::from_ref(&old)).is_err());
        let mut both = change.clone();
        both.participants = names(&new);
        assert!(committed_list(&both, std::slice::from_ref(&old)).is_err());
        // A node that took the new list already (it reconnected during the
        // advert phase) still holds the base as its second list.
        let mut known = Vec::new();
        assert!(remember_list(&mut known, old.clone()));
        assert!(remember_list(&mut known, new.clone()));
        assert!(!remember_list(&mut known, new.clone()));
        assert_eq!(known, [new.clone(), old.clone()]);
        // The older one again becomes the newer.
        assert!(remember_list(&mut known, old.clone()));
        assert_eq!(known, [old.clone(), new.clone()]);
        assert!(remember_list(&mut known, new.clone()));
        assert_eq!(committed_list(&change, &known).unwrap(), new);
        assert!(remember_list(&mut known, ids(&["z"])));
        assert_eq!(known.len(), KNOWN_LISTS);
        assert!(committed_list(&change, &known).is_err());
    }
}
