//! Research scenarios in TOML: fleet, rounds, rule, bucketing, DP, dropouts
//! and attackers. Parsed with `deny_unknown_fields` and validated before a
//! run, so a typo or an impossible (n, f) is an error that names the field.
//!
//! ```toml
//! name = "krum-vs-alie"
//! seed = 42
//! rounds = 10
//! bucket_size = 1          # k: secure-aggregation bucket size (1 = none)
//!
//! [fleet]
//! nodes = 20
//! containers_per_node = 4
//! windows = 40             # telemetry windows per container for training
//! participation = 1.0      # fraction of nodes sampled per round
//! mixes = [{ web = 3, database = 1 }, { batch = 4 }, { ml = 2, batch = 2 }]
//!
//! [training]
//! local_epochs = 1
//!
//! [rule]                   # the coordinator's RuleConfig, flat
//! rule = "krum"
//! f = 4
//!
//! [attack]
//! fraction = 0.2
//! kind = "alie"
//! z_rule = "epfml"
//!
//! [secagg]                 # k > 1: the real masked protocol per bucket
//! clip_norm = 1.0          # every update is clipped to this L2 norm inside the protocol
//!
//! [reputation]             # the coordinator's ReputationConfig (defaults: enabled)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use fedmesh_coordinator::aggregate::RuleConfig;
use fedmesh_coordinator::reputation::ReputationConfig;
use fedmesh_node::sim::synthetic::{AttackKind, Profile};
use serde::{Deserialize, Serialize};

use crate::attacks::Perturbation;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        message: String,
    },
    /// TOML syntax or schema error (names the key and line).
    #[error("{0}")]
    Parse(String),
    /// A value breaks a constraint.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name used in reports.
    pub name: String,
    /// Seed for everything (telemetry, sampling, attacks, training).
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Federated rounds.
    pub rounds: u64,
    /// Secure-aggregation bucket size k: the rule sees the means of random
    /// buckets of k updates (1 = the rule sees every update).
    #[serde(default = "d_one")]
    pub bucket_size: usize,
    /// Rounds with fewer submissions than this are aborted (the global
    /// model stays). The tenant's `quorum` is this, raised to the fewest
    /// updates the rule accepts (over bucket means when k > 1).
    #[serde(default = "d_one")]
    pub min_participants: usize,
    /// The fleet.
    pub fleet: Fleet,
    /// Local training.
    #[serde(default)]
    pub training: Training,
    /// Server step.
    #[serde(default)]
    pub server: Server,
    /// Aggregation rule (the coordinator's `[tenants.aggregation]` table).
    pub rule: RuleConfig,
    /// Differential privacy on honest updates.
    #[serde(default)]
    pub dp: Dp,
    /// Dropouts and stragglers.
    #[serde(default)]
    pub dropout: Dropout,
    /// Attackers (none when absent).
    #[serde(default)]
    pub attack: Option<AttackSpec>,
    /// Held-out evaluation.
    #[serde(default)]
    pub eval: Eval,
    /// Secure aggregation settings (used when `bucket_size > 1`).
    #[serde(default)]
    pub secagg: SecAgg,
    /// The coordinator's reputation and quarantine (`[tenants.reputation]`).
    #[serde(default)]
    pub reputation: ReputationConfig,
}

/// Largest bucket size k: the crypto assignment puts the remainder into the
/// last bucket (up to 2k − 1 members) and a bucket holds at most 255.
pub const MAX_BUCKET_SIZE: usize = 128;

/// Secure aggregation inside buckets (`bucket_size > 1`, the tenant's
/// `[tenants.secure]`): every bucket runs the crypto crate's Bonawitz
/// protocol (real X25519 keys, Shamir shares, AEAD, masks, signatures)
/// through the coordinator's round machine, which closes the round over the
/// revealed sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAgg {
    /// L2 clip norm C applied by every member before quantizing (a scaled
    /// or boosted update cannot weigh more than C).
    #[serde(default = "d_clip_norm")]
    pub clip_norm: f64,
    /// Fixed-point scale of the quantization (units per 1.0).
    #[serde(default = "d_scale")]
    pub scale: f64,
    /// Distributed discrete-Gaussian DP: noise multiplier z of each bucket
    /// sum (standard deviation z·C), none when absent.
    pub noise_multiplier: Option<f64>,
    /// The tenant's bound on bucket means for the norm gate (stricter than
    /// the protocol's bound for clipped updates), none when absent.
    pub max_mean_norm: Option<f64>,
}

