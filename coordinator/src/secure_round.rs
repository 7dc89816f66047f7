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
    MaskedInput, SecAggError, UnmaskResponse, assign_buckets, list_delta,
};
use fedmesh_crypto::{CertVerifier, NodeId, TenantId};
use fedmesh_proto::v1;
use rayon::prelude::*;
use time::OffsetDateTime;
use tracing::warn;

use crate::bounds::{InvalidReason, SecureViolation};
use crate::config::SecureConfig;
use crate::error::FedError;

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
    /// Index of every participant's bucket in `buckets` (shared with the
    /// round: built once when the buckets are drawn).
    member_of: Arc<BTreeMap<NodeId, usize>>,
    /// `participants` as the strings sent on the wire (built once).
    participant_names: Arc<Vec<String>>,
    /// The list as a change to the previous secure round's, for the nodes
    /// in `delta_to` (those whose advert that round accepted: they kept
    /// it); `None` when the change names more than half as many nodes as
    /// the list.
    delta: Option<Arc<v1::ParticipantsDelta>>,
    delta_to: Arc<BTreeSet<NodeId>>,
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
    /// How the committed list goes out in the advert phase: `"change"`
    /// when some participant gets it as a change to the last secure
    /// round's, else `"whole"` (the `list_sent` field of the round's log).
    pub fn list_sent(&self) -> &'static str {
        if self.delta.is_some() && self.participants.iter().any(|p| self.delta_to.contains(p)) {
            "change"
        } else {
            "whole"
        }
    }

    /// The public state of `node`'s bucket, if it is a participant: one
    /// look-up in the round's index, whatever the number of buckets.
    pub fn bucket_of(&self, node: &NodeId) -> Option<&BucketPublic> {
        self.member_of.get(node).and_then(|&i| self.buckets.get(i))
    }

    /// The round as `node` sees it: its own bucket and the shares
    /// addressed to it only. The committed participant list, which a node
    /// needs only to check its bucket before it advertises, goes out in
    /// the advert phase alone: a node that has not advertised by then is
    /// out of the round, so later events need not carry the list (this
    /// keeps each event's size and cost at its bucket's, not the fleet's).
    /// A node that received the previous secure round's list gets the
    /// change to it instead, when that is smaller: in a steady fleet a few
    /// names, not the n names that made the advert phase grow as n².
    pub fn for_node(&self, node: &NodeId) -> v1::SecureRound {
        let delta = match &self.delta {
            Some(d) if self.phase == Phase::Advertise && self.delta_to.contains(node) => {
                Some(d.as_ref().clone())
            }
            _ => None,
        };
        let bucket = self.bucket_of(node).map(|b| v1::BucketView {
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
            participants: if self.phase == Phase::Advertise && delta.is_none() {
                self.participant_names.as_ref().clone()
            } else {
                Vec::new()
            },
            participants_delta: delta,
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

/// A secure round's committed list and the nodes whose advert it
/// accepted (so they hold the list): what the next round's list is sent
/// as a change to.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRecord {
    /// The round.
    pub round: u64,
    /// Its committed participants, sorted.
    pub list: Arc<Vec<NodeId>>,
    /// Participants whose advert was accepted.
    pub received: Arc<BTreeSet<NodeId>>,
}

/// Largest stored [`ListRecord`] the coordinator writes or reads back, in
/// bytes (about 500,000 participants with the longest names).
pub const MAX_LIST_RECORD_BYTES: usize = 64 << 20;

/// Format version of [`ListRecord::to_bytes`].
const LIST_RECORD_VERSION: u32 = 1;

/// Why a stored [`ListRecord`] was not read back (the next secure round
/// then sends whole lists, as after a first start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListRecordError {
    /// Larger than [`MAX_LIST_RECORD_BYTES`].
    #[error("stored participant list of {0} bytes exceeds the {MAX_LIST_RECORD_BYTES}-byte bound")]
    TooLarge(usize),
    /// Not the JSON this module writes.
    #[error("stored participant list does not decode: {0}")]
    Decode(String),
    /// Could not be encoded.
    #[error("participant list does not encode: {0}")]
    Encode(String),
    /// Written by another format version.
    #[error("stored participant list has format version {0}, expected {LIST_RECORD_VERSION}")]
    Version(u32),
    /// A name that is not a valid node name.
    #[error("stored participant list names an invalid node {0:?}")]
    BadName(String),
    /// The list is not strictly ascending.
    #[error("stored participant list is not sorted without duplicates")]
    Unsorted,
    /// A node marked as holding the list that the list does not name.
    #[error("stored participant list marks {0:?} as holding it but does not name it")]
    NotListed(String),
}

/// [`ListRecord`] as stored: names as strings, `received` a subset of
/// `list`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredList {
    v: u32,
    round: u64,
    list: Vec<String>,
    received: Vec<String>,
}

