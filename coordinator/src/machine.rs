//! The round core of one tenant: a synchronous, deterministic state machine
//! in the spirit of `crypto::secagg`'s server. It owns the committed state
//! (version, parameters, scaler, server momentum, the centre for centered
//! clipping, reputation) and the open round; its methods take the time and
//! the inputs and return decisions: who is sampled into a round, whether an
//! update is accepted (or the typed reason it is refused), whether a closed
//! round aborts or what its commit is, and the next version's parameters.
//!
//! No tokio, no store, no signer, no metrics, no clock inside: the async
//! shell [`crate::federation::Federation`] holds the machine under its lock,
//! persists and signs what the machine decides, publishes the round status
//! and counts metrics. The costly steps (aggregation, the server step) are
//! free functions over a [`Base`] snapshot so the shell runs them outside
//! its lock, as it always did.
//!
//! Round semantics pinned by the tests below:
//! - sampling: quarantined connected nodes are *shadow* participants; the
//!   others are eligible, all selected when `max_participants` is 0 or not
//!   exceeded, otherwise `choose_multiple` over the eligible set with
//!   `ChaCha8Rng::seed_from_u64(seed ^ round · 0x9E3779B97F4A7C15)`;
//! - a plaintext round closes when every *selected* node has an update;
//!   shadow updates never close a round and never count toward the quorum;
//! - shadow updates are scored as reputation evidence, never aggregated;
//! - commit order: aggregate (centre = the last committed delta), server
//!   step (momentum), commit guard, then reputation (violations since the
//!   last commit first, then the round's evidence), then the new state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fedmesh_crypto::secagg::BucketSum;
use fedmesh_crypto::{CertVerifier, NodeId, TenantId};
use fedmesh_proto::v1;
use rand::SeedableRng;
use rand::seq::IteratorRandom;
use rand_chacha::ChaCha8Rng;

use crate::bounds::{
    CommitRefusal, InvalidReason, MAX_REFUSAL_TEXT, RefusedCommit, SecureViolation, check_model,
    truncate_text,
};
use crate::config::TenantConfig;
use crate::error::FedError;
use crate::reputation::{Action, Decision, Evidence, Reputation, plaintext_evidence};
use crate::round::{OpenInfo, SecureSummary, ValidUpdate};
use crate::secure_round::{
    DroppedBucket, Finished, ListRecord, SecureRound, Straggler, Violation, ViolationKind,
    check_survivors,
};
use crate::server_step::{ServerStep, merged_scaler, server_step};
use crate::validate::{self, Limits, RoundFacts};

/// Most refused commits kept for the next audit entry; later ones are only
/// logged and counted (a tenant refusing this many rounds in a row is
/// misconfigured, and the metric says so).
pub const MAX_PENDING_REFUSALS: usize = 64;

/// The multiplier of the round number in the sampling seed.
const ROUND_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Who takes part in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Sampled participants: their updates are aggregated and the round
    /// waits for them.
    pub selected: BTreeSet<NodeId>,
    /// Quarantined connected nodes, asked to train anyway: scored, never
    /// aggregated, never waited for.
    pub shadow: BTreeSet<NodeId>,
}

/// Samples round `round`'s participants among `connected`: quarantined
/// nodes become shadow participants; of the others, all are selected when
/// `max_participants` is 0 or not exceeded, otherwise `max_participants`
/// drawn with `ChaCha8Rng::seed_from_u64(seed ^ round · 0x9E3779B97F4A7C15)`.
pub fn sample(
    seed: u64,
    round: u64,
    connected: BTreeSet<NodeId>,
    quarantined: &BTreeSet<String>,
    max_participants: usize,
) -> Selection {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ round.wrapping_mul(ROUND_SEED_MIX));
    let (shadow, eligible): (BTreeSet<NodeId>, BTreeSet<NodeId>) = connected
        .into_iter()
        .partition(|n| quarantined.contains(n.as_str()));
    let selected = if max_participants == 0 || eligible.len() <= max_participants {
        eligible
    } else {
        eligible
            .into_iter()
            .choose_multiple(&mut rng, max_participants)
            .into_iter()
            .collect()
    };
    Selection { selected, shadow }
}

/// An open round: its public facts, the updates recorded so far (selected
/// and shadow), and the secure-aggregation state when it is masked.
pub struct OpenRound {
    /// Public facts (what nodes see).
    pub info: Arc<OpenInfo>,
    /// Validated plaintext updates by node (recorded through
    /// [`RoundMachine::submit`] only, which keeps `selected_received`).
    updates: BTreeMap<NodeId, ValidUpdate>,
    /// How many of `updates` come from selected nodes.
    selected_received: usize,
    /// Buckets and unmaskers of a secure round.
    pub secure: Option<SecureRound>,
}

impl OpenRound {
    fn new(info: Arc<OpenInfo>, secure: Option<SecureRound>) -> Self {
        Self {
            info,
            updates: BTreeMap::new(),
            selected_received: 0,
            secure,
        }
    }

    /// Validated plaintext updates by node (selected and shadow).
    pub fn updates(&self) -> &BTreeMap<NodeId, ValidUpdate> {
        &self.updates
    }

    /// Updates recorded from selected nodes (shadow updates do not count).
    /// Constant time: the shell asks after every accepted update.
    pub fn selected_updates(&self) -> usize {
        self.selected_received
    }

    /// Records `update` from `node` (replacing none: the machine refuses
    /// duplicates before).
    fn record(&mut self, node: &NodeId, update: ValidUpdate) {
        if self.updates.insert(node.clone(), update).is_none() && self.info.selected.contains(node)
        {
            self.selected_received += 1;
        }
    }