fn d_clip_norm() -> f64 {
    1.0
}
fn d_scale() -> f64 {
    65536.0
}

impl Default for SecAgg {
    fn default() -> Self {
        Self {
            clip_norm: d_clip_norm(),
            scale: d_scale(),
            noise_multiplier: None,
            max_mean_norm: None,
        }
    }
}

/// Windows a node needs before it trains (the engine's agent setting).
pub const MIN_TRAIN_WINDOWS: usize = 16;

fn d_seed() -> u64 {
    42
}
fn d_one() -> usize {
    1
}

/// Nodes and their telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Edge nodes.
    pub nodes: usize,
    /// Containers per node.
    #[serde(default = "d_containers")]
    pub containers_per_node: usize,
    /// Telemetry windows per container collected before federating.
    #[serde(default = "d_windows")]
    pub windows: u64,
    /// Fraction of nodes sampled per round, in (0, 1]: below 1, the
    /// tenant's `max_participants` is ⌈participation · nodes⌉ and the
    /// coordinator's round machine samples that many connected identities
    /// (offline nodes never connect).
    #[serde(default = "d_participation")]
    pub participation: f64,
    /// Workload mixes (profile → relative weight); node i uses mix
    /// `i mod len`. Non-IID data comes from different mixes.
    pub mixes: Vec<BTreeMap<String, u32>>,
}

fn d_containers() -> usize {
    4
}
fn d_windows() -> u64 {
    40
}
fn d_participation() -> f64 {
    1.0
}

impl Fleet {
    /// The containers of node `i`: `containers_per_node` split over the
    /// node's mix by largest remainder, named `{profile}-{j}`.
    pub fn containers(&self, i: usize) -> Result<Vec<(String, Profile)>, ScenarioError> {
        let mix = self
            .mixes
            .get(i % self.mixes.len().max(1))
            .ok_or_else(|| ScenarioError::Invalid("fleet.mixes is empty".into()))?;
        let mut parsed: Vec<(Profile, u32)> = Vec::new();
        for (name, w) in mix {
            let p: Profile = name
                .parse()
                .map_err(|e| ScenarioError::Invalid(format!("fleet.mixes: {e}")))?;
            parsed.push((p, *w));
        }
        let total: u64 = parsed.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Err(ScenarioError::Invalid(
                "fleet.mixes: every mix needs a positive weight".into(),
            ));
        }
        let c = self.containers_per_node as u64;
        let mut counts: Vec<(Profile, u64, u64)> = parsed
            .iter()
            .map(|(p, w)| (*p, c * u64::from(*w) / total, c * u64::from(*w) % total))
            .collect();
        let mut left = c - counts.iter().map(|x| x.1).sum::<u64>();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|&a, &b| counts[b].2.cmp(&counts[a].2).then(a.cmp(&b)));
        for &k in order.iter().cycle().take(counts.len() * 2) {
            if left == 0 {
                break;
            }
            counts[k].1 += 1;
            left -= 1;
        }
        let mut out = Vec::new();
        for (p, n, _) in counts {
            for j in 0..n {
                out.push((format!("{p}-{j}"), p));
            }
        }
        Ok(out)
    }
}

/// Local training (the coordinator's `[tenants.training]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Local epochs per round.
    #[serde(default = "d_epochs")]
    pub local_epochs: u32,
    /// Minibatch size.
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub learning_rate: f32,
    /// FedProx μ.
    #[serde(default = "d_prox")]
    pub prox_mu: f32,
}

fn d_epochs() -> u32 {
    1
}
fn d_batch() -> u32 {
    32
}
fn d_lr() -> f32 {
    3e-3
}
fn d_prox() -> f32 {
    0.01
}

impl Default for Training {
    fn default() -> Self {
        Self {
            local_epochs: d_epochs(),
            batch_size: d_batch(),
            learning_rate: d_lr(),
            prox_mu: d_prox(),
        }
    }
}

