//! The in-process engine: real node and coordinator code, no network.
//!
//! The round core is the coordinator's own: one `machine::RoundMachine`
//! built from the scenario's tenant ([`super::tenant`], the configuration
//! the network engine's coordinator loads) drives every round exactly as
//! the coordinator's async shell (`Federation`) does, minus the effects
//! (store, signer, channels, clock). Per round:
//!
//! - `select` samples the participants among the connected identities
//!   (every online node, and an attacker's Sybils): the same seeded draw as
//!   the networked coordinator, quarantined identities as *shadow*
//!   participants;
//! - presence (offline, dropout, straggler) is drawn per (node, round);
//!   honest nodes (and training attackers) train in parallel through
//!   `Agent::training_job`; crafting attackers build their update from the
//!   round's honest updates ([`crate::attacks`]); Sybils repeat it;
//! - k = 1: every update is sent to `submit` as a `v1::UpdateRequest`
//!   (validated by `validate::update`; a refusal with a typed reason is a
//!   reputation violation, as at the coordinator), the round is taken out
//!   and `plan_plaintext` closes it (abort below the quorum, or the rule,
//!   clipping, evidence and scaler merge);
//! - k > 1: `open_secure` forms the buckets and [`super::buckets`] plays
//!   every member's part of the masked protocol through `secagg` and
//!   `advance_secure`; the machine unmasks, and `plan_secure` closes the
//!   round from the bucket sums;
//! - a commit plan goes through `step` (server step and the commit guard;
//!   a refusal aborts the round), `observe` (reputation) and `apply`.
//!
//! The global detector is evaluated on held-out windows.
//!
//! Determinism: every random choice of the simulation comes from a
//! ChaCha20 stream seeded by [`derive_seed`] from (seed, purpose, node,
//! round); sampling is the machine's; each secure-aggregation member draws
//! from its own seeded stream; parallel results are collected in node or
//! identity order, so thread count does not change a bit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use fedmesh_coordinator::aggregate::{AggregateError, clip_to_norm};
use fedmesh_coordinator::config::TenantConfig;
use fedmesh_coordinator::error::FedError;
use fedmesh_coordinator::machine::{
    Close, CommitPlan, Restored, RoundMachine, SecureOutcome, plan_plaintext, plan_secure, step,
};
use fedmesh_coordinator::reputation::Reputation;
use fedmesh_coordinator::server_step::genesis_params;
use fedmesh_crypto::NodeId;
use fedmesh_crypto::secagg::local::Dropout;
use fedmesh_node::agent::{Agent, AgentSettings, GlobalModel, LocalUpdate};
use fedmesh_node::config::DetectorConfig;
use fedmesh_node::detection::detector::{Detector, alert_threshold};
use fedmesh_node::detection::features::{FeatureWindow, NUM_FEATURES};
use fedmesh_node::detection::model::{Autoencoder, ModelSpec};
use fedmesh_node::detection::scaler::Scaler;
use fedmesh_node::sim::eval::{evaluate, standard_heldout};
use fedmesh_node::sim::synthetic::{AttackKind, Profile, labelled_windows};
use fedmesh_proto::v1;
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tracing::{debug, info_span};

use super::buckets::{self, LostBucket, Member, SecAggFleet};
use super::tenant::{self, Identity, TENANT};
use super::{CleanTwin, EngineError, RoundMetrics, RunReport, RunTiming, derive_seed};
use crate::attacks::{self, ZRule};
use crate::scenario::{AttackKindSpec, DropoutPhase, Misbehaviour, Scenario, ZRuleName};

pub(crate) const WINDOW_MS: u64 = 10_000;

// Purposes of derived seeds (8 and 10, the tenant's seed and the members'
// secure-aggregation seeds, are in `tenant`).
const P_TELEMETRY: u64 = 1;
const P_AGENT: u64 = 2;
const P_ATTACKERS: u64 = 3;
const P_NODE_ROUND: u64 = 5;
const P_EVAL: u64 = 6;
const P_CALIB: u64 = 7;

/// Run options besides the scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Hide the progress bar.
    pub quiet: bool,
    /// Write every round's submissions to `DIR/round_NNNN.npy` (N × P).
    pub record: Option<PathBuf>,
}

/// One identity's submission in a round.
#[derive(Debug, Clone)]
struct Submission {
    id: NodeId,
    node: usize,
    sybil: usize,
    delta: Vec<f32>,
    num_samples: u64,
    stats: Option<v1::ScalerStats>,
    /// The loss the request reports.
    train_loss: f32,
    /// An honest node's training loss (for the round's mean).
    honest_loss: Option<f32>,
    /// k > 1: the extra words it masks with its update.
    extra: Option<Vec<u32>>,
    bad_shares: bool,
    dropout: Option<Dropout>,
}

pub(crate) struct SimNode {
    pub(crate) name: String,
    pub(crate) agent: Agent,
}

fn node_err(node: usize) -> impl Fn(String) -> EngineError {
    move |message| EngineError::Node { node, message }
}

pub(crate) fn identity(i: usize) -> String {
    format!("node-{i:05}")
}

/// Builds node `i`: its containers, telemetry (poisoned for a data-poison
/// attacker) and an agent whose buffer holds the windows.
pub(crate) fn build_node(
    s: &Scenario,
    i: usize,
    poison: Option<AttackKind>,
) -> Result<SimNode, EngineError> {
    build_node_as(s, i, poison, identity(i))
}

