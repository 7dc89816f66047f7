//! Scenario engines and what they report.
//!
//! Both engines run a [`Scenario`](crate::scenario::Scenario) as one
//! coordinator tenant ([`tenant`]: the same configuration, the same
//! connected identities) over real node `Agent`s fed with synthetic
//! telemetry.
//!
//! - [`inprocess`]: no network. The round core is the coordinator's own
//!   `machine::RoundMachine`, driven as its async shell drives it: the
//!   machine samples the participants, validates every update (k = 1) or
//!   routes every secure-aggregation message ([`buckets`], k > 1), closes
//!   the round (`plan_plaintext` / `plan_secure`: rule, clipping, evidence,
//!   scaler merge), steps the server, moves reputation and installs the
//!   version — so both engines share one sampling, one validation and one
//!   commit path by construction.
//! - [`network`]: the real coordinator and node runtimes over gRPC + mTLS
//!   on loopback.
//!
//! With the same seed both end with the same global model, bit for bit
//! (tests in `simulations/tests/network.rs`).

pub mod buckets;
pub mod inprocess;
pub mod network;
pub mod tenant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// Node-side failure (telemetry, training, model).
    #[error("node {node}: {message}")]
    Node {
        /// Node index.
        node: usize,
        /// What failed.
        message: String,
    },
    /// An attack could not be crafted.
    #[error("round {round}: attack: {source}")]
    Attack {
        /// Round.
        round: u64,
        /// Cause.
        source: crate::attacks::AttackError,
    },
    /// Evaluation failed.
    #[error("evaluation: {0}")]
    Eval(String),
    /// Writing a recorded batch failed.
    #[error("recording updates: {0}")]
    Record(String),
    /// Secure-aggregation set-up failed (certificates, parameters).
    #[error(transparent)]
    SecAgg(buckets::BucketError),
    /// The scenario does not make a coordinator tenant.
    #[error("tenant: {0}")]
    Tenant(String),
    /// The round core failed for a reason other than a refused update or
    /// too few inputs.
    #[error("round {round}: coordinator: {source}")]
    Coordinator {
        /// Round.
        round: u64,
        /// Cause.
        source: fedmesh_coordinator::error::FedError,
    },
}

/// One round as the engine saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// Round number (1-based; aborted rounds use a number too).
    pub round: u64,
    /// Nodes sampled: those with an identity the coordinator selected (or
    /// took as a shadow participant) and, with full participation, the
    /// offline nodes (which never connect).
    pub sampled: usize,
    /// Submissions aggregated (identities, Sybils included).
    pub participants: usize,
    /// Sampled nodes without an aggregated update (dropout, straggler,
    /// lost bucket, forced dropout).
    pub dropped: usize,
    /// Of the dropped, stragglers.
    pub stragglers: usize,
    /// Malicious identities among the participants.
    pub malicious: usize,
    /// Rule name.
    pub rule: String,
    /// Inputs the rule saw (bucket means that passed the norm gate when
    /// k > 1).
    pub rule_inputs: usize,
    /// Why the round was aborted (global model unchanged), if it was.
    pub aborted: Option<String>,
    /// Global version after the round.
    pub version: u64,
    /// Attack parameter of the round (ALIE z, min-max/min-sum λ, scaling γ).
    pub attack_param: Option<f64>,
    /// Mean training loss reported by honest nodes.
    pub mean_train_loss: Option<f32>,
    /// Global loss: mean reconstruction error of the global detector on the
    /// held-out benign windows.
    pub global_loss: Option<f32>,
    /// ROC AUC over all held-out windows.
    pub auc: Option<f32>,
    /// AUC of each attack kind against the benign held-out windows.
    pub auc_per_kind: BTreeMap<String, f32>,
    /// Attack success of a targeted attack (data poisoning, scaling with
    /// poison): the miss rate of the targeted kind's held-out windows,
    /// i.e. the fraction scored at or below the alert threshold, which is
    /// calibrated on separate benign held-out windows at the scenario's
    /// false-alarm budget (`eval.false_alarm_rate`, default 1 %).
    pub attack_success: Option<f32>,
    /// The same miss rate of the clean twin's model in the same round (same
    /// scenario and seed, attackers disabled): the baseline the attack
    /// success is to be read against.
    pub clean_miss_rate: Option<f32>,
    /// Buckets formed (k > 1).
    pub buckets: usize,
    /// Buckets that could not be unmasked (too few survivors, bad shares).
    pub buckets_lost: Vec<buckets::LostBucket>,
    /// Buckets the norm gate refused.
    pub buckets_rejected: Vec<u32>,
    /// Identities the rule left out this round (k > 1: the contributors of
    /// bucket means the rule did not select). Not quarantine.
    pub rule_excluded: Vec<String>,
    /// Of the rule-excluded, malicious identities.
    pub rule_excluded_malicious: usize,
    /// Sampled nodes whose identities are all quarantined (k = 1: trained,
    /// scored as shadow updates, not aggregated; k > 1: not in the
    /// participant list).
    pub shadow: usize,
    /// Identities quarantined by reputation after this round.
    pub quarantined: Vec<String>,
    /// Of the quarantined, malicious identities.
    pub quarantined_malicious: usize,
    /// Reputation decisions of this round (`node action`).
    pub reputation_events: Vec<String>,
}