/// Server step (the coordinator's `server_lr`, `server_momentum`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Server learning rate η.
    #[serde(default = "d_server_lr")]
    pub lr: f32,
    /// Heavy-ball momentum β (0 = none).
    #[serde(default)]
    pub momentum: f32,
    /// How FedAvg and the geometric median weight updates (the
    /// coordinator's `weighting`): `"samples"` (default) or `"equal"`.
    #[serde(default, skip_serializing_if = "is_samples")]
    pub weighting: fedmesh_coordinator::aggregate::Weighting,
}

fn is_samples(w: &fedmesh_coordinator::aggregate::Weighting) -> bool {
    *w == fedmesh_coordinator::aggregate::Weighting::Samples
}

fn d_server_lr() -> f32 {
    1.0
}

impl Default for Server {
    fn default() -> Self {
        Self {
            lr: d_server_lr(),
            momentum: 0.0,
            weighting: Default::default(),
        }
    }
}

/// Local differential privacy on honest updates: clip to `clip`, add
/// `N(0, (noise_multiplier·clip)²)` per coordinate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dp {
    /// L2 clipping norm (none when absent).
    pub clip: Option<f32>,
    /// Noise multiplier z (needs `clip`).
    #[serde(default)]
    pub noise_multiplier: f64,
}

/// Dropout and straggler patterns. With buckets (k > 1) each maps to the
/// phase of the secure-aggregation protocol at which the member stops:
/// `rate` before its key advertisement, `stragglers` after sharing its keys
/// (its masks are removed with the survivors' shares), `after_masked` after
/// its masked update (it still counts; it just does not help unmask).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    /// Probability that a sampled node drops out of a round.
    #[serde(default)]
    pub rate: f64,
    /// Probability that a sampled node misses the deadline (its update is
    /// discarded).
    #[serde(default)]
    pub stragglers: f64,
    /// Probability that a sampled node sends its (masked) update and then
    /// stops answering (k > 1: it does not help unmask; k = 1: no effect).
    #[serde(default)]
    pub after_masked: f64,
    /// Nodes (by index) that are offline in every round.
    #[serde(default)]
    pub always_offline: Vec<usize>,
}

/// Attackers. Unknown keys are refused by the flattened attack kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSpec {
    /// Fraction of nodes that are attackers (rounded down; chosen by seed).
    pub fraction: f64,
    /// Identities per attacker node (Sybils): each submits the same update.
    #[serde(default = "d_one")]
    pub sybils: usize,
    /// First round the attack is active (1-based).
    #[serde(default = "d_start")]
    pub start_round: u64,
    /// The attack.
    #[serde(flatten)]
    pub kind: AttackKindSpec,
}

fn d_start() -> u64 {
    1
}

/// ALIE's z rule name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZRuleName {
    /// `Φ⁻¹((n − f − s)/(n − f))`.
    Epfml,
    /// `Φ⁻¹((n − s)/n)`.
    Paper,
}

/// Protocol-level misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misbehaviour {
    /// Sends Shamir shares its peers cannot decrypt: they abandon the
    /// round, and the attacker's bucket cannot be unmasked and is lost
    /// (k = 1: the attacker loses its own update).
    BadShares,
    /// Is selected, then drops out on purpose (to force unmasking or to
    /// push the round below quorum); with k > 1 at the protocol phase
    /// `phase`.
    ForcedDropout,
}

/// The secure-aggregation phase at which a member stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropoutPhase {
    /// Never advertises its keys.
    BeforeAdvert,
    /// Shares its keys, never sends its masked update (forces the
    /// coordinator to reconstruct its mask key).
    #[default]
    AfterShares,
    /// Sends its masked update, never helps unmask.
    AfterMasked,
}

