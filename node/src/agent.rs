//! The node agent: turns telemetry events into windows, scores them,
//! turns scores and rule hits into incidents
//! ([`crate::detection::incident`]), keeps a buffer of benign windows for
//! local training (none above a trusted threshold, none inside an open
//! incident), and installs verified global models.
//!
//! The agent does no network I/O and reads no clock: the detection loop
//! ([`crate::runtime::detection`]) feeds it events and window boundaries,
//! the federation session ([`crate::federation::session`]) moves updates to
//! and from the coordinator. Heavy training runs as a [`TrainingJob`]
//! outside the agent's lock. The agent persists its models through
//! [`NodeStore`] (file I/O under the data directory).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use fedmesh_crypto::{CertVerifier, Identity};
use fedmesh_proto::v1;
use ndarray::Array2;
use prost::Message;
use tracing::{info, warn};

use crate::alerting::alert::Alert;
use crate::config::DetectorConfig;
use crate::detection::detector::{Detector, MIN_THRESHOLD, alert_threshold, top_features};
use crate::detection::features::{
    FeatureWindow, NUM_FEATURES, WindowBuilder, feature_schema_hash, schema_scaler,
};
use crate::detection::incident::{
    IncidentConfig, IncidentEvent, IncidentStats, IncidentTracker, TrackerSnapshot, WindowVerdict,
};
use crate::detection::model::{Autoencoder, ModelSpec, TrainConfig};
use crate::detection::rules::RuleHit;
use crate::detection::scaler::{Scaler, ScalerStats};
use crate::store::{LocalModelRecord, NodeStore};
use crate::telemetry::Event;

/// Shared handle to the agent. The lock is never held across an await or
/// during training.
pub type SharedAgent = Arc<Mutex<Agent>>;

/// Locks the agent (a poisoned lock still holds consistent data: every
/// mutation completes before unlock).
pub fn lock(agent: &SharedAgent) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

/// Agent failures.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A model operation failed.
    #[error("model: {0}")]
    Model(String),
    /// Not enough data to train.
    #[error("only {have} benign windows buffered, {need} needed to train")]
    NotEnoughData {
        /// Buffered.
        have: usize,
        /// Needed.
        need: usize,
    },
    /// The global model was refused.
    #[error("global model refused: {0}")]
    Refused(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store::NodeStoreError),
    /// A (correctly signed) global model carries a value that is not
    /// finite; it is never installed.
    #[error("global model version {version} refused: its {part} is not finite")]
    NotFinite {
        /// The refused version.
        version: u64,
        /// Which part.
        part: ModelPart,
    },
}

/// The parts of a global model that are checked for finiteness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPart {
    /// The flat parameters.
    Params,
    /// The scaler's mean or standard deviation.
    Scaler,
}

impl std::fmt::Display for ModelPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelPart::Params => "parameters",
            ModelPart::Scaler => "scaler",
        })
    }
}

/// A global model the node holds back: it trains from it (the federation's
/// rounds are based on it) but keeps detecting with the model in use,
/// because the new one reconstructs the node's own recent benign windows
/// far worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldBack {
    /// The version held back.
    pub version: u64,
    /// The version still detecting (`None`: a local bootstrap model).
    pub in_use: Option<u64>,
    /// Mean loss of the new model on the checked windows.
    pub new_loss: f64,
    /// Mean loss of the model in use on the same windows.
    pub current_loss: f64,
    /// Windows compared on.
    pub windows: usize,
}

fn model_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Model(e.to_string())
}

/// A verified global model.
#[derive(Debug, Clone)]
pub struct GlobalModel {
    /// Version.
    pub version: u64,
    /// Round that produced it.
    pub round: u64,
    /// Architecture.
    pub spec: ModelSpec,
    /// Flat parameters.
    pub params: Vec<f32>,
    /// Federated scaler, once the federation has one.
    pub scaler: Option<Scaler>,
    /// The signed bytes as received (stored and re-verified on restart).
    pub signed: Vec<u8>,
    /// Model schema hash.
    pub schema_hash: [u8; 32],
}

impl GlobalModel {
    /// The federated scaler as this node trains, calibrates and scores
    /// with it: raised to the feature schema's floors
    /// ([`schema_scaler`]; the coordinator's floor is generic).
    pub fn node_scaler(&self) -> Option<Scaler> {
        self.scaler.clone().map(schema_scaler)
    }
}

/// Decodes and verifies a signed global model: coordinator signature chained
/// to the mesh CA, tenant, feature schema, architecture, parameter count and
/// finiteness. `min_version` refuses downgrades.
pub fn verify_global_model(
    bytes: &[u8],
    verifier: &CertVerifier,
    tenant: &str,
    min_version: Option<u64>,
    now: time::OffsetDateTime,
) -> Result<GlobalModel, AgentError> {
    let refuse = |m: String| AgentError::Refused(m);
    let signed = v1::SignedModel::decode(bytes).map_err(|e| refuse(format!("undecodable: {e}")))?;
    let signer = verifier
        .verify(&signed.signer_cert, &signed.body, &signed.signature, now)
        .map_err(|e| refuse(format!("signature: {e}")))?;
    if !matches!(signer, Identity::Coordinator { .. }) {
        return Err(refuse(format!("signed by {signer}, not by a coordinator")));
    }
    let body = v1::GlobalModel::decode(signed.body.as_slice())
        .map_err(|e| refuse(format!("body: {e}")))?;
    if body.tenant != tenant {
        return Err(refuse(format!("model is for tenant {:?}", body.tenant)));
    }
    if let Some(min) = min_version
        && body.version < min
    {
        return Err(refuse(format!(
            "version {} is older than {min} (downgrade)",
            body.version
        )));
    }
    let spec_msg = body.spec.ok_or_else(|| refuse("no model spec".into()))?;
    let spec = ModelSpec {
        input_dim: spec_msg.input_dim as usize,
        hidden: spec_msg.hidden.iter().map(|&h| h as usize).collect(),
    };
    if spec.input_dim != NUM_FEATURES {
        return Err(refuse(format!(
            "model expects {} features, this node has {NUM_FEATURES}",
            spec.input_dim
        )));
    }
    spec.validate().map_err(|e| refuse(e.to_string()))?;
    let schema_hash = fedmesh_proto::model::model_schema_hash(
        &feature_schema_hash(),
        spec.input_dim,
        &spec.hidden,
    );
    if body.schema_hash != schema_hash {
        return Err(refuse(
            "schema hash does not match this node's features and the model spec".into(),
        ));
    }
    let tensor = body.params.ok_or_else(|| refuse("no parameters".into()))?;
    let params = fedmesh_proto::decode_f32(&tensor, spec.param_count())
        .map_err(|e| refuse(e.to_string()))?;
    if params.len() != spec.param_count() {
        return Err(refuse(format!(
            "{} parameters, spec needs {}",
            params.len(),
            spec.param_count()
        )));
    }
    let scaler = match body.scaler {
        None => None,
        Some(s) => {
            if s.mean.len() != NUM_FEATURES
                || s.std.len() != NUM_FEATURES
                || s.mean.iter().chain(&s.std).any(|x| !x.is_finite())
                || s.std.iter().any(|x| *x <= 0.0)
            {
                return Err(refuse("malformed scaler".into()));
            }
            Some(Scaler {
                mean: s.mean,
                std: s.std,
            })
        }
    };
    Ok(GlobalModel {
        version: body.version,
        round: body.round,
        spec,
        params,
        scaler,
        signed: bytes.to_vec(),
        schema_hash,
    })
}

/// A local update ready to send.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// `w_local - w_global`.
    pub delta: Vec<f32>,
    /// Windows trained on.
    pub num_samples: u64,
    /// Raw-feature sums for the federated scaler.
    pub stats: ScalerStats,
    /// Final training loss.
    pub train_loss: f32,
}

/// Training work detached from the agent, to run on a blocking thread.
pub struct TrainingJob {
    spec: ModelSpec,
    base: Vec<f32>,
    data: Array2<f32>,
    stats: ScalerStats,
    cfg: TrainConfig,
}

impl TrainingJob {
    /// Trains from the global parameters (with the FedProx term) and returns
    /// the delta.
    pub fn run(self) -> Result<LocalUpdate, AgentError> {
        let mut model = Autoencoder::from_flat(self.spec.clone(), &self.base).map_err(model_err)?;
        let report = model
            .train(self.data.view(), &self.cfg, Some(&self.base))
            .map_err(model_err)?;
        let local = model.to_flat();
        let delta = local.iter().zip(&self.base).map(|(l, g)| l - g).collect();
        Ok(LocalUpdate {
            delta,
            num_samples: self.data.nrows() as u64,
            stats: self.stats,
            train_loss: report.train_loss,
        })
    }
}

/// Counters for metrics and the demo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Events observed.
    pub events: u64,
    /// Windows closed.
    pub windows: u64,
    /// Windows scored by a model.
    pub scored: u64,
    /// Scored windows above the threshold.
    pub anomalous_windows: u64,
    /// Incident records emitted (open, update and close).
    pub alerts: u64,
    /// Global models refused as not finite.
    pub models_refused: u64,
    /// Global models held back as far worse on this node's windows.
    pub models_held_back: u64,
    /// Incident state writes that failed.
    pub incident_store_errors: u64,
}

/// Ticks between two writes of the incident state while no incident is
/// open and none was emitted (a record, or any open incident, writes it
/// every tick): a crash then loses at most this many windows of baselines,
/// and no window an open incident's quiet count depends on.
pub const INCIDENT_PERSIST_EVERY: u32 = 6;

