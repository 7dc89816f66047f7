//! One tenant's federation: the async shell around its round core
//! ([`crate::machine::RoundMachine`]). The shell holds the machine under a
//! lock and owns everything with effects: the store (round numbers,
//! versions, the audit log), the signer, the round-status `watch` channel,
//! the wake-ups and deadlines, and the metrics. The machine decides.
//!
//! States: `Idle` (waiting for `min_nodes` watchers) → `Open` (collecting
//! until every selected node has submitted, or the deadline) → either commit
//! (quorum reached: aggregate, sign, append to the store, publish) or abort
//! (no quorum: nothing is written but the used round number; the round is
//! retried under a new number). Nodes learn about state changes through a
//! `watch` channel, so a node that (re)subscribes always sees the latest
//! state first and never needs to poll.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedmesh_crypto::{CertSigner, CertVerifier, NodeId, SharedSigner, TenantId};
use fedmesh_proto::v1;
use prost::Message;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::bounds::{CommitRefusal, InvalidReason, MAX_REFUSAL_TEXT, truncate_text};
use crate::config::TenantConfig;
pub use crate::error::FedError;
use crate::machine::training_of;
use crate::machine::{
    Close, CommitPlan, Restored, RoundMachine, SecureOutcome, Selection, plan_plaintext,
    plan_secure, step,
};
use crate::metrics::Metrics;
use crate::reputation::Reputation;
pub use crate::round::{OpenInfo, RoundStatus, RoundSummary, SecureSummary, ValidUpdate};
use crate::secure_round::{ListRecord, Phase};
use crate::server_step::genesis_params;
use crate::store::{AuditEntry, Store};
pub use crate::validate::validate_fields;

/// Shortest interval between two "waiting for nodes" statuses.
const IDLE_REPUBLISH: Duration = Duration::from_millis(500);

struct Inner {
    /// The round core: committed state, reputation, the open round.
    machine: RoundMachine,
    /// Signed bytes of the machine's version.
    signed: Arc<Vec<u8>>,
    watchers: BTreeMap<NodeId, usize>,
    joined: BTreeSet<NodeId>,
    /// Round of the secure list last stored (see [`Federation::save_list`]).
    saved_list: Option<u64>,
}