/// The attack and its parameters, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttackKindSpec {
    /// `−k·μ`.
    SignFlip {
        /// k (1, 4, 10 in the literature).
        #[serde(default = "d_k")]
        k: f64,
    },
    /// Model replacement: train (optionally on poisoned data) and scale the
    /// delta by γ (default n/η).
    Scaling {
        /// γ; default `n/η` for the round's n.
        gamma: Option<f64>,
        /// Attack kind whose windows the attacker trains on as benign.
        poison: Option<AttackKind>,
    },
    /// `N(0, σ²I)`.
    Gaussian {
        /// σ.
        #[serde(default = "d_sigma")]
        sigma: f64,
        /// σ is a multiple of the honest spread.
        #[serde(default)]
        relative: bool,
    },
    /// A little is enough: `μ − z·σ`.
    Alie {
        /// Fixed z; when absent z comes from `z_rule`.
        z: Option<f64>,
        /// How z is computed from (n, f).
        #[serde(default = "d_zrule")]
        z_rule: ZRuleName,
    },
    /// Inner-product manipulation `−ε·μ`.
    Ipm {
        /// ε.
        #[serde(default = "d_eps")]
        epsilon: f64,
    },
    /// Min-max (NDSS'21).
    MinMax {
        /// Direction.
        #[serde(default = "d_pert")]
        perturbation: Perturbation,
        /// Initial λ.
        #[serde(default = "d_lambda")]
        lambda0: f64,
    },
    /// Min-sum (NDSS'21).
    MinSum {
        /// Direction.
        #[serde(default = "d_pert")]
        perturbation: Perturbation,
        /// Initial λ.
        #[serde(default = "d_lambda")]
        lambda0: f64,
    },
    /// Copy one honest update.
    Mimic {
        /// Index among the round's honest updates.
        #[serde(default)]
        target: usize,
    },
    /// Train with one attack kind's windows labelled benign (blind spot).
    DataPoison {
        /// The attack kind to hide.
        target: AttackKind,
        /// Optional boost γ applied to the poisoned delta.
        boost: Option<f64>,
    },
    /// Protocol-level misbehaviour.
    Protocol {
        /// What the attacker does.
        behaviour: Misbehaviour,
        /// For `forced_dropout` with k > 1: when the attacker stops.
        #[serde(default)]
        phase: DropoutPhase,
    },
}

fn d_k() -> f64 {
    1.0
}
fn d_sigma() -> f64 {
    200.0
}
fn d_zrule() -> ZRuleName {
    ZRuleName::Epfml
}
fn d_eps() -> f64 {
    0.1
}
fn d_pert() -> Perturbation {
    Perturbation::Std
}
fn d_lambda() -> f64 {
    10.0
}

impl AttackKindSpec {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SignFlip { .. } => "sign_flip",
            Self::Scaling { .. } => "scaling",
            Self::Gaussian { .. } => "gaussian",
            Self::Alie { .. } => "alie",
            Self::Ipm { .. } => "ipm",
            Self::MinMax { .. } => "min_max",
            Self::MinSum { .. } => "min_sum",
            Self::Mimic { .. } => "mimic",
            Self::DataPoison { .. } => "data_poison",
            Self::Protocol { .. } => "protocol",
        }
    }

    /// The attack with default parameters, by name (for `matrix`).
    pub fn by_name(name: &str) -> Result<Option<Self>, ScenarioError> {
        Ok(Some(match name {
            "none" => return Ok(None),
            "sign_flip" => Self::SignFlip { k: 1.0 },
            "scaling" => Self::Scaling {
                gamma: None,
                poison: Some(AttackKind::Cryptojacking),
            },
            "gaussian" => Self::Gaussian {
                sigma: d_sigma(),
                relative: false,
            },
            "alie" => Self::Alie {
                z: None,
                z_rule: ZRuleName::Epfml,
            },
            "ipm" => Self::Ipm { epsilon: d_eps() },
            "min_max" => Self::MinMax {
                perturbation: d_pert(),
                lambda0: d_lambda(),
            },
            "min_sum" => Self::MinSum {
                perturbation: d_pert(),
                lambda0: d_lambda(),
            },
            "mimic" => Self::Mimic { target: 0 },
            "data_poison" => Self::DataPoison {
                target: AttackKind::Cryptojacking,
                boost: None,
            },
            "bad_shares" => Self::Protocol {
                behaviour: Misbehaviour::BadShares,
                phase: DropoutPhase::default(),
            },
            "forced_dropout" => Self::Protocol {
                behaviour: Misbehaviour::ForcedDropout,
                phase: DropoutPhase::default(),
            },
            other => {
                return Err(ScenarioError::Invalid(format!(
                    "unknown attack {other:?} (none, sign_flip, scaling, gaussian, alie, ipm, \
                     min_max, min_sum, mimic, data_poison, bad_shares, forced_dropout)"
                )));
            }
        }))
    }
}