/// [`build_node`] under another identity (an attacker's Sybil): the same
/// data and agent seed, the agent named `name`.
pub(crate) fn build_node_as(
    s: &Scenario,
    i: usize,
    poison: Option<AttackKind>,
    name: String,
) -> Result<SimNode, EngineError> {
    let err = node_err(i);
    let containers = s.fleet.containers(i)?;
    let windows = s.fleet.windows;
    let attacks: Vec<(String, AttackKind, u64, u64)> = match poison {
        Some(kind) => containers
            .iter()
            .map(|(id, _)| (id.clone(), kind, windows / 4, windows - windows / 4))
            .collect(),
        None => Vec::new(),
    };
    let data = labelled_windows(
        derive_seed(s.seed, &[P_TELEMETRY, i as u64]),
        &containers,
        windows,
        WINDOW_MS,
        &attacks,
    )
    .map_err(|e| err(e.to_string()))?;
    let windows: Vec<FeatureWindow> = data.into_iter().map(|(w, _)| w).collect();
    let settings = AgentSettings {
        tenant: TENANT.into(),
        node: name.clone(),
        detector: DetectorConfig {
            min_train_windows: crate::scenario::MIN_TRAIN_WINDOWS,
            // The engines measure the committed models: network-engine
            // nodes install every version, as the in-process engine does.
            max_loss_ratio: 0.0,
            ..DetectorConfig::default()
        },
        incidents: Default::default(),
        seed: derive_seed(s.seed, &[P_AGENT, i as u64]),
    };
    let mut agent = Agent::new(settings, None, None, time::OffsetDateTime::UNIX_EPOCH)
        .map_err(|e| err(e.to_string()))?;
    // No detector yet: every window goes to the training buffer.
    agent.buffer_windows(&windows);
    Ok(SimNode { name, agent })
}

/// Held-out data: labelled windows of every profile with every attack kind,
/// and separate benign windows to calibrate the threshold on.
pub(crate) struct Heldout {
    data: Vec<(FeatureWindow, Option<AttackKind>)>,
    benign: Vec<FeatureWindow>,
    calibration: Vec<FeatureWindow>,
}

pub(crate) fn heldout(s: &Scenario) -> Result<Heldout, EngineError> {
    let e = |x: fedmesh_node::sim::eval::EvalError| EngineError::Eval(x.to_string());
    let data = standard_heldout(
        derive_seed(s.seed, &[P_EVAL]),
        &Profile::ALL,
        s.eval.containers_per_profile,
        s.eval.windows,
        WINDOW_MS,
    )
    .map_err(e)?;
    let benign = data
        .iter()
        .filter(|(_, l)| l.is_none())
        .map(|(w, _)| w.clone())
        .collect();
    let mut containers = Vec::new();
    for p in Profile::ALL {
        for i in 0..s.eval.containers_per_profile {
            containers.push((format!("calib-{p}-{i}"), p));
        }
    }
    let calibration = labelled_windows(
        derive_seed(s.seed, &[P_CALIB]),
        &containers,
        s.eval.windows,
        WINDOW_MS,
        &[],
    )
    .map_err(|x| EngineError::Eval(x.to_string()))?
    .into_iter()
    .map(|(w, _)| w)
    .collect();
    Ok(Heldout {
        data,
        benign,
        calibration,
    })
}

/// The poisoned attack kind of a scenario's attackers, if any.
pub(crate) fn poison_of(s: &Scenario) -> Option<AttackKind> {
    match s.attack.as_ref().map(|a| &a.kind) {
        Some(AttackKindSpec::DataPoison { target, .. }) => Some(*target),
        Some(AttackKindSpec::Scaling { poison, .. }) => *poison,
        _ => None,
    }
}

/// Attacker nodes: a seeded choice of `attacker_count` nodes.
pub(crate) fn choose_attackers(s: &Scenario) -> BTreeSet<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(s.seed, &[P_ATTACKERS]));
    rand::seq::index::sample(&mut rng, s.fleet.nodes, s.attacker_count())
        .into_iter()
        .collect()
}