impl ListRecord {
    /// The record as the coordinator stores it (JSON), so that a restarted
    /// coordinator still sends the next list as a change to this one.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ListRecordError> {
        let stored = StoredList {
            v: LIST_RECORD_VERSION,
            round: self.round,
            list: self.list.iter().map(|n| n.to_string()).collect(),
            received: self.received.iter().map(|n| n.to_string()).collect(),
        };
        let bytes =
            serde_json::to_vec(&stored).map_err(|e| ListRecordError::Encode(e.to_string()))?;
        if bytes.len() > MAX_LIST_RECORD_BYTES {
            return Err(ListRecordError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Reads back [`Self::to_bytes`], checking every name, the order and
    /// that `received` is part of the list. Bounded by
    /// [`MAX_LIST_RECORD_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ListRecordError> {
        if bytes.len() > MAX_LIST_RECORD_BYTES {
            return Err(ListRecordError::TooLarge(bytes.len()));
        }
        let stored: StoredList =
            serde_json::from_slice(bytes).map_err(|e| ListRecordError::Decode(e.to_string()))?;
        if stored.v != LIST_RECORD_VERSION {
            return Err(ListRecordError::Version(stored.v));
        }
        let name = |s: String| NodeId::try_from(s.clone()).map_err(|_| ListRecordError::BadName(s));
        let list = stored
            .list
            .into_iter()
            .map(name)
            .collect::<Result<Vec<NodeId>, _>>()?;
        if list.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ListRecordError::Unsorted);
        }
        let mut received = BTreeSet::new();
        for s in stored.received {
            let n = name(s)?;
            if list.binary_search(&n).is_err() {
                return Err(ListRecordError::NotListed(n.to_string()));
            }
            received.insert(n);
        }
        Ok(Self {
            round: stored.round,
            list: Arc::new(list),
            received: Arc::new(received),
        })
    }
}

/// One open secure round.
pub struct SecureRound {
    round: u64,
    /// Nodes whose advert was accepted.
    advertised: BTreeSet<NodeId>,
    view: SecureView,
    buckets: Vec<BucketState>,
    member_of: Arc<BTreeMap<NodeId, usize>>,
    /// Members of live buckets expected in the current phase that have
    /// not answered yet: the phase is complete at 0 (kept as messages
    /// arrive, so checking it does not walk the buckets).
    outstanding: usize,
    stragglers: Vec<Straggler>,
    violations: Vec<Violation>,
    bytes_received: u64,
}

/// An attributable protocol violation that took a member out of its
/// bucket's computation (the bucket went on without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The member at fault.
    pub node: NodeId,
    /// Its bucket.
    pub bucket: u32,
    /// What it did.
    pub kind: ViolationKind,
}

/// The kinds of [`Violation`] (a closed set, for audit reasons and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// A correctly signed advert with a small-order (non-contributory)
    /// X25519 key: refused, the member is a dropout of the advert phase.
    NonContributoryKey,
    /// A correctly signed unmask response whose shares disagree with the
    /// committed secrets of `owners` members (outvoted by the others).
    WrongUnmaskShares {
        /// Owners whose shares were wrong.
        owners: usize,
    },
}

impl ViolationKind {
    /// A short label from a closed set.
    pub fn label(self) -> &'static str {
        match self {
            ViolationKind::NonContributoryKey => "non_contributory_key",
            ViolationKind::WrongUnmaskShares { .. } => "wrong_unmask_shares",
        }
    }
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViolationKind::NonContributoryKey => {
                f.write_str("advertised a non-contributory (small-order) X25519 key")
            }
            ViolationKind::WrongUnmaskShares { owners } => write!(
                f,
                "signed unmask response with wrong shares of {owners} members' secrets"
            ),
        }
    }
}