impl RoundMetrics {
    /// A round with nothing measured yet.
    pub fn new(round: u64, rule: &str, version: u64) -> Self {
        Self {
            round,
            sampled: 0,
            participants: 0,
            dropped: 0,
            stragglers: 0,
            malicious: 0,
            rule: rule.to_string(),
            rule_inputs: 0,
            aborted: None,
            version,
            attack_param: None,
            mean_train_loss: None,
            global_loss: None,
            auc: None,
            auc_per_kind: BTreeMap::new(),
            attack_success: None,
            clean_miss_rate: None,
            buckets: 0,
            buckets_lost: Vec::new(),
            buckets_rejected: Vec::new(),
            rule_excluded: Vec::new(),
            rule_excluded_malicious: 0,
            shadow: 0,
            quarantined: Vec::new(),
            quarantined_malicious: 0,
            reputation_events: Vec::new(),
        }
    }
}

/// The clean twin of a run: the same scenario and seed without attackers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanTwin {
    /// Its final version.
    pub final_version: u64,
    /// SHA-256 of its final parameters.
    pub final_params_sha256: String,
    /// Distance of the final global parameters from the clean twin's,
    /// relative to how far the clean twin moved from genesis:
    /// `‖θ − θ_clean‖ / ‖θ_clean − θ_0‖`.
    pub distance: f64,
    /// Its global loss in the last evaluated round.
    pub final_global_loss: Option<f32>,
    /// Its mean per-kind AUC in the last evaluated round.
    pub final_mean_auc: Option<f32>,
}

/// A finished run. Deterministic: the same scenario and seed give the same
/// bytes when serialized (timings are kept apart in [`RunTiming`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Engine that produced it.
    pub engine: String,
    /// Seed.
    pub seed: u64,
    /// Rule name.
    pub rule: String,
    /// Attack name (`none` without attackers).
    pub attack: String,
    /// Bucket size k.
    pub bucket_size: usize,
    /// How updates were aggregated: plaintext (k = 1) or masked buckets.
    pub aggregation: String,
    /// Nodes.
    pub nodes: usize,
    /// Attacker nodes (by index).
    pub attackers: Vec<usize>,
    /// The attack kind a targeted attack tries to hide.
    pub attack_target: Option<String>,
    /// False-alarm budget the alert threshold is calibrated at.
    pub false_alarm_rate: f32,
    /// Per round.
    pub rounds: Vec<RoundMetrics>,
    /// Final global version.
    pub final_version: u64,
    /// SHA-256 of the final global parameters (f32 LE).
    pub final_params_sha256: String,
    /// The clean twin, when it was run.
    pub clean_twin: Option<CleanTwin>,
}