    /// Drops `node`'s update; returns whether there was one.
    fn remove(&mut self, node: &NodeId) -> bool {
        let had = self.updates.remove(node).is_some();
        if had && self.info.selected.contains(node) {
            self.selected_received = self.selected_received.saturating_sub(1);
        }
        had
    }

    /// Mutable access to the recorded updates, for tests that tamper
    /// with one after validation (the count of selected updates is kept
    /// only by `submit`, so tests must not add or remove entries here).
    #[cfg(test)]
    pub(crate) fn updates_mut(&mut self) -> &mut BTreeMap<NodeId, ValidUpdate> {
        &mut self.updates
    }
}

/// The committed state a federation starts from (genesis or the store).
#[derive(Debug, Clone)]
pub struct Restored {
    /// Latest committed version.
    pub version: u64,
    /// Its parameters.
    pub params: Vec<f32>,
    /// Its scaler.
    pub scaler: Option<v1::Scaler>,
    /// Server momentum buffer.
    pub momentum: Option<Vec<f32>>,
    /// Reputation of every node seen.
    pub reputation: Reputation,
    /// The last secure round's list, so the next one goes out as a change
    /// to it after a restart too.
    pub last_list: Option<ListRecord>,
}

/// What a commit starts from: a snapshot of the committed state (cheap
/// clones), so aggregation and the server step can run outside any lock.
#[derive(Debug, Clone)]
pub struct Base {
    /// Latest committed version.
    pub version: u64,
    /// Its parameters.
    pub params: Arc<Vec<f32>>,
    /// Its scaler (carried over when a round brings no moments).
    pub scaler: Option<v1::Scaler>,
    /// Server momentum buffer.
    pub momentum: Option<Arc<Vec<f32>>>,
    /// The last aggregated delta: the centre for centered clipping.
    pub centre: Option<Arc<Vec<f32>>>,
}

/// How a closed round ends.
#[derive(Debug)]
pub enum Close {
    /// Not enough updates: nothing is committed; the reason is published.
    Abort(String),
    /// Enough updates: what to commit.
    Commit(Box<CommitPlan>),
}

/// Everything a commit needs besides the committed state.
#[derive(Debug, Clone)]
pub struct CommitPlan {
    /// Round.
    pub round: u64,
    /// The aggregated delta.
    pub delta: Vec<f32>,
    /// The next version's scaler.
    pub scaler: Option<v1::Scaler>,
    /// Nodes whose updates were aggregated, sorted.
    pub participants: Vec<String>,
    /// Nodes left out, with the reason.
    pub excluded: Vec<(String, String)>,
    /// Updates left out by the aggregation rule.
    pub excluded_count: usize,
    /// Nodes whose update passed every check but the aggregation rule did
    /// not select it (k > 1: the members of the bucket means it did not
    /// select), sorted.
    pub rule_excluded: Vec<String>,
    /// Buckets whose mean the norm gate refused (k > 1), in bucket order.
    pub rejected_buckets: Vec<u32>,
    /// Reputation evidence of the round.
    pub evidence: Vec<(String, Evidence)>,
    /// Shadow (quarantined) participants.
    pub quarantined: Vec<String>,
    /// Nodes selected.
    pub selected: usize,
    /// Mean reported training loss of the participants.
    pub mean_train_loss: f32,
    /// Bytes of accepted update messages.
    pub bytes_received: u64,
    /// Secure aggregation facts, when the round was masked.
    pub secure: Option<SecureSummary>,
}

/// The next version, computed from a [`Base`] and a [`CommitPlan`] and
/// passed by the commit guard.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The next version number.
    pub version: u64,
    /// Its parameters.
    pub params: Vec<f32>,
    /// The new momentum buffer.
    pub momentum: Option<Vec<f32>>,
}

/// What reputation decided at a commit, for the audit entry and the store.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Decisions since the last commit (violations, revocations) and of
    /// this round's evidence, in that order.
    pub decisions: Vec<Decision>,
    /// The reputation state to persist with the version.
    pub reputation: Vec<u8>,
    /// Rounds refused by the commit guard since the last commit.
    pub refused_commits: Vec<RefusedCommit>,
}

/// One tenant's round core.
pub struct RoundMachine {
    tenant: TenantId,
    cfg: TenantConfig,
    limits: Limits,
    version: u64,
    params: Arc<Vec<f32>>,
    scaler: Option<v1::Scaler>,
    momentum: Option<Arc<Vec<f32>>>,
    centre: Option<Arc<Vec<f32>>>,
    reputation: Reputation,
    round: Option<OpenRound>,
    /// The last secure round's list (see [`ListRecord`]).
    last_list: Option<ListRecord>,
    committed_this_run: u64,
    pending_decisions: Vec<Decision>,
    refused_commits: Vec<RefusedCommit>,
}

impl RoundMachine {
    /// A machine for `tenant` over a model of `param_count` parameters with
    /// schema hash `schema_hash`, from a committed state.
    pub fn new(
        tenant: TenantId,
        cfg: TenantConfig,
        schema_hash: [u8; 32],
        param_count: usize,
        state: Restored,
    ) -> Self {
        let limits = Limits::of(&cfg, schema_hash, param_count);
        Self {
            tenant,
            cfg,
            limits,
            version: state.version,
            params: Arc::new(state.params),
            scaler: state.scaler,
            momentum: state.momentum.map(Arc::new),
            centre: None,
            reputation: state.reputation,
            round: None,
            last_list: state.last_list,
            committed_this_run: 0,
            pending_decisions: Vec::new(),
            refused_commits: Vec::new(),
        }
    }