/// Why a secure round may not commit although some buckets unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    /// Fewer unmasked buckets than `[tenants.secure] min_buckets`.
    #[error("{have} unmasked buckets, at least {need} required (min_buckets)")]
    Buckets {
        /// Buckets that unmasked.
        have: usize,
        /// The minimum.
        need: usize,
    },
    /// Fewer updates in the unmasked buckets than `min_members`.
    #[error("{have} updates in the unmasked buckets, at least {need} required (min_members)")]
    Members {
        /// Updates in the unmasked buckets.
        have: usize,
        /// The minimum.
        need: usize,
    },
}

impl Shortfall {
    /// A short label from a closed set.
    pub fn label(self) -> &'static str {
        match self {
            Shortfall::Buckets { .. } => "too_few_buckets",
            Shortfall::Members { .. } => "too_few_members",
        }
    }
}

/// Checks that enough buckets and members survived for a commit:
/// `min_buckets` and `min_members` of `cfg` (their defaults follow the
/// tenant's `quorum`).
pub fn check_survivors(
    sums: &[BucketSum],
    cfg: &SecureConfig,
    quorum: usize,
) -> Result<(), Shortfall> {
    let need = cfg.min_buckets_for(quorum);
    if sums.len() < need {
        return Err(Shortfall::Buckets {
            have: sums.len(),
            need,
        });
    }
    let have: usize = sums.iter().map(|s| s.member_count()).sum();
    let need = cfg.min_members_for(quorum);
    if have < need {
        return Err(Shortfall::Members { have, need });
    }
    Ok(())
}

/// What [`SecureRound::finish`] hands to the commit.
#[derive(Debug)]
pub struct Finished {
    /// Sums of the buckets that unmasked, in bucket order.
    pub sums: Vec<BucketSum>,
    /// Buckets that produced no sum.
    pub dropped: Vec<DroppedBucket>,
    /// Members that missed a phase.
    pub stragglers: Vec<Straggler>,
    /// Members taken out of (or outvoted in) their bucket for a protocol
    /// violation.
    pub violations: Vec<Violation>,
}

fn violation(e: SecAggError) -> FedError {
    match e {
        SecAggError::State { .. } => FedError::Phase(e.to_string()),
        other => FedError::Refused(InvalidReason::secure_message(&other)),
    }
}