impl RunReport {
    /// What a report says about the scenario itself, before any round:
    /// both engines fill in `rounds`, the final version and digest.
    pub(crate) fn of_scenario(
        s: &crate::scenario::Scenario,
        engine: &str,
        aggregation: &str,
        attackers: Vec<usize>,
        target: Option<fedmesh_node::sim::synthetic::AttackKind>,
    ) -> Self {
        Self {
            scenario: s.name.clone(),
            engine: engine.into(),
            seed: s.seed,
            rule: s.rule.rule.name().into(),
            attack: s
                .attack
                .as_ref()
                .map_or("none", |a| a.kind.name())
                .to_string(),
            bucket_size: s.bucket_size,
            aggregation: aggregation.into(),
            nodes: s.fleet.nodes,
            attackers,
            attack_target: target.map(|t| t.to_string()),
            false_alarm_rate: s.eval.false_alarm_rate,
            rounds: Vec::new(),
            final_version: 0,
            final_params_sha256: String::new(),
            clean_twin: None,
        }
    }

    /// The last evaluated round.
    pub fn last_evaluated(&self) -> Option<&RoundMetrics> {
        self.rounds.iter().rev().find(|r| r.auc.is_some())
    }

    /// Mean of the per-kind AUCs of the last evaluated round.
    pub fn final_mean_auc(&self) -> Option<f32> {
        let r = self.last_evaluated()?;
        if r.auc_per_kind.is_empty() {
            return None;
        }
        Some(r.auc_per_kind.values().sum::<f32>() / r.auc_per_kind.len() as f32)
    }

    /// The worst attack kind's AUC in the last evaluated round.
    pub fn final_worst_auc(&self) -> Option<(String, f32)> {
        let r = self.last_evaluated()?;
        r.auc_per_kind
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, v)| (k.clone(), *v))
    }

    /// Attack success in the last evaluated round.
    pub fn final_attack_success(&self) -> Option<f32> {
        self.last_evaluated()?.attack_success
    }

    /// The clean twin's miss rate of the targeted kind in the last
    /// evaluated round.
    pub fn final_clean_miss_rate(&self) -> Option<f32> {
        self.last_evaluated()?.clean_miss_rate
    }

    /// Identities quarantined at the end of the run.
    pub fn final_quarantined(&self) -> &[String] {
        self.rounds.last().map_or(&[], |r| r.quarantined.as_slice())
    }
}

/// Wall-clock time spent, per phase (not deterministic, kept apart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTiming {
    /// Telemetry generation and agent set-up (certificates included).
    pub setup_s: f64,
    /// Of the set-up, the mesh CA and one certificate per identity (k > 1).
    pub certificates_s: f64,
    /// Local training (all rounds).
    pub train_s: f64,
    /// Attacks, bucketing, aggregation and server step.
    pub aggregate_s: f64,
    /// Held-out evaluation.
    pub eval_s: f64,
    /// The clean twin (whole run), when it was run.
    pub clean_twin_s: f64,
    /// Whole run.
    pub total_s: f64,
    /// Worker threads used.
    pub threads: usize,
}

/// splitmix64 finaliser.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from the scenario seed and a path of labels, in a fixed
/// order: the same inputs give the same seed on every machine and thread
/// count.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(mix64(seed), |acc, &p| mix64(acc ^ mix64(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_depend_on_every_part_and_its_position() {
        let a = derive_seed(1, &[2, 3]);
        assert_eq!(a, derive_seed(1, &[2, 3]));
        assert_ne!(a, derive_seed(1, &[3, 2]));
        assert_ne!(a, derive_seed(2, &[2, 3]));
        assert_ne!(a, derive_seed(1, &[2, 4]));
    }
}
