//! The coordinator's side of one securely aggregated round (bucket size
//! k > 1): the committed participants shuffled into buckets, one
//! [`BucketUnmasker`] per bucket, and the four phases (adverts → encrypted
//! shares → masked inputs → unmask responses) driven by the federation's
//! round loop. Nodes see the round through [`SecureView::for_node`]; they
//! answer with `SecAgg` requests that [`SecureRound::accept`] routes to
//! their bucket.
//!
//! Individual updates never exist here: a masked input is a vector of
//! uniformly random-looking words, and [`SecureRound::finish`] yields only
//! [`BucketSum`]s, which the crypto crate constructs by successful
//! unmasking alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fedmesh_crypto::secagg::{
    AssignmentInput, BucketParams, BucketSum, BucketUnmasker, EncryptedShare, KeyAdvert,
    MaskedInput, SecAggError, UnmaskResponse, assign_buckets,
};
use fedmesh_crypto::{CertVerifier, NodeId, TenantId};
use fedmesh_proto::v1;
use rayon::prelude::*;
use time::OffsetDateTime;
use tracing::warn;

use crate::config::SecureConfig;
use crate::federation::FedError;

/// Phases of a secure round, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Collecting signed key adverts.
    Advertise,
    /// Adverts relayed; collecting encrypted shares.
    Share,
    /// Shares relayed; collecting masked inputs.
    Mask,
    /// Unmask requests out; collecting responses.
    Unmask,
}

impl Phase {
    fn proto(self) -> v1::SecAggPhase {
        match self {
            Phase::Advertise => v1::SecAggPhase::Advertise,
            Phase::Share => v1::SecAggPhase::Share,
            Phase::Mask => v1::SecAggPhase::Mask,
            Phase::Unmask => v1::SecAggPhase::Unmask,
        }
    }

    /// The phase after this one (`None` after unmasking).
    pub fn next(self) -> Option<Phase> {
        match self {
            Phase::Advertise => Some(Phase::Share),
            Phase::Share => Some(Phase::Mask),
            Phase::Mask => Some(Phase::Unmask),
            Phase::Unmask => None,
        }
    }

    /// Lower-case name, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Advertise => "advertise",
            Phase::Share => "share",
            Phase::Mask => "mask",
            Phase::Unmask => "unmask",
        }
    }
}

/// What every node may see of one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketPublic {
    /// Bucket id.
    pub id: u32,
    /// Members, sorted.
    pub members: Vec<NodeId>,
    /// Reconstruction threshold.
    pub threshold: u32,
    /// Encoded adverts (from the share phase on).
    pub adverts: Arc<Vec<Vec<u8>>>,
    /// Encoded shares per recipient (from the mask phase on).
    pub shares: Arc<BTreeMap<NodeId, Vec<Vec<u8>>>>,
    /// Encoded unmask request (unmask phase).
    pub request: Arc<Vec<u8>>,
    /// Dropped for too few members.
    pub dropped: bool,
}

/// The public state of a secure round, published with every phase.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureView {
    /// k.
    pub bucket_size: u32,
    /// Smallest acceptable bucket.
    pub min_bucket_size: u32,
    /// Committed participants, sorted.
    pub participants: Vec<NodeId>,
    /// Clip norm C.
    pub clip_norm: f64,
    /// Quantization scale.
    pub quant_scale: f64,
    /// DP noise multiplier (0 = off).
    pub noise_multiplier: f64,
    /// Extra words after the update.
    pub extra_words: u32,
    /// Current phase.
    pub phase: Phase,
    /// Deadline of the current phase, unix ms.
    pub phase_deadline_unix_ms: i64,
    /// Buckets.
    pub buckets: Vec<BucketPublic>,
}