/// Held-out evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Containers of each profile in the held-out set.
    #[serde(default = "d_per_profile")]
    pub containers_per_profile: usize,
    /// Windows per held-out container (attacks in the second half).
    #[serde(default = "d_eval_windows")]
    pub windows: u64,
    /// False-alarm rate for the threshold (calibrated on separate benign
    /// windows).
    #[serde(default = "d_far")]
    pub false_alarm_rate: f32,
    /// Evaluate every this many rounds (and always the last).
    #[serde(default = "d_one_u64")]
    pub every: u64,
    /// Also run the clean twin (same scenario and seed, attackers
    /// disabled) and report its miss rate next to the attack success and
    /// the final model's distance to it. Default: only for targeted
    /// attacks (data poisoning, scaling with poison).
    pub clean_twin: Option<bool>,
}

fn d_per_profile() -> usize {
    2
}
fn d_eval_windows() -> u64 {
    48
}
fn d_far() -> f32 {
    0.01
}
fn d_one_u64() -> u64 {
    1
}

impl Default for Eval {
    fn default() -> Self {
        Self {
            containers_per_profile: d_per_profile(),
            windows: d_eval_windows(),
            false_alarm_rate: d_far(),
            every: 1,
            clean_twin: None,
        }
    }
}

fn unit(name: &str, v: f64, open_zero: bool) -> Result<(), ScenarioError> {
    let ok = v.is_finite() && v <= 1.0 && if open_zero { v > 0.0 } else { v >= 0.0 };
    if ok {
        Ok(())
    } else {
        let range = if open_zero { "(0, 1]" } else { "[0, 1]" };
        Err(ScenarioError::Invalid(format!(
            "{name} = {v} must be in {range}"
        )))
    }
}

impl Scenario {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ScenarioError::Parse(m) => ScenarioError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Attacker nodes (rounded down from the fraction).
    pub fn attacker_count(&self) -> usize {
        self.attack.as_ref().map_or(0, |a| {
            (a.fraction * self.fleet.nodes as f64).floor() as usize
        })
    }

    /// Submissions in a round when every sampled node reports: honest
    /// nodes plus `sybils` identities per attacker.
    pub fn nominal_submissions(&self) -> usize {
        let sampled = self.sampled_per_round();
        let attackers = self.attacker_count().min(sampled);
        let sybils = self.attack.as_ref().map_or(1, |a| a.sybils);
        sampled - attackers + attackers * sybils
    }

    /// Nodes sampled per round.
    pub fn sampled_per_round(&self) -> usize {
        ((self.fleet.participation * self.fleet.nodes as f64).ceil() as usize)
            .clamp(1, self.fleet.nodes.max(1))
    }

    /// Inputs the rule sees in a round without dropouts (bucket means when
    /// k > 1: the crypto assignment makes ⌊n/k⌋ buckets, the remainder
    /// joins the last one).
    pub fn nominal_rule_inputs(&self) -> usize {
        self.nominal_submissions() / self.bucket_size.max(1)
    }

    /// The attack kind a targeted attack tries to hide (data poisoning,
    /// scaling with poisoned training data).
    pub fn attack_target(&self) -> Option<AttackKind> {
        match self.attack.as_ref().map(|a| &a.kind) {
            Some(AttackKindSpec::DataPoison { target, .. }) => Some(*target),
            Some(AttackKindSpec::Scaling { poison, .. }) => *poison,
            _ => None,
        }
    }

    /// Whether a run also runs its clean twin ([`Eval::clean_twin`]).
    pub fn wants_clean_twin(&self) -> bool {
        self.attack.is_some()
            && self
                .eval
                .clean_twin
                .unwrap_or_else(|| self.attack_target().is_some())
    }

