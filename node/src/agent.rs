//! The node agent: turns telemetry events into windows, scores them,
//! raises alerts, keeps a buffer of benign windows for local training, and
//! installs verified global models.
//!
//! The agent does no network I/O and reads no clock: the runtime
//! ([`crate::runtime`]) feeds it events and window boundaries and moves
//! updates to and from the coordinator. Heavy training runs as a
//! [`TrainingJob`] outside the agent's lock.

use std::collections::VecDeque;

use fedmesh_crypto::{CertVerifier, Identity};
use fedmesh_proto::v1;
use ndarray::Array2;
use prost::Message;
use tracing::{info, warn};

use crate::alert::Alert;
use crate::config::DetectorConfig;
use crate::detector::{Detector, calibrate_threshold, top_features};
use crate::features::{FeatureWindow, NUM_FEATURES, WindowBuilder, feature_schema_hash};
use crate::model::{Autoencoder, ModelSpec, TrainConfig};
use crate::scaler::{Scaler, ScalerStats};
use crate::store::{LocalModelRecord, NodeStore};
use crate::telemetry::Event;

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
    /// Alerts raised.
    pub alerts: u64,
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
    /// Seed for local training.
    pub seed: u64,
}

/// The node agent.
pub struct Agent {
    settings: AgentSettings,
    builder: WindowBuilder,
    buffer: VecDeque<[f32; NUM_FEATURES]>,
    detector: Option<Detector>,
    global: Option<GlobalModel>,
    store: Option<NodeStore>,
    stats: AgentStats,
    trained_rounds: u64,
    /// Calibration windows behind the current threshold.
    calibrated_on: usize,
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
        let mut agent = Self {
            settings,
            builder: WindowBuilder::new(),
            buffer: VecDeque::new(),
            detector: None,
            global: None,
            store,
            stats: AgentStats::default(),
            trained_rounds: 0,
            calibrated_on: 0,
        };
        let Some(store) = agent.store.clone() else {
            return Ok(agent);
        };
        if let (Some(bytes), Some(verifier)) = (store.global_model()?, verifier) {
            match verify_global_model(&bytes, verifier, &agent.settings.tenant, None, now) {
                Ok(g) if g.round > 0 => {
                    let threshold = store.threshold()?.unwrap_or(f32::MAX);
                    let model =
                        Autoencoder::from_flat(g.spec.clone(), &g.params).map_err(model_err)?;
                    let scaler = g
                        .scaler
                        .clone()
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
                scaler: Scaler {
                    mean: rec.mean,
                    std: rec.std,
                },
                threshold: rec.threshold,
            });
            info!("restored local bootstrap model from store");
        }
        Ok(agent)
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