pub(crate) fn sha256_params(p: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in p {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn progress(quiet: bool, len: u64, name: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>20.bold} [{bar:30}] {pos}/{len} rounds {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    pb
}

/// Outcome of one node's participation before aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Trains and submits; `unmask = false`: stops after sending its
    /// masked update (k > 1).
    Present { unmask: bool },
    /// Drops out (k > 1: before advertising its keys).
    Dropped,
    /// Misses the deadline (k > 1: after sharing its keys).
    Straggler,
    /// Offline in every round (never in the participant list).
    Offline,
    /// Quarantined with k > 1: left out of the participant list.
    Quarantined,
    /// A forced-dropout attacker with k > 1, stopping at this phase.
    Forced(Dropout),
}

/// The update every crafting attacker of a round sends, computed once from
/// the round's honest updates (node order) — `None` for kinds crafted per
/// attacker or not crafted — and the attack's parameter (ALIE's z, the
/// min-max/min-sum λ).
pub(crate) fn craft_shared(
    kind: &AttackKindSpec,
    honest: &[&[f32]],
    n_total: usize,
    n_malicious: usize,
) -> Result<(Option<Vec<f32>>, Option<f64>), attacks::AttackError> {
    Ok(match kind {
        AttackKindSpec::SignFlip { k } => (Some(attacks::sign_flip(honest, *k)?), None),
        AttackKindSpec::Ipm { epsilon } => (Some(attacks::ipm(honest, *epsilon)?), None),
        AttackKindSpec::Alie { z, z_rule } => {
            let rule = match (z, z_rule) {
                (Some(z), _) => ZRule::Fixed { z: *z },
                (None, ZRuleName::Epfml) => ZRule::Epfml,
                (None, ZRuleName::Paper) => ZRule::Paper,
            };
            let z = attacks::alie_z(n_total, n_malicious, rule)?;
            (Some(attacks::alie(honest, z)?), Some(z))
        }
        AttackKindSpec::MinMax {
            perturbation,
            lambda0,
        } if honest.len() >= 2 => {
            let c = attacks::min_max(honest, *perturbation, *lambda0)?;
            (Some(c.update), Some(c.lambda))
        }
        AttackKindSpec::MinSum {
            perturbation,
            lambda0,
        } if honest.len() >= 2 => {
            let c = attacks::min_sum(honest, *perturbation, *lambda0)?;
            (Some(c.update), Some(c.lambda))
        }
        AttackKindSpec::Mimic { target } if !honest.is_empty() => {
            (Some(attacks::mimic(honest, *target % honest.len())?), None)
        }
        _ => (None, None),
    })
}

/// What crafting attacker `i` sends in `round`: its own Gaussian draw, or
/// the round's shared crafted update; `None` when there is nothing to craft
/// from (no honest update).
pub(crate) fn craft_for(
    s: &Scenario,
    kind: &AttackKindSpec,
    shared: Option<&Vec<f32>>,
    honest: &[&[f32]],
    i: usize,
    round: u64,
) -> Result<Option<Vec<f32>>, attacks::AttackError> {
    match (kind, shared) {
        (AttackKindSpec::Gaussian { sigma, relative }, _) if !honest.is_empty() => {
            let mut r = ChaCha20Rng::seed_from_u64(derive_seed(
                s.seed,
                &[P_NODE_ROUND, i as u64, round, 2],
            ));
            Ok(Some(attacks::gaussian(honest, *sigma, *relative, &mut r)?))
        }
        (_, Some(v)) => Ok(Some(v.clone())),
        _ => Ok(None),
    }
}

/// Whether the active attack crafts its update from the honest ones
/// (instead of training).
pub(crate) fn is_crafting(kind: &AttackKindSpec) -> bool {
    matches!(
        kind,
        AttackKindSpec::SignFlip { .. }
            | AttackKindSpec::Gaussian { .. }
            | AttackKindSpec::Alie { .. }
            | AttackKindSpec::Ipm { .. }
            | AttackKindSpec::MinMax { .. }
            | AttackKindSpec::MinSum { .. }
            | AttackKindSpec::Mimic { .. }
    )
}

/// Presence of node `i` in `round` (quarantine aside): offline, a forced
/// dropout (`forced`, for protocol attackers), a random dropout or
/// straggler, or present (with k > 1 possibly not answering the unmask
/// request). One ChaCha20 stream per (node, round), so both engines draw
/// the same.
pub(crate) fn draw_presence(
    s: &Scenario,
    i: usize,
    round: u64,
    offline: &BTreeSet<usize>,
    forced: Option<DropoutPhase>,
) -> Presence {
    let masked = s.bucket_size > 1;
    let mut r =
        ChaCha20Rng::seed_from_u64(derive_seed(s.seed, &[P_NODE_ROUND, i as u64, round, 0]));
    let drop: f64 = r.random();
    let late: f64 = r.random();
    let unmask: f64 = r.random();
    if offline.contains(&i) {
        Presence::Offline
    } else if let Some(phase) = forced {
        match (masked, phase) {
            (false, _) => Presence::Dropped,
            (true, DropoutPhase::BeforeAdvert) => Presence::Forced(Dropout::BeforeAdvert),
            (true, DropoutPhase::AfterShares) => Presence::Forced(Dropout::AfterShares),
            // It trains and sends its masked update, then stops.
            (true, DropoutPhase::AfterMasked) => Presence::Present { unmask: false },
        }
    } else if drop < s.dropout.rate {
        Presence::Dropped
    } else if late < s.dropout.stragglers {
        Presence::Straggler
    } else {
        Presence::Present {
            unmask: !(masked && unmask < s.dropout.after_masked),
        }
    }
}

/// Local DP of honest node `i`'s update in `round`, when the scenario asks
/// for it (one ChaCha20 stream per node and round, shared by both engines).
pub(crate) fn privatize_honest(s: &Scenario, i: usize, round: u64, delta: &mut Vec<f32>) {
    if let Some(clip) = s.dp.clip {
        let mut r =
            ChaCha20Rng::seed_from_u64(derive_seed(s.seed, &[P_NODE_ROUND, i as u64, round, 1]));
        privatize(delta, clip, s.dp.noise_multiplier, &mut r);
    }
}

/// The sample count a crafting attacker claims: the rounded mean of the
/// honest ones (1 when there are none).
pub(crate) fn crafted_weight(honest: &[f64]) -> f64 {
    if honest.is_empty() {
        1.0
    } else {
        (honest.iter().sum::<f64>() / honest.len() as f64).round()
    }
}

/// Model replacement's boost: `gamma`, by default `n/η` for the round's
/// `n_total` updates.
pub(crate) fn scaling_gamma(s: &Scenario, gamma: Option<f64>, n_total: usize) -> f64 {
    gamma.unwrap_or_else(|| n_total as f64 / f64::from(s.server.lr))
}

/// The protocol phase a forced-dropout attack stops at, if that is the
/// attack.
pub(crate) fn forced_phase(kind: Option<&AttackKindSpec>) -> Option<DropoutPhase> {
    match kind {
        Some(AttackKindSpec::Protocol {
            behaviour: Misbehaviour::ForcedDropout,
            phase,
        }) => Some(*phase),
        _ => None,
    }
}

/// Clips to `clip` and adds `N(0, (z·clip)²)` per coordinate.
fn privatize(delta: &mut Vec<f32>, clip: f32, z: f64, rng: &mut ChaCha20Rng) {
    *delta = clip_to_norm(delta, clip);
    let sd = z * f64::from(clip);
    if sd > 0.0
        && let Ok(n) = Normal::new(0.0, sd)
    {
        for v in delta.iter_mut() {
            *v += n.sample(rng) as f32;
        }
    }
}

fn stats_msg(u: &LocalUpdate) -> v1::ScalerStats {
    v1::ScalerStats {
        count: u.stats.count,
        sum: u.stats.sum.clone(),
        sum_sq: u.stats.sum_sq.clone(),
    }
}

/// A finished run with the final global parameters (for comparisons that
/// need more than the report's digest).
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The deterministic report.
    pub report: RunReport,
    /// Timings.
    pub timing: RunTiming,
    /// Final global parameters.
    pub final_params: Vec<f32>,
    /// Genesis parameters (version 0).
    pub genesis: Vec<f32>,
}

/// Runs a scenario in-process. Returns the deterministic report and the
/// timings.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<(RunReport, RunTiming), EngineError> {
    let o = run_full(s, opts)?;
    Ok((o.report, o.timing))
}

/// `‖a − b‖ / ‖b − origin‖`: how far `a` is from `b`, relative to how far
/// `b` moved from `origin` (the genesis model); `‖a − b‖` when `b` did not
/// move.
pub fn relative_distance(a: &[f32], b: &[f32], origin: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for ((x, y), o) in a.iter().zip(b).zip(origin) {
        let (x, y, o) = (f64::from(*x), f64::from(*y), f64::from(*o));
        d += (x - y) * (x - y);
        n += (y - o) * (y - o);
    }
    if n > 0.0 { (d / n).sqrt() } else { d.sqrt() }
}