/// What of the incident state is not stored yet.
#[derive(Debug, Clone, Copy, Default)]
struct IncidentsUnsaved {
    /// Ticks since the last write.
    ticks: u32,
    /// An incident record was emitted since.
    records: bool,
}

/// Static settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Tenant.
    pub tenant: String,
    /// Node.
    pub node: String,
    /// Detector settings.
    pub detector: DetectorConfig,
    /// How window scores and rule hits become incidents.
    pub incidents: IncidentConfig,
    /// Seed for local training.
    pub seed: u64,
}

/// One buffered benign window.
#[derive(Debug, Clone, Copy)]
struct Buffered {
    features: [f32; NUM_FEATURES],
    /// Outside its container's start-up: may calibrate the threshold.
    settled: bool,
}

/// The node agent.
pub struct Agent {
    settings: AgentSettings,
    builder: WindowBuilder,
    buffer: VecDeque<Buffered>,
    detector: Option<Detector>,
    global: Option<GlobalModel>,
    store: Option<NodeStore>,
    stats: AgentStats,
    trained_rounds: u64,
    last_train_loss: Option<f32>,
    /// Calibration windows behind the current threshold.
    calibrated_on: usize,
    /// Global version the detector comes from (`None`: none or local).
    detector_version: Option<u64>,
    /// The newest global model held back, while it is.
    held_back: Option<HeldBack>,
    /// Incidents per container.
    incidents: IncidentTracker,
    unsaved: IncidentsUnsaved,
}

impl Drop for Agent {
    /// Stores the incident state not stored yet (a clean shutdown loses
    /// nothing), unless it holds records that may not have been sent (a
    /// window whose dispatch did not finish): storing it would mark them
    /// as sent.
    fn drop(&mut self) {
        if self.unsaved.ticks > 0 && !self.unsaved.records {
            self.write_incidents();
        }
    }
}

impl Agent {
    /// Creates an agent, restoring the stored global model (re-verified) or
    /// local bootstrap model if there is one.
    pub fn new(
        settings: AgentSettings,
        store: Option<NodeStore>,
        verifier: Option<&CertVerifier>,
        now: time::OffsetDateTime,
    ) -> Result<Self, AgentError> {
        let incidents = IncidentTracker::new(settings.incidents.clone());
        let mut agent = Self {
            incidents,
            unsaved: IncidentsUnsaved::default(),
            settings,
            builder: WindowBuilder::new(),
            buffer: VecDeque::new(),
            detector: None,
            global: None,
            store,
            stats: AgentStats::default(),
            trained_rounds: 0,
            last_train_loss: None,
            calibrated_on: 0,
            detector_version: None,
            held_back: None,
        };
        let Some(store) = agent.store.clone() else {
            return Ok(agent);
        };
        agent.restore_incidents(&store);
        if let (Some(bytes), Some(verifier)) = (store.global_model()?, verifier) {
            match verify_global_model(&bytes, verifier, &agent.settings.tenant, None, now) {
                Ok(g) if g.round > 0 => {
                    // The threshold keeps the trust it had before the
                    // restart; otherwise the first windows after it (attacks
                    // included) would enter the buffer and recalibrate it.
                    // Raised to the floor a node alerts with (a store
                    // written before the floor may hold a lower one).
                    let threshold = store.threshold()?.unwrap_or(f32::MAX).max(MIN_THRESHOLD);
                    agent.calibrated_on = store.calibrated_on()?.unwrap_or(0);
                    let model =
                        Autoencoder::from_flat(g.spec.clone(), &g.params).map_err(model_err)?;
                    let scaler = g
                        .node_scaler()
                        .unwrap_or_else(|| Scaler::identity(NUM_FEATURES));
                    info!(
                        version = g.version,
                        threshold, "restored global model from store"
                    );
                    agent.detector = Some(Detector {
                        model,
                        scaler,
                        threshold,
                    });
                    agent.detector_version = Some(g.version);
                    agent.global = Some(g);
                    return Ok(agent);
                }
                Ok(g) => agent.global = Some(g),
                Err(e) => warn!(error = %e, "stored global model no longer verifies; ignoring it"),
            }
        }
        if let Some(rec) = store.local_model()? {
            let spec = ModelSpec {
                input_dim: NUM_FEATURES,
                hidden: rec.hidden.clone(),
            };
            let model = Autoencoder::from_flat(spec, &rec.params).map_err(model_err)?;
            agent.detector = Some(Detector {
                model,
                scaler: schema_scaler(Scaler {
                    mean: rec.mean,
                    std: rec.std,
                }),
                threshold: rec.threshold.max(MIN_THRESHOLD),
            });
            agent.calibrated_on = rec.calibrated_on;
            info!("restored local bootstrap model from store");
        }
        Ok(agent)
    }