    /// The tenant's configuration.
    pub fn config(&self) -> &TenantConfig {
        &self.cfg
    }

    /// What updates are validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Latest committed version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Its parameters.
    pub fn params(&self) -> &Arc<Vec<f32>> {
        &self.params
    }

    /// The last aggregated delta (the centre for centered clipping).
    pub fn centre(&self) -> Option<&Arc<Vec<f32>>> {
        self.centre.as_ref()
    }

    /// Per-node reputation.
    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// Versions committed since the machine was created.
    pub fn committed_this_run(&self) -> u64 {
        self.committed_this_run
    }

    /// Rounds refused by the commit guard since the last commit.
    pub fn refused_commits(&self) -> &[RefusedCommit] {
        &self.refused_commits
    }

    /// The open round, if any.
    pub fn open_round(&self) -> Option<&OpenRound> {
        self.round.as_ref()
    }

    /// A snapshot of the committed state for a commit.
    pub fn base(&self) -> Base {
        Base {
            version: self.version,
            params: self.params.clone(),
            scaler: self.scaler.clone(),
            momentum: self.momentum.clone(),
            centre: self.centre.clone(),
        }
    }

    /// Round `round`'s participants among `connected` (see [`sample`]).
    pub fn select(&self, round: u64, connected: BTreeSet<NodeId>) -> Selection {
        sample(
            self.cfg.seed,
            round,
            connected,
            &self.reputation.quarantined(),
            self.cfg.max_participants,
        )
    }

    /// Opens plaintext round `round` at `now_unix_ms` (deadline
    /// `round_timeout_ms` later), replacing any open round.
    pub fn open(&mut self, round: u64, selection: Selection, now_unix_ms: i64) -> Arc<OpenInfo> {
        let info = Arc::new(OpenInfo {
            round,
            base_version: self.version,
            selected: selection.selected,
            shadow: selection.shadow,
            deadline_unix_ms: after(now_unix_ms, self.cfg.round_timeout_ms),
            training: training_of(&self.cfg),
            secure: None,
        });
        self.retire_round();
        self.round = Some(OpenRound::new(info.clone(), None));
        info
    }

    /// Opens secure round `round` over `selected` at `now_unix_ms`: buckets
    /// from the committed participant list and the base model's digest,
    /// the advert phase ending `phase_timeout_ms` later. A configuration
    /// that cannot form buckets is an error and opens nothing.
    pub fn open_secure(
        &mut self,
        round: u64,
        selected: BTreeSet<NodeId>,
        now_unix_ms: i64,
        verifier: &CertVerifier,
    ) -> Result<Arc<OpenInfo>, FedError> {
        let sc = &self.cfg.secure;
        let digest = fedmesh_proto::secure::model_digest(self.version, &self.params);
        let secure = SecureRound::new(
            &self.tenant,
            round,
            self.version,
            digest,
            &selected,
            sc,
            self.limits.param_count,
            self.cfg.model.input_dim,
            verifier,
            after(now_unix_ms, sc.phase_timeout_ms),
            self.last_list.as_ref(),
        )?;
        let whole = sc
            .phase_timeout_ms
            .saturating_mul(3)
            .saturating_add(self.cfg.round_timeout_ms);
        let info = Arc::new(OpenInfo {
            round,
            base_version: self.version,
            selected,
            shadow: BTreeSet::new(),
            deadline_unix_ms: after(now_unix_ms, whole),
            training: training_of(&self.cfg),
            secure: Some(secure.view()),
        });
        self.retire_round();
        self.round = Some(OpenRound::new(info.clone(), Some(secure)));
        Ok(info)
    }

    /// Validates a plaintext update and records it. A refusal changes
    /// nothing (report attributable ones with [`RoundMachine::violation`]).
    pub fn submit(
        &mut self,
        node: &NodeId,
        req: v1::UpdateRequest,
        wire_bytes: u64,
    ) -> Result<v1::SubmitAck, FedError> {
        let facts = self.round.as_ref().map(|r| RoundFacts {
            info: &r.info,
            secure: r.secure.is_some(),
            submitted: r.updates.contains_key(node),
        });
        let update = validate::update(&self.limits, self.version, facts, node, req, wire_bytes)?;
        let round = self.round.as_mut().ok_or(FedError::NoOpenRound {
            version: self.version,
        })?;
        round.record(node, update);
        Ok(v1::SubmitAck {
            round: round.info.round,
            received: round.updates.len() as u32,
            expected: round.info.selected.len() as u32,
        })
    }

    /// Routes a secure-aggregation message of the open round at `now`.
    pub fn secagg(
        &mut self,
        node: &NodeId,
        req: &v1::SecAggRequest,
        now: time::OffsetDateTime,
        wire_bytes: u64,
    ) -> Result<v1::SecAggAck, FedError> {
        let version = self.version;
        let round = self
            .round
            .as_mut()
            .ok_or(FedError::NoOpenRound { version })?;
        if req.round != round.info.round {
            return Err(FedError::WrongRound {
                got: req.round,
                open: round.info.round,
            });
        }
        let secure = round.secure.as_mut().ok_or_else(|| {
            FedError::Phase(format!(
                "round {} is not securely aggregated: submit a plaintext update",
                req.round
            ))
        })?;
        secure.accept(node, req, now, wire_bytes)
    }

    /// An authenticated node sent an invalid update or message:
    /// attributable evidence, recorded with the reason's bounded text; a
    /// quarantine it causes is returned and goes into the next audit entry.
    pub fn violation(&mut self, node: &NodeId, reason: &InvalidReason) -> Option<Decision> {
        let text = reason.to_string();
        let d = self
            .reputation
            .violation(node.as_str(), self.version, &text)?;
        self.pending_decisions.push(d.clone());
        Some(d)
    }