impl SecureView {
    /// The round as `node` sees it: its own bucket and the shares
    /// addressed to it only.
    pub fn for_node(&self, node: &NodeId) -> v1::SecureRound {
        let bucket = self
            .buckets
            .iter()
            .find(|b| b.members.binary_search(node).is_ok())
            .map(|b| v1::BucketView {
                id: b.id,
                members: b.members.iter().map(|m| m.to_string()).collect(),
                threshold: b.threshold,
                adverts: b.adverts.as_ref().clone(),
                shares: b.shares.get(node).cloned().unwrap_or_default(),
                unmask_request: b.request.as_ref().clone(),
                dropped: b.dropped,
            });
        v1::SecureRound {
            bucket_size: self.bucket_size,
            min_bucket_size: self.min_bucket_size,
            participants: self.participants.iter().map(|p| p.to_string()).collect(),
            clip_norm: self.clip_norm,
            quant_scale: self.quant_scale,
            noise_multiplier: self.noise_multiplier,
            phase: self.phase.proto() as i32,
            phase_deadline_unix_ms: self.phase_deadline_unix_ms,
            bucket,
            extra_words: self.extra_words,
        }
    }
}

struct BucketState {
    public: BucketPublic,
    unmasker: BucketUnmasker,
    /// Why the bucket was dropped.
    dropped: Option<String>,
    /// Who is expected in the current phase, and who has answered.
    expected: BTreeSet<NodeId>,
    answered: BTreeSet<NodeId>,
}

/// A bucket that produced no sum, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedBucket {
    /// Bucket id.
    pub bucket: u32,
    /// Its members.
    pub members: Vec<NodeId>,
    /// Why.
    pub reason: String,
}

/// Members that fell out of a live bucket during the protocol (no advert,
/// shares, masked input or unmask response before the phase deadline).
#[derive(Debug, Clone, PartialEq)]
pub struct Straggler {
    /// Node.
    pub node: NodeId,
    /// The phase it missed.
    pub phase: Phase,
}

/// One open secure round.
pub struct SecureRound {
    round: u64,
    view: SecureView,
    buckets: Vec<BucketState>,
    member_of: BTreeMap<NodeId, usize>,
    stragglers: Vec<Straggler>,
    bytes_received: u64,
}

fn violation(e: SecAggError) -> FedError {
    match e {
        SecAggError::State { .. } => FedError::Phase(e.to_string()),
        other => FedError::Invalid(other.to_string()),
    }
}