    /// Goes on from the stored incident state: open incidents stay open
    /// (no second page after a restart, and their close is still sent),
    /// known containers keep their own baseline. A state that does not
    /// decode or restore is dropped with a warning: the node then starts
    /// as a new one would, nothing else is lost.
    fn restore_incidents(&mut self, store: &NodeStore) {
        let bytes = match store.incidents() {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "stored incident state unreadable; starting without it");
                return;
            }
        };
        let restored = serde_json::from_slice::<TrackerSnapshot>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|snap| {
                IncidentTracker::restore(self.settings.incidents.clone(), snap)
                    .map_err(|e| e.to_string())
            });
        match restored {
            Ok((tracker, st)) => {
                info!(
                    containers = st.restored,
                    open = tracker.open_count(),
                    dropped = st.dropped,
                    repaired = st.repaired,
                    "restored incident state"
                );
                if st.open_dropped > 0 {
                    warn!(
                        lost = st.open_dropped,
                        "open incidents dropped from the stored state (not finite, or beyond max_containers): their close will not be sent"
                    );
                }
                self.incidents = tracker;
            }
            Err(error) => {
                warn!(%error, "stored incident state does not restore; starting without it");
                if let Err(e) = store.remove_incidents() {
                    warn!(error = %e, "cannot remove the stored incident state");
                }
            }
        }
    }

    /// Stores the incident tracker's state if it is due: an incident
    /// record was emitted since the last write, an incident is open (its
    /// quiet count must not be taken for downtime after a crash), or
    /// [`INCIDENT_PERSIST_EVERY`] ticks passed. The live loop calls it
    /// after dispatching a window's records, so a crash in between pages
    /// again rather than not at all; `close_window` calls it before the
    /// next tick for callers that do not.
    pub fn persist_incidents(&mut self) {
        let u = self.unsaved;
        if u.ticks > 0
            && (u.records || u.ticks >= INCIDENT_PERSIST_EVERY || self.incidents.open_count() > 0)
        {
            self.write_incidents();
        }
    }

    fn write_incidents(&mut self) {
        self.unsaved = IncidentsUnsaved::default();
        let Some(store) = &self.store else { return };
        let stored = serde_json::to_vec(&self.incidents.snapshot())
            .map_err(|e| e.to_string())
            .and_then(|b| store.put_incidents(&b).map_err(|e| e.to_string()));
        if let Err(error) = stored {
            self.stats.incident_store_errors += 1;
            // Once per 1,000 failures: a full disk fails every window.
            if self.stats.incident_store_errors % 1000 == 1 {
                warn!(%error, failures = self.stats.incident_store_errors, "incident state not stored: a restart would page again for open incidents");
            }
        }
    }

    /// The committed participant lists this node last checked its secure
    /// buckets against, as stored (newest first; none without a store or
    /// when they do not decode), so a restarted node can still rebuild a
    /// list sent as a change to the last one.
    pub fn stored_participant_lists(&self) -> Vec<Vec<fedmesh_crypto::NodeId>> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let bytes = match store.participant_lists() {
            Ok(Some(b)) => b,
            Ok(None) => return Vec::new(),
            Err(e) => {
                warn!(error = %e, "stored participant lists unreadable");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Vec<Vec<String>>>(&bytes) {
            Ok(lists) => lists
                .iter()
                .filter_map(|l| l.iter().map(|n| n.parse().ok()).collect())
                .collect(),
            Err(e) => {
                warn!(error = %e, "stored participant lists do not decode; ignoring them");
                Vec::new()
            }
        }
    }

    /// Stores `lists` (see [`Agent::stored_participant_lists`]); a failure
    /// is logged (the node then sits one secure round out after a restart).
    pub fn store_participant_lists(&self, lists: &[Vec<fedmesh_crypto::NodeId>]) {
        let Some(store) = &self.store else { return };
        let names: Vec<Vec<&str>> = lists
            .iter()
            .map(|l| l.iter().map(|n| n.as_str()).collect())
            .collect();
        let stored = serde_json::to_vec(&names)
            .map_err(|e| e.to_string())
            .and_then(|b| store.put_participant_lists(&b).map_err(|e| e.to_string()));
        if let Err(error) = stored {
            warn!(%error, "participant lists not stored");
        }
    }

    /// Settings.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// Counters.
    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// The current detector, if any.
    pub fn detector(&self) -> Option<&Detector> {
        self.detector.as_ref()
    }

    /// The installed global model, if any.
    pub fn global(&self) -> Option<&GlobalModel> {
        self.global.as_ref()
    }

    /// Version of the installed global model.
    pub fn global_version(&self) -> Option<u64> {
        self.global.as_ref().map(|g| g.version)
    }

    /// Global version the detector in use comes from (`None`: no detector
    /// or a local bootstrap model). Older than [`Agent::global_version`]
    /// while a new model is held back.
    pub fn detector_version(&self) -> Option<u64> {
        self.detector_version
    }

    /// The global model held back, if the node is detecting with an older
    /// one ([`HeldBack`]).
    pub fn held_back(&self) -> Option<&HeldBack> {
        self.held_back.as_ref()
    }

    /// Whether the node is still learning: no detector yet, or a threshold
    /// calibrated on too few benign windows to be trusted (the response
    /// layer never acts while it is).
    pub fn learning(&self) -> bool {
        self.detector.is_none() || self.calibrated_on < self.settings.detector.min_train_windows / 5
    }

    /// Benign windows buffered for training.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Rounds this agent trained for.
    pub fn trained_rounds(&self) -> u64 {
        self.trained_rounds
    }

    /// Feeds one telemetry event.
    pub fn observe(&mut self, ev: &Event) {
        self.stats.events += 1;
        self.builder.push(ev);
    }

    /// Counters of the incident tracker.
    pub fn incident_stats(&self) -> IncidentStats {
        self.incidents.stats()
    }

    /// Open incidents.
    pub fn open_incidents(&self) -> usize {
        self.incidents.open_count()
    }

    /// The open incident of `container`, as it stands.
    pub fn open_incident(&self, container: &str) -> Option<&crate::detection::incident::Incident> {
        self.incidents.open_incident(container)
    }

    /// Whether `container` has an open incident.
    pub fn incident_open(&self, container: &str) -> bool {
        self.incidents.is_open(container)
    }

    /// Closes the current window at `end_ms`: scores every container's
    /// window, feeds the scores and this window's rule `hits` to the
    /// incident tracker, buffers the windows outside open incidents for
    /// training and returns the incident records.
    pub fn close_window(
        &mut self,
        end_ms: u64,
        hits: &[RuleHit],
    ) -> Result<Vec<Alert>, AgentError> {
        self.persist_incidents();
        let windows = self.builder.close(end_ms);
        self.stats.windows += windows.len() as u64;
        for w in windows.iter().filter(|w| w.restarted) {
            info!(
                container = %w.container.0,
                "container started anew under the same id; its start-up begins again"
            );
        }
        let alerts = self.judge(&windows, end_ms, hits)?;
        self.maybe_recalibrate()?;
        if self.detector.is_none()
            && self.global.is_none()
            && self.settings.detector.bootstrap_after_windows > 0
            && self.stats.windows >= self.settings.detector.bootstrap_after_windows as u64
            && self.buffer.len() >= self.settings.detector.min_train_windows
        {
            self.bootstrap_local()?;
        }
        Ok(alerts)
    }

    /// Scores one tick's windows (if a model is present), steps the
    /// incident tracker at `end_ms` with them and `hits`, buffers the
    /// windows of containers without an open incident and returns the
    /// incident records.
    fn judge(
        &mut self,
        windows: &[FeatureWindow],
        end_ms: u64,
        hits: &[RuleHit],
    ) -> Result<Vec<Alert>, AgentError> {
        // The version that scores: an older one while a model is held back.
        let model_version = if self.held_back.is_some() {
            self.detector_version
        } else {
            self.global.as_ref().map(|g| g.version)
        };
        let mut verdicts: Vec<WindowVerdict> = windows
            .iter()
            .map(|w| WindowVerdict {
                container: w.container.0.clone(),
                score: None,
                top_features: Vec::new(),
                features: Some(w.features),
                restarted: w.restarted,
            })
            .collect();
        if let Some(det) = &self.detector
            && !windows.is_empty()
        {
            let scores = det.score_windows(windows).map_err(model_err)?;
            self.stats.scored += windows.len() as u64;
            for (v, s) in verdicts.iter_mut().zip(&scores) {
                if s.value > det.threshold {
                    self.stats.anomalous_windows += 1;
                }
                v.score = Some((s.value, det.threshold));
                v.top_features = top_features(s, self.settings.detector.top_features)
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect();
            }
        }
        let events: Vec<IncidentEvent> = self.incidents.step(end_ms, &verdicts, hits);
        self.unsaved.ticks = self.unsaved.ticks.saturating_add(1);
        self.unsaved.records |= !events.is_empty();
        let alerts: Vec<Alert> = events
            .iter()
            .map(|e| Alert::incident(e, &self.settings.tenant, &self.settings.node, model_version))
            .collect();
        self.stats.alerts += alerts.len() as u64;
        // Windows inside an open incident and, once the threshold rests on
        // enough benign windows, windows above the threshold stay out of
        // the training data (before that a poorly calibrated threshold
        // would starve the buffer); rule incidents always do. Learning the
        // windows above the threshold that a container's own normal
        // explains was tried: on the compose mesh the global models then
        // reconstructed one node's windows thousands of times worse and
        // were held back, so it is not done.
        let trusted = self.calibrated_on >= self.settings.detector.min_train_windows / 5;
        for (w, v) in windows.iter().zip(&verdicts) {
            let in_incident = self
                .incidents
                .open_incident(&w.container.0)
                .is_some_and(|i| trusted || !i.rules.is_empty());
            let above = trusted && v.score.is_some_and(|(s, t)| s > t);
            if !(in_incident || above) {
                let settled = !self.incidents.starting_up(&w.container.0);
                self.push_buffer(w.features, settled);
            }
        }
        Ok(alerts)
    }

    /// Buffers windows for training without scoring them (training data
    /// loaded in bulk by the simulation engines). Counted within this call
    /// (the incident tracker does not see them): each container's first
    /// `warmup_windows` windows in `windows` are its start-up.
    pub fn buffer_windows(&mut self, windows: &[FeatureWindow]) {
        let settled = settled_flags(windows, self.incidents.config().warmup_windows);
        for (w, settled) in windows.iter().zip(settled) {
            self.push_buffer(w.features, settled);
        }
    }

    fn push_buffer(&mut self, features: [f32; NUM_FEATURES], settled: bool) {
        self.buffer.push_back(Buffered { features, settled });
        while self.buffer.len() > self.settings.detector.train_buffer {
            self.buffer.pop_front();
        }
    }

    /// Recalibrates the threshold whenever the calibration split has doubled
    /// since the last calibration (thresholds from few windows are noisy).
    fn maybe_recalibrate(&mut self) -> Result<(), AgentError> {
        let available = self.split().2;
        if self.detector.is_none() || available < 2 * self.calibrated_on.max(4) {
            return Ok(());
        }
        if let Some(det) = &self.detector {
            let (t, n) = self.calibrate(det)?;
            if let Some(t) = t {
                self.calibrated_on = n;
                if let Some(d) = self.detector.as_mut() {
                    d.threshold = t;
                }
                if let (Some(store), Some(g)) = (&self.store, &self.global)
                    && self.held_back.is_none()
                {
                    store.put_global(&g.signed, t, n)?;
                }
            }
        }
        Ok(())
    }

    /// Splits the buffer: every fifth window calibrates, the rest train.
    /// Start-up windows only train: the incident tracker never judges them
    /// (warm-up), and a container's first execs and connections scored
    /// tens of times above the rest on a real host, which set the
    /// threshold at a 1 % false-alarm rate by themselves. With fewer than
    /// 10 such windows, every settled window calibrates (training ones
    /// too); with fewer than 10 settled windows, every window does. The
    /// third value is the settled windows among the calibrating ones (what
    /// [`Self::learning`] and recalibration count).
    fn split(&self) -> (Vec<&[f32; NUM_FEATURES]>, Vec<&[f32; NUM_FEATURES]>, usize) {
        let (mut train, mut calib) = (Vec::new(), Vec::new());
        for (i, w) in self.buffer.iter().enumerate() {
            if i % 5 == 4 && w.settled {
                calib.push(&w.features)
            } else {
                train.push(&w.features)
            }
        }
        if calib.len() >= MIN_CALIBRATION_WINDOWS {
            let n = calib.len();
            return (train, calib, n);
        }
        let settled: Vec<_> = self
            .buffer
            .iter()
            .filter(|w| w.settled)
            .map(|w| &w.features)
            .collect();
        let n = settled.len();
        if n >= MIN_CALIBRATION_WINDOWS {
            return (train, settled, n);
        }
        (train, self.rows().collect(), n)
    }

    /// The buffered windows' features, oldest first.
    fn rows(&self) -> impl Iterator<Item = &[f32; NUM_FEATURES]> {
        self.buffer.iter().map(|b| &b.features)
    }

    fn matrix(rows: &[&[f32; NUM_FEATURES]]) -> Array2<f32> {
        let mut m = Array2::zeros((rows.len(), NUM_FEATURES));
        for (mut r, w) in m.rows_mut().into_iter().zip(rows) {
            for (d, s) in r.iter_mut().zip(w.iter()) {
                *d = *s;
            }
        }
        m
    }

    fn local_scaler(rows: &Array2<f32>) -> Result<(ScalerStats, Scaler), AgentError> {
        let stats = ScalerStats::from_rows(rows.view()).map_err(model_err)?;
        let scaler = Scaler::from_stats(&stats).map_err(model_err)?;
        Ok((stats, schema_scaler(scaler)))
    }

    /// The buffer's training split as a raw matrix, its scaler sums and the
    /// local scaler built from them; refuses with too few windows.
    fn training_data(&self) -> Result<(Array2<f32>, ScalerStats, Scaler), AgentError> {
        let need = self.settings.detector.min_train_windows;
        if self.buffer.len() < need {
            return Err(AgentError::NotEnoughData {
                have: self.buffer.len(),
                need,
            });
        }
        let (train, _, _) = self.split();
        let raw = Self::matrix(&train);
        let (stats, scaler) = Self::local_scaler(&raw)?;
        Ok((raw, stats, scaler))
    }

    /// Prepares a round's training: the buffer's training split, scaled
    /// with the global scaler (or the local one before the federation has
    /// one).
    pub fn training_job(
        &self,
        base: &GlobalModel,
        tp: &v1::TrainingParams,
        round: u64,
    ) -> Result<TrainingJob, AgentError> {
        let (raw, stats, local) = self.training_data()?;
        let scaler = base.node_scaler().unwrap_or(local);
        let data = scaler.transform(raw.view()).map_err(model_err)?;
        let cfg = TrainConfig {
            epochs: tp.local_epochs.max(1) as usize,
            batch_size: tp.batch_size.max(1) as usize,
            learning_rate: tp.learning_rate,
            prox_mu: tp.prox_mu,
            seed: self.settings.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..TrainConfig::default()
        };
        Ok(TrainingJob {
            spec: base.spec.clone(),
            base: base.params.clone(),
            data,
            stats,
            cfg,
        })
    }

    /// Records that a round's update was sent, with its training loss.
    pub fn note_trained(&mut self, train_loss: f32) {
        self.trained_rounds += 1;
        self.last_train_loss = Some(train_loss);
    }

    /// Training loss of the last update sent.
    pub fn last_train_loss(&self) -> Option<f32> {
        self.last_train_loss
    }

    /// Installs a verified global model: builds its detector, calibrates
    /// the threshold on the buffer's calibration split, persists both.
    /// Returns the new threshold.
    pub fn install_global(&mut self, g: GlobalModel) -> Result<f32, AgentError> {
        if let Some(cur) = &self.global
            && g.version <= cur.version
        {
            return Err(AgentError::Refused(format!(
                "version {} is not newer than installed {}",
                g.version, cur.version
            )));
        }
        // verify_global_model refuses these too; a model built in-process
        // (simulations, tests) gets the same check.
        let refuse = |part| {
            warn!(version = g.version, %part, "global model refused: not finite");
            AgentError::NotFinite {
                version: g.version,
                part,
            }
        };
        if g.params.iter().any(|v| !v.is_finite()) {
            self.stats.models_refused += 1;
            return Err(refuse(ModelPart::Params));
        }
        if let Some(s) = &g.scaler
            && s.mean.iter().chain(&s.std).any(|v| !v.is_finite())
        {
            self.stats.models_refused += 1;
            return Err(refuse(ModelPart::Scaler));
        }
        let model = Autoencoder::from_flat(g.spec.clone(), &g.params).map_err(model_err)?;
        let scaler = match g.node_scaler() {
            Some(s) => s,
            None if self.buffer.len() >= 2 => {
                let all: Vec<_> = self.rows().collect();
                Self::local_scaler(&Self::matrix(&all))?.1
            }
            None => Scaler::identity(NUM_FEATURES),
        };
        let mut det = Detector {
            model,
            scaler,
            threshold: f32::MAX,
        };
        if g.round > 0
            && let Some(held) = self.far_worse(&det, g.version)?
        {
            warn!(
                version = g.version,
                in_use = ?held.in_use,
                new_loss = held.new_loss,
                current_loss = held.current_loss,
                windows = held.windows,
                "new global model is far worse on this node's recent benign windows; \
                 detecting with the model in use (training from the new version)"
            );
            self.stats.models_held_back += 1;
            self.held_back = Some(held);
            self.global = Some(g);
            return Ok(self.detector.as_ref().map_or(f32::MAX, |d| d.threshold));
        }
        let (t, n) = self.calibrate(&det)?;
        det.threshold = t.unwrap_or(f32::MAX);
        if let Some(store) = &self.store {
            store.put_global(&g.signed, det.threshold, n)?;
        }
        let threshold = det.threshold;
        // The genesis version is an untrained starting point: a base for
        // training, never a detector.
        if g.round > 0 {
            info!(version = g.version, threshold, "installed global model");
            self.detector = Some(det);
            self.detector_version = Some(g.version);
            self.held_back = None;
            self.calibrated_on = n;
        } else {
            info!(
                version = g.version,
                "received genesis model (training base only)"
            );
        }
        self.global = Some(g);
        Ok(threshold)
    }

    /// Compares `new` with the detector in use on the most recent benign
    /// windows: `Some` when the new one's loss is over `max_loss_ratio`
    /// times the current one's (or not finite). `None` — install — when
    /// the check is off, there is no detector yet, or fewer than 32
    /// windows are buffered.
    fn far_worse(&self, new: &Detector, version: u64) -> Result<Option<HeldBack>, AgentError> {
        let ratio = self.settings.detector.max_loss_ratio;
        let Some(cur) = &self.detector else {
            return Ok(None);
        };
        let take = self
            .settings
            .detector
            .loss_check_windows
            .min(self.buffer.len());
        if ratio <= 0.0 || take < MIN_LOSS_CHECK_WINDOWS {
            return Ok(None);
        }
        let rows: Vec<_> = self.rows().skip(self.buffer.len() - take).collect();
        let raw = Self::matrix(&rows);
        let (_, local) = Self::local_scaler(&raw)?;
        let current_loss = raw_space_loss(cur, &raw, &local)?;
        let new_loss = raw_space_loss(new, &raw, &local)?;
        if !current_loss.is_finite() || current_loss <= 0.0 {
            // The model in use is no yardstick.
            return Ok(None);
        }
        if new_loss.is_finite() && new_loss <= f64::from(ratio) * current_loss {
            return Ok(None);
        }
        Ok(Some(HeldBack {
            version,
            in_use: self.detector_version,
            new_loss,
            current_loss,
            windows: take,
        }))
    }

    fn calibrate(&self, det: &Detector) -> Result<(Option<f32>, usize), AgentError> {
        let (_, calib, settled) = self.split();
        if calib.is_empty() {
            return Ok((None, 0));
        }
        let m = det
            .scaler
            .transform(Self::matrix(&calib).view())
            .map_err(model_err)?;
        let scores = det.model.scores(m.view()).map_err(model_err)?;
        let t =
            alert_threshold(&scores, self.settings.detector.false_alarm_rate).map_err(model_err)?;
        Ok((Some(t), settled))
    }

    /// Trains a model on this node's data alone (no federation): the same
    /// architecture, `epochs` epochs from a seeded initialisation, local
    /// scaler, threshold calibrated like a global model's.
    pub fn fit_local(&self, spec: &ModelSpec, epochs: usize) -> Result<Detector, AgentError> {
        let (raw, _, scaler) = self.training_data()?;
        let data = scaler.transform(raw.view()).map_err(model_err)?;
        let mut rng =
            <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(self.settings.seed);
        let mut model = Autoencoder::new_random(spec.clone(), &mut rng).map_err(model_err)?;
        let cfg = TrainConfig {
            epochs,
            seed: self.settings.seed,
            ..TrainConfig::default()
        };
        model.train(data.view(), &cfg, None).map_err(model_err)?;
        let mut det = Detector {
            model,
            scaler,
            threshold: f32::MAX,
        };
        det.threshold = self.calibrate(&det)?.0.unwrap_or(f32::MAX);
        Ok(det)
    }

    fn bootstrap_local(&mut self) -> Result<(), AgentError> {
        let spec = ModelSpec::default_for_features();
        let det = self.fit_local(&spec, 20)?;
        let calibrated_on = self.split().2;
        if let Some(store) = &self.store {
            store.put_local(&LocalModelRecord {
                hidden: spec.hidden.clone(),
                params: det.model.to_flat(),
                mean: det.scaler.mean.clone(),
                std: det.scaler.std.clone(),
                threshold: det.threshold,
                calibrated_on,
            })?;
        }
        info!(
            threshold = det.threshold,
            "no global model yet: detecting with a local bootstrap model"
        );
        self.calibrated_on = calibrated_on;
        self.detector = Some(det);
        Ok(())
    }
}