    /// Attributable violations found while unmasking a secure round (wrong
    /// shares in a signed response); returns the quarantines they caused.
    pub fn unmask_violations(&mut self, violations: &[Violation]) -> Vec<Decision> {
        let mut out = Vec::new();
        for v in violations {
            if matches!(v.kind, ViolationKind::WrongUnmaskShares { .. }) {
                let reason =
                    InvalidReason::secure_protocol(SecureViolation::Share, &v.kind.to_string());
                out.extend(self.violation(&v.node, &reason));
            }
        }
        out
    }

    /// `node`'s certificate (serial `serial`) was revoked: its update to
    /// the open plaintext round is dropped (returns whether there was one)
    /// and the revocation goes into the next audit entry.
    pub fn revoke(&mut self, node: &NodeId, serial: &str) -> bool {
        let dropped = self
            .round
            .as_mut()
            .is_some_and(|r| r.secure.is_none() && r.remove(node));
        let score = self
            .reputation
            .records()
            .get(node.as_str())
            .map_or(0.0, |r| r.score);
        self.pending_decisions.push(Decision {
            node: node.to_string(),
            action: Action::Revoked,
            score,
            reason: format!("certificate {serial} revoked"),
        });
        dropped
    }

    /// Updates from selected nodes in the open round (0 without one). The
    /// shell closes a plaintext round when this reaches the number of
    /// selected nodes; shadow updates never count.
    pub fn selected_updates(&self) -> usize {
        self.round.as_ref().map_or(0, OpenRound::selected_updates)
    }

    /// Whether the open secure round's current phase is complete (every
    /// expected member of every live bucket answered), or there is none.
    pub fn secure_phase_complete(&self) -> bool {
        self.round
            .as_ref()
            .and_then(|r| r.secure.as_ref())
            .is_none_or(|s| s.phase_complete())
    }

    /// Closes the open secure round's phase and opens the next one with
    /// deadline `next_deadline_unix_ms`. Returns the new public facts and
    /// whether any bucket is still live, or `None` without a secure round.
    pub fn advance_secure(
        &mut self,
        next_deadline_unix_ms: i64,
    ) -> Result<Option<(Arc<OpenInfo>, bool)>, FedError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(None);
        };
        let Some(s) = round.secure.as_mut() else {
            return Ok(None);
        };
        s.advance(next_deadline_unix_ms)?;
        let mut info = (*round.info).clone();
        info.secure = Some(s.view());
        let live = s.any_live();
        round.info = Arc::new(info);
        Ok(Some((round.info.clone(), live)))
    }

    /// Takes the open round out (it closes: later messages find no round).
    /// A secure round's list becomes the one the next secure round's list
    /// is sent as a change to.
    pub fn take_round(&mut self) -> Option<OpenRound> {
        self.retire_round();
        self.round.take()
    }

    /// The last secure round's list (what the next one is sent as a
    /// change to), to persist.
    pub fn last_list(&self) -> Option<&ListRecord> {
        self.last_list.as_ref()
    }

    /// Keeps the open secure round's list as the base of the next one's
    /// (also when a round is replaced without being taken, after an
    /// error).
    fn retire_round(&mut self) {
        if let Some(s) = self.round.as_ref().and_then(|r| r.secure.as_ref()) {
            self.last_list = Some(s.list_record());
        }
    }

    /// Closes a plaintext round: aborts below the quorum, or aggregates
    /// (see [`plan_plaintext`]) from the current state.
    pub fn close(&self, round: &OpenRound) -> Result<Close, FedError> {
        plan_plaintext(&self.cfg, round, &self.base())
    }

    /// Records a round refused by the commit guard for the next audit
    /// entry (at most [`MAX_PENDING_REFUSALS`] between two commits).
    pub fn refuse(&mut self, round: u64, refusal: &CommitRefusal, now_unix_ms: i64) {
        if self.refused_commits.len() < MAX_PENDING_REFUSALS {
            self.refused_commits.push(RefusedCommit {
                round,
                reason: refusal.label().to_string(),
                detail: truncate_text(&refusal.to_string(), MAX_REFUSAL_TEXT).into_owned(),
                unix_ms: now_unix_ms,
            });
        }
    }

    /// Moves reputation for version `version`: the decisions since the
    /// last commit, then the round's evidence; takes the refused commits.
    pub fn observe(&mut self, version: u64, evidence: &[(String, Evidence)]) -> Observed {
        let mut decisions = std::mem::take(&mut self.pending_decisions);
        decisions.extend(self.reputation.observe_round(version, evidence));
        Observed {
            decisions,
            reputation: self.reputation.to_bytes(),
            refused_commits: std::mem::take(&mut self.refused_commits),
        }
    }

    /// The reputation state to persist (also when a round aborts, so
    /// violations seen in it survive a crash).
    pub fn reputation_bytes(&self) -> Vec<u8> {
        self.reputation.to_bytes()
    }

    /// Installs a committed version: parameters, momentum, scaler and the
    /// round's delta as the next centre.
    pub fn apply(
        &mut self,
        candidate: Candidate,
        plan_delta: Vec<f32>,
        scaler: Option<v1::Scaler>,
    ) {
        self.version = candidate.version;
        self.params = Arc::new(candidate.params);
        self.momentum = candidate.momentum.map(Arc::new);
        self.centre = Some(Arc::new(plan_delta));
        self.scaler = scaler;
        self.committed_this_run += 1;
    }
}

