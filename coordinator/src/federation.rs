//! One tenant's federation: the round state machine, update validation and
//! commits.
//!
//! States: `Idle` (waiting for `min_nodes` watchers) → `Open` (collecting
//! until every selected node has submitted, or the deadline) → either commit
//! (quorum reached: aggregate, sign, append to the store, publish) or abort
//! (no quorum: nothing is written but the used round number; the round is
//! retried under a new number). Nodes learn about state changes through a
//! `watch` channel, so a node that (re)subscribes always sees the latest
//! state first and never needs to poll.

use crate::server_step::{ServerStep, genesis_params, merged_scaler, server_step};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedmesh_crypto::{CertSigner, CertVerifier, NodeId, SharedSigner, TenantId};
use fedmesh_proto::v1;
use prost::Message;
use rand::SeedableRng;
use rand::seq::IteratorRandom;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::bounds::{CommitRefusal, InvalidReason, MAX_REFUSAL_TEXT, check_model, truncate_text};
use crate::config::TenantConfig;
pub use crate::error::FedError;
use crate::metrics::Metrics;
use crate::reputation::{Decision, Evidence, Reputation, plaintext_evidence};
pub use crate::round::{OpenInfo, RoundStatus, RoundSummary, SecureSummary, ValidUpdate};
use crate::secure_round::{Phase, SecureRound};
use crate::store::{AuditEntry, Store};
pub use crate::validate::validate_fields;
use crate::validate::{self, Limits, RoundFacts};

/// Most refused commits kept for the next audit entry; later ones are only
/// logged and counted (a tenant refusing this many rounds in a row is
/// misconfigured, and the metric says so).
const MAX_PENDING_REFUSALS: usize = 64;

struct OpenRound {
    info: Arc<OpenInfo>,
    started: tokio::time::Instant,
    updates: BTreeMap<NodeId, ValidUpdate>,
    secure: Option<SecureRound>,
}

struct Inner {
    version: u64,
    params: Arc<Vec<f32>>,
    signed: Arc<Vec<u8>>,
    watchers: BTreeMap<NodeId, usize>,
    joined: BTreeSet<NodeId>,
    round: Option<OpenRound>,
    committed_this_run: u64,
    /// Last aggregated delta: the centre for centered clipping.
    last_delta: Option<Arc<Vec<f32>>>,
    /// Server momentum buffer (persisted with every commit).
    momentum: Option<Arc<Vec<f32>>>,
    /// Per-node reputation (persisted with every commit).
    reputation: Reputation,
    /// Decisions taken since the last commit (violations), for its audit entry.
    pending_decisions: Vec<Decision>,
    /// Rounds refused by the commit guard since the last commit, for its
    /// audit entry.
    refused_commits: Vec<crate::store::RefusedCommit>,
}