    /// Closes the current window: scores every container's window, returns
    /// alerts, and buffers the benign windows for training.
    pub fn close_window(&mut self, end_ms: u64) -> Result<Vec<Alert>, AgentError> {
        let windows = self.builder.close(end_ms);
        self.stats.windows += windows.len() as u64;
        let alerts = self.score_and_buffer(&windows)?;
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

    /// Scores windows (if a model is present), returns alerts and buffers
    /// the windows that did not alert.
    pub fn score_and_buffer(
        &mut self,
        windows: &[FeatureWindow],
    ) -> Result<Vec<Alert>, AgentError> {
        let mut alerts = Vec::new();
        let mut flagged = vec![false; windows.len()];
        if let Some(det) = &self.detector
            && !windows.is_empty()
        {
            let scores = det.score_windows(windows).map_err(model_err)?;
            self.stats.scored += windows.len() as u64;
            for (i, (w, s)) in windows.iter().zip(&scores).enumerate() {
                if s.value > det.threshold {
                    flagged[i] = true;
                    alerts.push(Alert {
                        ts_ms: w.end_ms,
                        tenant: self.settings.tenant.clone(),
                        node: self.settings.node.clone(),
                        container: w.container.0.clone(),
                        score: s.value,
                        threshold: det.threshold,
                        model_version: self.global.as_ref().map(|g| g.version),
                        top_features: top_features(s, self.settings.detector.top_features)
                            .into_iter()
                            .map(|(n, v)| (n.to_string(), v))
                            .collect(),
                    });
                }
            }
        }
        self.stats.alerts += alerts.len() as u64;
        // Alerted windows stay out of the training data only once the
        // threshold rests on enough benign windows; before that a poorly
        // calibrated threshold would starve the buffer.
        let trusted = self.calibrated_on >= self.settings.detector.min_train_windows / 5;
        for (w, f) in windows.iter().zip(flagged) {
            if !(f && trusted) {
                self.buffer.push_back(w.features);
                while self.buffer.len() > self.settings.detector.train_buffer {
                    self.buffer.pop_front();
                }
            }
        }
        Ok(alerts)
    }

    /// Recalibrates the threshold whenever the calibration split has doubled
    /// since the last calibration (thresholds from few windows are noisy).
    fn maybe_recalibrate(&mut self) -> Result<(), AgentError> {
        let available = self.buffer.len() / 5;
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
                if let (Some(store), Some(g)) = (&self.store, &self.global) {
                    store.put_global(&g.signed, t)?;
                }
            }
        }
        Ok(())
    }

    /// Splits the buffer: every fifth window calibrates, the rest train.
    fn split(&self) -> (Vec<&[f32; NUM_FEATURES]>, Vec<&[f32; NUM_FEATURES]>) {
        let (mut train, mut calib) = (Vec::new(), Vec::new());
        for (i, w) in self.buffer.iter().enumerate() {
            if i % 5 == 4 {
                calib.push(w)
            } else {
                train.push(w)
            }
        }
        if calib.len() < 10 {
            calib = self.buffer.iter().collect();
        }
        (train, calib)
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
        Ok((stats, scaler))
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
        let need = self.settings.detector.min_train_windows;
        if self.buffer.len() < need {
            return Err(AgentError::NotEnoughData {
                have: self.buffer.len(),
                need,
            });
        }
        let (train, _) = self.split();
        let raw = Self::matrix(&train);
        let (stats, local) = Self::local_scaler(&raw)?;
        let scaler = base.scaler.as_ref().unwrap_or(&local);
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

    /// Records that a round's update was sent.
    pub fn note_trained(&mut self) {
        self.trained_rounds += 1;
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
        let model = Autoencoder::from_flat(g.spec.clone(), &g.params).map_err(model_err)?;
        let scaler = match &g.scaler {
            Some(s) => s.clone(),
            None if self.buffer.len() >= 2 => {
                let all: Vec<_> = self.buffer.iter().collect();
                Self::local_scaler(&Self::matrix(&all))?.1
            }
            None => Scaler::identity(NUM_FEATURES),
        };
        let mut det = Detector {
            model,
            scaler,
            threshold: f32::MAX,
        };
        let (t, n) = self.calibrate(&det)?;
        det.threshold = t.unwrap_or(f32::MAX);
        if let Some(store) = &self.store {
            store.put_global(&g.signed, det.threshold)?;
        }
        let threshold = det.threshold;
        // The genesis version is an untrained starting point: a base for
        // training, never a detector.
        if g.round > 0 {
            info!(version = g.version, threshold, "installed global model");
            self.detector = Some(det);
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

    fn calibrate(&self, det: &Detector) -> Result<(Option<f32>, usize), AgentError> {
        let (_, calib) = self.split();
        if calib.is_empty() {
            return Ok((None, 0));
        }
        let m = det
            .scaler
            .transform(Self::matrix(&calib).view())
            .map_err(model_err)?;
        let scores = det.model.scores(m.view()).map_err(model_err)?;
        let t = calibrate_threshold(&scores, self.settings.detector.false_alarm_rate)
            .map_err(model_err)?;
        Ok((Some(t), calib.len()))
    }

    /// Trains a model on this node's data alone (no federation): the same
    /// architecture, `epochs` epochs from a seeded initialisation, local
    /// scaler, threshold calibrated like a global model's.
    pub fn fit_local(&self, spec: &ModelSpec, epochs: usize) -> Result<Detector, AgentError> {
        let need = self.settings.detector.min_train_windows;
        if self.buffer.len() < need {
            return Err(AgentError::NotEnoughData {
                have: self.buffer.len(),
                need,
            });
        }
        let (train, _) = self.split();
        let raw = Self::matrix(&train);
        let (_, scaler) = Self::local_scaler(&raw)?;
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
        if let Some(store) = &self.store {
            store.put_local(&LocalModelRecord {
                hidden: spec.hidden.clone(),
                params: det.model.to_flat(),
                mean: det.scaler.mean.clone(),
                std: det.scaler.std.clone(),
                threshold: det.threshold,
            })?;
        }
        info!(
            threshold = det.threshold,
            "no global model yet: detecting with a local bootstrap model"
        );
        self.calibrated_on = self.split().1.len();
        self.detector = Some(det);
        Ok(())
    }
}
