//! The in-process engine: real node and coordinator code, no network.
//!
//! Per round: sample participants; apply offline nodes, dropouts and
//! stragglers; honest nodes (and training attackers) train in parallel
//! through `Agent::training_job`; crafting attackers build their update
//! from the round's honest updates ([`crate::attacks`]); Sybils repeat it;
//! submissions are ordered by identity as the coordinator orders them.
//!
//! - k = 1: the coordinator's rule aggregates the plaintext updates
//!   (centred on the previous aggregate, as the coordinator does) and
//!   `plaintext_evidence` scores every node for reputation.
//! - k > 1: the real secure aggregation ([`super::buckets`]): the crypto
//!   crate's bucket assignment and the whole masked protocol per bucket,
//!   dropouts mapped to protocol phases; the coordinator's
//!   `aggregate_buckets` (norm gate, rule over bucket means, bucket
//!   evidence) runs over the revealed sums. A bucket with too few
//!   survivors is lost and reported; the round goes on without it.
//!
//! Either way the coordinator's `Reputation` (SPRT, quarantine, probation)
//! consumes the evidence of every committed round; quarantined identities
//! are never aggregated afterwards (k = 1: scored as shadow updates; k > 1:
//! left out of the participant list). `server_step` and `merged_scaler`
//! produce the next global model; the global detector is evaluated on
//! held-out windows.
//!
//! Determinism: every random choice comes from a ChaCha20 stream seeded
//! by [`derive_seed`] from (seed, purpose, node, round) (the protocol's from
//! (seed, round, bucket)); parallel results are collected in node or bucket
//! order, so thread count does not change a bit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use fedmesh_coordinator::aggregate::clip_to_norm;
use fedmesh_coordinator::reputation::{Evidence, Reputation, plaintext_evidence};
use fedmesh_coordinator::secure::aggregate_buckets;
use fedmesh_coordinator::server_step::{genesis_params, merged_scaler, server_step};
use fedmesh_crypto::BucketSum;
use fedmesh_crypto::secagg::QuantConfig;
use fedmesh_crypto::secagg::local::Dropout;
use fedmesh_node::agent::{Agent, AgentSettings, GlobalModel, LocalUpdate};
use fedmesh_node::config::DetectorConfig;
use fedmesh_node::detection::detector::{Detector, calibrate_threshold};
use fedmesh_node::detection::features::{FeatureWindow, NUM_FEATURES, feature_schema_hash};
use fedmesh_node::detection::model::{Autoencoder, ModelSpec};
use fedmesh_node::detection::scaler::Scaler;
use fedmesh_node::sim::eval::{evaluate, standard_heldout};
use fedmesh_node::sim::synthetic::{AttackKind, Profile, labelled_windows};
use fedmesh_proto::v1;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tracing::{debug, info_span};

use super::buckets::{self, BucketError, Member, SecAggFleet};
use super::{CleanTwin, EngineError, RoundMetrics, RunReport, RunTiming, derive_seed};
use crate::attacks::{self, ZRule};
use crate::scenario::{AttackKindSpec, DropoutPhase, Misbehaviour, Scenario, ZRuleName};

pub(crate) const WINDOW_MS: u64 = 10_000;
pub(crate) const TENANT: &str = "sim";

// Purposes of derived seeds.
const P_TELEMETRY: u64 = 1;
const P_AGENT: u64 = 2;
const P_ATTACKERS: u64 = 3;
const P_ROUND: u64 = 4;
const P_NODE_ROUND: u64 = 5;
const P_EVAL: u64 = 6;
const P_CALIB: u64 = 7;
pub(crate) const P_GENESIS: u64 = 8;

/// Run options besides the scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Hide the progress bar.
    pub quiet: bool,
    /// Write every round's submissions to `DIR/round_NNNN.npy` (N × P).
    pub record: Option<PathBuf>,
}