/// For windows in order (several containers interleaved, each from its
/// start): whether each is past its container's first `warmup` windows,
/// its start-up (see [`IncidentTracker::starting_up`], which counts the
/// same way across ticks).
pub fn settled_flags(windows: &[FeatureWindow], warmup: u32) -> Vec<bool> {
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    windows
        .iter()
        .map(|w| {
            let n = seen.entry(w.container.0.as_str()).or_default();
            *n = n.saturating_add(1);
            *n > warmup
        })
        .collect()
}

/// Fewest windows a threshold is calibrated on before [`Agent::split`]
/// falls back to more of the buffer.
const MIN_CALIBRATION_WINDOWS: usize = 10;

/// Fewest buffered windows the held-back check runs on.
pub const MIN_LOSS_CHECK_WINDOWS: usize = 32;

/// Mean squared reconstruction error of `det` on the raw rows `raw`,
/// measured in the units of `local` (the node's own scaler of these rows),
/// so two detectors with different scalers compare on the same scale and a
/// scaler that shrinks every error cannot pass for a good model. Not finite
/// when the model's output is not.
fn raw_space_loss(det: &Detector, raw: &Array2<f32>, local: &Scaler) -> Result<f64, AgentError> {
    let z = det.scaler.transform(raw.view()).map_err(model_err)?;
    let err = det
        .model
        .reconstruction_errors(z.view())
        .map_err(model_err)?;
    let mut total = 0f64;
    for row in err.rows() {
        for (j, e) in row.iter().enumerate() {
            let unit = f64::from(det.scaler.std[j]) / f64::from(local.std[j]);
            total += f64::from(*e) * unit * unit;
        }
    }
    Ok(total / err.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    /// Opens a store, retrying (bounded) while sled's background flusher of
    /// a just-dropped handle in this process still holds the file lock.
    fn open_store(dir: &std::path::Path) -> NodeStore {
        for _ in 0..100 {
            if let Ok(s) = NodeStore::open(dir) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        NodeStore::open(dir).unwrap()
    }

    use fedmesh_crypto::{CertSigner, MeshCa};
    use rand::SeedableRng;

    use super::*;
    use crate::detection::incident::IncidentState;
    use crate::sim::synthetic::{AttackKind, Profile, SyntheticSource};

    const TENANT: &str = "acme";
    const WINDOW_MS: u64 = 10_000;

    /// A fixed "now" (2030-01-01T00:00:00Z), inside every test certificate.
    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
    }

    /// A mesh CA, a coordinator signer issued by it and a verifier trusting it.
    struct Pki {
        ca: MeshCa,
        signer: CertSigner,
        verifier: CertVerifier,
    }

    fn pki(name: &str) -> Pki {
        let ca = MeshCa::generate(&format!("{name} CA"), now(), 30).unwrap();
        let issued = ca
            .issue_coordinator(&name.parse().unwrap(), &[], &[], now(), 30)
            .unwrap();
        let signer = CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
        Pki {
            ca,
            signer,
            verifier,
        }
    }

    fn hidden() -> Vec<usize> {
        ModelSpec::default_for_features().hidden
    }

    fn schema_hash(hidden: &[usize]) -> [u8; 32] {
        fedmesh_proto::model::model_schema_hash(&feature_schema_hash(), NUM_FEATURES, hidden)
    }

    fn genesis_params() -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        Autoencoder::new_random(ModelSpec::default_for_features(), &mut rng)
            .unwrap()
            .to_flat()
    }

    fn scaler_msg(s: &Scaler) -> v1::Scaler {
        v1::Scaler {
            mean: s.mean.clone(),
            std: s.std.clone(),
        }
    }

    /// A model body as the coordinator builds it.
    fn body(
        version: u64,
        round: u64,
        params: &[f32],
        scaler: Option<v1::Scaler>,
    ) -> v1::GlobalModel {
        let hidden = hidden();
        v1::GlobalModel {
            tenant: TENANT.into(),
            version,
            round,
            schema_hash: schema_hash(&hidden).to_vec(),
            spec: Some(v1::ModelSpec {
                input_dim: NUM_FEATURES as u32,
                hidden: hidden.iter().map(|&h| h as u32).collect(),
            }),
            params: Some(fedmesh_proto::encode_f32(params, &[params.len() as u64])),
            scaler,
            prev_hash: vec![0; 32],
            rule: "fedavg".into(),
            participants: 1,
            created_unix_ms: 0,
        }
    }

    /// Signs a body the way `coordinator::federation::sign_model` does.
    fn sign(signer: &CertSigner, body: &v1::GlobalModel) -> Vec<u8> {
        let body = body.encode_to_vec();
        v1::SignedModel {
            signature: signer.sign(&body),
            body,
            signer_cert: signer.cert_der().to_vec(),
        }
        .encode_to_vec()
    }

    fn verify(p: &Pki, bytes: &[u8], min: Option<u64>) -> Result<GlobalModel, AgentError> {
        verify_global_model(bytes, &p.verifier, TENANT, min, now())
    }

    #[test]
    fn start_up_windows_train_but_do_not_set_the_threshold() {
        use crate::detection::features::idx;
        use crate::telemetry::ContainerId;
        // Four containers, 100 windows each; in its first three windows
        // each one starts its processes (20 new binaries), as real
        // containers do, and then runs steadily.
        let mut windows = Vec::new();
        for t in 0..100u64 {
            for c in 0..4u64 {
                let mut f = [0.0f32; NUM_FEATURES];
                let wobble = ((t * 7 + c * 3) % 11) as f32 / 11.0;
                f[idx::CPU_CORES] = 0.2 + 0.05 * wobble;
                f[idx::MEMORY] = 5.0 + 0.02 * wobble;
                f[idx::NET_RX] = 1.0 + 0.1 * wobble;
                if t < 3 {
                    f[idx::EXECS] = 3.0;
                    f[idx::DISTINCT_BINARIES] = 3.0;
                    f[idx::NEW_BINARIES] = 3.0;
                }
                windows.push(FeatureWindow {
                    container: ContainerId(format!("c{c}")),
                    start_ms: t * 10_000,
                    end_ms: (t + 1) * 10_000,
                    features: f,
                    restarted: false,
                });
            }
        }
        let mut agent = Agent::new(settings(64, 0), None, None, now()).unwrap();
        agent.buffer_windows(&windows);
        let det = agent
            .fit_local(&ModelSpec::default_for_features(), 5)
            .unwrap();
        let start_up = det.score_windows(&windows[..1]).unwrap()[0].value;
        let steady = det.score_windows(&windows[40..]).unwrap();
        let max_steady = steady.iter().map(|s| s.value).fold(0.0f32, f32::max);
        // The threshold sits among the steady windows, far below a
        // start-up window (calibrated with them it was the start-up score).
        assert!(
            det.threshold <= max_steady.max(MIN_THRESHOLD),
            "threshold {} above every steady window ({max_steady})",
            det.threshold
        );
        assert!(
            start_up > 10.0 * det.threshold,
            "start-up {start_up}, threshold {}",
            det.threshold
        );
    }

    fn assert_refused(r: Result<GlobalModel, AgentError>, what: &str) {
        match r {
            Err(AgentError::Refused(_)) => {}
            Err(e) => panic!("{what}: expected Refused, got {e}"),
            Ok(g) => panic!("{what}: accepted version {}", g.version),
        }
    }

    fn settings(min_train: usize, bootstrap: usize) -> AgentSettings {
        AgentSettings {
            tenant: TENANT.into(),
            node: "node-1".into(),
            detector: DetectorConfig {
                false_alarm_rate: 0.01,
                train_buffer: 4096,
                min_train_windows: min_train,
                bootstrap_after_windows: bootstrap,
                top_features: 3,
                ..DetectorConfig::default()
            },
            incidents: IncidentConfig::default(),
            seed: 7,
        }
    }

    fn containers() -> Vec<(String, Profile)> {
        vec![
            ("web-1".into(), Profile::Web),
            ("db-1".into(), Profile::Database),
            ("batch-1".into(), Profile::Batch),
            ("ml-1".into(), Profile::Ml),
        ]
    }

    /// Feeds one synthetic window; returns its index and the alerts.
    fn step(agent: &mut Agent, src: &mut SyntheticSource) -> (u64, Vec<Alert>) {
        let (w, events) = src.next_window();
        for e in &events {
            agent.observe(e);
        }
        let alerts = agent.close_window((w + 1) * src.window_ms(), &[]).unwrap();
        (w, alerts)
    }

    fn run(agent: &mut Agent, src: &mut SyntheticSource, windows: u64) -> Vec<Alert> {
        (0..windows).flat_map(|_| step(agent, src).1).collect()
    }

    fn training() -> v1::TrainingParams {
        v1::TrainingParams {
            local_epochs: 20,
            batch_size: 32,
            learning_rate: 3e-3,
            prox_mu: 0.0,
        }
    }

    #[test]
    fn feature_schema_constants_match_the_node() {
        assert_eq!(
            fedmesh_proto::model::FEATURE_SCHEMA_V1_DIGEST,
            hex::encode(feature_schema_hash())
        );
        assert_eq!(fedmesh_proto::model::FEATURE_SCHEMA_V1_DIM, NUM_FEATURES);
        assert_eq!(
            fedmesh_proto::model::DEFAULT_HIDDEN.to_vec(),
            ModelSpec::default_for_features().hidden
        );
    }

    #[test]
    fn verify_accepts_a_good_model() {
        let p = pki("coord");
        let params = genesis_params();
        let scaler = Scaler::identity(NUM_FEATURES);
        let bytes = sign(&p.signer, &body(3, 2, &params, Some(scaler_msg(&scaler))));
        let g = verify(&p, &bytes, Some(3)).unwrap();
        assert_eq!((g.version, g.round), (3, 2));
        assert_eq!(g.params, params);
        assert_eq!(g.scaler, Some(scaler));
        assert_eq!(g.signed, bytes);
        assert_eq!(g.schema_hash, schema_hash(&hidden()));
        assert_eq!(g.spec, ModelSpec::default_for_features());
        // No scaler is fine (the federation has none before round 1).
        let g = verify(&p, &sign(&p.signer, &body(0, 0, &params, None)), None).unwrap();
        assert!(g.scaler.is_none());
    }

    #[test]
    fn verify_refuses_bad_signatures() {
        let p = pki("coord");
        let params = genesis_params();
        let good = sign(&p.signer, &body(1, 1, &params, None));

        // Tampered body (one parameter byte flipped after signing).
        let mut signed = v1::SignedModel::decode(good.as_slice()).unwrap();
        let last = signed.body.len() - 1;
        signed.body[last] ^= 0x01;
        assert_refused(verify(&p, &signed.encode_to_vec(), None), "tampered body");

        // Tampered signature.
        let mut signed = v1::SignedModel::decode(good.as_slice()).unwrap();
        signed.signature[0] ^= 0x01;
        assert_refused(
            verify(&p, &signed.encode_to_vec(), None),
            "tampered signature",
        );

        // Signed by a node certificate of the same CA.
        let node =
            p.ca.issue_node(
                &TENANT.parse().unwrap(),
                &"node-1".parse().unwrap(),
                now(),
                30,
            )
            .unwrap();
        let node_signer = CertSigner::from_pem(&node.cert_pem, &node.key_pem).unwrap();
        assert_refused(
            verify(&p, &sign(&node_signer, &body(1, 1, &params, None)), None),
            "node signer",
        );

        // Signed by a coordinator of another CA.
        let other = pki("rogue");
        let rogue = sign(&other.signer, &body(1, 1, &params, None));
        assert!(verify_global_model(&rogue, &other.verifier, TENANT, None, now()).is_ok());
        assert_refused(verify(&p, &rogue, None), "foreign CA");

        // Valid signature, but the signer certificate is not valid any more.
        let later = now() + time::Duration::days(60);
        assert_refused(
            verify_global_model(&good, &p.verifier, TENANT, None, later),
            "expired signer",
        );

        // Undecodable bytes.
        assert_refused(verify(&p, &[0xff; 16], None), "garbage");
        assert_refused(verify(&p, &good[..good.len() / 2], None), "truncated");
        assert_refused(verify(&p, &[], None), "empty");
    }

    #[test]
    fn verify_refuses_bad_contents() {
        let p = pki("coord");
        let params = genesis_params();
        let scaler = scaler_msg(&Scaler::identity(NUM_FEATURES));
        let base = body(5, 5, &params, Some(scaler.clone()));
        assert!(verify(&p, &sign(&p.signer, &base), Some(5)).is_ok());
        let check = |b: v1::GlobalModel, min: Option<u64>, what: &str| {
            assert_refused(verify(&p, &sign(&p.signer, &b), min), what);
        };

        check(
            v1::GlobalModel {
                tenant: "other".into(),
                ..base.clone()
            },
            None,
            "other tenant",
        );
        check(base.clone(), Some(6), "downgrade");

        let mut b = base.clone();
        b.schema_hash = schema_hash(&[32, 9]).to_vec();
        check(b, None, "schema hash of another architecture");
        let mut b = base.clone();
        b.schema_hash[0] ^= 0xff;
        check(b, None, "corrupted schema hash");
        let mut b = base.clone();
        b.schema_hash.clear();
        check(b, None, "no schema hash");

        // A spec that disagrees with the node's features (with a matching hash).
        let mut b = base.clone();
        b.spec = Some(v1::ModelSpec {
            input_dim: NUM_FEATURES as u32 + 1,
            hidden: vec![32, 8],
        });
        b.schema_hash = fedmesh_proto::model::model_schema_hash(
            &feature_schema_hash(),
            NUM_FEATURES + 1,
            &[32, 8],
        )
        .to_vec();
        check(b, None, "wrong input width");
        let mut b = base.clone();
        b.spec = None;
        check(b, None, "no spec");

        let short = &params[..params.len() - 1];
        check(body(5, 5, short, None), None, "one parameter short");
        let mut long = params.clone();
        long.push(0.0);
        check(body(5, 5, &long, None), None, "one parameter too many");
        let mut b = base.clone();
        b.params = None;
        check(b, None, "no parameters");
        let mut b = base.clone();
        if let Some(t) = b.params.as_mut() {
            t.data.pop();
        }
        check(b, None, "ragged tensor");

        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut p2 = params.clone();
            p2[17] = bad;
            check(body(5, 5, &p2, None), None, "non-finite parameter");
        }

        let bad_scalers = [
            v1::Scaler {
                mean: vec![0.0; NUM_FEATURES - 1],
                std: vec![1.0; NUM_FEATURES],
            },
            v1::Scaler {
                mean: vec![0.0; NUM_FEATURES],
                std: vec![1.0; NUM_FEATURES + 1],
            },
            v1::Scaler {
                mean: vec![0.0; NUM_FEATURES],
                std: {
                    let mut s = vec![1.0; NUM_FEATURES];
                    s[3] = 0.0;
                    s
                },
            },
            v1::Scaler {
                mean: vec![0.0; NUM_FEATURES],
                std: {
                    let mut s = vec![1.0; NUM_FEATURES];
                    s[0] = -1.0;
                    s
                },
            },
            v1::Scaler {
                mean: {
                    let mut m = vec![0.0; NUM_FEATURES];
                    m[5] = f32::NAN;
                    m
                },
                std: vec![1.0; NUM_FEATURES],
            },
            v1::Scaler {
                mean: vec![0.0; NUM_FEATURES],
                std: {
                    let mut s = vec![1.0; NUM_FEATURES];
                    s[21] = f32::INFINITY;
                    s
                },
            },
        ];
        for s in bad_scalers {
            check(body(5, 5, &params, Some(s)), None, "malformed scaler");
        }
    }

    /// Fills an agent with benign windows of [`containers`].
    fn benign_source(seed: u64) -> SyntheticSource {
        SyntheticSource::new(seed, &containers(), WINDOW_MS)
    }

    #[test]
    fn install_global_genesis_then_trained_then_refuses_stale() {
        let p = pki("coord");
        let mut agent = Agent::new(settings(64, 0), None, Some(&p.verifier), now()).unwrap();
        let mut src = benign_source(1);
        run(&mut agent, &mut src, 30);
        assert!(agent.detector().is_none());
        assert_eq!(agent.buffered(), 120);

        let params = genesis_params();
        let genesis = verify(&p, &sign(&p.signer, &body(0, 0, &params, None)), None).unwrap();
        agent.install_global(genesis).unwrap();
        assert!(agent.detector().is_none(), "genesis must not detect");
        assert_eq!(agent.global_version(), Some(0));
        assert_eq!(agent.global().map(|g| g.round), Some(0));

        let v1 = verify(&p, &sign(&p.signer, &body(1, 1, &params, None)), Some(1)).unwrap();
        let t = agent.install_global(v1.clone()).unwrap();
        assert!(t.is_finite() && t < f32::MAX, "threshold {t}");
        let det = agent.detector().unwrap();
        assert_eq!(det.threshold, t);
        assert_eq!(det.model.to_flat(), params);
        assert_eq!(agent.global_version(), Some(1));

        // Equal and older versions are refused and change nothing.
        assert!(matches!(
            agent.install_global(v1),
            Err(AgentError::Refused(_))
        ));
        let v0 = verify(&p, &sign(&p.signer, &body(0, 0, &params, None)), None).unwrap();
        assert!(matches!(
            agent.install_global(v0),
            Err(AgentError::Refused(_))
        ));
        assert_eq!(agent.global_version(), Some(1));
        assert_eq!(agent.detector().map(|d| d.threshold), Some(t));
    }

    #[test]
    fn detects_after_restart_without_coordinator() {
        let p = pki("coord");
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut agent = Agent::new(
            settings(64, 0),
            Some(store.clone()),
            Some(&p.verifier),
            now(),
        )
        .unwrap();
        let mut src = benign_source(11);
        run(&mut agent, &mut src, 150);
        assert!(agent.detector().is_none());

        // Round 1 as the coordinator would run it with this node alone.
        let base = genesis_params();
        let genesis = verify(&p, &sign(&p.signer, &body(0, 0, &base, None)), None).unwrap();
        agent.install_global(genesis.clone()).unwrap();
        let update = agent
            .training_job(&genesis, &training(), 1)
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(update.delta.len(), base.len());
        assert!(update.train_loss.is_finite());
        let params: Vec<f32> = base.iter().zip(&update.delta).map(|(g, d)| g + d).collect();
        let scaler = Scaler::from_stats(&update.stats).unwrap();
        let signed = sign(&p.signer, &body(1, 1, &params, Some(scaler_msg(&scaler))));
        let g1 = verify(&p, &signed, Some(1)).unwrap();
        let threshold = agent.install_global(g1).unwrap();
        assert!(threshold.is_finite() && threshold < f32::MAX);
        assert!(threshold >= MIN_THRESHOLD);
        let calibrated_on = agent.calibrated_on;
        assert_eq!(
            calibrated_on, 116,
            "every fifth of 600 windows, less the 4 of them in the containers' start-up"
        );
        drop(agent);
        drop(store);

        // Restart: no coordinator, the store is all there is.
        let store = open_store(dir.path());
        assert_eq!(store.global_model().unwrap(), Some(signed));
        let mut agent = Agent::new(settings(64, 0), Some(store), Some(&p.verifier), now()).unwrap();
        assert_eq!(agent.global_version(), Some(1));
        let det = agent.detector().expect("detector restored");
        assert_eq!(det.threshold, threshold);
        assert_eq!(det.model.to_flat(), params);
        assert_eq!(det.scaler, schema_scaler(scaler));
        // The restored threshold stays trusted: attacks right after the
        // restart neither enter the buffer nor recalibrate it away.
        assert_eq!(agent.calibrated_on, calibrated_on);

        // A fresh window builder has no baselines: skip one window. No
        // container was scored before the restart (there was no model), so
        // each still has its warm-up: attack two containers once it is
        // over, while the other two stay benign. Each attacked container opens exactly one incident within
        // three windows, the benign ones none.
        let (last, _) = step(&mut agent, &mut src);
        let warmup = u64::from(IncidentConfig::default().warmup_windows);
        let start = last + warmup + 1;
        let duration = 20;
        src.inject("web-1", AttackKind::PortScan, start, duration)
            .unwrap();
        src.inject("batch-1", AttackKind::ForkBomb, start, duration)
            .unwrap();
        let mut opened = std::collections::BTreeMap::new();
        for _ in 0..warmup + duration + 4 {
            let (w, alerts) = step(&mut agent, &mut src);
            for a in &alerts {
                assert_eq!(a.model_version, Some(1));
                assert_eq!(a.tenant, TENANT);
                assert!(a.score.unwrap() > a.threshold.unwrap());
                assert_eq!(a.top_features.len(), 3);
                if a.state == IncidentState::Open {
                    assert!(
                        src.active_attack(&a.container, w).is_some(),
                        "benign {} opened an incident",
                        a.container
                    );
                    assert!(opened.insert(a.container.clone(), w).is_none());
                }
            }
        }
        assert_eq!(
            opened.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["batch-1", "web-1"]
        );
        for (c, w) in &opened {
            assert!(
                *w <= start + 2,
                "{c} opened at window {w}, attack from {start}"
            );
        }
        assert_eq!(agent.detector().map(|d| d.threshold), Some(threshold));
    }

    #[test]
    fn bootstraps_a_local_model_and_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut agent = Agent::new(settings(32, 80), Some(store.clone()), None, now()).unwrap();
        let mut src = benign_source(5);
        // Windows count per container: 4 containers, 80 windows after 20 closes.
        for i in 0..20 {
            assert!(agent.detector().is_none(), "detector before window {i}");
            assert!(store.local_model().unwrap().is_none());
            step(&mut agent, &mut src);
        }
        let det = agent.detector().expect("bootstrapped").clone();
        assert!(agent.global().is_none());
        assert!(det.threshold.is_finite() && det.threshold < f32::MAX);
        let rec = store.local_model().unwrap().expect("persisted");
        assert_eq!(rec.params, det.model.to_flat());
        assert_eq!(rec.threshold, det.threshold);
        assert_eq!(rec.hidden, hidden());
        assert_eq!(rec.calibrated_on, agent.calibrated_on);
        assert!(rec.calibrated_on > 0);

        // It detects: benign windows mostly pass.
        let alerts = run(&mut agent, &mut src, 10);
        assert!(
            alerts.len() <= 8,
            "{} alerts on 40 benign windows",
            alerts.len()
        );
        drop(agent);

        let agent = Agent::new(settings(32, 80), Some(store), None, now()).unwrap();
        assert!(agent.global().is_none());
        let restored = agent.detector().expect("restored");
        assert_eq!(restored.model.to_flat(), det.model.to_flat());
        assert_eq!(restored.scaler, det.scaler);
        assert_eq!(restored.threshold, det.threshold);
        assert_eq!(agent.calibrated_on, rec.calibrated_on);
    }

    /// Two idle shells (a `sleep` loop: 1.5–2.5 ms of CPU a second) on
    /// 1 s windows, with `extra[c]` µs of CPU added to container `c`.
    struct IdleShells {
        cpu: [u64; 2],
        tick: u64,
        rng: rand_chacha::ChaCha8Rng,
    }

    impl IdleShells {
        const IDS: [&str; 2] = ["shell-a", "shell-b"];

        fn step(&mut self, agent: &mut Agent, extra: [u64; 2]) -> Vec<Alert> {
            use rand::Rng;
            let start = self.tick * 1000;
            for (c, id) in Self::IDS.iter().enumerate() {
                self.cpu[c] += self.rng.random_range(1_500..2_500) + extra[c];
                agent.observe(&Event::Sample {
                    container: crate::telemetry::ContainerId((*id).into()),
                    ts_ms: start + 500,
                    counters: crate::telemetry::ResourceCounters {
                        cpu_usage_usec: self.cpu[c],
                        memory_bytes: 1 << 20,
                        pids: 2,
                        ..Default::default()
                    },
                });
            }
            self.tick += 1;
            agent.close_window(self.tick * 1000, &[]).unwrap()
        }
    }

    #[test]
    fn a_cpu_blip_of_an_idle_container_opens_no_incident_and_a_miner_does() {
        let mut agent = Agent::new(settings(32, 96), None, None, now()).unwrap();
        let mut shells = IdleShells {
            cpu: [0; 2],
            tick: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(11),
        };
        // Bootstrap (48 ticks), warm-up, then quiet.
        for _ in 0..48 + 30 {
            assert_eq!(shells.step(&mut agent, [0, 0]), vec![]);
        }
        assert!(agent.detector().is_some());
        // One window with 50 ms of extra CPU (0.05 core): nothing to page.
        let mut alerts = shells.step(&mut agent, [50_000, 0]);
        for _ in 0..10 {
            alerts.extend(shells.step(&mut agent, [0, 0]));
        }
        assert_eq!(alerts, vec![], "a 50 ms CPU blip paged");
        // A miner at a third of a core: an incident within two windows.
        let opened = (0..2)
            .flat_map(|_| shells.step(&mut agent, [0, 330_000]))
            .any(|a| a.container == IdleShells::IDS[1] && a.state == IncidentState::Open);
        assert!(opened, "a third of a core did not open an incident");
    }

    #[test]
    fn a_model_stored_before_the_floors_is_restored_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut std = vec![0.5; NUM_FEATURES];
        std[0] = 0.001;
        store
            .put_local(&crate::store::LocalModelRecord {
                hidden: hidden(),
                params: genesis_params(),
                mean: vec![0.0; NUM_FEATURES],
                std,
                threshold: 1e-6,
                calibrated_on: 100,
            })
            .unwrap();
        let agent = Agent::new(settings(32, 80), Some(store), None, now()).unwrap();
        let det = agent.detector().expect("restored");
        assert_eq!(det.threshold, MIN_THRESHOLD);
        assert_eq!(
            det.scaler.std[0],
            crate::detection::features::CPU_CORES_STD_FLOOR
        );
        assert_eq!(det.scaler.std[1], 0.5);
    }

    #[test]
    fn an_incident_open_across_a_restart_pages_once_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut agent = Agent::new(settings(32, 80), Some(store.clone()), None, now()).unwrap();
        let mut src = benign_source(5);
        // Bootstrap (20 windows), then every container's warm-up.
        run(&mut agent, &mut src, 40);
        assert!(agent.detector().is_some());
        let (last, _) = step(&mut agent, &mut src);
        let (start, duration) = (last + 1, 12);
        src.inject("batch-1", AttackKind::ForkBomb, start, duration)
            .unwrap();
        let mut opened = None;
        for _ in 0..5 {
            for a in step(&mut agent, &mut src).1 {
                if a.container == "batch-1" && a.state == IncidentState::Open {
                    opened = Some(a.incident.clone());
                }
            }
        }
        let incident = opened.expect("the fork bomb opens an incident");
        drop(agent);
        drop(store);

        // The attack goes on across the restart, then stops.
        let mut agent =
            Agent::new(settings(32, 80), Some(open_store(dir.path())), None, now()).unwrap();
        assert!(agent.incident_open("batch-1"));
        let mut closed = Vec::new();
        for _ in 0..duration + 40 {
            for a in step(&mut agent, &mut src).1 {
                assert_ne!(
                    (a.container.as_str(), a.state),
                    ("batch-1", IncidentState::Open),
                    "paged again after the restart"
                );
                if a.state == IncidentState::Close {
                    closed.push(a);
                }
            }
        }
        let close = closed
            .iter()
            .find(|a| a.container == "batch-1")
            .expect("closed after the attack");
        assert_eq!(close.incident, incident);
        assert_eq!(agent.stats().incident_store_errors, 0);
    }

    #[test]
    fn participant_lists_survive_a_restart_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let lists: Vec<Vec<fedmesh_crypto::NodeId>> = vec![
            vec!["a".parse().unwrap(), "b".parse().unwrap()],
            vec!["c".parse().unwrap()],
        ];
        {
            let agent = Agent::new(settings(32, 80), Some(store.clone()), None, now()).unwrap();
            assert!(agent.stored_participant_lists().is_empty());
            agent.store_participant_lists(&lists);
        }
        let agent = Agent::new(settings(32, 80), Some(store.clone()), None, now()).unwrap();
        assert_eq!(agent.stored_participant_lists(), lists);
        store
            .put_participant_lists(b"[[\"ok\"], [\"not a name!\"]]")
            .unwrap();
        assert_eq!(
            agent.stored_participant_lists(),
            vec![vec!["ok".parse::<fedmesh_crypto::NodeId>().unwrap()]]
        );
        store.put_participant_lists(b"{garbage").unwrap();
        assert!(agent.stored_participant_lists().is_empty());
    }

    #[test]
    fn undecodable_incident_state_is_dropped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.put_incidents(b"{not json").unwrap();
        let agent = Agent::new(settings(32, 80), Some(store.clone()), None, now()).unwrap();
        assert_eq!(agent.open_incidents(), 0);
        assert_eq!(store.incidents().unwrap(), None);
    }

    #[test]
    fn no_bootstrap_once_a_genesis_model_arrived_or_when_disabled() {
        let p = pki("coord");
        let mut disabled = Agent::new(settings(32, 0), None, None, now()).unwrap();
        let mut src = benign_source(5);
        run(&mut disabled, &mut src, 30);
        assert!(disabled.detector().is_none());

        let mut agent = Agent::new(settings(32, 80), None, None, now()).unwrap();
        let genesis = verify(
            &p,
            &sign(&p.signer, &body(0, 0, &genesis_params(), None)),
            None,
        )
        .unwrap();
        agent.install_global(genesis).unwrap();
        let mut src = benign_source(5);
        run(&mut agent, &mut src, 30);
        assert!(agent.detector().is_none(), "the federation trains instead");
    }

    /// Installs `threshold` as the detector's threshold, calibrated on `n`
    /// windows.
    fn force_threshold(agent: &mut Agent, threshold: f32, calibrated_on: usize) {
        agent.detector.as_mut().unwrap().threshold = threshold;
        agent.calibrated_on = calibrated_on;
    }

    fn trained_agent(p: &Pki, min_train: usize) -> (Agent, SyntheticSource) {
        let mut agent = Agent::new(settings(min_train, 0), None, None, now()).unwrap();
        let params = genesis_params();
        let g = verify(p, &sign(&p.signer, &body(1, 1, &params, None)), None).unwrap();
        agent.install_global(g).unwrap();
        (agent, benign_source(21))
    }

    #[test]
    fn an_untrusted_threshold_does_not_starve_the_buffer() {
        let p = pki("coord");
        let (mut agent, mut src) = trained_agent(&p, 64);
        let bar = 64 / 5;
        force_threshold(&mut agent, 1e-12, 0);
        // Every window is far above the threshold and every container opens
        // an incident after its warm-up, yet every window is buffered while
        // the calibration is untrusted.
        let mut before = agent.buffered();
        let mut recalibrated = false;
        let mut opened = 0;
        // Recalibrations on too few settled windows (after the containers'
        // start-up) do not make the threshold trusted yet.
        for _ in 0..30 {
            let (_, alerts) = step(&mut agent, &mut src);
            if agent.detector().unwrap().threshold == 1e-12 {
                opened += alerts
                    .iter()
                    .filter(|a| a.state == IncidentState::Open)
                    .count();
            } else {
                recalibrated = true;
            }
            assert_eq!(agent.buffered(), before + 4, "windows buffered");
            before = agent.buffered();
            if agent.calibrated_on >= bar {
                break;
            }
        }
        assert_eq!(
            opened, 4,
            "every container in an incident before recalibrating"
        );
        assert!(recalibrated, "the buffer grew enough to recalibrate");
        assert!(agent.calibrated_on >= bar, "calibration now trusted");
        let t = agent.detector().unwrap().threshold;
        assert!(t > 1e-12 && t.is_finite());

        // Once trusted, windows inside an open incident stay out of the
        // buffer.
        let n = agent.calibrated_on;
        force_threshold(&mut agent, 1e-12, n);
        let before = agent.buffered();
        step(&mut agent, &mut src);
        assert!(containers().iter().all(|(c, _)| agent.incident_open(c)));
        assert_eq!(agent.buffered(), before);
    }

    #[test]
    fn windows_above_a_trusted_threshold_stay_out_of_the_buffer() {
        let p = pki("coord");
        let (mut agent, mut src) = trained_agent(&p, 64);
        // Every window is above the threshold: not learned, even during the
        // containers' warm-up.
        force_threshold(&mut agent, 1e-12, 64 / 5);
        let start = agent.buffered();
        let mut records = Vec::new();
        for _ in 0..10 {
            records.extend(step(&mut agent, &mut src).1);
        }
        assert_eq!(agent.stats().anomalous_windows, 40);
        assert_eq!(agent.buffered(), start);
        // One open record per container once its warm-up is over.
        assert_eq!(records.len(), 4, "{records:?}");
        assert!(records.iter().all(|a| a.state == IncidentState::Open));
        assert_eq!(agent.stats().alerts, 4);
        assert_eq!(agent.open_incidents(), 4);
        assert_eq!(agent.stats().windows, 40);
    }

    #[test]
    fn training_needs_enough_windows() {
        let p = pki("coord");
        let mut agent = Agent::new(settings(64, 0), None, None, now()).unwrap();
        let g = verify(
            &p,
            &sign(&p.signer, &body(0, 0, &genesis_params(), None)),
            None,
        )
        .unwrap();
        let mut src = benign_source(3);
        run(&mut agent, &mut src, 10);
        assert!(matches!(
            agent.training_job(&g, &training(), 1),
            Err(AgentError::NotEnoughData { have: 40, need: 64 })
        ));
        run(&mut agent, &mut src, 10);
        assert!(agent.training_job(&g, &training(), 1).is_ok());
    }

    /// An agent detecting with a trained global model (version 1), 120
    /// benign windows buffered; returns it with the model's body parts.
    fn detecting_agent(p: &Pki, ratio: f32) -> (Agent, Vec<f32>, v1::Scaler) {
        let mut s = settings(64, 0);
        s.detector.max_loss_ratio = ratio;
        let mut agent = Agent::new(s, None, Some(&p.verifier), now()).unwrap();
        let mut src = benign_source(31);
        run(&mut agent, &mut src, 30);
        let det = agent
            .fit_local(&ModelSpec::default_for_features(), 10)
            .unwrap();
        let params = det.model.to_flat();
        let scaler = scaler_msg(&det.scaler);
        let v1 = verify(
            p,
            &sign(&p.signer, &body(1, 1, &params, Some(scaler.clone()))),
            None,
        )
        .unwrap();
        agent.install_global(v1).unwrap();
        assert_eq!(agent.detector_version(), Some(1));
        (agent, params, scaler)
    }

    #[test]
    fn a_non_finite_model_is_never_installed_even_when_signed() {
        let p = pki("coord");
        let (mut agent, params, scaler) = detecting_agent(&p, 10.0);
        let threshold = agent.detector().unwrap().threshold;
        // The signed bytes cannot carry one (the decoders refuse it) ...
        let mut inf_scaler = scaler.clone();
        inf_scaler.mean[2] = f32::INFINITY;
        assert_refused(
            verify(
                &p,
                &sign(&p.signer, &body(2, 2, &params, Some(inf_scaler))),
                None,
            ),
            "infinite scaler mean",
        );
        // ... and a model built in-process is checked again at install.
        let good = verify(
            &p,
            &sign(&p.signer, &body(2, 2, &params, Some(scaler))),
            None,
        )
        .unwrap();
        let mut nan = good.clone();
        nan.params[5] = f32::NAN;
        assert!(matches!(
            agent.install_global(nan),
            Err(AgentError::NotFinite {
                version: 2,
                part: ModelPart::Params
            })
        ));
        let mut inf = good.clone();
        if let Some(s) = inf.scaler.as_mut() {
            s.std[0] = f32::INFINITY;
        }
        let e = agent.install_global(inf).unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::NotFinite {
                    part: ModelPart::Scaler,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(agent.stats().models_refused, 2);
        // The model in use is untouched.
        assert_eq!(agent.global_version(), Some(1));
        assert_eq!(agent.detector().unwrap().threshold, threshold);
        agent.install_global(good).unwrap();
        assert_eq!(agent.detector_version(), Some(2));
    }

    #[test]
    fn a_far_worse_model_is_held_back_and_the_next_good_one_installed() {
        let p = pki("coord");
        let (mut agent, params, scaler) = detecting_agent(&p, 10.0);
        let threshold = agent.detector().unwrap().threshold;
        let det_params = agent.detector().unwrap().model.to_flat();
        // Finite, signed, and useless: every weight ×40.
        let bad: Vec<f32> = params.iter().map(|v| v * 40.0).collect();
        let v2 = verify(
            &p,
            &sign(&p.signer, &body(2, 2, &bad, Some(scaler.clone()))),
            None,
        )
        .unwrap();
        let t = agent.install_global(v2).unwrap();
        assert_eq!(t, threshold, "the threshold in use is reported");
        let held = *agent.held_back().unwrap();
        assert_eq!(held.version, 2);
        assert_eq!(held.in_use, Some(1));
        assert!(held.new_loss > 10.0 * held.current_loss, "{held:?}");
        assert!(held.windows >= MIN_LOSS_CHECK_WINDOWS);
        assert_eq!(agent.stats().models_held_back, 1);
        // Trains from the new version (the round's base), detects with the old.
        assert_eq!(agent.global_version(), Some(2));
        assert_eq!(agent.detector_version(), Some(1));
        assert_eq!(agent.detector().unwrap().model.to_flat(), det_params);
        // A good next version is installed and ends the hold.
        let v3 = verify(
            &p,
            &sign(&p.signer, &body(3, 3, &params, Some(scaler))),
            None,
        )
        .unwrap();
        agent.install_global(v3).unwrap();
        assert!(agent.held_back().is_none());
        assert_eq!(agent.detector_version(), Some(3));
    }

    #[test]
    fn the_loss_check_never_blocks_a_node_without_a_yardstick() {
        let p = pki("coord");
        let params = genesis_params();
        let bad: Vec<f32> = params.iter().map(|v| v * 40.0).collect();
        // No detector yet: the first trained model is installed, however bad.
        let mut agent = Agent::new(settings(64, 0), None, Some(&p.verifier), now()).unwrap();
        let mut src = benign_source(32);
        run(&mut agent, &mut src, 30);
        let v1 = verify(&p, &sign(&p.signer, &body(1, 1, &bad, None)), None).unwrap();
        agent.install_global(v1).unwrap();
        assert_eq!(agent.detector_version(), Some(1));
        // Too few windows to compare on: installed.
        let (mut few, good, scaler) = detecting_agent(&p, 10.0);
        few.buffer.truncate(MIN_LOSS_CHECK_WINDOWS - 1);
        let worse: Vec<f32> = good.iter().map(|v| v * 40.0).collect();
        let v2 = verify(
            &p,
            &sign(&p.signer, &body(2, 2, &worse, Some(scaler.clone()))),
            None,
        )
        .unwrap();
        few.install_global(v2.clone()).unwrap();
        assert_eq!(few.detector_version(), Some(2));
        // The check switched off: installed.
        let (mut off, _, _) = detecting_agent(&p, 0.0);
        off.install_global(v2).unwrap();
        assert_eq!(off.detector_version(), Some(2));
        assert!(off.held_back().is_none());
    }
}