impl SecureRound {
    /// Assigns `participants` to buckets (seeded by the tenant, the round,
    /// the participant list and the base model's digest) and opens the
    /// advert phase. `dim` is the model's parameter count.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: &TenantId,
        round: u64,
        base_version: u64,
        model_digest: [u8; 32],
        participants: &BTreeSet<NodeId>,
        cfg: &SecureConfig,
        dim: usize,
        input_dim: usize,
        verifier: &CertVerifier,
        phase_deadline_unix_ms: i64,
    ) -> Result<Self, FedError> {
        let list: Vec<NodeId> = participants.iter().cloned().collect();
        let assignment = assign_buckets(&AssignmentInput {
            tenant,
            round,
            participants: &list,
            model_digest,
            bucket_size: cfg.bucket_size,
        })
        .map_err(|e| FedError::Phase(e.to_string()))?;
        let quant = cfg.quant().map_err(|e| FedError::Invalid(e.to_string()))?;
        let extra = fedmesh_proto::secure::extra_words(input_dim);
        let mut buckets = Vec::with_capacity(assignment.buckets.len());
        let mut member_of = BTreeMap::new();
        for b in &assignment.buckets {
            let params = BucketParams::new(
                tenant.clone(),
                round,
                base_version,
                b.id,
                b.members.clone(),
                None,
                dim,
                quant,
                cfg.noise_multiplier,
            )
            .and_then(|p| p.with_extra_words(extra))
            .map_err(|e| FedError::Invalid(e.to_string()))?;
            for m in &b.members {
                member_of.insert(m.clone(), buckets.len());
            }
            buckets.push(BucketState {
                public: BucketPublic {
                    id: b.id,
                    members: b.members.clone(),
                    threshold: params.threshold() as u32,
                    adverts: Arc::default(),
                    shares: Arc::default(),
                    request: Arc::default(),
                    dropped: false,
                },
                unmasker: BucketUnmasker::new(params, verifier.clone()),
                dropped: None,
                expected: b.members.iter().cloned().collect(),
                answered: BTreeSet::new(),
            });
        }
        let view = SecureView {
            bucket_size: cfg.bucket_size as u32,
            min_bucket_size: cfg.min_bucket() as u32,
            participants: list,
            clip_norm: cfg.clip_norm,
            quant_scale: cfg.quant_scale,
            noise_multiplier: cfg.noise_multiplier.unwrap_or(0.0),
            extra_words: extra as u32,
            phase: Phase::Advertise,
            phase_deadline_unix_ms,
            buckets: Vec::new(),
        };
        let mut r = Self {
            round,
            view,
            buckets,
            member_of,
            stragglers: Vec::new(),
            bytes_received: 0,
        };
        r.refresh_view();
        Ok(r)
    }

    fn refresh_view(&mut self) {
        self.view.buckets = self.buckets.iter().map(|b| b.public.clone()).collect();
    }

    /// The current public state.
    pub fn view(&self) -> Arc<SecureView> {
        Arc::new(self.view.clone())
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.view.phase
    }

    /// Number of buckets (live or dropped).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Bytes of accepted secure-aggregation messages.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Whether every expected member of every live bucket has answered the
    /// current phase.
    pub fn phase_complete(&self) -> bool {
        self.buckets
            .iter()
            .filter(|b| b.dropped.is_none())
            .all(|b| b.expected.is_subset(&b.answered))
    }

    /// Whether any bucket is still live.
    pub fn any_live(&self) -> bool {
        self.buckets.iter().any(|b| b.dropped.is_none())
    }

    /// Routes one node's message to its bucket. Refusals change nothing.
    pub fn accept(
        &mut self,
        node: &NodeId,
        req: &v1::SecAggRequest,
        now: OffsetDateTime,
        wire_bytes: u64,
    ) -> Result<v1::SecAggAck, FedError> {
        use v1::sec_agg_request::Message as M;
        let idx = *self
            .member_of
            .get(node)
            .ok_or_else(|| FedError::NotSelected {
                node: node.to_string(),
                round: self.round,
            })?;
        let phase = self.view.phase;
        let b = &mut self.buckets[idx];
        if req.bucket != b.public.id {
            return Err(FedError::Invalid(format!(
                "request names bucket {}, {node} is in bucket {}",
                req.bucket, b.public.id
            )));
        }
        if let Some(reason) = &b.dropped {
            return Err(FedError::Phase(format!(
                "bucket {} was dropped: {reason}",
                b.public.id
            )));
        }
        let want = match &req.message {
            Some(M::Advert(_)) => Phase::Advertise,
            Some(M::Shares(_)) => Phase::Share,
            Some(M::Masked(_)) => Phase::Mask,
            Some(M::UnmaskResponse(_)) => Phase::Unmask,
            None => return Err(FedError::Invalid("empty secure-aggregation request".into())),
        };
        if want != phase {
            return Err(FedError::Phase(format!(
                "round {} is in the {} phase, not {}",
                self.round,
                phase.name(),
                want.name()
            )));
        }
        if !b.expected.contains(node) {
            return Err(FedError::Phase(format!(
                "{node} dropped out of bucket {} before the {} phase",
                b.public.id,
                phase.name()
            )));
        }
        if b.answered.contains(node) {
            return Err(FedError::Duplicate {
                node: node.to_string(),
                round: self.round,
            });
        }
        let bound = |claimed: &NodeId| {
            if claimed == node {
                Ok(())
            } else {
                Err(FedError::Invalid(format!(
                    "message claims node {claimed}, the certificate names {node}"
                )))
            }
        };
        match &req.message {
            Some(M::Advert(bytes)) => {
                let advert = KeyAdvert::decode(bytes).map_err(violation)?;
                bound(&advert.node)?;
                b.unmasker.accept_advert(advert, now).map_err(violation)?;
            }
            Some(M::Shares(bundle)) => {
                let shares = bundle
                    .shares
                    .iter()
                    .map(|s| EncryptedShare::decode(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(violation)?;
                b.unmasker.accept_shares(node, shares).map_err(violation)?;
            }
            Some(M::Masked(bytes)) => {
                let input = MaskedInput::decode(bytes).map_err(violation)?;
                bound(&input.node)?;
                b.unmasker.accept_masked(input, now).map_err(violation)?;
            }
            Some(M::UnmaskResponse(bytes)) => {
                let resp = UnmaskResponse::decode(bytes).map_err(violation)?;
                bound(&resp.node)?;
                b.unmasker.accept_response(resp, now).map_err(violation)?;
            }
            None => {}
        }
        b.answered.insert(node.clone());
        self.bytes_received = self.bytes_received.saturating_add(wire_bytes);
        Ok(v1::SecAggAck {
            round: self.round,
            phase: phase.proto() as i32,
        })
    }

    fn drop_bucket(b: &mut BucketState, reason: String) {
        warn!(bucket = b.public.id, %reason, "secure bucket dropped");
        b.dropped = Some(reason);
        b.public.dropped = true;
    }

    /// Closes the current phase (members that did not answer are
    /// stragglers; a bucket below its threshold is dropped) and opens the
    /// next one with `next_deadline_unix_ms`. After the unmask phase use
    /// [`SecureRound::finish`] instead.
    pub fn advance(&mut self, next_deadline_unix_ms: i64) -> Result<(), FedError> {
        let phase = self.view.phase;
        let next = phase
            .next()
            .ok_or_else(|| FedError::Phase("the unmask phase is the last".into()))?;
        for b in self.buckets.iter_mut().filter(|b| b.dropped.is_none()) {
            for n in b.expected.difference(&b.answered) {
                self.stragglers.push(Straggler {
                    node: n.clone(),
                    phase,
                });
            }
            let result: Result<(), SecAggError> = match phase {
                Phase::Advertise => b.unmasker.close_adverts().map(|adverts| {
                    b.public.adverts = Arc::new(adverts.iter().map(|a| a.encode()).collect());
                }),
                Phase::Share => b.unmasker.close_shares().and_then(|()| {
                    let mut shares = BTreeMap::new();
                    for m in &b.answered {
                        let s = b.unmasker.shares_for(m)?;
                        shares.insert(m.clone(), s.iter().map(|x| x.encode()).collect());
                    }
                    b.public.shares = Arc::new(shares);
                    Ok(())
                }),
                Phase::Mask => b.unmasker.unmask_request().map(|req| {
                    b.public.request = Arc::new(req.encode());
                }),
                Phase::Unmask => Ok(()),
            };
            match result {
                Ok(()) => {
                    // Who is expected next: this phase's answerers (for the
                    // unmask phase, the request's survivors, who are exactly
                    // the nodes whose masked input arrived).
                    b.expected = std::mem::take(&mut b.answered);
                }
                Err(e) => Self::drop_bucket(b, e.to_string()),
            }
        }
        self.view.phase = next;
        self.view.phase_deadline_unix_ms = next_deadline_unix_ms;
        self.refresh_view();
        Ok(())
    }

    /// Ends the round: unmasks every live bucket (buckets in parallel; each
    /// is independent, and results keep the bucket order). Returns the
    /// bucket sums, the buckets that produced none, and every member that
    /// fell out.
    pub fn finish(mut self) -> (Vec<BucketSum>, Vec<DroppedBucket>, Vec<Straggler>) {
        let unmasking = self.view.phase == Phase::Unmask;
        let unmasked: Vec<Option<Result<BucketSum, SecAggError>>> = self
            .buckets
            .par_iter()
            .map(|b| (unmasking && b.dropped.is_none()).then(|| b.unmasker.finish()))
            .collect();
        let mut sums = Vec::new();
        let mut dropped = Vec::new();
        for (b, result) in self.buckets.iter_mut().zip(unmasked) {
            if b.dropped.is_none() {
                if let Some(result) = result {
                    for n in b.expected.difference(&b.answered) {
                        self.stragglers.push(Straggler {
                            node: n.clone(),
                            phase: Phase::Unmask,
                        });
                    }
                    match result {
                        Ok(s) => {
                            sums.push(s);
                            continue;
                        }
                        Err(e) => Self::drop_bucket(b, e.to_string()),
                    }
                } else {
                    Self::drop_bucket(
                        b,
                        format!("round ended in the {} phase", self.view.phase.name()),
                    );
                }
            }
            dropped.push(DroppedBucket {
                bucket: b.public.id,
                members: b.public.members.clone(),
                reason: b.dropped.clone().unwrap_or_default(),
            });
        }
        (sums, dropped, self.stragglers)
    }
}