/// Runs a scenario in-process and, when the scenario asks for it
/// ([`Scenario::wants_clean_twin`]), its clean twin: the same scenario and
/// seed with the attackers disabled (they train on clean data as honest
/// nodes). The twin's miss rate of the targeted attack kind is reported
/// next to the attack success, round by round.
pub fn run_full(s: &Scenario, opts: &RunOptions) -> Result<RunOutput, EngineError> {
    let target = s.attack_target();
    let mut out = run_once(s, opts, target)?;
    if s.wants_clean_twin() {
        let t = Instant::now();
        let mut clean = s.clone();
        clean.attack = None;
        clean.name = format!("{} (clean twin)", s.name);
        let twin = run_once(
            &clean,
            &RunOptions {
                quiet: opts.quiet,
                record: None,
            },
            target,
        )?;
        for (m, c) in out.report.rounds.iter_mut().zip(&twin.report.rounds) {
            m.clean_miss_rate = c.attack_success;
        }
        out.report.clean_twin = Some(CleanTwin {
            final_version: twin.report.final_version,
            final_params_sha256: twin.report.final_params_sha256.clone(),
            distance: relative_distance(&out.final_params, &twin.final_params, &out.genesis),
            final_global_loss: twin.report.last_evaluated().and_then(|m| m.global_loss),
            final_mean_auc: twin.report.final_mean_auc(),
        });
        let dt = t.elapsed().as_secs_f64();
        out.timing.clean_twin_s = dt;
        out.timing.total_s += dt;
    }
    Ok(out)
}

/// The extra words a node masks with its update (k > 1): its training loss
/// and per-feature first and second moments, as a node encodes them.
fn extra_words(u: &LocalUpdate) -> Vec<u32> {
    let n = u.stats.count.max(1) as f64;
    let mean: Vec<f64> = u.stats.sum.iter().map(|s| s / n).collect();
    let mean_sq: Vec<f64> = u.stats.sum_sq.iter().map(|s| s / n).collect();
    fedmesh_proto::secure::encode_extra(u.train_loss, &mean, &mean_sq)
}

/// The committed model as a node installs it.
fn global_of(
    machine: &RoundMachine,
    spec: &ModelSpec,
    schema_hash: [u8; 32],
    round: u64,
) -> GlobalModel {
    GlobalModel {
        version: machine.version(),
        round,
        spec: spec.clone(),
        params: machine.params().to_vec(),
        scaler: machine.base().scaler.map(|sc| Scaler {
            mean: sc.mean,
            std: sc.std,
        }),
        signed: Vec::new(),
        schema_hash,
    }
}

/// The identities of one sampled node that take part in a round.
#[derive(Debug, Default)]
struct Part<'a> {
    /// Selected: aggregated (k = 1) or in the participant list (k > 1).
    selected: Vec<&'a Identity>,
    /// Quarantined: scored as shadow updates (k = 1), never aggregated.
    shadow: Vec<&'a Identity>,
}

impl Part<'_> {
    /// Every identity this node submits for: the selected ones and, with
    /// k = 1, the shadow ones.
    fn submitting(&self, masked: bool) -> impl Iterator<Item = &Identity> {
        let shadow: &[&Identity] = if masked { &[] } else { &self.shadow };
        self.selected.iter().chain(shadow).copied()
    }

    /// All of the node's identities are quarantined.
    fn all_shadow(&self) -> bool {
        self.selected.is_empty()
    }
}

/// A round's closing, whichever the mode.
enum Closed {
    /// Aborted, with the reason.
    Abort(String),
    /// To commit.
    Commit(Box<CommitPlan>),
}

/// What the machine's close of a round means for the simulation: an
/// aggregation that finds too few inputs (after the bucket norm gate) aborts
/// the round, as the coordinator's shell commits nothing then.
fn closed(round: u64, r: Result<Close, FedError>, gate: bool) -> Result<Closed, EngineError> {
    match r {
        Ok(Close::Abort(reason)) => Ok(Closed::Abort(reason)),
        Ok(Close::Commit(plan)) => Ok(Closed::Commit(plan)),
        Err(FedError::Aggregate(
            e @ (AggregateError::Empty | AggregateError::TooFewClients { .. }),
        )) => Ok(Closed::Abort(if gate {
            format!("after the bucket norm gate: {e}")
        } else {
            e.to_string()
        })),
        Err(source) => Err(EngineError::Coordinator { round, source }),
    }
}