/// A tenant's federation.
pub struct Federation {
    tenant: TenantId,
    cfg: TenantConfig,
    schema_hash: [u8; 32],
    feature_digest: [u8; 32],
    param_count: usize,
    store: Store,
    signer: SharedSigner,
    verifier: CertVerifier,
    inner: Mutex<Inner>,
    status: watch::Sender<RoundStatus>,
    summaries: broadcast::Sender<RoundSummary>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Decodes and checks a stored signed model, returning its body.
pub fn decode_signed(bytes: &[u8]) -> Result<(v1::SignedModel, v1::GlobalModel), FedError> {
    let signed = v1::SignedModel::decode(bytes).map_err(|e| FedError::Corrupt(e.to_string()))?;
    let body = v1::GlobalModel::decode(signed.body.as_slice())
        .map_err(|e| FedError::Corrupt(e.to_string()))?;
    Ok((signed, body))
}

impl Federation {
    /// Opens a federation: loads the latest committed version from the
    /// store, or creates and commits the genesis version 0. `verifier`
    /// checks the nodes' signatures on secure-aggregation messages.
    pub fn open(
        tenant: TenantId,
        cfg: TenantConfig,
        store: Store,
        signer: SharedSigner,
        verifier: CertVerifier,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, FedError> {
        let digest = crate::config::decode_digest(&cfg.model.feature_schema_digest).ok_or(
            FedError::Refused(InvalidReason::Config(
                "feature_schema_digest is not 64 hex characters",
            )),
        )?;
        let schema_hash = fedmesh_proto::model::model_schema_hash(
            &digest,
            cfg.model.input_dim,
            &cfg.model.hidden,
        );
        let param_count = fedmesh_proto::model::param_count(cfg.model.input_dim, &cfg.model.hidden)
            .ok_or(FedError::Refused(InvalidReason::Config(
                "model size overflows",
            )))?;
        let (version, signed, params) = match store.latest_model(tenant.as_str())? {
            Some((v, bytes)) => {
                let (_, body) = decode_signed(&bytes)?;
                if body.schema_hash != schema_hash {
                    return Err(FedError::Corrupt(format!(
                        "stored model v{v} has another schema than the configured model; \
                         use a new data directory or the old model settings"
                    )));
                }
                let params = body
                    .params
                    .as_ref()
                    .map(|t| fedmesh_proto::decode_f32(t, param_count))
                    .transpose()
                    .map_err(|e| FedError::Corrupt(e.to_string()))?
                    .ok_or_else(|| FedError::Corrupt("model without parameters".into()))?;
                info!(tenant = %tenant, version = v, "resuming from committed version");
                (v, bytes, params)
            }
            None => {
                let params = genesis_params(cfg.model.input_dim, &cfg.model.hidden, cfg.seed);
                let body = v1::GlobalModel {
                    tenant: tenant.to_string(),
                    version: 0,
                    round: 0,
                    schema_hash: schema_hash.to_vec(),
                    spec: Some(spec_of(&cfg)),
                    params: Some(fedmesh_proto::encode_f32(&params, &[params.len() as u64])),
                    scaler: None,
                    prev_hash: vec![0; 32],
                    rule: "genesis".into(),
                    participants: 0,
                    created_unix_ms: unix_ms(SystemTime::now()),
                };
                let signed = sign_model(&signer.current(), &body);
                store.commit(
                    tenant.as_str(),
                    0,
                    &signed,
                    AuditEntry {
                        tenant: tenant.to_string(),
                        version: 0,
                        round: 0,
                        rule: "genesis".into(),
                        participants: vec![],
                        excluded: vec![],
                        model_sha256: String::new(),
                        prev_entry_sha256: String::new(),
                        unix_ms: body.created_unix_ms,
                        quarantined: vec![],
                        reputation: vec![],
                        secure: None,
                        refused_commits: vec![],
                    },
                    None,
                    None,
                )?;
                info!(tenant = %tenant, params = params.len(), "created genesis version 0");
                (0, signed, params)
            }
        };
        let momentum = match store.server_state(tenant.as_str())? {
            Some(b) if b.len() == param_count * 4 => Some(Arc::new(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>(),
            )),
            Some(_) => {
                warn!(tenant = %tenant, "stored server momentum has another size; starting from zero");
                None
            }
            None => None,
        };
        let reputation = match store.reputation_state(tenant.as_str())? {
            Some(b) => Reputation::from_bytes(cfg.reputation.clone(), &b)
                .map_err(|e| FedError::Corrupt(e.to_string()))?,
            None => Reputation::new(cfg.reputation.clone()),
        };
        let (status, _) = watch::channel(RoundStatus::Idle {
            version,
            reason: "waiting for nodes".into(),
        });
        let (summaries, _) = broadcast::channel(64);
        Ok(Arc::new(Self {
            tenant,
            cfg,
            schema_hash,
            feature_digest: digest,
            param_count,
            store,
            signer,
            verifier,
            inner: Mutex::new(Inner {
                version,
                params: Arc::new(params),
                signed: Arc::new(signed),
                watchers: BTreeMap::new(),
                joined: BTreeSet::new(),
                round: None,
                committed_this_run: 0,
                last_delta: None,
                momentum,
                reputation,
                pending_decisions: Vec::new(),
                refused_commits: Vec::new(),
            }),
            status,
            summaries,
            wake: Notify::new(),
            metrics,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere; the data is still
        // consistent because every mutation is completed before unlock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tenant name.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Model schema hash.
    pub fn schema_hash(&self) -> [u8; 32] {
        self.schema_hash
    }

    /// Latest committed version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Join parameters for a node.
    pub fn join(&self, node: &NodeId, feature_schema: &[u8]) -> Result<v1::JoinResponse, FedError> {
        if feature_schema != self.feature_digest {
            return Err(FedError::Refused(InvalidReason::FeatureSchema {
                node: short_hex(feature_schema),
                expected: short_hex(&self.feature_digest),
            }));
        }
        let mut g = self.lock();
        if g.joined.insert(node.clone()) {
            info!(tenant = %self.tenant, node = %node, "node joined");
        }
        Ok(v1::JoinResponse {
            tenant: self.tenant.to_string(),
            node: node.to_string(),
            current_version: g.version,
            schema_hash: self.schema_hash.to_vec(),
            model_spec: Some(spec_of(&self.cfg)),
            training: Some(training_of(&self.cfg)),
        })
    }

    /// Signed bytes of `version` (0 = latest).
    pub fn model(&self, version: u64) -> Result<Arc<Vec<u8>>, FedError> {
        {
            let g = self.lock();
            if version == 0 || version == g.version {
                return Ok(g.signed.clone());
            }
            if version > g.version {
                return Err(FedError::UnknownVersion(version));
            }
        }
        match self.store.lookup_model(self.tenant.as_str(), version)? {
            crate::store::ModelLookup::Found(bytes) => Ok(Arc::new(bytes)),
            crate::store::ModelLookup::Pruned { oldest_kept } => Err(FedError::Pruned {
                version,
                oldest_kept,
            }),
            crate::store::ModelLookup::Unknown => Err(FedError::UnknownVersion(version)),
        }
    }

    /// The oldest version whose signed body the store still holds (older
    /// ones were removed by `[store] retain_versions`; 0 when none was).
    pub fn oldest_kept_version(&self) -> u64 {
        self.store.pruned_below(self.tenant.as_str()).unwrap_or(0)
    }

    /// Subscribes a node to round status; the node counts as connected
    /// while the returned guard lives.
    pub fn subscribe(
        self: &Arc<Self>,
        node: &NodeId,
    ) -> (watch::Receiver<RoundStatus>, WatchGuard) {
        *self.lock().watchers.entry(node.clone()).or_insert(0) += 1;
        self.wake.notify_one();
        (
            self.status.subscribe(),
            WatchGuard {
                fed: self.clone(),
                node: node.clone(),
            },
        )
    }

    /// Committed-round summaries.
    pub fn summaries(&self) -> broadcast::Receiver<RoundSummary> {
        self.summaries.subscribe()
    }

    /// Current status.
    pub fn status(&self) -> RoundStatus {
        self.status.borrow().clone()
    }

    /// Nodes currently holding a round stream open.
    pub fn connected(&self) -> BTreeSet<NodeId> {
        self.lock()
            .watchers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Validates and records an update, counting the outcome in metrics.
    pub fn submit(
        &self,
        node: &NodeId,
        req: v1::UpdateRequest,
        wire_bytes: u64,
    ) -> Result<v1::SubmitAck, FedError> {
        let r = self.record_update(node, req, wire_bytes);
        match &r {
            Ok(_) => self.metrics.accepted(self.tenant.as_str(), wire_bytes),
            Err(e) => {
                self.metrics.refused(self.tenant.as_str(), e);
                if let Some(reason) = e.invalid_reason() {
                    self.note_violation(node, &reason);
                }
            }
        }
        r
    }

    /// An authenticated node sent an invalid update (norm over the bound,
    /// NaN, wrong shape or schema, a field out of bounds): attributable
    /// evidence for reputation, recorded with the reason's bounded text.
    fn note_violation(&self, node: &NodeId, reason: &InvalidReason) {
        let mut g = self.lock();
        let version = g.version;
        let text = reason.to_string();
        if let Some(d) = g.reputation.violation(node.as_str(), version, &text) {
            warn!(tenant = %self.tenant, node = %node, reason = %d.reason, "node quarantined");
            g.pending_decisions.push(d);
        }
    }

    /// `node`'s certificate (serial `serial`, hex) was revoked: its update to
    /// the open plaintext round is dropped (returns whether there was one)
    /// and the revocation is recorded in the next version's audit entry. A
    /// masked input it already sent to a secure round stays in its bucket's
    /// sum (it cannot be told apart); its connections are closed, so it is
    /// a dropout from then on.
    pub fn revoke(&self, node: &NodeId, serial: &str) -> bool {
        let mut g = self.lock();
        let dropped = g
            .round
            .as_mut()
            .is_some_and(|r| r.secure.is_none() && r.updates.remove(node).is_some());
        let score = g
            .reputation
            .records()
            .get(node.as_str())
            .map_or(0.0, |r| r.score);
        g.pending_decisions.push(crate::reputation::Decision {
            node: node.to_string(),
            action: crate::reputation::Action::Revoked,
            score,
            reason: format!("certificate {serial} revoked"),
        });
        drop(g);
        self.wake.notify_one();
        dropped
    }

    /// This tenant's audit log, in version order.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, FedError> {
        Ok(self.store.audit_log(self.tenant.as_str())?)
    }

    /// Nodes currently quarantined.
    pub fn quarantined(&self) -> BTreeSet<String> {
        self.lock().reputation.quarantined()
    }

    /// Reputation records of every node seen, for `/status`.
    pub fn reputation(&self) -> BTreeMap<String, crate::reputation::NodeRecord> {
        self.lock().reputation.records().clone()
    }

    fn record_update(
        &self,
        node: &NodeId,
        req: v1::UpdateRequest,
        wire_bytes: u64,
    ) -> Result<v1::SubmitAck, FedError> {
        let limits = Limits::of(&self.cfg, self.schema_hash, self.param_count);
        let mut g = self.lock();
        let version = g.version;
        let facts = g.round.as_ref().map(|r| RoundFacts {
            info: &r.info,
            secure: r.secure.is_some(),
            submitted: r.updates.contains_key(node),
        });
        let update = validate::update(&limits, version, facts, node, req, wire_bytes)?;
        let round = g.round.as_mut().ok_or(FedError::NoOpenRound { version })?;
        round.updates.insert(node.clone(), update);
        let ack = v1::SubmitAck {
            round: round.info.round,
            received: round.updates.len() as u32,
            expected: round.info.selected.len() as u32,
        };
        drop(g);
        self.wake.notify_one();
        Ok(ack)
    }

    /// Drives rounds until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let span = info_span!("federation", tenant = %self.tenant);
        async move {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let max = self.cfg.max_rounds;
                if max != 0 && self.lock().committed_this_run >= max {
                    let version = self.version();
                    self.status.send_replace(RoundStatus::Idle {
                        version,
                        reason: format!("max_rounds = {max} reached"),
                    });
                    let _ = shutdown.changed().await;
                    return;
                }
                let connected = self.connected();
                if connected.len() < self.cfg.min_nodes {
                    let version = self.version();
                    let reason = format!(
                        "waiting for nodes: {} of {} connected",
                        connected.len(),
                        self.cfg.min_nodes
                    );
                    self.status.send_if_modified(|s| {
                        let next = RoundStatus::Idle {
                            version,
                            reason: reason.clone(),
                        };
                        if *s == next {
                            return false;
                        }
                        *s = next;
                        true
                    });
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
                match self.run_round(connected, &mut shutdown).await {
                    Ok(()) => {}
                    Err(e) => warn!(error = %e, "round failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(self.cfg.round_interval_ms)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn run_round(
        &self,
        connected: BTreeSet<NodeId>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), FedError> {
        let round_no = self.store.next_round(self.tenant.as_str())?;
        self.store
            .set_next_round(self.tenant.as_str(), round_no + 1)?;
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.cfg.seed ^ round_no.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let quarantined = self.lock().reputation.quarantined();
        let (shadow, eligible): (BTreeSet<NodeId>, BTreeSet<NodeId>) = connected
            .into_iter()
            .partition(|n| quarantined.contains(n.as_str()));
        let selected: BTreeSet<NodeId> =
            if self.cfg.max_participants == 0 || eligible.len() <= self.cfg.max_participants {
                eligible
            } else {
                eligible
                    .into_iter()
                    .choose_multiple(&mut rng, self.cfg.max_participants)
                    .into_iter()
                    .collect()
            };
        if self.cfg.secure.masked() {
            return self.run_secure_round(round_no, selected, shutdown).await;
        }
        let timeout = Duration::from_millis(self.cfg.round_timeout_ms);
        let base_version;
        let info;
        {
            let mut g = self.lock();
            base_version = g.version;
            info = Arc::new(OpenInfo {
                round: round_no,
                base_version,
                selected: selected.clone(),
                shadow: shadow.clone(),
                deadline_unix_ms: unix_ms(SystemTime::now() + timeout),
                training: training_of(&self.cfg),
                secure: None,
            });
            g.round = Some(OpenRound {
                info: info.clone(),
                started: tokio::time::Instant::now(),
                updates: BTreeMap::new(),
                secure: None,
            });
        }
        let span = info_span!("round", tenant = %self.tenant, round = round_no);
        let _e = span.enter();
        info!(
            base_version,
            selected = selected.len(),
            shadow = shadow.len(),
            "round open"
        );
        drop(_e);
        self.status.send_replace(RoundStatus::Open(info.clone()));
        self.wait_round(tokio::time::Instant::now() + timeout, shutdown, |r| {
            r.map(|r| r.updates.keys().filter(|n| selected.contains(*n)).count())
                .unwrap_or(0)
                >= selected.len()
        })
        .await;
        let round = self.lock().round.take();
        let Some(round) = round else { return Ok(()) };
        if *shutdown.borrow() {
            return Ok(());
        }
        let got = round
            .updates
            .keys()
            .filter(|n| selected.contains(*n))
            .count();
        if got < self.cfg.quorum || got == 0 {
            let reason = format!(
                "quorum not reached: {got} of {} updates (quorum {})",
                selected.len(),
                self.cfg.quorum
            );
            return self.abort_round(round_no, reason);
        }
        let summary = self.commit(round, &selected)?;
        self.announce(&span, round_no, summary);
        Ok(())
    }

    fn commit(
        &self,
        round: OpenRound,
        selected: &BTreeSet<NodeId>,
    ) -> Result<RoundSummary, FedError> {
        let (updates, shadow): (Vec<&ValidUpdate>, Vec<&ValidUpdate>) = round
            .updates
            .values()
            .partition(|u| selected.contains(&u.node));
        let deltas: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
        // Bounded: every num_samples is in 1..=max_samples_per_update.
        let weights: Vec<f64> = updates
            .iter()
            .map(|u| self.cfg.weighting.weight(u.num_samples))
            .collect();
        let prev_delta = self.lock().last_delta.clone();
        let outcome = self.cfg.aggregation.aggregate_from(
            &deltas,
            &weights,
            prev_delta.as_deref().map(|v| v.as_slice()),
        )?;
        let rule = self.cfg.aggregation.rule.name();
        let mut excluded: Vec<(String, String)> = selected
            .iter()
            .filter(|n| !round.updates.contains_key(*n))
            .map(|n| (n.to_string(), "no update before the deadline".to_string()))
            .collect();
        for (i, u) in updates.iter().enumerate() {
            if outcome.selected.binary_search(&i).is_err() {
                excluded.push((u.node.to_string(), format!("not selected by {rule}")));
            }
        }
        let nodes: Vec<String> = updates.iter().map(|u| u.node.to_string()).collect();
        let shadow_deltas: Vec<(String, &[f32])> = shadow
            .iter()
            .map(|u| (u.node.to_string(), u.delta.as_slice()))
            .collect();
        let evidence = plaintext_evidence(
            &self.cfg.reputation,
            &nodes,
            &deltas,
            &outcome.value,
            &outcome.selected,
            &shadow_deltas,
        );
        let scaler = merged_scaler(
            updates.iter().filter_map(|u| u.scaler.as_ref()),
            self.cfg.model.input_dim,
        );
        let excluded_count = updates.len().saturating_sub(outcome.selected.len());
        self.publish_version(Commit {
            round: round.info.round,
            started: round.started,
            delta: outcome.value,
            scaler,
            participants: nodes,
            excluded,
            excluded_count,
            evidence,
            quarantined: round.info.shadow.iter().map(|n| n.to_string()).collect(),
            selected: selected.len(),
            mean_train_loss: updates.iter().map(|u| u.train_loss).sum::<f32>()
                / updates.len().max(1) as f32,
            bytes_received: updates.iter().map(|u| u.wire_bytes).sum(),
            secure: None,
        })
    }

    /// Signs and stores the next version from an aggregated delta, moves
    /// reputation, and updates the in-memory state: the tail shared by the
    /// plaintext and the secure commit.
    fn publish_version(&self, c: Commit) -> Result<RoundSummary, FedError> {
        let (base, prev_signed, version, prev_momentum) = {
            let g = self.lock();
            (
                g.params.clone(),
                g.signed.clone(),
                g.version + 1,
                g.momentum.clone(),
            )
        };
        let ServerStep { params, momentum } = server_step(
            &base,
            &c.delta,
            prev_momentum.as_deref().map(|v| v.as_slice()),
            self.cfg.server_lr,
            self.cfg.server_momentum,
        );
        // The last guard: nothing that is not a usable model is signed.
        if let Err(refusal) = check_model(
            &params,
            momentum.as_deref(),
            c.scaler.as_ref(),
            self.cfg.model.input_dim,
            self.cfg.max_param_abs,
        ) {
            return Err(self.refuse_commit(c.round, refusal));
        }
        let momentum_bytes: Option<Vec<u8>> = momentum
            .as_ref()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect());
        let rule = self.cfg.aggregation.rule.name().to_string();
        let now = unix_ms(SystemTime::now());
        let body = v1::GlobalModel {
            tenant: self.tenant.to_string(),
            version,
            round: c.round,
            schema_hash: self.schema_hash.to_vec(),
            spec: Some(spec_of(&self.cfg)),
            params: Some(fedmesh_proto::encode_f32(&params, &[params.len() as u64])),
            scaler: c.scaler,
            prev_hash: fedmesh_crypto::sha256(&prev_signed).to_vec(),
            rule: rule.clone(),
            participants: c.participants.len() as u32,
            created_unix_ms: now,
        };
        let signed = sign_model(&self.signer.current(), &body);
        // Reputation moves under the lock, so violations reported by
        // concurrent submissions are never overwritten.
        let (decisions, reputation_bytes, refused_commits) = {
            let mut g = self.lock();
            let mut decisions = std::mem::take(&mut g.pending_decisions);
            decisions.extend(g.reputation.observe_round(version, &c.evidence));
            let refused = std::mem::take(&mut g.refused_commits);
            (decisions, g.reputation.to_bytes(), refused)
        };
        for d in &decisions {
            info!(tenant = %self.tenant, node = %d.node, action = d.action.label(), reason = %d.reason, "reputation");
        }
        let quarantined = c.quarantined.len();
        self.store.commit(
            self.tenant.as_str(),
            version,
            &signed,
            AuditEntry {
                tenant: self.tenant.to_string(),
                version,
                round: c.round,
                rule,
                participants: c.participants.clone(),
                excluded: c.excluded,
                model_sha256: String::new(),
                prev_entry_sha256: String::new(),
                unix_ms: now,
                quarantined: c.quarantined,
                reputation: decisions.clone(),
                secure: c.secure.as_ref().map(|s| crate::store::SecureAudit {
                    bucket_size: s.bucket_size,
                    buckets: s.buckets,
                    dropped: s.dropped,
                    rejected: s.rejected,
                    dp_epsilon: s.epsilon,
                    dp_delta: s.epsilon.map(|_| self.cfg.secure.dp_delta),
                }),
                refused_commits,
            },
            momentum_bytes.as_deref(),
            Some(&reputation_bytes),
        )?;
        {
            let mut g = self.lock();
            g.version = version;
            g.params = Arc::new(params);
            g.signed = Arc::new(signed);
            g.last_delta = Some(Arc::new(c.delta));
            g.momentum = momentum.map(Arc::new);
            g.committed_this_run += 1;
        }
        for d in &decisions {
            self.metrics
                .reputation_decision(self.tenant.as_str(), d.action.label());
        }
        Ok(RoundSummary {
            tenant: self.tenant.to_string(),
            round: c.round,
            version,
            participants: c.participants.len(),
            selected: c.selected,
            mean_train_loss: c.mean_train_loss,
            bytes_received: c.bytes_received,
            excluded: c.excluded_count,
            quarantined,
            duration: c.started.elapsed(),
            secure: c.secure,
        })
    }

    /// Validates and routes a secure-aggregation message of the open round,
    /// counting the outcome in metrics; protocol violations count against
    /// the sender's reputation.
    pub fn secagg(
        &self,
        node: &NodeId,
        req: v1::SecAggRequest,
        wire_bytes: u64,
    ) -> Result<v1::SecAggAck, FedError> {
        let r = self.route_secagg(node, &req, wire_bytes);
        match &r {
            Ok(_) => {
                let update = matches!(req.message, Some(v1::sec_agg_request::Message::Masked(_)));
                self.metrics
                    .secagg_accepted(self.tenant.as_str(), wire_bytes, update);
            }
            Err(e) => {
                self.metrics.refused(self.tenant.as_str(), e);
                if let Some(reason) = e.invalid_reason() {
                    self.note_violation(node, &reason);
                }
            }
        }
        r
    }

    fn route_secagg(
        &self,
        node: &NodeId,
        req: &v1::SecAggRequest,
        wire_bytes: u64,
    ) -> Result<v1::SecAggAck, FedError> {
        let mut g = self.lock();
        let version = g.version;
        let round = g.round.as_mut().ok_or(FedError::NoOpenRound { version })?;
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
        let ack = secure.accept(node, req, time::OffsetDateTime::now_utc(), wire_bytes)?;
        drop(g);
        self.wake.notify_one();
        Ok(ack)
    }

    /// Aborts a round whose aggregate failed the commit guard: a
    /// structured warning, the `commits_refused` metric, the round's
    /// status (nodes see the reason); the version does not advance and the
    /// round's updates, momentum and centre are discarded.
    fn refuse_commit(&self, round_no: u64, refusal: CommitRefusal) -> FedError {
        warn!(tenant = %self.tenant, round = round_no, reason = refusal.label(),
            detail = %refusal, "commit refused: the aggregate is not a usable model");
        self.metrics
            .commit_refused(self.tenant.as_str(), refusal.label());
        // The audit chain only grows with commits: the refusal goes into
        // the next version's entry (bounded: one record per aborted round,
        // and at most `MAX_PENDING_REFUSALS` between two commits).
        {
            let mut g = self.lock();
            if g.refused_commits.len() < MAX_PENDING_REFUSALS {
                g.refused_commits.push(crate::store::RefusedCommit {
                    round: round_no,
                    reason: refusal.label().to_string(),
                    detail: truncate_text(&refusal.to_string(), MAX_REFUSAL_TEXT).into_owned(),
                    unix_ms: unix_ms(SystemTime::now()),
                });
            }
        }
        if let Err(e) = self.abort_round(round_no, format!("commit refused: {refusal}")) {
            warn!(tenant = %self.tenant, round = round_no, error = %e, "cannot record the aborted round");
        }
        FedError::CommitRefused(refusal)
    }

    fn abort_round(&self, round_no: u64, reason: String) -> Result<(), FedError> {
        let reason = truncate_text(&reason, MAX_REFUSAL_TEXT).into_owned();
        warn!(tenant = %self.tenant, round = round_no, %reason, "round aborted");
        // Keep violations seen in this round across a crash.
        let rep = self.lock().reputation.to_bytes();
        self.store.save_reputation(self.tenant.as_str(), &rep)?;
        self.metrics.aborted(self.tenant.as_str());
        self.status.send_replace(RoundStatus::Aborted {
            round: round_no,
            reason,
        });
        Ok(())
    }

    /// One round with bucket size k > 1: buckets fixed from the committed
    /// participant list, then the four secure-aggregation phases, each
    /// ending when every live member answered or at its deadline, then the
    /// robust stage over bucket sums.
    async fn run_secure_round(
        &self,
        round_no: u64,
        selected: BTreeSet<NodeId>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), FedError> {
        let sc = &self.cfg.secure;
        let phase_timeout = Duration::from_millis(sc.phase_timeout_ms);
        let mask_timeout = Duration::from_millis(self.cfg.round_timeout_ms);
        let timeout_of = |p: Phase| {
            if p == Phase::Mask {
                mask_timeout
            } else {
                phase_timeout
            }
        };
        let span = info_span!("round", tenant = %self.tenant, round = round_no);
        let opened = SystemTime::now();
        let (base_version, digest) = {
            let g = self.lock();
            (
                g.version,
                fedmesh_proto::secure::model_digest(g.version, &g.params),
            )
        };
        let secure = match SecureRound::new(
            &self.tenant,
            round_no,
            base_version,
            digest,
            &selected,
            sc,
            self.param_count,
            self.cfg.model.input_dim,
            &self.verifier,
            unix_ms(opened + phase_timeout),
        ) {
            Ok(s) => s,
            Err(e) => return self.abort_round(round_no, e.to_string()),
        };
        let mut info = Arc::new(OpenInfo {
            round: round_no,
            base_version,
            selected: selected.clone(),
            shadow: BTreeSet::new(),
            deadline_unix_ms: unix_ms(opened + 3 * phase_timeout + mask_timeout),
            training: training_of(&self.cfg),
            secure: Some(secure.view()),
        });
        info!(parent: &span, base_version, selected = selected.len(),
            buckets = secure.bucket_count(), k = sc.bucket_size, "secure round open");
        {
            let mut g = self.lock();
            g.round = Some(OpenRound {
                info: info.clone(),
                started: tokio::time::Instant::now(),
                updates: BTreeMap::new(),
                secure: Some(secure),
            });
        }
        self.status.send_replace(RoundStatus::Open(info.clone()));
        let mut phase = Phase::Advertise;
        loop {
            self.wait_round(
                tokio::time::Instant::now() + timeout_of(phase),
                shutdown,
                |r| {
                    r.and_then(|r| r.secure.as_ref())
                        .is_none_or(|s| s.phase_complete())
                },
            )
            .await;
            if *shutdown.borrow() {
                self.lock().round = None;
                return Ok(());
            }
            let Some(next) = phase.next() else {
                break;
            };
            let next_deadline = unix_ms(SystemTime::now() + timeout_of(next));
            let (view, live) = {
                let mut g = self.lock();
                let Some(s) = g.round.as_mut().and_then(|r| r.secure.as_mut()) else {
                    return Ok(());
                };
                s.advance(next_deadline)?;
                let view = s.view();
                let live = s.any_live();
                let mut next_info = (*info).clone();
                next_info.secure = Some(view);
                info = Arc::new(next_info);
                if let Some(r) = g.round.as_mut() {
                    r.info = info.clone();
                }
                (info.clone(), live)
            };
            info!(parent: &span, phase = next.name(), "secure phase");
            self.status.send_replace(RoundStatus::Open(view));
            if !live {
                break;
            }
            phase = next;
        }
        let Some(mut round) = self.lock().round.take() else {
            return Ok(());
        };
        let Some(secure) = round.secure.take() else {
            return Ok(());
        };
        let bytes = secure.bytes_received();
        let crate::secure_round::Finished {
            sums,
            dropped,
            stragglers,
            violations,
        } = secure.finish();
        // Attributable violations found while unmasking (wrong shares in a
        // signed response) count against their sender; a refused advert
        // was reported when it was refused.
        for v in &violations {
            if matches!(
                v.kind,
                crate::secure_round::ViolationKind::WrongUnmaskShares { .. }
            ) {
                self.note_violation(
                    &v.node,
                    &InvalidReason::secure_protocol(
                        crate::bounds::SecureViolation::Share,
                        &v.kind.to_string(),
                    ),
                );
            }
        }
        let contributors: usize = sums.iter().map(|s| s.member_count()).sum();
        if sums.is_empty() || contributors < self.cfg.quorum {
            let reason = format!(
                "quorum not reached: {contributors} updates in {} unmasked buckets \
                 ({} dropped; quorum {})",
                sums.len(),
                dropped.len(),
                self.cfg.quorum
            );
            return self.abort_round(round_no, reason);
        }
        if let Err(short) = crate::secure_round::check_survivors(&sums, sc, self.cfg.quorum) {
            let reason = format!(
                "{} ({}; {} buckets dropped)",
                short.label(),
                short,
                dropped.len()
            );
            return self.abort_round(round_no, reason);
        }
        let summary = self.commit_secure(
            &round,
            &selected,
            sums,
            dropped,
            (stragglers, &violations),
            bytes,
        )?;
        self.announce(&span, round_no, summary);
        Ok(())
    }

    /// Waits until `done` holds for the open round (checked after every
    /// accepted message), the deadline passes or shutdown is requested.
    async fn wait_round(
        &self,
        deadline: tokio::time::Instant,
        shutdown: &mut watch::Receiver<bool>,
        done: impl Fn(Option<&OpenRound>) -> bool,
    ) {
        loop {
            if done(self.lock().round.as_ref()) || *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Logs, publishes and counts a committed round.
    fn announce(&self, span: &tracing::Span, round_no: u64, summary: RoundSummary) {
        let kind = if summary.secure.is_some() {
            "secure round committed"
        } else {
            "round committed"
        };
        info!(parent: span, version = summary.version, participants = summary.participants,
            mean_train_loss = summary.mean_train_loss, ms = summary.duration.as_millis() as u64, "{kind}");
        self.status.send_replace(RoundStatus::Committed {
            round: round_no,
            version: summary.version,
        });
        self.metrics.committed(&summary);
        let _ = self.summaries.send(summary);
    }

    fn commit_secure(
        &self,
        round: &OpenRound,
        selected: &BTreeSet<NodeId>,
        sums: Vec<fedmesh_crypto::secagg::BucketSum>,
        dropped: Vec<crate::secure_round::DroppedBucket>,
        (stragglers, violations): (
            Vec<crate::secure_round::Straggler>,
            &[crate::secure_round::Violation],
        ),
        bytes_received: u64,
    ) -> Result<RoundSummary, FedError> {
        let sc = &self.cfg.secure;
        let prev_delta = self.lock().last_delta.clone();
        let agg = crate::secure::aggregate_buckets(
            &sums,
            &self.cfg.aggregation,
            &self.cfg.reputation,
            prev_delta.as_deref().map(|v| v.as_slice()),
            sc.max_bucket_mean_norm,
        )?;
        let rule = self.cfg.aggregation.rule.name();
        let mut excluded: Vec<(String, String)> = Vec::new();
        for d in &dropped {
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
        for st in &stragglers {
            excluded.push((
                st.node.to_string(),
                format!("no {} message before the deadline", st.phase.name()),
            ));
        }
        // Members refused for a violation (outvoted liars still contributed).
        for v in violations {
            if v.kind == crate::secure_round::ViolationKind::NonContributoryKey {
                excluded.push((
                    v.node.to_string(),
                    format!("bucket {}: {}", v.bucket, v.kind),
                ));
            }
        }
        let mut extras = fedmesh_proto::secure::ExtraSums::new(self.cfg.model.input_dim);
        let mut participants = Vec::new();
        let mut excluded_count = 0;
        for s in &sums {
            let members = s.contributors().iter().map(|n| n.to_string());
            if let Some((_, reason)) = agg.rejected.iter().find(|(b, _)| *b == s.bucket()) {
                excluded_count += s.member_count();
                let reason = truncate_text(reason, MAX_REFUSAL_TEXT);
                excluded.extend(members.map(|m| (m, reason.to_string())));
            } else if agg.excluded.contains(&s.bucket()) {
                excluded_count += s.member_count();
                excluded.extend(
                    members.map(|m| (m, format!("bucket {} not selected by {rule}", s.bucket()))),
                );
            } else {
                extras.add_bucket(s.extra(), s.member_count());
                participants.extend(members);
            }
        }
        participants.sort();
        excluded.sort();
        let epsilon = sc.noise_multiplier.and_then(|z| {
            let rounds = self.lock().version + 1;
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
            .or_else(|| self.current_scaler());
        self.publish_version(Commit {
            round: round.info.round,
            started: round.started,
            delta: agg.value,
            scaler,
            participants,
            excluded,
            excluded_count,
            evidence: agg.evidence,
            quarantined: Vec::new(),
            selected: selected.len(),
            mean_train_loss: extras.mean_loss() as f32,
            bytes_received,
            secure: Some(secure),
        })
    }

    fn current_scaler(&self) -> Option<v1::Scaler> {
        let signed = self.lock().signed.clone();
        decode_signed(&signed)
            .ok()
            .and_then(|(_, body)| body.scaler)
    }
}

/// Everything a commit needs besides the federation's state.
struct Commit {
    round: u64,
    started: tokio::time::Instant,
    delta: Vec<f32>,
    scaler: Option<v1::Scaler>,
    participants: Vec<String>,
    excluded: Vec<(String, String)>,
    excluded_count: usize,
    evidence: Vec<(String, Evidence)>,
    quarantined: Vec<String>,
    selected: usize,
    mean_train_loss: f32,
    bytes_received: u64,
    secure: Option<SecureSummary>,
}

/// Decrements a node's watcher count when its round stream ends.
pub struct WatchGuard {
    fed: Arc<Federation>,
    node: NodeId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut g = self.fed.lock();
        if let Some(n) = g.watchers.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.watchers.remove(&self.node);
            }
        }
        drop(g);
        self.fed.wake.notify_one();
    }
}

fn spec_of(cfg: &TenantConfig) -> v1::ModelSpec {
    v1::ModelSpec {
        input_dim: cfg.model.input_dim as u32,
        hidden: cfg.model.hidden.iter().map(|&h| h as u32).collect(),
    }
}

fn training_of(cfg: &TenantConfig) -> v1::TrainingParams {
    v1::TrainingParams {
        local_epochs: cfg.training.local_epochs,
        batch_size: cfg.training.batch_size,
        learning_rate: cfg.training.learning_rate,
        prox_mu: cfg.training.prox_mu,
    }
}

fn sign_model(signer: &CertSigner, body: &v1::GlobalModel) -> Vec<u8> {
    let body = body.encode_to_vec();
    let signature = signer.sign(&body);
    v1::SignedModel {
        body,
        signature,
        signer_cert: signer.cert_der().to_vec(),
    }
    .encode_to_vec()
}

fn short_hex(b: &[u8]) -> String {
    hex::encode(&b[..b.len().min(6)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::ScalerProblem;

    /// A federation over a tiny model (3 features, hidden [2]) in a
    /// temporary store, and its directory.
    fn federation(extra: &str) -> (Arc<Federation>, tempfile::TempDir) {
        let now = time::OffsetDateTime::now_utc();
        let ca = fedmesh_crypto::MeshCa::generate("test CA", now, 30).unwrap();
        let issued = ca
            .issue_coordinator(
                &"main".parse().unwrap(),
                &["localhost".into()],
                &[],
                now,
                30,
            )
            .unwrap();
        let signer = fedmesh_crypto::SharedSigner::new(
            CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap(),
        );
        let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
        let text = format!(
            "name = \"acme\"\nmin_nodes = 2\nquorum = 2\n{extra}\n[model]\ninput_dim = 3\nhidden = [2]\n"
        );
        let mut cfg: TenantConfig = toml::from_str(&text).unwrap();
        cfg.model.feature_schema_digest = "00".repeat(32);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fed = Federation::open(
            "acme".parse().unwrap(),
            cfg,
            store,
            signer,
            verifier,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        (fed, dir)
    }

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    /// Opens a plaintext round with `nodes` selected.
    fn open_round(fed: &Federation, nodes: &[&str]) -> Arc<OpenInfo> {
        let mut g = fed.lock();
        let info = Arc::new(OpenInfo {
            round: 1,
            base_version: g.version,
            selected: nodes.iter().map(|n| node(n)).collect(),
            shadow: BTreeSet::new(),
            deadline_unix_ms: 0,
            training: training_of(&fed.cfg),
            secure: None,
        });
        g.round = Some(OpenRound {
            info: info.clone(),
            started: tokio::time::Instant::now(),
            updates: BTreeMap::new(),
            secure: None,
        });
        info
    }

    fn update(fed: &Federation, info: &OpenInfo, node: &str, value: f32) -> v1::UpdateRequest {
        let delta = vec![value; fed.param_count];
        v1::UpdateRequest {
            tenant: "acme".into(),
            node: node.into(),
            round: info.round,
            base_version: info.base_version,
            schema_hash: fed.schema_hash.to_vec(),
            delta: Some(fedmesh_proto::encode_f32(&delta, &[delta.len() as u64])),
            num_samples: 100,
            scaler_stats: Some(v1::ScalerStats {
                count: 100,
                sum: vec![10.0; 3],
                sum_sq: vec![20.0; 3],
            }),
            train_loss: 0.5,
        }
    }

    fn refused_with(r: Result<v1::SubmitAck, FedError>) -> InvalidReason {
        match r {
            Err(FedError::Refused(reason)) => reason,
            other => panic!("expected a typed refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_node_claiming_2_pow_64_samples_is_refused() {
        let (fed, _dir) = federation("");
        let info = open_round(&fed, &["n1", "n2"]);
        let mut u = update(&fed, &info, "n1", 0.01);
        u.num_samples = u64::MAX;
        let reason = refused_with(fed.submit(&node("n1"), u, 10));
        assert_eq!(reason.label(), "invalid_num_samples");
        // Nothing recorded; the node may resend a valid update.
        let ok = update(&fed, &info, "n1", 0.01);
        assert!(fed.submit(&node("n1"), ok, 10).is_ok());
        // The violation is reputation evidence with the bounded text.
        let rec = fed.reputation();
        let r = &rec["n1"];
        assert_eq!(r.violations, 1);
        assert!(r.last_reason.contains("num_samples"), "{}", r.last_reason);
        // Scaler count is capped the same way.
        let mut u = update(&fed, &info, "n2", 0.01);
        if let Some(s) = u.scaler_stats.as_mut() {
            s.count = u64::MAX;
        }
        let reason = refused_with(fed.submit(&node("n2"), u, 10));
        assert!(matches!(
            reason,
            InvalidReason::Scaler(ScalerProblem::Count { .. })
        ));
    }

    #[test]
    fn finite_f64_scaler_stats_that_overflow_f32_are_refused() {
        let (fed, _dir) = federation("");
        let info = open_round(&fed, &["n1", "n2"]);
        let mut u = update(&fed, &info, "n1", 0.01);
        u.scaler_stats = Some(v1::ScalerStats {
            count: 1,
            sum: vec![1e300; 3],
            sum_sq: vec![1e300; 3],
        });
        let reason = refused_with(fed.submit(&node("n1"), u, 10));
        assert_eq!(reason.label(), "invalid_scaler");
        let mut u = update(&fed, &info, "n2", 0.01);
        u.train_loss = 1e30;
        assert_eq!(
            refused_with(fed.submit(&node("n2"), u, 10)).label(),
            "invalid_train_loss"
        );
    }

    #[test]
    fn a_huge_shape_is_refused_with_a_bounded_message() {
        let (fed, _dir) = federation("");
        let info = open_round(&fed, &["n1", "n2"]);
        let mut u = update(&fed, &info, "n1", 0.01);
        if let Some(t) = u.delta.as_mut() {
            t.shape = vec![1; 1_000_000];
        }
        let e = fed.submit(&node("n1"), u, 10).unwrap_err();
        assert!(e.to_string().len() <= 1024, "{}", e.to_string().len());
        let st = crate::service::to_status(e);
        assert!(st.message().len() <= 1024);
    }

    #[test]
    fn equal_weighting_gives_a_liar_one_share() {
        let (fed, _dir) = federation("weighting = \"equal\"\nmax_samples_per_update = 1000");
        let info = open_round(&fed, &["n1", "n2"]);
        let mut a = update(&fed, &info, "n1", 0.0);
        a.num_samples = 1;
        let mut b = update(&fed, &info, "n2", 0.02);
        b.num_samples = 1000;
        fed.submit(&node("n1"), a, 10).unwrap();
        fed.submit(&node("n2"), b, 10).unwrap();
        let round = fed.lock().round.take().unwrap();
        let before = fed.lock().params.clone();
        fed.commit(round, &info.selected).unwrap();
        let after = fed.lock().params.clone();
        for (w, w0) in after.iter().zip(before.iter()) {
            assert!((w - w0 - 0.01).abs() < 1e-6, "{w} {w0}");
        }
    }

    #[test]
    fn the_commit_guard_refuses_an_out_of_bound_model_and_keeps_the_version() {
        // server_lr = 1e30: a finite aggregate of finite updates steps the
        // parameters out of bounds (and, in f32, to infinity).
        let (fed, _dir) = federation("server_lr = 1e30");
        let info = open_round(&fed, &["n1", "n2"]);
        fed.submit(&node("n1"), update(&fed, &info, "n1", 0.01), 10)
            .unwrap();
        fed.submit(&node("n2"), update(&fed, &info, "n2", 0.02), 10)
            .unwrap();
        let round = fed.lock().round.take().unwrap();
        let (v0, signed0) = {
            let g = fed.lock();
            (g.version, g.signed.clone())
        };
        let e = fed.commit(round, &info.selected).unwrap_err();
        let FedError::CommitRefused(refusal) = &e else {
            panic!("expected a refused commit, got {e:?}");
        };
        assert!(CommitRefusal::LABELS.contains(&refusal.label()));
        let g = fed.lock();
        assert_eq!(g.version, v0);
        assert_eq!(g.signed, signed0);
        assert!(g.last_delta.is_none());
        drop(g);
        assert_eq!(fed.store.latest_model("acme").unwrap().unwrap().0, v0);
        assert!(matches!(
            fed.status(),
            RoundStatus::Aborted { round: 1, .. }
        ));
        assert!(
            fed.metrics
                .encode()
                .contains("fedmesh_commits_refused_total{tenant=\"acme\",reason=\"")
        );
    }

    #[test]
    fn the_commit_guard_refuses_a_non_finite_scaler() {
        let (fed, _dir) = federation("");
        let info = open_round(&fed, &["n1", "n2"]);
        fed.submit(&node("n1"), update(&fed, &info, "n1", 0.01), 10)
            .unwrap();
        fed.submit(&node("n2"), update(&fed, &info, "n2", 0.02), 10)
            .unwrap();
        // Bypass validation, as a path that forgot it would.
        let mut round = fed.lock().round.take().unwrap();
        if let Some(u) = round.updates.get_mut(&node("n1")) {
            u.scaler = Some(v1::ScalerStats {
                count: 1,
                sum: vec![1e300; 3],
                sum_sq: vec![1e300; 3],
            });
        }
        let e = fed.commit(round, &info.selected).unwrap_err();
        assert!(
            matches!(
                e,
                FedError::CommitRefused(CommitRefusal::Scaler { field: "mean", .. })
            ),
            "{e:?}"
        );
        assert_eq!(fed.version(), 0);

        // The next commit's audit entry records the refused round.
        let info = open_round(&fed, &["n1", "n2"]);
        fed.submit(&node("n1"), update(&fed, &info, "n1", 0.01), 10)
            .unwrap();
        fed.submit(&node("n2"), update(&fed, &info, "n2", 0.02), 10)
            .unwrap();
        let round = fed.lock().round.take().unwrap();
        fed.commit(round, &info.selected).unwrap();
        assert_eq!(fed.version(), 1);
        let log = fed.audit_log().unwrap();
        let refused = &log[1].refused_commits;
        assert_eq!(refused.len(), 1, "{log:?}");
        assert_eq!(
            (refused[0].round, refused[0].reason.as_str()),
            (1, "scaler_out_of_range")
        );
        assert!(refused[0].detail.len() <= MAX_REFUSAL_TEXT + 3);
        assert!(fed.lock().refused_commits.is_empty());
        assert_eq!(fed.store.verify_chain("acme").unwrap(), 2);
    }
}