fn after(now_unix_ms: i64, ms: u64) -> i64 {
    now_unix_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The training parameters a round sends to its participants.
pub fn training_of(cfg: &TenantConfig) -> v1::TrainingParams {
    v1::TrainingParams {
        local_epochs: cfg.training.local_epochs,
        batch_size: cfg.training.batch_size,
        learning_rate: cfg.training.learning_rate,
        prox_mu: cfg.training.prox_mu,
    }
}

/// Closes a plaintext round taken from the machine. Fewer updates from
/// *selected* nodes than the quorum (or none) abort it; otherwise the
/// selected updates (in node order) are aggregated with their weights
/// around the centre, shadow updates only scored as evidence, and the
/// scaler merged from the selected updates' sums.
pub fn plan_plaintext(
    cfg: &TenantConfig,
    round: &OpenRound,
    base: &Base,
) -> Result<Close, FedError> {
    let selected = &round.info.selected;
    let got = round.selected_updates();
    if got < cfg.quorum || got == 0 {
        return Ok(Close::Abort(format!(
            "quorum not reached: {got} of {} updates (quorum {})",
            selected.len(),
            cfg.quorum
        )));
    }
    let (updates, shadow): (Vec<&ValidUpdate>, Vec<&ValidUpdate>) = round
        .updates
        .values()
        .partition(|u| selected.contains(&u.node));
    let deltas: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
    // Bounded: every num_samples is in 1..=max_samples_per_update.
    let weights: Vec<f64> = updates
        .iter()
        .map(|u| cfg.weighting.weight(u.num_samples))
        .collect();
    let outcome = cfg.aggregation.aggregate_from(
        &deltas,
        &weights,
        base.centre.as_deref().map(|v| v.as_slice()),
    )?;
    let rule = cfg.aggregation.rule.name();
    let mut excluded: Vec<(String, String)> = selected
        .iter()
        .filter(|n| !round.updates.contains_key(*n))
        .map(|n| (n.to_string(), "no update before the deadline".to_string()))
        .collect();
    let mut rule_excluded = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        if outcome.selected.binary_search(&i).is_err() {
            excluded.push((u.node.to_string(), format!("not selected by {rule}")));
            rule_excluded.push(u.node.to_string());
        }
    }
    let nodes: Vec<String> = updates.iter().map(|u| u.node.to_string()).collect();
    let shadow_deltas: Vec<(String, &[f32])> = shadow
        .iter()
        .map(|u| (u.node.to_string(), u.delta.as_slice()))
        .collect();
    let evidence = plaintext_evidence(
        &cfg.reputation,
        &nodes,
        &deltas,
        &outcome.value,
        &outcome.selected,
        &shadow_deltas,
    );
    let scaler = merged_scaler(
        updates.iter().filter_map(|u| u.scaler.as_ref()),
        cfg.model.input_dim,
    );
    let excluded_count = updates.len().saturating_sub(outcome.selected.len());
    Ok(Close::Commit(Box::new(CommitPlan {
        round: round.info.round,
        delta: outcome.value,
        scaler,
        participants: nodes,
        excluded,
        excluded_count,
        rule_excluded,
        rejected_buckets: Vec::new(),
        evidence,
        quarantined: round.info.shadow.iter().map(|n| n.to_string()).collect(),
        selected: selected.len(),
        mean_train_loss: updates.iter().map(|u| u.train_loss).sum::<f32>()
            / updates.len().max(1) as f32,
        bytes_received: updates.iter().map(|u| u.wire_bytes).sum(),
        secure: None,
    })))
}

/// What a finished secure round brings to its close.
#[derive(Debug)]
pub struct SecureOutcome<'a> {
    /// The round's public facts.
    pub info: &'a OpenInfo,
    /// The unmasking's results.
    pub finished: Finished,
    /// Bytes of accepted secure-aggregation messages.
    pub bytes_received: u64,
}

/// Closes a secure round: aborts when the unmasked buckets hold fewer
/// updates than the quorum or the survivors fall short
/// ([`check_survivors`]); otherwise the robust stage over bucket sums
/// ([`crate::secure::aggregate_buckets`]) and the scaler from the buckets'
/// extra words (the previous scaler when none brought moments).
pub fn plan_secure(
    cfg: &TenantConfig,
    outcome: SecureOutcome<'_>,
    base: &Base,
) -> Result<Close, FedError> {
    let sc = &cfg.secure;
    let SecureOutcome {
        info,
        finished:
            Finished {
                sums,
                dropped,
                stragglers,
                violations,
            },
        bytes_received,
    } = outcome;
    let contributors: usize = sums.iter().map(|s| s.member_count()).sum();
    if sums.is_empty() || contributors < cfg.quorum {
        return Ok(Close::Abort(format!(
            "quorum not reached: {contributors} updates in {} unmasked buckets \
             ({} dropped; quorum {})",
            sums.len(),
            dropped.len(),
            cfg.quorum
        )));
    }
    if let Err(short) = check_survivors(&sums, sc, cfg.quorum) {
        return Ok(Close::Abort(format!(
            "{} ({}; {} buckets dropped)",
            short.label(),
            short,
            dropped.len()
        )));
    }
    plan_secure_commit(
        cfg,
        info,
        &sums,
        &dropped,
        (&stragglers, &violations),
        bytes_received,
        base,
    )
    .map(|p| Close::Commit(Box::new(p)))
}