fn run_once(
    s: &Scenario,
    opts: &RunOptions,
    target: Option<AttackKind>,
) -> Result<RunOutput, EngineError> {
    s.validate()?;
    let t0 = Instant::now();
    let mut timing = RunTiming {
        threads: rayon::current_num_threads(),
        ..RunTiming::default()
    };
    let cfg: TenantConfig = tenant::tenant_config(s)?;
    let (schema_hash, param_count) = tenant::model_of(&cfg)?;
    let attackers = choose_attackers(s);
    let attack = s.attack.as_ref();
    let poison = poison_of(s);
    let nodes: Vec<SimNode> = (0..s.fleet.nodes)
        .into_par_iter()
        .map(|i| build_node(s, i, poison.filter(|_| attackers.contains(&i))))
        .collect::<Result<_, _>>()?;
    let held = heldout(s)?;
    let sybils = attack.map_or(1, |a| a.sybils);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    // Every identity that connects to the coordinator, as in the network
    // engine: online nodes, and an attacker's Sybils.
    let idents = tenant::identities(s, &names, &attackers);
    let mut by_id: BTreeMap<NodeId, &Identity> = BTreeMap::new();
    for id in &idents {
        let node: NodeId = id
            .name
            .parse()
            .map_err(|e| EngineError::Tenant(format!("identity {}: {e}", id.name)))?;
        by_id.insert(node, id);
    }
    let connected: BTreeSet<NodeId> = by_id.keys().cloned().collect();
    let malicious_ids: BTreeSet<&str> = idents
        .iter()
        .filter(|id| attackers.contains(&id.node))
        .map(|id| id.name.as_str())
        .collect();
    let masked = s.bucket_size > 1;
    let fleet = if masked {
        let t_certs = Instant::now();
        let names: Vec<String> = idents.iter().map(|id| id.name.clone()).collect();
        let fleet = SecAggFleet::new(TENANT, &names).map_err(EngineError::SecAgg)?;
        timing.certificates_s = t_certs.elapsed().as_secs_f64();
        Some(fleet)
    } else {
        None
    };
    timing.setup_s = t0.elapsed().as_secs_f64();

    let spec = ModelSpec::default_for_features();
    let genesis = genesis_params(cfg.model.input_dim, &cfg.model.hidden, cfg.seed);
    let tenant_id = TENANT
        .parse()
        .map_err(|e| EngineError::Tenant(format!("{e}")))?;
    let mut machine = RoundMachine::new(
        tenant_id,
        cfg.clone(),
        schema_hash,
        param_count,
        Restored {
            version: 0,
            params: genesis.clone(),
            scaler: None,
            momentum: None,
            reputation: Reputation::new(cfg.reputation.clone()),
            last_list: None,
        },
    );
    // The protocol clock (deadlines and refusal records only).
    let now_ms = buckets::sim_now_unix_ms();
    let mut committed_round = 0;
    let tp = fedmesh_coordinator::machine::training_of(&cfg);
    let offline: BTreeSet<usize> = s.dropout.always_offline.iter().copied().collect();
    let full = cfg.max_participants == 0;
    let mut rounds = Vec::new();
    let pb = progress(opts.quiet, s.rounds, &s.name);

    for round in 1..=s.rounds {
        let span = info_span!("round", tenant = TENANT, round);
        let _e = span.enter();
        let global = global_of(&machine, &spec, schema_hash, committed_round);
        let selection = machine.select(round, connected.clone());
        let active_attack = attack.filter(|a| round >= a.start_round);
        // An attacker's Sybils take part while its attack is active (the
        // coordinator may select them before: they send nothing).
        let mut parts: BTreeMap<usize, Part<'_>> = BTreeMap::new();
        for (set, shadow) in [(&selection.selected, false), (&selection.shadow, true)] {
            for n in set {
                let Some(id) = by_id.get(n).copied() else {
                    continue;
                };
                if id.sybil > 0 && active_attack.is_none() {
                    continue;
                }
                let part = parts.entry(id.node).or_default();
                if shadow {
                    part.shadow.push(id);
                } else {
                    part.selected.push(id);
                }
            }
        }
        // Sampled nodes: those with an identity in the round and, when the
        // coordinator takes every connected node, the offline ones too.
        let sampled: BTreeSet<usize> = parts
            .keys()
            .copied()
            .chain(
                offline
                    .iter()
                    .copied()
                    .filter(|i| full && *i < s.fleet.nodes),
            )
            .collect();
        let is_shadow = |i: usize| parts.get(&i).is_some_and(Part::all_shadow);
        let forced_phase = forced_phase(active_attack.map(|a| &a.kind));
        // Presence of each sampled node (per-node stream, node order).
        let presence: Vec<(usize, Presence)> = sampled
            .iter()
            .map(|&i| {
                let p = if masked && !offline.contains(&i) && is_shadow(i) {
                    // Not in the committed participant list.
                    Presence::Quarantined
                } else {
                    draw_presence(
                        s,
                        i,
                        round,
                        &offline,
                        forced_phase.filter(|_| attackers.contains(&i)),
                    )
                };
                (i, p)
            })
            .collect();
        let present: Vec<(usize, bool)> = presence
            .iter()
            .filter_map(|(i, p)| match p {
                Presence::Present { unmask } => Some((*i, *unmask)),
                _ => None,
            })
            .collect();
        let stragglers = presence
            .iter()
            .filter(|(_, p)| matches!(p, Presence::Straggler))
            .count();
        let is_crafter = |i: usize| {
            attackers.contains(&i) && active_attack.is_some_and(|a| is_crafting(&a.kind))
        };
        let unmasks: BTreeMap<usize, bool> = present.iter().copied().collect();
        // Everyone present who trains: honest nodes and training attackers;
        // with k > 1 crafting attackers too (they mask the loss and scaler
        // moments of their own training next to the crafted update, as a
        // network node does).
        let t_train = Instant::now();
        let trainers: Vec<usize> = present
            .iter()
            .map(|(i, _)| *i)
            .filter(|&i| masked || !is_crafter(i))
            .collect();
        let trained: Vec<(usize, LocalUpdate)> = trainers
            .par_iter()
            .map(|&i| {
                let job = nodes[i]
                    .agent
                    .training_job(&global, &tp, round)
                    .map_err(|e| node_err(i)(e.to_string()))?;
                let u = job.run().map_err(|e| node_err(i)(e.to_string()))?;
                Ok((i, u))
            })
            .collect::<Result<_, EngineError>>()?;
        timing.train_s += t_train.elapsed().as_secs_f64();

        let t_agg = Instant::now();
        let after_masked =
            |i: usize| (!unmasks.get(&i).copied().unwrap_or(true)).then_some(Dropout::AfterMasked);
        let node_ids = |i: usize| {
            parts
                .get(&i)
                .map(|p| p.submitting(masked).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut subs: Vec<Submission> = Vec::new();
        let mut honest: Vec<Vec<f32>> = Vec::new();
        let mut honest_weights: Vec<f64> = Vec::new();
        let mut train_attackers: Vec<(usize, LocalUpdate)> = Vec::new();
        let mut crafter_updates: BTreeMap<usize, LocalUpdate> = BTreeMap::new();
        for (i, mut u) in trained {
            let malicious = attackers.contains(&i) && active_attack.is_some();
            if malicious {
                if is_crafter(i) {
                    crafter_updates.insert(i, u);
                } else {
                    train_attackers.push((i, u));
                }
                continue;
            }
            privatize_honest(s, i, round, &mut u.delta);
            honest.push(u.delta.clone());
            honest_weights.push(u.num_samples as f64);
            for id in node_ids(i) {
                subs.push(Submission {
                    id: id_of(id)?,
                    node: i,
                    sybil: id.sybil,
                    stats: Some(stats_msg(&u)),
                    num_samples: u.num_samples,
                    train_loss: u.train_loss,
                    honest_loss: Some(u.train_loss),
                    extra: masked.then(|| extra_words(&u)),
                    delta: u.delta.clone(),
                    bad_shares: false,
                    dropout: after_masked(i),
                });
            }
        }
        let crafters: Vec<usize> = present
            .iter()
            .map(|(i, _)| *i)
            .filter(|&i| is_crafter(i))
            .collect();
        let n_malicious = (crafters.len() + train_attackers.len()) * sybils;
        let n_total = honest.len() + n_malicious;
        let mean_weight = crafted_weight(&honest_weights);
        let honest_refs: Vec<&[f32]> = honest.iter().map(|v| v.as_slice()).collect();
        let mut attack_param = None;
        // Present attackers with nothing to send (k > 1: they stop after
        // sharing their keys).
        let mut silent: Vec<usize> = Vec::new();
        let push_malicious = |subs: &mut Vec<Submission>,
                              i: usize,
                              delta: Vec<f32>,
                              num_samples: u64,
                              own: Option<&LocalUpdate>,
                              stats: Option<v1::ScalerStats>,
                              bad_shares: bool|
         -> Result<(), EngineError> {
            for id in node_ids(i) {
                subs.push(Submission {
                    id: id_of(id)?,
                    node: i,
                    sybil: id.sybil,
                    delta: delta.clone(),
                    num_samples,
                    stats: stats.clone(),
                    train_loss: own.map_or(0.0, |u| u.train_loss),
                    honest_loss: None,
                    extra: own.filter(|_| masked).map(extra_words),
                    bad_shares,
                    dropout: after_masked(i),
                });
            }
            Ok(())
        };
        if let Some(a) = active_attack {
            let aerr = |source| EngineError::Attack { round, source };
            // One crafted vector for all crafting attackers (Gaussian: one
            // per attacker node), from the round's honest updates.
            let shared: Option<Vec<f32>> = if crafters.is_empty() || honest_refs.is_empty() {
                None
            } else {
                let (v, param) =
                    craft_shared(&a.kind, &honest_refs, n_total, n_malicious).map_err(aerr)?;
                attack_param = param;
                v
            };
            for &i in &crafters {
                let Some(delta) =
                    craft_for(s, &a.kind, shared.as_ref(), &honest_refs, i, round).map_err(aerr)?
                else {
                    // Nothing to craft from (no honest update this round):
                    // the attacker sends nothing and counts as dropped.
                    silent.push(i);
                    continue;
                };
                let own = crafter_updates.get(&i);
                push_malicious(&mut subs, i, delta, mean_weight as u64, own, None, false)?;
            }
            for (i, u) in &train_attackers {
                let (i, stats) = (*i, Some(stats_msg(u)));
                let (delta, bad) = match &a.kind {
                    AttackKindSpec::Scaling { gamma, .. } => {
                        let g = scaling_gamma(s, *gamma, n_total);
                        attack_param = Some(g);
                        (attacks::scale(&u.delta, g), false)
                    }
                    AttackKindSpec::DataPoison { boost, .. } => {
                        let d = match boost {
                            Some(b) => {
                                attack_param = Some(*b);
                                attacks::scale(&u.delta, *b)
                            }
                            None => u.delta.clone(),
                        };
                        (d, false)
                    }
                    AttackKindSpec::Protocol { behaviour, .. } => {
                        (u.delta.clone(), *behaviour == Misbehaviour::BadShares)
                    }
                    _ => (u.delta.clone(), false),
                };
                push_malicious(&mut subs, i, delta, u.num_samples, Some(u), stats, bad)?;
            }
        }
        // The coordinator keeps updates in a BTreeMap by node id.
        subs.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(dir) = &opts.record
            && !subs.is_empty()
        {
            let cols = subs[0].delta.len();
            let m = crate::npy::Matrix {
                rows: subs.len(),
                cols,
                data: subs.iter().flat_map(|x| x.delta.iter().copied()).collect(),
            };
            crate::npy::write(
                &dir.join(format!("round_{round:04}.npy")),
                &crate::npy::encode_matrix(&m),
            )
            .map_err(|e| EngineError::Record(e.to_string()))?;
        }
        let shadow_nodes = presence.iter().filter(|(i, _)| is_shadow(*i)).count();
        let train_losses: Vec<f32> = subs
            .iter()
            .filter(|x| !selection.shadow.contains(&x.id))
            .filter_map(|x| x.honest_loss)
            .collect();
        let mean_train_loss = (!train_losses.is_empty())
            .then(|| train_losses.iter().sum::<f32>() / train_losses.len() as f32);
        let mut metrics = RoundMetrics {
            sampled: sampled.len(),
            stragglers,
            attack_param,
            mean_train_loss,
            shadow: shadow_nodes,
            ..RoundMetrics::new(round, s.rule.rule.name(), global.version)
        };
        // Nodes with an update in the aggregation's inputs.
        let mut contributing: BTreeSet<usize> = BTreeSet::new();
        let mut count_in = |metrics: &mut RoundMetrics, ids: &[&NodeId]| {
            metrics.participants = ids.len();
            metrics.malicious = ids
                .iter()
                .filter(|n| malicious_ids.contains(n.as_str()))
                .count();
            contributing.extend(ids.iter().filter_map(|n| by_id.get(*n).map(|id| id.node)));
        };
        let closing = if let Some(fleet) = &fleet {
            match machine.open_secure(round, selection.selected.clone(), now_ms, fleet.verifier()) {
                // A configuration that cannot form buckets aborts the round.
                Err(e) => Closed::Abort(e.to_string()),
                Ok(_) => {
                    // Every selected identity that answers, with when it
                    // stops; the others never send anything.
                    let mut members: Vec<Member<'_>> = subs
                        .iter()
                        .map(|x| Member {
                            id: &x.id,
                            update: Some(x.delta.as_slice()),
                            extra: x.extra.as_deref(),
                            dropout: x.dropout,
                            bad_shares: x.bad_shares,
                            seed: tenant::secagg_seed(s, x.node, x.sybil),
                        })
                        .collect();
                    let absent: Vec<(usize, Option<Dropout>)> = presence
                        .iter()
                        .filter_map(|(i, p)| match p {
                            Presence::Straggler => Some((*i, Some(Dropout::AfterShares))),
                            Presence::Forced(d) => Some((*i, Some(*d))),
                            _ => None,
                        })
                        .chain(silent.iter().map(|&i| (i, None)))
                        .collect();
                    let absent_ids: Vec<(NodeId, usize, usize, Option<Dropout>)> = absent
                        .iter()
                        .flat_map(|&(i, d)| {
                            node_ids(i)
                                .into_iter()
                                .map(move |id| (id_of(id), id.node, id.sybil, d))
                        })
                        .map(|(id, node, sybil, d)| id.map(|id| (id, node, sybil, d)))
                        .collect::<Result<_, _>>()?;
                    members.extend(absent_ids.iter().map(|(id, node, sybil, d)| Member {
                        id,
                        update: None,
                        extra: None,
                        dropout: *d,
                        bad_shares: false,
                        seed: tenant::secagg_seed(s, *node, *sybil),
                    }));
                    let out = buckets::run_round(fleet, &mut machine, &members)
                        .map_err(EngineError::SecAgg)?;
                    for (node, why) in &out.refused {
                        debug!(node = %node, %why, "secure-aggregation message refused");
                    }
                    // Wrong unmask shares count against their sender.
                    machine.unmask_violations(&out.finished.violations);
                    metrics.buckets = out.buckets;
                    metrics.buckets_lost = out
                        .finished
                        .dropped
                        .iter()
                        .map(|d| LostBucket {
                            bucket: d.bucket,
                            members: d.members.len(),
                            reason: d.reason.clone(),
                        })
                        .collect();
                    for l in &metrics.buckets_lost {
                        debug!(bucket = l.bucket, reason = %l.reason, "bucket lost");
                    }
                    let contributors: Vec<&NodeId> = out
                        .finished
                        .sums
                        .iter()
                        .flat_map(|b| b.contributors())
                        .collect();
                    count_in(&mut metrics, &contributors);
                    let sums = out.finished.sums.len();
                    let outcome = SecureOutcome {
                        info: &out.info,
                        finished: out.finished,
                        bytes_received: out.bytes_received,
                    };
                    let c = closed(round, plan_secure(&cfg, outcome, &machine.base()), true)?;
                    if let Closed::Commit(plan) = &c {
                        metrics.rule_inputs = sums - plan.rejected_buckets.len();
                        metrics.buckets_rejected = plan.rejected_buckets.clone();
                    }
                    c
                }
            }
        } else {
            machine.open(round, selection.clone(), now_ms);
            // Every update goes through the coordinator's validation
            // (a bad-shares sender without buckets loses its own update);
            // the machine keeps what it accepts, the submissions go.
            for x in std::mem::take(&mut subs)
                .into_iter()
                .filter(|x| !x.bad_shares)
            {
                let req = v1::UpdateRequest {
                    tenant: TENANT.into(),
                    node: x.id.to_string(),
                    round,
                    base_version: global.version,
                    schema_hash: schema_hash.to_vec(),
                    delta: Some(fedmesh_proto::encode_f32(&x.delta, &[x.delta.len() as u64])),
                    num_samples: x.num_samples,
                    scaler_stats: x.stats,
                    train_loss: x.train_loss,
                };
                let wire = req.encoded_len() as u64;
                if let Err(e) = machine.submit(&x.id, req, wire) {
                    if let Some(reason) = e.invalid_reason() {
                        machine.violation(&x.id, &reason);
                    }
                    debug!(node = %x.id, error = %e, "update refused");
                }
            }
            let open = machine
                .take_round()
                .ok_or_else(|| EngineError::Coordinator {
                    round,
                    source: FedError::NoOpenRound {
                        version: global.version,
                    },
                })?;
            let accepted: Vec<&NodeId> = open
                .updates()
                .keys()
                .filter(|n| open.info.selected.contains(*n))
                .collect();
            count_in(&mut metrics, &accepted);
            metrics.rule_inputs = accepted.len();
            closed(round, plan_plaintext(&cfg, &open, &machine.base()), false)?
        };
        match closing {
            Closed::Abort(reason) => metrics.aborted = Some(reason),
            Closed::Commit(plan) => {
                metrics.rule_excluded = plan.rule_excluded.clone();
                metrics.rule_excluded_malicious = plan
                    .rule_excluded
                    .iter()
                    .filter(|n| malicious_ids.contains(n.as_str()))
                    .count();
                match step(&cfg, &machine.base(), &plan) {
                    // The commit guard: nothing that is not a usable model
                    // is committed; the refusal goes into the next entry.
                    Err(refusal) => {
                        machine.refuse(round, &refusal, now_ms);
                        metrics.aborted = Some(format!("commit refused: {refusal}"));
                    }
                    Ok(candidate) => {
                        let observed = machine.observe(candidate.version, &plan.evidence);
                        metrics.reputation_events = observed
                            .decisions
                            .iter()
                            .map(|d| format!("{} {}", d.node, d.action.label()))
                            .collect();
                        let CommitPlan { delta, scaler, .. } = *plan;
                        machine.apply(candidate, delta, scaler);
                        metrics.version = machine.version();
                        committed_round = round;
                    }
                }
            }
        }
        // Sampled nodes without an aggregated update (quarantined ones are
        // counted in `shadow` instead).
        metrics.dropped = presence
            .iter()
            .filter(|(i, _)| !contributing.contains(i) && !is_shadow(*i))
            .count();
        metrics.quarantined = machine.reputation().quarantined().into_iter().collect();
        metrics.quarantined_malicious = metrics
            .quarantined
            .iter()
            .filter(|q| malicious_ids.contains(q.as_str()))
            .count();
        timing.aggregate_s += t_agg.elapsed().as_secs_f64();

        let t_eval = Instant::now();
        if machine.version() > 0 && (round % s.eval.every == 0 || round == s.rounds) {
            let g = global_of(&machine, &spec, schema_hash, committed_round);
            evaluate_into(&mut metrics, &g, &held, s, target)?;
        }
        timing.eval_s += t_eval.elapsed().as_secs_f64();
        pb.set_message(match (metrics.auc, &metrics.aborted) {
            (_, Some(r)) => format!("aborted: {r}"),
            (Some(a), None) => format!("AUC {a:.3}"),
            _ => String::new(),
        });
        pb.inc(1);
        rounds.push(metrics);
    }
    pb.finish();
    timing.total_s = t0.elapsed().as_secs_f64();
    let aggregation = if masked {
        "secagg (masked buckets)"
    } else {
        "plaintext (k = 1)"
    };
    let final_params = machine.params().to_vec();
    let report = RunReport {
        rounds,
        final_version: machine.version(),
        final_params_sha256: sha256_params(&final_params),
        ..RunReport::of_scenario(
            s,
            "in-process",
            aggregation,
            attackers.into_iter().collect(),
            target,
        )
    };
    Ok(RunOutput {
        report,
        timing,
        final_params,
        genesis,
    })
}

fn id_of(id: &Identity) -> Result<NodeId, EngineError> {
    id.name
        .parse()
        .map_err(|e| EngineError::Tenant(format!("identity {}: {e}", id.name)))
}

pub(crate) fn evaluate_into(
    m: &mut RoundMetrics,
    g: &GlobalModel,
    held: &Heldout,
    s: &Scenario,
    target: Option<AttackKind>,
) -> Result<(), EngineError> {
    let e = |x: &dyn std::fmt::Display| EngineError::Eval(x.to_string());
    let model = Autoencoder::from_flat(g.spec.clone(), &g.params).map_err(|x| e(&x))?;
    // The scaler and the threshold floor a node trains and alerts with.
    let scaler = g
        .node_scaler()
        .unwrap_or_else(|| Scaler::identity(NUM_FEATURES));
    let mut det = Detector {
        model,
        scaler,
        threshold: f32::MAX,
    };
    let calib: Vec<f32> = det
        .score_windows(&held.calibration)
        .map_err(|x| e(&x))?
        .into_iter()
        .map(|x| x.value)
        .collect();
    if calib.iter().any(|v| !v.is_finite()) {
        // A poisoned model can overflow; it detects nothing.
        m.auc = Some(0.5);
        if target.is_some() {
            m.attack_success = Some(1.0);
        }
        return Ok(());
    }
    det.threshold = alert_threshold(&calib, s.eval.false_alarm_rate).map_err(|x| e(&x))?;
    let benign: Vec<f32> = det
        .score_windows(&held.benign)
        .map_err(|x| e(&x))?
        .into_iter()
        .map(|x| x.value)
        .collect();
    m.global_loss = Some(benign.iter().sum::<f32>() / benign.len().max(1) as f32);
    let r = evaluate(&det, &held.data).map_err(|x| e(&x))?;
    m.auc = Some(r.auc);
    m.auc_per_kind = r.auc_per_kind;
    if let Some(kind) = target {
        m.attack_success = r
            .recall_per_kind
            .get(&kind.to_string())
            .map(|rec| 1.0 - rec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(extra: &str) -> Scenario {
        tiny_with("", extra)
    }

    fn tiny_with(top: &str, extra: &str) -> Scenario {
        Scenario::from_toml(&format!(
            r#"
name = "t"
seed = 9
rounds = 2
{top}
[fleet]
nodes = 6
containers_per_node = 2
windows = 16
mixes = [{{ web = 1, database = 1 }}, {{ batch = 1, ml = 1 }}]
[eval]
containers_per_profile = 2
windows = 16
{extra}
"#
        ))
        .unwrap()
    }

    #[test]
    fn fedavg_without_attack_commits_every_round() {
        let s = tiny("[rule]\nrule = \"fedavg\"");
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        assert_eq!(r.final_version, 2);
        assert_eq!(r.rounds.len(), 2);
        for m in &r.rounds {
            assert_eq!(m.participants, 6);
            assert_eq!(m.dropped, 0);
            assert!(m.auc.is_some());
            assert_eq!(m.auc_per_kind.len(), AttackKind::ALL.len());
        }
    }

    #[test]
    fn krum_excludes_sign_flip_attackers() {
        let s = tiny(
            "[rule]\nrule = \"krum\"\nf = 1\n[attack]\nfraction = 0.2\nkind = \"sign_flip\"\nk = 10.0",
        );
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        assert_eq!(r.attackers.len(), 1);
        for m in &r.rounds {
            assert_eq!(m.malicious, 1);
            // Krum selects one update: everyone else is excluded, attacker included.
            assert_eq!(m.rule_excluded.len(), 5);
            assert_eq!(m.rule_excluded_malicious, 1);
        }
    }

    #[test]
    fn bad_shares_lose_the_bucket_and_forced_dropouts_drop() {
        let s = tiny_with(
            "bucket_size = 2",
            "[rule]\nrule = \"median\"\n[attack]\nfraction = 0.2\nkind = \"protocol\"\nbehaviour = \"bad_shares\"",
        );
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        for m in &r.rounds {
            assert_eq!(m.participants, 4, "{m:?}");
            assert_eq!(m.rule_inputs, 2);
            assert_eq!(m.dropped, 2);
        }
        let s = tiny(
            "[rule]\nrule = \"median\"\n[attack]\nfraction = 0.2\nkind = \"protocol\"\nbehaviour = \"forced_dropout\"",
        );
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        assert!(
            r.rounds
                .iter()
                .all(|m| m.participants == 5 && m.dropped == 1)
        );
    }

    #[test]
    fn the_bucket_norm_gate_refuses_a_scaled_bucket_mean() {
        // One of six nodes scales its update by γ = n/η = 6; the gate at
        // 0.3 refuses its bucket's mean (honest update norms ≈ 0.13).
        let s = tiny_with(
            "bucket_size = 2",
            "[rule]\nrule = \"median\"\n[secagg]\nclip_norm = 5.0\nmax_mean_norm = 0.3\n\
             [reputation]\nenabled = false\n[attack]\nfraction = 0.2\nkind = \"scaling\"",
        );
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        for m in &r.rounds {
            assert_eq!((m.buckets, m.participants, m.malicious), (3, 6, 1), "{m:?}");
            assert_eq!(m.buckets_rejected.len(), 1, "{m:?}");
            assert_eq!(m.rule_inputs, 2, "{m:?}");
            assert!(m.aborted.is_none(), "{m:?}");
        }
    }

    #[test]
    fn sybils_multiply_identities_and_records_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = tiny(
            "[rule]\nrule = \"median\"\n[attack]\nfraction = 0.2\nsybils = 3\nkind = \"alie\"",
        );
        let (r, _) = run(
            &s,
            &RunOptions {
                quiet: true,
                record: Some(dir.path().to_path_buf()),
            },
        )
        .unwrap();
        assert!(
            r.rounds
                .iter()
                .all(|m| m.participants == 8 && m.malicious == 3)
        );
        assert!(r.rounds.iter().all(|m| m.attack_param.is_some()));
        let m = crate::npy::read_matrix(&dir.path().join("round_0001.npy")).unwrap();
        assert_eq!(m.rows, 8);
        assert_eq!(m.cols, ModelSpec::default_for_features().param_count());
    }
}