/// One submission of a round.
#[derive(Debug, Clone)]
struct Submission {
    identity: String,
    node: usize,
    malicious: bool,
    delta: Vec<f32>,
    weight: f64,
    stats: Option<v1::ScalerStats>,
    train_loss: Option<f32>,
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

/// Identities of node `i` in a round: its name, plus Sybils for an
/// attacker.
pub(crate) fn identities_of(name: &str, sybils: usize) -> Vec<String> {
    (0..sybils.max(1))
        .map(|j| {
            if j == 0 {
                name.to_string()
            } else {
                format!("{name}-sybil{j}")
            }
        })
        .collect()
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
    let attackers = choose_attackers(s);
    let attack = s.attack.as_ref();
    let poison = poison_of(s);
    let nodes: Vec<SimNode> = (0..s.fleet.nodes)
        .into_par_iter()
        .map(|i| build_node(s, i, poison.filter(|_| attackers.contains(&i))))
        .collect::<Result<_, _>>()?;
    let held = heldout(s)?;
    let sybils = attack.map_or(1, |a| a.sybils);
    let malicious_ids: BTreeSet<String> = attackers
        .iter()
        .flat_map(|&i| identities_of(&nodes[i].name, sybils))
        .collect();
    let masked = s.bucket_size > 1;
    let secagg = if masked {
        let ids: Vec<String> = (0..s.fleet.nodes)
            .flat_map(|i| {
                let n = if attackers.contains(&i) { sybils } else { 1 };
                identities_of(&nodes[i].name, n)
            })
            .collect();
        let t_certs = Instant::now();
        let fleet = SecAggFleet::new(TENANT, &ids).map_err(EngineError::SecAgg)?;
        timing.certificates_s = t_certs.elapsed().as_secs_f64();
        let quant = QuantConfig::new(s.secagg.clip_norm, s.secagg.scale)
            .map_err(|e| EngineError::SecAgg(BucketError::Setup(e.to_string())))?;
        Some((
            fleet,
            buckets::Settings {
                k: s.bucket_size,
                quant,
                noise_multiplier: s.secagg.noise_multiplier,
            },
        ))
    } else {
        None
    };
    timing.setup_s = t0.elapsed().as_secs_f64();

    let spec = ModelSpec::default_for_features();
    let schema_hash = fedmesh_proto::model::model_schema_hash(
        &feature_schema_hash(),
        spec.input_dim,
        &spec.hidden,
    );
    let mut global = GlobalModel {
        version: 0,
        round: 0,
        spec: spec.clone(),
        params: genesis_params(
            spec.input_dim,
            &spec.hidden,
            derive_seed(s.seed, &[P_GENESIS]),
        ),
        scaler: None,
        signed: Vec::new(),
        schema_hash,
    };
    let genesis = global.params.clone();
    let tp = v1::TrainingParams {
        local_epochs: s.training.local_epochs,
        batch_size: s.training.batch_size,
        learning_rate: s.training.learning_rate,
        prox_mu: s.training.prox_mu,
    };
    let offline: BTreeSet<usize> = s.dropout.always_offline.iter().copied().collect();
    let mut reputation = Reputation::new(s.reputation.clone());
    let mut last_agg: Option<Vec<f32>> = None;
    let mut momentum: Option<Vec<f32>> = None;
    let mut rounds = Vec::new();
    let pb = progress(opts.quiet, s.rounds, &s.name);

    for round in 1..=s.rounds {
        let span = info_span!("round", tenant = TENANT, round);
        let _e = span.enter();
        let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(s.seed, &[P_ROUND, round]));
        let n_sample = s.sampled_per_round();
        let mut sampled: Vec<usize> = rand::seq::index::sample(&mut rng, s.fleet.nodes, n_sample)
            .into_iter()
            .collect();
        sampled.sort_unstable();
        let active_attack = attack.filter(|a| round >= a.start_round);
        let quarantined = reputation.quarantined();
        let ids_of = |i: usize| {
            let n = if attackers.contains(&i) && active_attack.is_some() {
                sybils
            } else {
                1
            };
            identities_of(&nodes[i].name, n)
        };
        let all_quarantined = |i: usize| ids_of(i).iter().all(|id| quarantined.contains(id));
        let forced_phase = forced_phase(active_attack.map(|a| &a.kind));
        // Presence of each sampled node (per-node stream, node order).
        let presence: Vec<(usize, Presence)> = sampled
            .iter()
            .map(|&i| {
                let p = if masked && !offline.contains(&i) && all_quarantined(i) {
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
        // Everyone present who trains: honest nodes and training attackers.
        let t_train = Instant::now();
        let trainers: Vec<usize> = present
            .iter()
            .map(|(i, _)| *i)
            .filter(|&i| !is_crafter(i))
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
        let mut subs: Vec<Submission> = Vec::new();
        let mut honest: Vec<Vec<f32>> = Vec::new();
        let mut honest_weights: Vec<f64> = Vec::new();
        let mut train_attackers: Vec<(usize, LocalUpdate)> = Vec::new();
        for (i, mut u) in trained {
            let malicious = attackers.contains(&i) && active_attack.is_some();
            if malicious {
                train_attackers.push((i, u));
                continue;
            }
            privatize_honest(s, i, round, &mut u.delta);
            honest.push(u.delta.clone());
            honest_weights.push(u.num_samples as f64);
            subs.push(Submission {
                identity: nodes[i].name.clone(),
                node: i,
                malicious: false,
                stats: Some(stats_msg(&u)),
                weight: u.num_samples as f64,
                train_loss: Some(u.train_loss),
                delta: u.delta,
                bad_shares: false,
                dropout: after_masked(i),
            });
        }
        let crafters: Vec<usize> = present
            .iter()
            .map(|(i, _)| *i)
            .filter(|&i| is_crafter(i))
            .collect();
        let n_malicious = (crafters.len() + train_attackers.len()) * sybils;
        let n_total = subs.len() + n_malicious;
        let mean_weight = crafted_weight(&honest_weights);
        let honest_refs: Vec<&[f32]> = honest.iter().map(|v| v.as_slice()).collect();
        let mut attack_param = None;
        let push_malicious = |subs: &mut Vec<Submission>,
                              i: usize,
                              delta: Vec<f32>,
                              weight: f64,
                              stats: Option<v1::ScalerStats>,
                              bad_shares: bool| {
            for identity in identities_of(&nodes[i].name, sybils) {
                subs.push(Submission {
                    identity,
                    node: i,
                    malicious: true,
                    delta: delta.clone(),
                    weight,
                    stats: stats.clone(),
                    train_loss: None,
                    bad_shares,
                    dropout: after_masked(i),
                });
            }
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
                    continue;
                };
                push_malicious(&mut subs, i, delta, mean_weight, None, false);
            }
            for (i, u) in train_attackers {
                let (delta, weight, stats, bad) = match &a.kind {
                    AttackKindSpec::Scaling { gamma, .. } => {
                        let g = scaling_gamma(s, *gamma, n_total);
                        attack_param = Some(g);
                        (
                            attacks::scale(&u.delta, g),
                            u.num_samples as f64,
                            Some(stats_msg(&u)),
                            false,
                        )
                    }
                    AttackKindSpec::DataPoison { boost, .. } => {
                        let d = match boost {
                            Some(b) => {
                                attack_param = Some(*b);
                                attacks::scale(&u.delta, *b)
                            }
                            None => u.delta.clone(),
                        };
                        (d, u.num_samples as f64, Some(stats_msg(&u)), false)
                    }
                    AttackKindSpec::Protocol { behaviour, .. } => (
                        u.delta.clone(),
                        u.num_samples as f64,
                        Some(stats_msg(&u)),
                        *behaviour == Misbehaviour::BadShares,
                    ),
                    _ => (
                        u.delta.clone(),
                        u.num_samples as f64,
                        Some(stats_msg(&u)),
                        false,
                    ),
                };
                push_malicious(&mut subs, i, delta, weight, stats, bad);
            }
        }
        // The coordinator keeps updates in a BTreeMap by node id.
        subs.sort_by(|a, b| a.identity.cmp(&b.identity));
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
        // Quarantined identities: never aggregated (k = 1: scored as shadow
        // evidence; k > 1: left out of the participant list).
        let (shadow, subs): (Vec<Submission>, Vec<Submission>) = subs
            .into_iter()
            .partition(|x| quarantined.contains(&x.identity));
        let is_shadow = |i: usize, p: &Presence| {
            matches!(p, Presence::Quarantined)
                || (!masked && all_quarantined(i) && !matches!(p, Presence::Offline))
        };
        let shadow_nodes = presence.iter().filter(|(i, p)| is_shadow(*i, p)).count();
        let train_losses: Vec<f32> = subs.iter().filter_map(|x| x.train_loss).collect();
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
        // What the rule aggregates, whichever path.
        struct Aggregated {
            value: Vec<f32>,
            contributors: Vec<usize>,
            evidence: Vec<(String, Evidence)>,
        }
        let mut aggregated: Option<Aggregated> = None;
        let mut contributing: BTreeSet<usize> = BTreeSet::new();
        if let Some((fleet, settings)) = &secagg {
            // The committed participant list: every identity that takes part
            // in the protocol, with when it stops answering.
            let mut members: Vec<Member<'_>> = subs
                .iter()
                .map(|x| Member {
                    id: &x.identity,
                    update: Some(&x.delta),
                    dropout: x.dropout,
                    bad_shares: x.bad_shares,
                })
                .collect();
            let absent: Vec<(String, Dropout)> = presence
                .iter()
                .filter_map(|(i, p)| {
                    let d = match p {
                        Presence::Dropped => Dropout::BeforeAdvert,
                        Presence::Straggler => Dropout::AfterShares,
                        Presence::Forced(d) => *d,
                        _ => return None,
                    };
                    Some(
                        ids_of(*i)
                            .into_iter()
                            .filter(|id| !quarantined.contains(id))
                            .map(move |id| (id, d)),
                    )
                })
                .flatten()
                .collect();
            members.extend(absent.iter().map(|(id, d)| Member {
                id,
                update: None,
                dropout: Some(*d),
                bad_shares: false,
            }));
            let revealed = buckets::run_round(
                fleet,
                settings,
                s.seed,
                round,
                global.version,
                &global.params,
                &members,
            )
            .map_err(EngineError::SecAgg)?;
            metrics.buckets = revealed.formed;
            for l in &revealed.lost {
                debug!(bucket = l.bucket, reason = %l.reason, "bucket lost");
            }
            metrics.buckets_lost = revealed.lost;
            let by_id: BTreeMap<&str, usize> = subs
                .iter()
                .enumerate()
                .map(|(j, x)| (x.identity.as_str(), j))
                .collect();
            let contributors: Vec<&Submission> = revealed
                .sums
                .iter()
                .flat_map(|b| b.contributors())
                .filter_map(|id| by_id.get(id.as_str()).map(|&j| &subs[j]))
                .collect();
            metrics.participants = contributors.len();
            metrics.malicious = contributors.iter().filter(|x| x.malicious).count();
            contributing.extend(contributors.iter().map(|x| x.node));
            if metrics.participants < s.min_participants || revealed.sums.is_empty() {
                metrics.aborted = Some(format!(
                    "{} submissions in {} unmasked buckets, at least {} needed",
                    metrics.participants,
                    revealed.sums.len(),
                    s.min_participants
                ));
            } else if let Err(e) = s.rule.check(revealed.sums.len()) {
                metrics.aborted = Some(e.to_string());
            } else {
                match aggregate_buckets(
                    &revealed.sums,
                    &s.rule,
                    reputation.config(),
                    last_agg.as_deref(),
                    s.secagg.max_mean_norm,
                ) {
                    Ok(out) => {
                        metrics.rule_inputs = revealed.sums.len() - out.rejected.len();
                        metrics.buckets_rejected = out.rejected.iter().map(|r| r.0).collect();
                        let by_bucket: BTreeMap<u32, &BucketSum> =
                            revealed.sums.iter().map(|b| (b.bucket(), b)).collect();
                        for b in &out.excluded {
                            for id in by_bucket.get(b).map_or(&[][..], |x| x.contributors()) {
                                metrics.rule_excluded.push(id.to_string());
                                metrics.rule_excluded_malicious +=
                                    usize::from(malicious_ids.contains(id.as_str()));
                            }
                        }
                        let used: Vec<usize> = out
                            .used
                            .iter()
                            .filter_map(|b| by_bucket.get(b))
                            .flat_map(|x| x.contributors())
                            .filter_map(|id| by_id.get(id.as_str()).copied())
                            .collect();
                        aggregated = Some(Aggregated {
                            value: out.value,
                            contributors: used,
                            evidence: out.evidence,
                        });
                    }
                    Err(
                        e @ (fedmesh_coordinator::aggregate::AggregateError::Empty
                        | fedmesh_coordinator::aggregate::AggregateError::TooFewClients {
                            ..
                        }),
                    ) => {
                        metrics.aborted = Some(format!("after the bucket norm gate: {e}"));
                    }
                    Err(source) => return Err(EngineError::Aggregate { round, source }),
                }
            }
        } else {
            // Without bucketing the rule sees each update itself (and a bad
            // share loses only the sender's own update).
            let kept: Vec<usize> = (0..subs.len()).filter(|&i| !subs[i].bad_shares).collect();
            metrics.participants = kept.len();
            metrics.malicious = kept.iter().filter(|&&i| subs[i].malicious).count();
            metrics.rule_inputs = kept.len();
            contributing.extend(kept.iter().map(|&i| subs[i].node));
            if kept.len() < s.min_participants || kept.is_empty() {
                metrics.aborted = Some(format!(
                    "{} submissions, at least {} needed",
                    kept.len(),
                    s.min_participants
                ));
            } else if let Err(e) = s.rule.check(kept.len()) {
                metrics.aborted = Some(e.to_string());
            } else {
                let refs: Vec<&[f32]> = kept.iter().map(|&i| subs[i].delta.as_slice()).collect();
                let weights: Vec<f64> = kept
                    .iter()
                    .map(|&i| s.server.weighting.of_weight(subs[i].weight))
                    .collect();
                let outcome = s
                    .rule
                    .aggregate_from(&refs, &weights, last_agg.as_deref())
                    .map_err(|source| EngineError::Aggregate { round, source })?;
                for (b, &i) in kept.iter().enumerate() {
                    if outcome.selected.binary_search(&b).is_err() {
                        metrics.rule_excluded.push(subs[i].identity.clone());
                        metrics.rule_excluded_malicious += usize::from(subs[i].malicious);
                    }
                }
                let names: Vec<String> = kept.iter().map(|&i| subs[i].identity.clone()).collect();
                let shadow_refs: Vec<(String, &[f32])> = shadow
                    .iter()
                    .map(|x| (x.identity.clone(), x.delta.as_slice()))
                    .collect();
                let evidence = plaintext_evidence(
                    reputation.config(),
                    &names,
                    &refs,
                    &outcome.value,
                    &outcome.selected,
                    &shadow_refs,
                );
                aggregated = Some(Aggregated {
                    value: outcome.value,
                    contributors: kept,
                    evidence,
                });
            }
        }
        metrics.rule_excluded.sort();
        // Sampled nodes without an aggregated update (quarantined ones are
        // counted in `shadow` instead).
        metrics.dropped = presence
            .iter()
            .filter(|(i, p)| !contributing.contains(i) && !is_shadow(*i, p))
            .count();
        if let Some(agg) = aggregated {
            let step = server_step(
                &global.params,
                &agg.value,
                momentum.as_deref(),
                s.server.lr,
                s.server.momentum,
            );
            let kept: Vec<&v1::ScalerStats> = agg
                .contributors
                .iter()
                .filter_map(|&i| subs[i].stats.as_ref())
                .collect();
            let scaler = merged_scaler(kept.into_iter(), NUM_FEATURES).map(|sc| Scaler {
                mean: sc.mean,
                std: sc.std,
            });
            global = GlobalModel {
                version: global.version + 1,
                round,
                spec: spec.clone(),
                params: step.params,
                scaler,
                signed: Vec::new(),
                schema_hash,
            };
            momentum = step.momentum;
            last_agg = Some(agg.value);
            metrics.version = global.version;
            metrics.reputation_events = reputation
                .observe_round(global.version, &agg.evidence)
                .into_iter()
                .map(|d| format!("{} {}", d.node, d.action.label()))
                .collect();
        }
        metrics.quarantined = reputation.quarantined().into_iter().collect();
        metrics.quarantined_malicious = metrics
            .quarantined
            .iter()
            .filter(|q| malicious_ids.contains(q.as_str()))
            .count();
        timing.aggregate_s += t_agg.elapsed().as_secs_f64();

        let t_eval = Instant::now();
        if global.version > 0 && (round % s.eval.every == 0 || round == s.rounds) {
            evaluate_into(&mut metrics, &global, &held, s, target)?;
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
    let report = RunReport {
        rounds,
        final_version: global.version,
        final_params_sha256: sha256_params(&global.params),
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
        final_params: global.params,
        genesis,
    })
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
    let scaler = g
        .scaler
        .clone()
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
    det.threshold = calibrate_threshold(&calib, s.eval.false_alarm_rate).map_err(|x| e(&x))?;
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