fn plan_secure_commit(
    cfg: &TenantConfig,
    info: &OpenInfo,
    sums: &[BucketSum],
    dropped: &[DroppedBucket],
    (stragglers, violations): (&[Straggler], &[Violation]),
    bytes_received: u64,
    base: &Base,
) -> Result<CommitPlan, FedError> {
    let sc = &cfg.secure;
    let agg = crate::secure::aggregate_buckets(
        sums,
        &cfg.aggregation,
        &cfg.reputation,
        base.centre.as_deref().map(|v| v.as_slice()),
        sc.max_bucket_mean_norm,
    )?;
    let rule = cfg.aggregation.rule.name();
    let mut excluded: Vec<(String, String)> = Vec::new();
    for d in dropped {
        for m in &d.members {
            excluded.push((
                m.to_string(),
                format!(
                    "bucket {} dropped: {}",
                    d.bucket,
                    truncate_text(&d.reason, MAX_REFUSAL_TEXT)
                ),
            ));
        }
    }
    for st in stragglers {
        excluded.push((
            st.node.to_string(),
            format!("no {} message before the deadline", st.phase.name()),
        ));
    }
    // Members refused for a violation (outvoted liars still contributed).
    for v in violations {
        if v.kind == ViolationKind::NonContributoryKey {
            excluded.push((
                v.node.to_string(),
                format!("bucket {}: {}", v.bucket, v.kind),
            ));
        }
    }
    let mut extras = fedmesh_proto::secure::ExtraSums::new(cfg.model.input_dim);
    let mut participants = Vec::new();
    let mut rule_excluded = Vec::new();
    let mut rejected_buckets = Vec::new();
    let mut excluded_count = 0;
    for s in sums {
        let members = s.contributors().iter().map(|n| n.to_string());
        if let Some((_, reason)) = agg.rejected.iter().find(|(b, _)| *b == s.bucket()) {
            excluded_count += s.member_count();
            rejected_buckets.push(s.bucket());
            let reason = truncate_text(reason, MAX_REFUSAL_TEXT);
            excluded.extend(members.map(|m| (m, reason.to_string())));
        } else if agg.excluded.contains(&s.bucket()) {
            excluded_count += s.member_count();
            rule_excluded.extend(members.clone());
            excluded.extend(
                members.map(|m| (m, format!("bucket {} not selected by {rule}", s.bucket()))),
            );
        } else {
            extras.add_bucket(s.extra(), s.member_count());
            participants.extend(members);
        }
    }
    participants.sort();
    rule_excluded.sort();
    excluded.sort();
    let epsilon = sc.noise_multiplier.and_then(|z| {
        let rounds = base.version + 1;
        fedmesh_crypto::secagg::epsilon(1.0, z, rounds, sc.dp_delta)
            .ok()
            .map(|e| e.improved)
    });
    let secure = SecureSummary {
        bucket_size: sc.bucket_size,
        buckets: sums.len() + dropped.len(),
        dropped: dropped.len(),
        rejected: agg.rejected.len(),
        excluded: agg.excluded.len(),
        epsilon,
    };
    // The previous scaler carries over if no bucket brought moments.
    let scaler = extras
        .scaler(crate::server_step::SCALER_STD_FLOOR)
        .or_else(|| base.scaler.clone());
    Ok(CommitPlan {
        round: info.round,
        delta: agg.value,
        scaler,
        participants,
        excluded,
        excluded_count,
        rule_excluded,
        rejected_buckets,
        evidence: agg.evidence,
        quarantined: Vec::new(),
        selected: info.selected.len(),
        mean_train_loss: extras.mean_loss() as f32,
        bytes_received,
        secure: Some(secure),
    })
}