    /// Checks every constraint; the message names the field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.rounds == 0 {
            return bad("rounds must be at least 1".into());
        }
        if self.fleet.nodes == 0 {
            return bad("fleet.nodes must be at least 1".into());
        }
        if self.fleet.containers_per_node == 0 {
            return bad("fleet.containers_per_node must be at least 1".into());
        }
        if self.fleet.windows < 4 {
            return bad("fleet.windows must be at least 4".into());
        }
        let per_node = self.fleet.containers_per_node as u64 * (self.fleet.windows - 1);
        if per_node < MIN_TRAIN_WINDOWS as u64 {
            return bad(format!(
                "fleet: containers_per_node × (windows − 1) = {per_node} training windows per \
                 node, at least {MIN_TRAIN_WINDOWS} needed"
            ));
        }
        if self.fleet.mixes.is_empty() {
            return bad("fleet.mixes needs at least one mix".into());
        }
        for i in 0..self.fleet.mixes.len() {
            self.fleet.containers(i)?;
        }
        unit("fleet.participation", self.fleet.participation, true)?;
        if self.bucket_size == 0 || self.bucket_size > MAX_BUCKET_SIZE {
            return bad(format!(
                "bucket_size = {} must be in 1..={MAX_BUCKET_SIZE}",
                self.bucket_size
            ));
        }
        let sa = &self.secagg;
        if !(sa.clip_norm.is_finite()
            && sa.clip_norm > 0.0
            && sa.scale.is_finite()
            && sa.scale > 0.0)
        {
            return bad("secagg.clip_norm and secagg.scale must be positive".into());
        }
        if sa.clip_norm * sa.scale > f64::from(1u32 << 30) {
            return bad("secagg.clip_norm × secagg.scale must be at most 2^30".into());
        }
        if let Some(z) = sa.noise_multiplier
            && !(z.is_finite() && z > 0.0)
        {
            return bad(format!("secagg.noise_multiplier = {z} must be positive"));
        }
        if let Some(m) = sa.max_mean_norm
            && !(m.is_finite() && m > 0.0)
        {
            return bad(format!("secagg.max_mean_norm = {m} must be positive"));
        }
        if let Some(p) = self.reputation.problems().first() {
            return bad(format!("reputation: {p}"));
        }
        if self.training.local_epochs == 0 || self.training.batch_size == 0 {
            return bad("training.local_epochs and training.batch_size must be at least 1".into());
        }
        if !(self.training.learning_rate.is_finite() && self.training.learning_rate > 0.0) {
            return bad("training.learning_rate must be positive".into());
        }
        if !(self.server.lr.is_finite() && self.server.lr > 0.0) {
            return bad("server.lr must be positive".into());
        }
        if !(self.server.momentum.is_finite() && (0.0..1.0).contains(&self.server.momentum)) {
            return bad("server.momentum must be in [0, 1)".into());
        }
        if let Some(c) = self.dp.clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("dp.clip = {c} must be positive"));
        }
        if !(self.dp.noise_multiplier.is_finite() && self.dp.noise_multiplier >= 0.0) {
            return bad("dp.noise_multiplier must be non-negative".into());
        }
        if self.dp.noise_multiplier > 0.0 && self.dp.clip.is_none() {
            return bad("dp.noise_multiplier needs dp.clip".into());
        }
        unit("dropout.rate", self.dropout.rate, false)?;
        unit("dropout.stragglers", self.dropout.stragglers, false)?;
        unit("dropout.after_masked", self.dropout.after_masked, false)?;
        if let Some(&i) = self
            .dropout
            .always_offline
            .iter()
            .find(|&&i| i >= self.fleet.nodes)
        {
            return bad(format!(
                "dropout.always_offline names node {i} of {}",
                self.fleet.nodes
            ));
        }
        if let Some(a) = &self.attack {
            unit("attack.fraction", a.fraction, false)?;
            if a.sybils == 0 {
                return bad("attack.sybils must be at least 1".into());
            }
            if a.fraction > 0.0 && self.attacker_count() == 0 {
                return bad(format!(
                    "attack.fraction = {} of {} nodes is no attacker",
                    a.fraction, self.fleet.nodes
                ));
            }
            if self.attacker_count() >= self.fleet.nodes {
                return bad("attack.fraction leaves no honest node".into());
            }
            let pos = |name: &str, v: f64| {
                if v.is_finite() && v > 0.0 {
                    Ok(())
                } else {
                    Err(ScenarioError::Invalid(format!(
                        "attack.{name} = {v} must be positive"
                    )))
                }
            };
            match &a.kind {
                AttackKindSpec::SignFlip { k } => pos("k", *k)?,
                AttackKindSpec::Scaling { gamma, .. } => {
                    if let Some(g) = gamma {
                        pos("gamma", *g)?
                    }
                }
                AttackKindSpec::Gaussian { sigma, .. } => pos("sigma", *sigma)?,
                AttackKindSpec::Alie { z, .. } => {
                    if let Some(z) = z
                        && !z.is_finite()
                    {
                        return bad("attack.z must be finite".into());
                    }
                }
                AttackKindSpec::Ipm { epsilon } => pos("epsilon", *epsilon)?,
                AttackKindSpec::MinMax { lambda0, .. } | AttackKindSpec::MinSum { lambda0, .. } => {
                    pos("lambda0", *lambda0)?
                }
                AttackKindSpec::DataPoison { boost, .. } => {
                    if let Some(b) = boost {
                        pos("boost", *b)?
                    }
                }
                AttackKindSpec::Mimic { .. } | AttackKindSpec::Protocol { .. } => {}
            }
        }
        if self.eval.containers_per_profile == 0 || self.eval.windows < 8 || self.eval.every == 0 {
            return bad(
                "eval needs containers_per_profile >= 1, windows >= 8 and every >= 1".into(),
            );
        }
        if !(self.eval.false_alarm_rate > 0.0 && self.eval.false_alarm_rate <= 0.5) {
            return bad("eval.false_alarm_rate must be in (0, 0.5]".into());
        }
        let n = self.nominal_rule_inputs();
        self.rule.check(n).map_err(|e| {
            ScenarioError::Invalid(format!(
                "rule: {e} (rule inputs per round without dropouts: {} submissions in buckets \
                 of {})",
                self.nominal_submissions(),
                self.bucket_size
            ))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
rounds = 3
[fleet]
nodes = 10
mixes = [{ web = 3, database = 1 }, { batch = 1 }]
[rule]
rule = "krum"
f = 2
[attack]
fraction = 0.2
kind = "alie"
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::from_toml(BASE).unwrap();
        assert_eq!(s.seed, 42);
        assert_eq!(s.bucket_size, 1);
        assert_eq!(s.attacker_count(), 2);
        assert_eq!(
            s.attack.as_ref().unwrap().kind,
            AttackKindSpec::Alie {
                z: None,
                z_rule: ZRuleName::Epfml
            }
        );
        let c = s.fleet.containers(0).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.iter().filter(|x| x.1 == Profile::Web).count(), 3);
        assert_eq!(s.fleet.containers(1).unwrap()[0].1, Profile::Batch);
    }

    #[test]
    fn largest_remainder_split() {
        let f = Fleet {
            nodes: 1,
            containers_per_node: 5,
            windows: 8,
            participation: 1.0,
            mixes: vec![BTreeMap::from([
                ("web".to_string(), 1),
                ("ml".to_string(), 1),
                ("batch".to_string(), 1),
            ])],
        };
        let c = f.containers(0).unwrap();
        assert_eq!(c.len(), 5);
        let mut counts: Vec<usize> = Profile::ALL
            .iter()
            .map(|p| c.iter().filter(|x| x.1 == *p).count())
            .collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![0, 1, 2, 2]);
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |t: &str| Scenario::from_toml(t).unwrap_err().to_string();
        assert!(err(&BASE.replace("rounds = 3", "rounds = 3\nroundz = 1")).contains("roundz"));
        assert!(err(&BASE.replace("web = 3", "webb = 3")).contains("unknown profile \"webb\""));
        assert!(
            err(&BASE.replace(
                "nodes = 10",
                "nodes = 10\ncontainers_per_node = 1\nwindows = 8"
            ))
            .contains("7 training windows per node")
        );
        assert!(
            err(&BASE.replace("f = 2", "f = 4")).contains("krum needs n >= 2f+3: n = 10, f = 4"),
            "{}",
            err(&BASE.replace("f = 2", "f = 4"))
        );
        assert!(err(&BASE.replace("kind = \"alie\"", "kind = \"alie2\"")).contains("alie2"));
        assert!(err(&BASE.replace("kind = \"alie\"", "kind = \"alie\"\nzz = 1")).contains("zz"));
        assert!(err(&BASE.replace("fraction = 0.2", "fraction = 1.5")).contains("attack.fraction"));
        assert!(
            err(&BASE.replace("kind = \"alie\"", "kind = \"ipm\"\nepsilon = -1.0"))
                .contains("attack.epsilon")
        );
        // Buckets shrink the rule's n: 10 submissions in buckets of 2 = 5 < 2·2+3.
        assert!(err(&BASE.replace("rounds = 3", "rounds = 3\nbucket_size = 2")).contains("n = 5"));
        assert!(
            err(&format!("{BASE}\n[dp]\nnoise_multiplier = 1.0")).contains("dp.noise_multiplier")
        );
    }

    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "only {n} scenarios shipped");
    }
}