/// A tenant's federation.
pub struct Federation {
    tenant: TenantId,
    cfg: TenantConfig,
    schema_hash: [u8; 32],
    feature_digest: [u8; 32],
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
        let (version, signed, params, scaler) = match store.latest_model(tenant.as_str())? {
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
                (v, bytes, params, body.scaler)
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
                (0, signed, params, None)
            }
        };
        let momentum = match store.server_state(tenant.as_str())? {
            Some(b) if b.len() == param_count * 4 => Some(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>(),
            ),
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
        // The last secure round's list: without it the next secure round
        // sends every node the whole list (n names to each of n nodes).
        let last_list = match store.secure_list(tenant.as_str())? {
            Some(b) => match ListRecord::from_bytes(&b) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(tenant = %tenant, error = %e, "stored secure participant list not used; the next secure round sends whole lists");
                    None
                }
            },
            None => None,
        };
        let saved_list = last_list.as_ref().map(|r| r.round);
        let (status, _) = watch::channel(RoundStatus::Idle {
            version,
            reason: "waiting for nodes".into(),
        });
        let (summaries, _) = broadcast::channel(64);
        let machine = RoundMachine::new(
            tenant.clone(),
            cfg.clone(),
            schema_hash,
            param_count,
            Restored {
                version,
                params,
                scaler,
                momentum,
                reputation,
                last_list,
            },
        );
        Ok(Arc::new(Self {
            tenant,
            cfg,
            schema_hash,
            feature_digest: digest,
            store,
            signer,
            verifier,
            inner: Mutex::new(Inner {
                machine,
                signed: Arc::new(signed),
                watchers: BTreeMap::new(),
                joined: BTreeSet::new(),
                saved_list,
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
        self.lock().machine.version()
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
            current_version: g.machine.version(),
            schema_hash: self.schema_hash.to_vec(),
            model_spec: Some(spec_of(&self.cfg)),
            training: Some(training_of(&self.cfg)),
        })
    }

    /// Signed bytes of `version` (0 = latest).
    pub fn model(&self, version: u64) -> Result<Arc<Vec<u8>>, FedError> {
        {
            let g = self.lock();
            let current = g.machine.version();
            if version == 0 || version == current {
                return Ok(g.signed.clone());
            }
            if version > current {
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

    /// How many nodes hold a round stream open (constant time: a node
    /// whose last stream closed leaves `watchers`).
    pub fn connected_count(&self) -> usize {
        self.lock().watchers.len()
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
        let decision = self.lock().machine.violation(node, reason);
        if let Some(d) = decision {
            warn!(tenant = %self.tenant, node = %node, reason = %d.reason, "node quarantined");
        }
    }

    /// `node`'s certificate (serial `serial`, hex) was revoked: its update to
    /// the open plaintext round is dropped (returns whether there was one)
    /// and the revocation is recorded in the next version's audit entry. A
    /// masked input it already sent to a secure round stays in its bucket's
    /// sum (it cannot be told apart); its connections are closed, so it is
    /// a dropout from then on.
    pub fn revoke(&self, node: &NodeId, serial: &str) -> bool {
        let dropped = self.lock().machine.revoke(node, serial);
        self.wake.notify_one();
        dropped
    }

    /// This tenant's audit log, in version order.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, FedError> {
        Ok(self.store.audit_log(self.tenant.as_str())?)
    }

    /// Nodes currently quarantined.
    pub fn quarantined(&self) -> BTreeSet<String> {
        self.lock().machine.reputation().quarantined()
    }

    /// Reputation records of every node seen, for `/status`.
    pub fn reputation(&self) -> BTreeMap<String, crate::reputation::NodeRecord> {
        self.lock().machine.reputation().records().clone()
    }

    fn record_update(
        &self,
        node: &NodeId,
        req: v1::UpdateRequest,
        wire_bytes: u64,
    ) -> Result<v1::SubmitAck, FedError> {
        let ack = self.lock().machine.submit(node, req, wire_bytes)?;
        self.wake.notify_one();
        Ok(ack)
    }

    /// Drives rounds until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let span = info_span!("federation", tenant = %self.tenant);
        async move {
            // When the idle status last changed: while nodes connect, it
            // is republished at most every IDLE_REPUBLISH (each change is
            // an event on every open stream, so one per connection would
            // cost the fleet's size per connection).
            let mut idle_published: Option<tokio::time::Instant> = None;
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let max = self.cfg.max_rounds;
                if max != 0 && self.lock().machine.committed_this_run() >= max {
                    let version = self.version();
                    self.status.send_replace(RoundStatus::Idle {
                        version,
                        reason: format!("max_rounds = {max} reached"),
                    });
                    let _ = shutdown.changed().await;
                    return;
                }
                let count = self.connected_count();
                if count < self.cfg.min_nodes {
                    let now = tokio::time::Instant::now();
                    let due = idle_published.map_or(now, |t| t + IDLE_REPUBLISH);
                    if now >= due {
                        let version = self.version();
                        let reason = format!(
                            "waiting for nodes: {count} of {} connected",
                            self.cfg.min_nodes
                        );
                        let changed = self.status.send_if_modified(|s| {
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
                        if changed {
                            idle_published = Some(now);
                        }
                    }
                    // Wake-ups (connections) before `due` only recount.
                    let sleep = if now >= due {
                        IDLE_REPUBLISH
                    } else {
                        due - now
                    };
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(sleep) => {}
                    }
                    continue;
                }
                idle_published = None;
                let connected = self.connected();
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
        let Selection { selected, shadow } = self.lock().machine.select(round_no, connected);
        if self.cfg.secure.masked() {
            return self.run_secure_round(round_no, selected, shutdown).await;
        }
        let timeout = Duration::from_millis(self.cfg.round_timeout_ms);
        let info = self.lock().machine.open(
            round_no,
            Selection {
                selected: selected.clone(),
                shadow: shadow.clone(),
            },
            unix_ms(SystemTime::now()),
        );
        let started = tokio::time::Instant::now();
        let base_version = info.base_version;
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
        // Only selected nodes close the round: shadow updates never do.
        self.wait_round(tokio::time::Instant::now() + timeout, shutdown, |m| {
            m.selected_updates() >= selected.len()
        })
        .await;
        let round = self.lock().machine.take_round();
        let Some(round) = round else { return Ok(()) };
        if *shutdown.borrow() {
            return Ok(());
        }
        let base = self.lock().machine.base();
        match plan_plaintext(&self.cfg, &round, &base)? {
            Close::Abort(reason) => self.abort_round(round_no, reason),
            Close::Commit(plan) => {
                let summary = self.publish_version(*plan, started)?;
                self.announce(&span, round_no, summary);
                Ok(())
            }
        }
    }

    /// Signs and stores the next version from a commit plan, moves
    /// reputation, and installs the new state in the machine: the tail
    /// shared by the plaintext and the secure commit.
    fn publish_version(
        &self,
        c: CommitPlan,
        started: tokio::time::Instant,
    ) -> Result<RoundSummary, FedError> {
        let (base, prev_signed) = {
            let g = self.lock();
            (g.machine.base(), g.signed.clone())
        };
        // The last guard: nothing that is not a usable model is signed.
        let candidate = match step(&self.cfg, &base, &c) {
            Ok(candidate) => candidate,
            Err(refusal) => return Err(self.refuse_commit(c.round, refusal)),
        };
        let version = candidate.version;
        let momentum_bytes: Option<Vec<u8>> = candidate
            .momentum
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
            params: Some(fedmesh_proto::encode_f32(
                &candidate.params,
                &[candidate.params.len() as u64],
            )),
            scaler: c.scaler.clone(),
            prev_hash: fedmesh_crypto::sha256(&prev_signed).to_vec(),
            rule: rule.clone(),
            participants: c.participants.len() as u32,
            created_unix_ms: now,
        };
        let signed = sign_model(&self.signer.current(), &body);
        // Reputation moves under the lock, so violations reported by
        // concurrent submissions are never overwritten.
        let observed = self.lock().machine.observe(version, &c.evidence);
        let decisions = observed.decisions;
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
                refused_commits: observed.refused_commits,
            },
            momentum_bytes.as_deref(),
            Some(&observed.reputation),
        )?;
        {
            let mut g = self.lock();
            g.signed = Arc::new(signed);
            g.machine.apply(candidate, c.delta, c.scaler);
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
            duration: started.elapsed(),
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
        let ack =
            self.lock()
                .machine
                .secagg(node, req, time::OffsetDateTime::now_utc(), wire_bytes)?;
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
        self.lock()
            .machine
            .refuse(round_no, &refusal, unix_ms(SystemTime::now()));
        if let Err(e) = self.abort_round(round_no, format!("commit refused: {refusal}")) {
            warn!(tenant = %self.tenant, round = round_no, error = %e, "cannot record the aborted round");
        }
        FedError::CommitRefused(refusal)
    }

    fn abort_round(&self, round_no: u64, reason: String) -> Result<(), FedError> {
        let reason = truncate_text(&reason, MAX_REFUSAL_TEXT).into_owned();
        warn!(tenant = %self.tenant, round = round_no, %reason, "round aborted");
        // Keep violations seen in this round across a crash.
        let rep = self.lock().machine.reputation_bytes();
        self.store.save_reputation(self.tenant.as_str(), &rep)?;
        self.metrics.aborted(self.tenant.as_str());
        self.status.send_replace(RoundStatus::Aborted {
            round: round_no,
            reason,
        });
        Ok(())
    }

    /// Stores the last secure round's list (once per round), so that a
    /// restarted coordinator still sends the next one as a change. Called
    /// whenever the machine may have retired a round: after a secure round
    /// opens (it replaces an open one) and after one is taken. A failed
    /// write removes the stored list, so a restart never sends a change to
    /// a list older than the nodes hold; it costs whole lists once.
    fn save_list(&self) {
        let record = {
            let g = self.lock();
            match g.machine.last_list() {
                Some(r) if g.saved_list != Some(r.round) => r.clone(),
                _ => return,
            }
        };
        let saved = record.to_bytes().map_err(|e| e.to_string()).and_then(|b| {
            self.store
                .save_secure_list(self.tenant.as_str(), &b)
                .map_err(|e| e.to_string())
        });
        match saved {
            Ok(()) => self.lock().saved_list = Some(record.round),
            Err(e) => {
                let removed = self.store.remove_secure_list(self.tenant.as_str());
                warn!(tenant = %self.tenant, round = record.round, error = %e,
                    removed = removed.is_ok(),
                    "secure participant list not stored; after a restart the next secure round sends whole lists");
            }
        }
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
        let opened = unix_ms(SystemTime::now());
        let opening = {
            let mut g = self.lock();
            g.machine
                .open_secure(round_no, selected.clone(), opened, &self.verifier)
                .map(|info| {
                    let buckets = info.secure.as_ref().map_or(0, |v| v.buckets.len());
                    let list = info.secure.as_ref().map_or("whole", |v| v.list_sent());
                    (info, buckets, list)
                })
        };
        let (info, buckets, list) = match opening {
            Ok(opened) => opened,
            Err(e) => return self.abort_round(round_no, e.to_string()),
        };
        // Opening retired any round left open (after an error).
        self.save_list();
        let started = tokio::time::Instant::now();
        info!(parent: &span, base_version = info.base_version, selected = selected.len(),
            buckets, k = sc.bucket_size, list_sent = list, "secure round open");
        self.status.send_replace(RoundStatus::Open(info));
        let mut phase = Phase::Advertise;
        loop {
            self.wait_round(
                tokio::time::Instant::now() + timeout_of(phase),
                shutdown,
                RoundMachine::secure_phase_complete,
            )
            .await;
            if *shutdown.borrow() {
                self.lock().machine.take_round();
                self.save_list();
                return Ok(());
            }
            let Some(next) = phase.next() else {
                break;
            };
            let next_deadline = unix_ms(SystemTime::now() + timeout_of(next));
            let advanced = self.lock().machine.advance_secure(next_deadline)?;
            let Some((view, live)) = advanced else {
                return Ok(());
            };
            info!(parent: &span, phase = next.name(), "secure phase");
            self.status.send_replace(RoundStatus::Open(view));
            if !live {
                break;
            }
            phase = next;
        }
        let taken = self.lock().machine.take_round();
        self.save_list();
        let Some(mut round) = taken else {
            return Ok(());
        };
        let Some(secure) = round.secure.take() else {
            return Ok(());
        };
        let bytes_received = secure.bytes_received();
        // Unmasking (rayon over buckets) runs outside the lock.
        let finished = secure.finish();
        // Attributable violations found while unmasking (wrong shares in a
        // signed response) count against their sender; a refused advert
        // was reported when it was refused.
        let quarantines = self.lock().machine.unmask_violations(&finished.violations);
        for d in &quarantines {
            warn!(tenant = %self.tenant, node = %d.node, reason = %d.reason, "node quarantined");
        }
        let base = self.lock().machine.base();
        let outcome = SecureOutcome {
            info: &round.info,
            finished,
            bytes_received,
        };
        match plan_secure(&self.cfg, outcome, &base)? {
            Close::Abort(reason) => self.abort_round(round_no, reason),
            Close::Commit(plan) => {
                let summary = self.publish_version(*plan, started)?;
                self.announce(&span, round_no, summary);
                Ok(())
            }
        }
    }

    /// Waits until `done` holds for the machine (checked after every
    /// accepted message), the deadline passes or shutdown is requested.
    async fn wait_round(
        &self,
        deadline: tokio::time::Instant,
        shutdown: &mut watch::Receiver<bool>,
        done: impl Fn(&RoundMachine) -> bool,
    ) {
        loop {
            if done(&self.lock().machine) || *shutdown.borrow() {
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
        federation_of(2, extra)
    }

    /// The same with `min_nodes` connected nodes before a round opens.
    fn federation_of(min_nodes: usize, extra: &str) -> (Arc<Federation>, tempfile::TempDir) {
        let now = time::OffsetDateTime::now_utc();
        let ca = fedmesh_crypto::MeshCa::generate("test CA", now, 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        (open_in(dir.path(), &ca, min_nodes, extra), dir)
    }

    /// Opens tenant `acme` from the store in `dir`, signed by a coordinator
    /// certificate of `ca` (a restart opens the same directory again).
    fn open_in(
        dir: &std::path::Path,
        ca: &fedmesh_crypto::MeshCa,
        min_nodes: usize,
        extra: &str,
    ) -> Arc<Federation> {
        let now = time::OffsetDateTime::now_utc();
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
            "name = \"acme\"\nmin_nodes = {min_nodes}\nquorum = 2\n{extra}\n[model]\ninput_dim = 3\nhidden = [2]\n"
        );
        let mut cfg: TenantConfig = toml::from_str(&text).unwrap();
        cfg.model.feature_schema_digest = "00".repeat(32);
        Federation::open(
            "acme".parse().unwrap(),
            cfg,
            crate::store::reopen_retrying(dir),
            signer,
            verifier,
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    /// Opens a plaintext round with `nodes` selected.
    fn open_round(fed: &Federation, nodes: &[&str]) -> Arc<OpenInfo> {
        let selection = Selection {
            selected: nodes.iter().map(|n| node(n)).collect(),
            shadow: BTreeSet::new(),
        };
        fed.lock().machine.open(1, selection, 0)
    }

    fn take_round(fed: &Federation) -> crate::machine::OpenRound {
        fed.lock().machine.take_round().unwrap()
    }

    /// Closes `round` and publishes it as the run loop does.
    fn commit(
        fed: &Federation,
        round: crate::machine::OpenRound,
    ) -> Result<RoundSummary, FedError> {
        let base = fed.lock().machine.base();
        match plan_plaintext(&fed.cfg, &round, &base)? {
            Close::Commit(plan) => fed.publish_version(*plan, tokio::time::Instant::now()),
            Close::Abort(reason) => panic!("round aborted: {reason}"),
        }
    }

    fn update(fed: &Federation, info: &OpenInfo, node: &str, value: f32) -> v1::UpdateRequest {
        let delta = vec![value; fed.lock().machine.limits().param_count];
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

    /// Nodes connecting while the federation waits for `min_nodes`: the
    /// waiting status (an event on every open stream) changes at most once
    /// per `IDLE_REPUBLISH`, not once per connection, and the count of
    /// connected nodes follows the streams.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn connections_while_waiting_change_the_status_once_per_interval_not_per_node() {
        let (fed, _dir) = federation_of(1000, "");
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = tokio::spawn(fed.clone().run(stop_rx));
        let mut status = fed.status.subscribe();
        let counter = tokio::spawn(async move {
            let mut changes = 0usize;
            while status.changed().await.is_ok() {
                changes += 1;
            }
            changes
        });
        tokio::task::yield_now().await;
        let mut guards = Vec::new();
        for i in 0..300 {
            guards.push(fed.subscribe(&node(&format!("n{i:03}"))).1);
            // Let the run loop and the counter see every connection.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(fed.connected_count(), 300);
        tokio::time::sleep(IDLE_REPUBLISH * 2).await;
        let RoundStatus::Idle { reason, .. } = fed.status() else {
            panic!("no round can open with 300 of 1000 nodes");
        };
        assert_eq!(reason, "waiting for nodes: 300 of 1000 connected");
        guards.truncate(200);
        assert_eq!(fed.connected_count(), 200);
        assert_eq!(fed.connected().len(), 200);
        stop_tx.send(true).unwrap();
        run.await.unwrap();
        drop(guards);
        drop(fed);
        let changes = counter.await.unwrap();
        // At the start, at most one within the first interval of
        // connections, and the settled count: never one per node.
        assert!((1..=4).contains(&changes), "{changes} status changes");
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
        let round = take_round(&fed);
        let before = fed.lock().machine.params().clone();
        commit(&fed, round).unwrap();
        let after = fed.lock().machine.params().clone();
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
        let round = take_round(&fed);
        let (v0, signed0) = {
            let g = fed.lock();
            (g.machine.version(), g.signed.clone())
        };
        let e = commit(&fed, round).unwrap_err();
        let FedError::CommitRefused(refusal) = &e else {
            panic!("expected a refused commit, got {e:?}");
        };
        assert!(CommitRefusal::LABELS.contains(&refusal.label()));
        let g = fed.lock();
        assert_eq!(g.machine.version(), v0);
        assert_eq!(g.signed, signed0);
        assert!(g.machine.centre().is_none());
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
        let mut round = take_round(&fed);
        if let Some(u) = round.updates_mut().get_mut(&node("n1")) {
            u.scaler = Some(v1::ScalerStats {
                count: 1,
                sum: vec![1e300; 3],
                sum_sq: vec![1e300; 3],
            });
        }
        let e = commit(&fed, round).unwrap_err();
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
        let round = take_round(&fed);
        commit(&fed, round).unwrap();
        assert_eq!(fed.version(), 1);
        let log = fed.audit_log().unwrap();
        let refused = &log[1].refused_commits;
        assert_eq!(refused.len(), 1, "{log:?}");
        assert_eq!(
            (refused[0].round, refused[0].reason.as_str()),
            (1, "scaler_out_of_range")
        );
        assert!(refused[0].detail.len() <= MAX_REFUSAL_TEXT + 3);
        assert!(fed.lock().machine.refused_commits().is_empty());
        assert_eq!(fed.store.verify_chain("acme").unwrap(), 2);
    }

    #[test]
    fn a_restarted_coordinator_keeps_the_last_secure_list() {
        let now = time::OffsetDateTime::now_utc();
        let ca = fedmesh_crypto::MeshCa::generate("test CA", now, 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secure = "[secure]\nbucket_size = 3\nclip_norm = 1.0\n";
        let fed = open_in(dir.path(), &ca, 2, secure);
        assert!(fed.lock().machine.last_list().is_none());
        let selected: BTreeSet<NodeId> = (0..9).map(|i| node(&format!("n{i}"))).collect();
        fed.lock()
            .machine
            .open_secure(4, selected.clone(), 0, &fed.verifier)
            .unwrap();
        take_round(&fed);
        fed.save_list();
        let record = fed.lock().machine.last_list().cloned().unwrap();
        assert_eq!(record.round, 4);
        assert_eq!(record.list.len(), 9);
        drop(fed);
        // After a restart the next secure round has the same base.
        let fed = open_in(dir.path(), &ca, 2, secure);
        assert_eq!(fed.lock().machine.last_list(), Some(&record));
        drop(fed);
        // A damaged record is not used (whole lists, as on a first start),
        // and the coordinator still starts.
        let store = crate::store::reopen_retrying(dir.path());
        store
            .save_secure_list(
                "acme",
                b"{\"v\":1,\"round\":4,\"list\":[\"b\",\"a\"],\"received\":[]}",
            )
            .unwrap();
        drop(store);
        let fed = open_in(dir.path(), &ca, 2, secure);
        assert!(fed.lock().machine.last_list().is_none());
    }
}