/// The next version from `base` and `plan`: the server step (learning rate
/// and momentum), then the commit guard ([`check_model`]): nothing that is
/// not a usable model may be signed.
pub fn step(
    cfg: &TenantConfig,
    base: &Base,
    plan: &CommitPlan,
) -> Result<Candidate, CommitRefusal> {
    let ServerStep { params, momentum } = server_step(
        &base.params,
        &plan.delta,
        base.momentum.as_deref().map(|v| v.as_slice()),
        cfg.server_lr,
        cfg.server_momentum,
    );
    check_model(
        &params,
        momentum.as_deref(),
        plan.scaler.as_ref(),
        cfg.model.input_dim,
        cfg.max_param_abs,
    )?;
    Ok(Candidate {
        version: base.version + 1,
        params,
        momentum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 features, hidden [2]: 3·2 + 2 + 2·3 + 3 = 17 parameters.
    fn config(extra: &str) -> TenantConfig {
        let text = format!(
            "name = \"acme\"\nmin_nodes = 2\nquorum = 2\n{extra}\n[model]\ninput_dim = 3\nhidden = [2]\n"
        );
        toml::from_str(&text).unwrap()
    }

    fn param_count() -> usize {
        fedmesh_proto::model::param_count(3, &[2]).unwrap()
    }

    fn node(n: &str) -> NodeId {
        n.parse().unwrap()
    }

    fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|n| node(n)).collect()
    }

    /// A machine at version 0 with zero parameters; `quarantined` nodes
    /// are in quarantine until version 10.
    fn machine(extra: &str, quarantined: &[&str]) -> RoundMachine {
        let cfg = config(extra);
        let records: BTreeMap<String, crate::reputation::NodeRecord> = quarantined
            .iter()
            .map(|n| {
                let r = crate::reputation::NodeRecord {
                    score: 9.0,
                    quarantined_at: Some(0),
                    release_at: Some(10),
                    offences: 1,
                    ..Default::default()
                };
                (n.to_string(), r)
            })
            .collect();
        let bytes = serde_json::to_vec(&records).unwrap();
        let reputation = Reputation::from_bytes(cfg.reputation.clone(), &bytes).unwrap();
        RoundMachine::new(
            "acme".parse().unwrap(),
            cfg,
            [5; 32],
            param_count(),
            Restored {
                version: 0,
                params: vec![0.0; param_count()],
                scaler: None,
                momentum: None,
                reputation,
                last_list: None,
            },
        )
    }

    fn update(m: &RoundMachine, who: &str, value: f32) -> v1::UpdateRequest {
        let info = &m.open_round().unwrap().info;
        let delta = vec![value; param_count()];
        v1::UpdateRequest {
            tenant: "acme".into(),
            node: who.into(),
            round: info.round,
            base_version: info.base_version,
            schema_hash: vec![5; 32],
            delta: Some(fedmesh_proto::encode_f32(&delta, &[delta.len() as u64])),
            num_samples: 100,
            scaler_stats: None,
            train_loss: 0.5,
        }
    }

    fn submit(m: &mut RoundMachine, who: &str, value: f32) {
        let u = update(m, who, value);
        m.submit(&node(who), u, 10).unwrap();
    }

    fn names(s: &BTreeSet<NodeId>) -> Vec<String> {
        s.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn sampling_is_the_seeded_choice_over_the_eligible_set() {
        let connected = nodes(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let quarantined = BTreeSet::from(["c".to_string()]);
        let mut got = Vec::new();
        for (seed, round) in [(0u64, 1u64), (7, 3), (42, 1000), (u64::MAX, 12345)] {
            let s = sample(seed, round, connected.clone(), &quarantined, 3);
            assert_eq!(names(&s.shadow), ["c"]);
            assert_eq!(s.selected.len(), 3);
            assert!(!s.selected.contains(&node("c")));
            got.push(names(&s.selected).join(","));
        }
        // The draws of ChaCha8Rng(seed ^ round · 0x9E3779B97F4A7C15) with
        // choose_multiple: fixed forever (the network engine and old
        // stores replay them).
        assert_eq!(got, SAMPLES);
        // Not more eligible nodes than max_participants (or 0): all of them.
        let s = sample(1, 1, connected.clone(), &quarantined, 0);
        assert_eq!(s.selected.len(), 7);
        let s = sample(1, 1, connected, &quarantined, 7);
        assert_eq!(s.selected.len(), 7);
    }

    const SAMPLES: [&str; 4] = ["b,d,h", "e,f,h", "a,e,h", "e,g,h"];

    #[test]
    fn the_machine_samples_with_its_seed_and_reputation() {
        let m = machine("seed = 7\nmax_participants = 3", &["c"]);
        let connected = nodes(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let s = m.select(3, connected.clone());
        assert_eq!(names(&s.selected).join(","), SAMPLES[1]);
        assert_eq!(s, sample(7, 3, connected, &BTreeSet::from(["c".into()]), 3));
    }

    #[test]
    fn a_shadow_update_neither_closes_the_round_nor_counts_toward_the_quorum() {
        let mut m = machine("", &["q"]);
        let sel = m.select(1, nodes(&["a", "b", "q"]));
        assert_eq!(names(&sel.selected), ["a", "b"]);
        assert_eq!(names(&sel.shadow), ["q"]);
        m.open(1, sel, 1_000);
        submit(&mut m, "q", 0.01);
        assert_eq!(m.selected_updates(), 0);
        submit(&mut m, "a", 0.01);
        // Two updates recorded, one from a selected node: still open.
        assert_eq!(m.open_round().unwrap().updates.len(), 2);
        assert_eq!(m.selected_updates(), 1);
        let round = m.take_round().unwrap();
        match m.close(&round).unwrap() {
            Close::Abort(reason) => {
                assert_eq!(reason, "quorum not reached: 1 of 2 updates (quorum 2)")
            }
            Close::Commit(_) => panic!("a shadow update counted toward the quorum"),
        }
        // Later messages find no round.
        let e = m.submit(&node("b"), update_for(1, 0, "b"), 10).unwrap_err();
        assert!(matches!(e, FedError::NoOpenRound { version: 0 }), "{e:?}");
    }

    fn update_for(round: u64, base: u64, who: &str) -> v1::UpdateRequest {
        let delta = vec![0.0; param_count()];
        v1::UpdateRequest {
            tenant: "acme".into(),
            node: who.into(),
            round,
            base_version: base,
            schema_hash: vec![5; 32],
            delta: Some(fedmesh_proto::encode_f32(&delta, &[delta.len() as u64])),
            num_samples: 100,
            scaler_stats: None,
            train_loss: 0.5,
        }
    }

    #[test]
    fn the_count_of_selected_updates_follows_submissions_and_revocations() {
        let mut m = machine("", &["q"]);
        let sel = m.select(1, nodes(&["a", "b", "c", "q"]));
        m.open(1, sel, 0);
        // The count a walk over the recorded updates gives.
        let walked = |m: &RoundMachine| {
            let r = m.open_round().unwrap();
            r.updates()
                .keys()
                .filter(|n| r.info.selected.contains(*n))
                .count()
        };
        let mut seen = Vec::new();
        submit(&mut m, "a", 0.01);
        seen.push(m.selected_updates());
        submit(&mut m, "q", 0.01); // shadow: not counted
        seen.push(m.selected_updates());
        let dup = update(&m, "a", 0.01);
        assert!(m.submit(&node("a"), dup, 10).is_err());
        seen.push(m.selected_updates());
        assert!(m.revoke(&node("a"), "01"));
        assert!(!m.open_round().unwrap().updates().contains_key(&node("a")));
        seen.push(m.selected_updates());
        assert!(!m.revoke(&node("a"), "01"));
        seen.push(m.selected_updates());
        submit(&mut m, "a", 0.01);
        submit(&mut m, "b", 0.01);
        seen.push(m.selected_updates());
        assert_eq!(seen, [1, 1, 1, 0, 0, 2]);
        assert_eq!(m.selected_updates(), walked(&m));
        assert_eq!(m.open_round().unwrap().updates().len(), 3);
    }

    #[test]
    fn shadow_updates_are_scored_but_never_aggregated() {
        let mut m = machine("", &["q"]);
        let sel = m.select(1, nodes(&["a", "b", "q"]));
        let info = m.open(1, sel, 1_000);
        assert_eq!(
            info.deadline_unix_ms,
            1_000 + m.config().round_timeout_ms as i64
        );
        submit(&mut m, "a", 0.01);
        submit(&mut m, "q", 0.2);
        submit(&mut m, "b", 0.03);
        assert_eq!(m.selected_updates(), 2);
        let round = m.take_round().unwrap();
        let Close::Commit(plan) = m.close(&round).unwrap() else {
            panic!("quorum reached, the round must commit");
        };
        assert_eq!(plan.participants, ["a", "b"]);
        assert_eq!(plan.quarantined, ["q"]);
        assert_eq!(plan.selected, 2);
        assert_eq!(plan.bytes_received, 20);
        for x in &plan.delta {
            assert!(
                (x - 0.02).abs() < 1e-6,
                "{x}: the shadow update was aggregated"
            );
        }
        let scored: Vec<&str> = plan.evidence.iter().map(|(n, _)| n.as_str()).collect();
        assert!(scored.contains(&"q"), "{scored:?}");
    }

    #[test]
    fn the_plan_names_the_updates_the_rule_left_out() {
        let mut m = machine("[aggregation]\nrule = \"krum\"\nf = 0", &[]);
        let sel = m.select(1, nodes(&["a", "b", "c"]));
        m.open(1, sel, 0);
        submit(&mut m, "a", 0.01);
        submit(&mut m, "b", 0.011);
        submit(&mut m, "c", 0.5);
        let round = m.take_round().unwrap();
        let Close::Commit(plan) = m.close(&round).unwrap() else {
            panic!("must commit");
        };
        // Krum keeps one update; the far one is always left out.
        assert_eq!(plan.participants, ["a", "b", "c"]);
        assert_eq!(plan.rule_excluded.len(), 2, "{:?}", plan.rule_excluded);
        assert!(plan.rule_excluded.is_sorted());
        assert!(plan.rule_excluded.contains(&"c".to_string()));
        assert_eq!(plan.excluded_count, 2);
        assert!(plan.rejected_buckets.is_empty());
    }

    #[test]
    fn a_commit_steps_the_server_and_moves_centre_momentum_and_reputation_in_order() {
        let mut m = machine("server_momentum = 0.5", &[]);
        let sel = m.select(4, nodes(&["a", "b"]));
        m.open(4, sel, 0);
        submit(&mut m, "a", 0.01);
        submit(&mut m, "b", 0.01);
        // A violation before the commit is the first decision of its entry.
        let bad = InvalidReason::SchemaHash;
        for _ in 0..50 {
            m.violation(&node("z"), &bad);
        }
        assert!(m.reputation().is_quarantined("z"));
        assert!(m.revoke(&node("b"), "0a"));
        assert_eq!(m.selected_updates(), 1);
        submit(&mut m, "b", 0.01);
        let round = m.take_round().unwrap();
        let Close::Commit(plan) = m.close(&round).unwrap() else {
            panic!("must commit");
        };
        let base = m.base();
        let c = step(m.config(), &base, &plan).unwrap();
        assert_eq!(c.version, 1);
        let lr = m.config().server_lr;
        for (w, x) in c.params.iter().zip(&plan.delta) {
            assert!((w - lr * x).abs() < 1e-7);
        }
        assert_eq!(c.momentum.as_deref(), Some(plan.delta.as_slice()));
        let observed = m.observe(c.version, &plan.evidence);
        let actions: Vec<(&str, &str)> = observed
            .decisions
            .iter()
            .map(|d| (d.node.as_str(), d.action.label()))
            .collect();
        assert_eq!(actions[..2], [("z", "quarantined"), ("b", "revoked")]);
        m.apply(c, plan.delta.clone(), plan.scaler.clone());
        assert_eq!(m.version(), 1);
        assert_eq!(
            m.centre().map(|c| c.as_slice()),
            Some(plan.delta.as_slice())
        );
        assert_eq!(m.committed_this_run(), 1);
        // The next round trains from version 1 and its updates are based on it.
        let sel = m.select(5, nodes(&["a", "b"]));
        assert_eq!(m.open(5, sel, 0).base_version, 1);
        let e = m.submit(&node("a"), update_for(5, 0, "a"), 1).unwrap_err();
        assert_eq!(e.label(), "stale_version");
    }

    #[test]
    fn a_refused_commit_changes_no_state_and_is_kept_for_the_next_entry() {
        let mut m = machine("server_lr = 1e30", &[]);
        let sel = m.select(1, nodes(&["a", "b"]));
        m.open(1, sel, 0);
        submit(&mut m, "a", 0.01);
        submit(&mut m, "b", 0.02);
        let round = m.take_round().unwrap();
        let Close::Commit(plan) = m.close(&round).unwrap() else {
            panic!("must commit");
        };
        let refusal = step(m.config(), &m.base(), &plan).unwrap_err();
        m.refuse(1, &refusal, 77);
        assert_eq!(m.version(), 0);
        assert!(m.centre().is_none());
        assert_eq!(m.refused_commits().len(), 1);
        assert_eq!(m.refused_commits()[0].unix_ms, 77);
        let observed = m.observe(1, &[]);
        assert_eq!(observed.refused_commits.len(), 1);
        assert!(m.refused_commits().is_empty());
    }
}