impl SecureRound {
    /// Assigns `participants` to buckets (seeded by the tenant, the round,
    /// the participant list and the base model's digest) and opens the
    /// advert phase. `dim` is the model's parameter count; `base` the
    /// previous secure round's list, which the nodes that received it get
    /// this one's as a change to.
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
        base: Option<&ListRecord>,
    ) -> Result<Self, FedError> {
        let list: Vec<NodeId> = participants.iter().cloned().collect();
        let (delta, delta_to) = match base.map(|b| (b, list_delta(&b.list, &list))) {
            Some((b, Ok(d))) if d.len() < list.len() / 2 + 1 && !b.received.is_empty() => {
                let names = |v: &[NodeId]| v.iter().map(|n| n.to_string()).collect();
                let d = v1::ParticipantsDelta {
                    base_round: b.round,
                    base_digest: d.base_digest.to_vec(),
                    added: names(&d.added),
                    removed: names(&d.removed),
                };
                (Some(Arc::new(d)), b.received.clone())
            }
            _ => (None, Arc::default()),
        };
        let assignment = assign_buckets(&AssignmentInput {
            tenant,
            round,
            participants: &list,
            model_digest,
            bucket_size: cfg.bucket_size,
        })
        .map_err(|e| FedError::Phase(e.to_string()))?;
        let quant = cfg.quant().map_err(FedError::SecureSetup)?;
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
            .map_err(FedError::SecureSetup)?;
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
        let member_of = Arc::new(member_of);
        let view = SecureView {
            member_of: member_of.clone(),
            participant_names: Arc::new(list.iter().map(|p| p.to_string()).collect()),
            delta,
            delta_to,
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
            advertised: BTreeSet::new(),
            view,
            buckets,
            member_of,
            outstanding: 0,
            stragglers: Vec::new(),
            violations: Vec::new(),
            bytes_received: 0,
        };
        r.refresh_view();
        r.outstanding = r.count_outstanding();
        Ok(r)
    }

    fn refresh_view(&mut self) {
        self.view.buckets = self.buckets.iter().map(|b| b.public.clone()).collect();
    }

    /// This round's list and who received it (see [`ListRecord`]).
    pub fn list_record(&self) -> ListRecord {
        ListRecord {
            round: self.round,
            list: Arc::new(self.view.participants.clone()),
            received: Arc::new(self.advertised.clone()),
        }
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
    /// current phase. Constant time: the shell asks after every message.
    pub fn phase_complete(&self) -> bool {
        self.outstanding == 0
    }

    /// Members of live buckets expected in the current phase that have not
    /// answered, counted by walking the buckets (once per phase).
    fn count_outstanding(&self) -> usize {
        self.buckets
            .iter()
            .filter(|b| b.dropped.is_none())
            .map(|b| b.expected.difference(&b.answered).count())
            .sum()
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
            return Err(FedError::Refused(InvalidReason::secure_protocol(
                SecureViolation::WrongBucket,
                &format!(
                    "request names bucket {}, {node} is in bucket {}",
                    req.bucket, b.public.id
                ),
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
            None => {
                return Err(FedError::Refused(InvalidReason::secure_protocol(
                    SecureViolation::EmptyRequest,
                    "empty secure-aggregation request",
                )));
            }
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
                Err(FedError::Refused(InvalidReason::secure_protocol(
                    SecureViolation::ClaimsOtherNode,
                    &format!("message claims node {claimed}, the certificate names {node}"),
                )))
            }
        };
        match &req.message {
            Some(M::Advert(bytes)) => {
                let advert = KeyAdvert::decode(bytes).map_err(violation)?;
                bound(&advert.node)?;
                if let Err(e) = b.unmasker.accept_advert(advert, now) {
                    if matches!(e, SecAggError::WeakKey(_)) {
                        // A dropout from now on: the phase does not wait
                        // for it and it cannot try again this round.
                        if b.expected.remove(node) {
                            self.outstanding = self.outstanding.saturating_sub(1);
                        }
                        let bucket = b.public.id;
                        self.violations.push(Violation {
                            node: node.clone(),
                            bucket,
                            kind: ViolationKind::NonContributoryKey,
                        });
                    }
                    return Err(violation(e));
                }
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
        // `node` is expected and had not answered (checked above).
        if b.answered.insert(node.clone()) {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        if phase == Phase::Advertise {
            self.advertised.insert(node.clone());
        }
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
        self.outstanding = self.count_outstanding();
        Ok(())
    }

    /// Ends the round: unmasks every live bucket (buckets in parallel; each
    /// is independent, and results keep the bucket order). Returns the
    /// bucket sums, the buckets that produced none, every member that fell
    /// out and every attributable violation (wrong unmask shares among
    /// them: outvoted when the honest responses determine the secrets).
    pub fn finish(mut self) -> Finished {
        let unmasking = self.view.phase == Phase::Unmask;
        let unmasked: Vec<Option<Result<_, SecAggError>>> = self
            .buckets
            .par_iter()
            .map(|b| (unmasking && b.dropped.is_none()).then(|| b.unmasker.finish_attributed()))
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
                        Ok((s, faults)) => {
                            for f in faults {
                                self.violations.push(Violation {
                                    node: f.responder,
                                    bucket: b.public.id,
                                    kind: ViolationKind::WrongUnmaskShares {
                                        owners: f.owners.len(),
                                    },
                                });
                            }
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
        Finished {
            sums,
            dropped,
            stragglers: self.stragglers,
            violations: self.violations,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use fedmesh_crypto::secagg::ClientRound;
    use fedmesh_crypto::{CertSigner, MeshCa};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    const DIM: usize = 6;
    const INPUT_DIM: usize = 2;

    struct Node {
        id: NodeId,
        signer: CertSigner,
        client: Option<ClientRound>,
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
    }

    fn setup(n: usize, cfg: &SecureConfig) -> (SecureRound, Vec<Node>, CertVerifier) {
        let ca = MeshCa::generate("secure round CA", now(), 30).unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let id: NodeId = format!("n{i:02}").parse().unwrap();
                let c = ca.issue_node(&tenant, &id, now(), 30).unwrap();
                Node {
                    signer: CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap(),
                    id,
                    client: None,
                }
            })
            .collect();
        let participants: BTreeSet<NodeId> = nodes.iter().map(|n| n.id.clone()).collect();
        let round = SecureRound::new(
            &tenant,
            7,
            6,
            [3; 32],
            &participants,
            cfg,
            DIM,
            INPUT_DIM,
            &verifier,
            0,
            None,
        )
        .unwrap();
        (round, nodes, verifier)
    }

    fn request(node: &NodeId, bucket: u32, m: v1::sec_agg_request::Message) -> v1::SecAggRequest {
        v1::SecAggRequest {
            tenant: "acme".into(),
            node: node.to_string(),
            round: 7,
            bucket,
            message: Some(m),
        }
    }

    fn bucket_of(r: &SecureRound, node: &NodeId) -> usize {
        r.member_of[node]
    }

    /// Drives a whole round: `weak` advertises a small-order key, `liar`
    /// answers the unmask request with garbage shares (both correctly
    /// signed). Returns what finish gives and each bucket's honest sum.
    fn run(
        cfg: &SecureConfig,
        n: usize,
        weak: Option<usize>,
        liar: Option<usize>,
    ) -> (Finished, Vec<NodeId>) {
        use v1::sec_agg_request::Message as M;
        let (mut r, mut nodes, verifier) = setup(n, cfg);
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for (i, node) in nodes.iter_mut().enumerate() {
            let b = bucket_of(&r, &node.id);
            let params = r.buckets[b].unmasker.params().clone();
            let client = ClientRound::new(params, node.id.clone(), &mut rng).unwrap();
            let mut advert = client.advertise(&node.signer).unwrap();
            if weak == Some(i) {
                // Re-signed with the node's own key: a correct signature.
                advert.enc_public = [0; 32];
                advert.signature = node
                    .signer
                    .sign(&advert.signing_bytes())
                    .try_into()
                    .unwrap();
                let e = r
                    .accept(
                        &node.id,
                        &request(&node.id, b as u32, M::Advert(advert.encode())),
                        now(),
                        1,
                    )
                    .unwrap_err();
                assert!(
                    matches!(
                        e,
                        FedError::Refused(InvalidReason::SecureProtocol {
                            kind: SecureViolation::WeakKey,
                            ..
                        })
                    ),
                    "{e}"
                );
                continue;
            }
            r.accept(
                &node.id,
                &request(&node.id, b as u32, M::Advert(advert.encode())),
                now(),
                1,
            )
            .unwrap();
            node.client = Some(client);
        }
        // The refused member does not hold the phase open.
        assert!(r.phase_complete());
        r.advance(0).unwrap();
        for node in nodes.iter_mut() {
            let Some(client) = node.client.as_mut() else {
                continue;
            };
            let view = r.view().for_node(&node.id);
            let bv = view.bucket.unwrap();
            let adverts: Vec<KeyAdvert> = bv
                .adverts
                .iter()
                .map(|a| KeyAdvert::decode(a).unwrap())
                .collect();
            client.receive_adverts(&adverts, &verifier, now()).unwrap();
            let shares = client.share_keys(&mut rng).unwrap();
            let bundle = v1::ShareBundle {
                shares: shares.iter().map(|s| s.encode()).collect(),
            };
            r.accept(
                &node.id,
                &request(&node.id, bv.id, M::Shares(bundle)),
                now(),
                1,
            )
            .unwrap();
        }
        assert!(r.phase_complete());
        r.advance(0).unwrap();
        for node in nodes.iter_mut() {
            let Some(client) = node.client.as_mut() else {
                continue;
            };
            let bv = r.view().for_node(&node.id).bucket.unwrap();
            let shares: Vec<EncryptedShare> = bv
                .shares
                .iter()
                .map(|s| EncryptedShare::decode(s).unwrap())
                .collect();
            client.receive_shares(&shares).unwrap();
            let update = vec![0.01f32; DIM];
            let extra = vec![1u32; fedmesh_proto::secure::extra_words(INPUT_DIM)];
            let masked = client
                .mask_update_with_extra(&update, &extra, &node.signer, &mut rng)
                .unwrap();
            r.accept(
                &node.id,
                &request(&node.id, bv.id, M::Masked(masked.encode())),
                now(),
                1,
            )
            .unwrap();
        }
        r.advance(0).unwrap();
        for (i, node) in nodes.iter_mut().enumerate() {
            let Some(client) = node.client.as_mut() else {
                continue;
            };
            let bv = r.view().for_node(&node.id).bucket.unwrap();
            let req = fedmesh_crypto::secagg::UnmaskRequest::decode(&bv.unmask_request).unwrap();
            let mut resp = client.unmask(&req, &node.signer).unwrap();
            if liar == Some(i) {
                for (_, y) in resp.seed_shares.iter_mut() {
                    for v in y.iter_mut() {
                        *v ^= 0xa5;
                    }
                }
                resp.signature = node.signer.sign(&resp.signing_bytes()).try_into().unwrap();
            }
            r.accept(
                &node.id,
                &request(&node.id, bv.id, M::UnmaskResponse(resp.encode())),
                now(),
                1,
            )
            .unwrap();
        }
        let ids = nodes.iter().map(|n| n.id.clone()).collect();
        (r.finish(), ids)
    }

    fn cfg(k: usize) -> SecureConfig {
        SecureConfig {
            bucket_size: k,
            ..SecureConfig::default()
        }
    }

    #[test]
    fn the_next_list_goes_as_a_change_to_those_who_hold_the_last() {
        use v1::sec_agg_request::Message as M;
        let (mut r, nodes, verifier) = setup(12, &cfg(3));
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // Nodes 0..8 advertise in round 7; 8..12 do not.
        for n in &nodes[..8] {
            let b = bucket_of(&r, &n.id);
            let params = r.buckets[b].unmasker.params().clone();
            let c = ClientRound::new(params, n.id.clone(), &mut rng).unwrap();
            let advert = M::Advert(c.advertise(&n.signer).unwrap().encode());
            r.accept(&n.id, &request(&n.id, b as u32, advert), now(), 1)
                .unwrap();
        }
        let record = r.list_record();
        assert_eq!(record.received.len(), 8);
        let old: Vec<NodeId> = record.list.as_ref().clone();
        // Round 8: node 0 leaves, a newcomer joins.
        let mut next: BTreeSet<NodeId> = old[1..].iter().cloned().collect();
        let newcomer: NodeId = "n99".parse().unwrap();
        next.insert(newcomer.clone());
        let tenant: TenantId = "acme".parse().unwrap();
        let open = |list: &BTreeSet<NodeId>, base: Option<&ListRecord>| {
            SecureRound::new(
                &tenant,
                8,
                7,
                [4; 32],
                list,
                &cfg(3),
                DIM,
                INPUT_DIM,
                &verifier,
                0,
                base,
            )
            .unwrap()
            .view()
        };
        // What a restarted coordinator reads back is the same base.
        let restored = ListRecord::from_bytes(&record.to_bytes().unwrap()).unwrap();
        assert_eq!(restored, record);
        let view = open(&next, Some(&restored));
        let want: Vec<NodeId> = next.iter().cloned().collect();
        // An advertiser of round 7 gets two names and rebuilds the list.
        let ev = view.for_node(&nodes[1].id);
        assert!(ev.participants.is_empty());
        let d = ev.participants_delta.clone().expect("a change");
        assert_eq!((d.base_round, d.added.len(), d.removed.len()), (7, 1, 1));
        let rebuilt = fedmesh_crypto::secagg::apply_list_delta(
            &old,
            &fedmesh_crypto::secagg::ListDelta {
                base_digest: d.base_digest.as_slice().try_into().unwrap(),
                added: d.added.iter().map(|a| a.parse().unwrap()).collect(),
                removed: d.removed.iter().map(|a| a.parse().unwrap()).collect(),
            },
        )
        .unwrap();
        assert_eq!(rebuilt, want);
        // A node that did not advertise, and the newcomer, get it whole.
        for n in [&nodes[9].id, &newcomer] {
            let ev = view.for_node(n);
            assert!(ev.participants_delta.is_none());
            assert_eq!(ev.participants.len(), 12);
        }
        // Without a base, or when the change is not smaller, whole lists.
        assert!(
            open(&next, None)
                .for_node(&nodes[1].id)
                .participants_delta
                .is_none()
        );
        let other: BTreeSet<NodeId> = (0..12)
            .map(|i| format!("m{i:02}").parse().unwrap())
            .collect();
        let ev = open(&other, Some(&record)).for_node(&nodes[1].id);
        assert!(ev.participants_delta.is_none());
        assert_eq!(ev.participants.len(), 12);
    }

    #[test]
    fn a_message_touches_only_its_bucket_and_the_phase_count_follows_the_messages() {
        use v1::sec_agg_request::Message as M;
        // 12 nodes in buckets of 3: 4 buckets.
        let (mut r, nodes, _) = setup(12, &cfg(3));
        assert_eq!(r.bucket_count(), 4);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        // The index finds the bucket a walk over every bucket finds; the
        // advert phase's event carries the participant list.
        let view = r.view();
        for n in &nodes {
            let walked = view
                .buckets
                .iter()
                .find(|b| b.members.binary_search(&n.id).is_ok());
            assert!(walked.is_some());
            assert_eq!(view.bucket_of(&n.id), walked);
            let ev = view.for_node(&n.id);
            assert_eq!(ev.participants.len(), 12);
            assert_eq!(ev.bucket.map(|b| b.id), walked.map(|b| b.id));
        }
        let stranger: NodeId = "zz".parse().unwrap();
        assert!(view.bucket_of(&stranger).is_none());
        assert!(view.for_node(&stranger).bucket.is_none());
        // Each advert changes its own bucket's state and no other's; the
        // outstanding count is the walk's count after every message.
        let answered = |r: &SecureRound| -> Vec<usize> {
            r.buckets.iter().map(|b| b.answered.len()).collect()
        };
        for (i, n) in nodes.iter().enumerate() {
            assert!(!r.phase_complete());
            let b = bucket_of(&r, &n.id);
            let before = answered(&r);
            let params = r.buckets[b].unmasker.params().clone();
            let c = ClientRound::new(params, n.id.clone(), &mut rng).unwrap();
            let advert = M::Advert(c.advertise(&n.signer).unwrap().encode());
            let req = request(&n.id, b as u32, advert);
            r.accept(&n.id, &req, now(), 1).unwrap();
            let after = answered(&r);
            for (j, (x, y)) in before.iter().zip(&after).enumerate() {
                assert_eq!(*y, x + usize::from(j == b), "bucket {j} after {}", n.id);
            }
            assert_eq!(r.outstanding, r.count_outstanding());
            assert_eq!(r.outstanding, 11 - i);
            // A second advert is refused and changes nothing.
            let e = r.accept(&n.id, &req, now(), 1).unwrap_err();
            assert!(matches!(e, FedError::Duplicate { .. }), "{e}");
            assert_eq!(answered(&r), after);
        }
        assert!(r.phase_complete());
        r.advance(0).unwrap();
        // Every advertiser is expected in the share phase, whose events
        // no longer carry the participant list (only the bucket).
        assert_eq!((r.outstanding, r.count_outstanding()), (12, 12));
        assert!(!r.phase_complete());
        let ev = r.view().for_node(&nodes[0].id);
        assert!(ev.participants.is_empty());
        assert_eq!(ev.bucket.map(|b| b.adverts.len()), Some(3));
        // Nobody shares: every bucket is dropped at the deadline and the
        // next phase waits for no one.
        r.advance(0).unwrap();
        assert_eq!((r.outstanding, r.count_outstanding()), (0, 0));
        assert!(r.phase_complete() && !r.any_live());
    }

    #[test]
    fn a_low_order_key_and_a_lying_responder_do_not_sink_their_buckets() {
        // 10 nodes in buckets of 5 (t = 4): a member of one bucket
        // advertises a zero key, a member of the other (not its first)
        // lies in its unmask response.
        let (probe, nodes, _) = setup(10, &cfg(5));
        let index = |b: usize, pos: usize| {
            let id = &probe.buckets[b].public.members[pos];
            nodes.iter().position(|n| &n.id == id).unwrap()
        };
        let (weak, liar) = (index(0, 1), index(1, 2));
        let (done, ids) = run(&cfg(5), 10, Some(weak), Some(liar));
        assert!(done.dropped.is_empty(), "{:?}", done.dropped);
        assert_eq!(done.sums.len(), 2);
        let members: usize = done.sums.iter().map(|s| s.member_count()).sum();
        assert_eq!(members, 9);
        for s in &done.sums {
            // Every contributor sent 0.01 per coordinate and 1 per extra word.
            let mean = s.mean();
            assert!(mean.iter().all(|v| (v - 0.01).abs() < 1e-3), "{mean:?}");
            assert!(s.extra().iter().all(|w| *w as usize == s.member_count()));
            assert!(!s.contributors().contains(&ids[weak]));
        }
        let got: Vec<(NodeId, &'static str)> = done
            .violations
            .iter()
            .map(|v| (v.node.clone(), v.kind.label()))
            .collect();
        assert_eq!(
            got,
            vec![
                (ids[weak].clone(), "non_contributory_key"),
                (ids[liar].clone(), "wrong_unmask_shares")
            ]
        );
        assert!(check_survivors(&done.sums, &cfg(5), 5).is_ok());
    }

    #[test]
    fn too_few_surviving_buckets_or_members_is_a_typed_shortfall() {
        let (done, _) = run(&cfg(3), 6, None, None);
        assert_eq!(done.sums.len(), 2);
        assert!(check_survivors(&done.sums, &cfg(3), 6).is_ok());
        let strict = SecureConfig {
            min_buckets: Some(3),
            ..cfg(3)
        };
        assert_eq!(
            check_survivors(&done.sums, &strict, 3),
            Err(Shortfall::Buckets { have: 2, need: 3 })
        );
        let strict = SecureConfig {
            min_members: Some(7),
            ..cfg(3)
        };
        let e = check_survivors(&done.sums, &strict, 3).unwrap_err();
        assert_eq!(e, Shortfall::Members { have: 6, need: 7 });
        assert_eq!(e.label(), "too_few_members");
        // Defaults follow the quorum: 6 nodes' quorum in buckets of 3 needs both.
        assert_eq!(cfg(3).min_buckets_for(6), 2);
        assert_eq!(cfg(3).min_members_for(6), 6);
        assert_eq!(
            check_survivors(&done.sums[..1], &cfg(3), 6),
            Err(Shortfall::Buckets { have: 1, need: 2 })
        );
    }

    #[test]
    fn a_stored_list_record_reads_back_only_when_well_formed() {
        let ids = |v: &[&str]| -> Vec<NodeId> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let record = ListRecord {
            round: 9,
            list: Arc::new(ids(&["a", "b", "c"])),
            received: Arc::new(ids(&["a", "c"]).into_iter().collect()),
        };
        let bytes = record.to_bytes().unwrap();
        assert_eq!(ListRecord::from_bytes(&bytes).unwrap(), record);
        let bad = |json: &str| ListRecord::from_bytes(json.as_bytes()).unwrap_err();
        assert!(matches!(bad("{"), ListRecordError::Decode(_)));
        assert_eq!(
            bad(r#"{"v":2,"round":1,"list":[],"received":[]}"#),
            ListRecordError::Version(2)
        );
        assert_eq!(
            bad(r#"{"v":1,"round":1,"list":["b","a"],"received":[]}"#),
            ListRecordError::Unsorted
        );
        assert_eq!(
            bad(r#"{"v":1,"round":1,"list":["a","a"],"received":[]}"#),
            ListRecordError::Unsorted
        );
        assert_eq!(
            bad(r#"{"v":1,"round":1,"list":["a"],"received":["z"]}"#),
            ListRecordError::NotListed("z".into())
        );
        assert!(matches!(
            bad(r#"{"v":1,"round":1,"list":["no/slash"],"received":[]}"#),
            ListRecordError::BadName(_)
        ));
        let huge = vec![b' '; MAX_LIST_RECORD_BYTES + 1];
        assert_eq!(
            ListRecord::from_bytes(&huge).unwrap_err(),
            ListRecordError::TooLarge(MAX_LIST_RECORD_BYTES + 1)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn list_records_round_trip_and_arbitrary_bytes_never_panic(
            names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,10}", 0..20),
            pick in proptest::collection::vec(proptest::bool::ANY, 20),
            round in proptest::num::u64::ANY,
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let list: Vec<NodeId> = names.iter().map(|s| s.parse().unwrap()).collect();
            let received = list.iter().zip(&pick).filter(|(_, p)| **p).map(|(n, _)| n.clone()).collect();
            let record = ListRecord { round, list: Arc::new(list), received: Arc::new(received) };
            let back = ListRecord::from_bytes(&record.to_bytes().unwrap()).unwrap();
            proptest::prop_assert_eq!(back, record);
            let _ = ListRecord::from_bytes(&junk);
        }
    }
}
