//! Per-node reputation and quarantine, as a sequential probability ratio
//! test (SPRT) over rounds.
//!
//! Every round a participating node is either *flagged* (its update was an
//! outlier: far from the robust aggregate, or left out by a rule that keeps
//! most updates; or, with secure aggregation, its bucket was flagged) or
//! *clean*. Its score is a log-likelihood ratio of "malicious" against
//! "honest", with exponential forgetting so an honest node that was unlucky
//! recovers:
//!
//! ```text
//! score ← decay · score + ln(p_detect / p_fp)              if flagged
//! score ← decay · score + ln((1 − p_detect) / (1 − p_fp))  if clean
//! score ← score + violation_weight                          per protocol or norm violation
//! ```
//!
//! with `p_fp = p_false_alarm` for per-node evidence. For bucket evidence
//! (the node's secure-aggregation bucket of size s was flagged), the chance
//! that an honest node's bucket is flagged because another member is
//! malicious is folded in:
//! `p_fp = [1 − (1−δ̂)^{s−1}]·p_detect + (1−δ̂)^{s−1}·p_false_alarm`.
//!
//! A node whose score reaches `threshold` (ln((1−β)/α); 6.9 for
//! α = β = 10⁻³) is quarantined: its updates are still validated and
//! scored as shadow evidence but never aggregated, and it keeps receiving
//! the global model. It is released `probation_rounds` committed versions
//! later (doubled for each repeat offence, at most 64×); a flagged shadow
//! update during probation restarts the clock. On release the score is set
//! to three quarters of the threshold, so one more flag brings a repeat
//! offender straight back.
//!
//! The state is plain data, serialised to JSON and committed with every
//! version in the same store transaction as the model.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Reputation settings (`[tenants.reputation]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReputationConfig {
    /// Whether reputation and quarantine are active.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// P(flag | node malicious).
    #[serde(default = "d_p_detect")]
    pub p_detect: f64,
    /// P(flag | node honest) for per-node evidence.
    #[serde(default = "d_p_fa")]
    pub p_false_alarm: f64,
    /// Expected malicious fraction δ̂, used for bucket evidence.
    #[serde(default = "d_delta")]
    pub expected_malicious: f64,
    /// Quarantine threshold on the score, ln((1−β)/α).
    #[serde(default = "d_threshold")]
    pub threshold: f64,
    /// Forgetting factor applied each round a node takes part, in (0, 1].
    #[serde(default = "d_decay")]
    pub decay: f64,
    /// Committed versions a quarantined node waits before release.
    #[serde(default = "d_probation")]
    pub probation_rounds: u64,
    /// An update is an outlier when its distance to the robust aggregate
    /// exceeds this multiple of the median distance.
    #[serde(default = "d_outlier")]
    pub outlier_factor: f64,
    /// Score added per attributable violation (norm bound, malformed update).
    #[serde(default = "d_violation")]
    pub violation_weight: f64,
}

fn d_true() -> bool {
    true
}
fn d_p_detect() -> f64 {
    0.8
}
fn d_p_fa() -> f64 {
    0.05
}
fn d_delta() -> f64 {
    0.1
}
fn d_threshold() -> f64 {
    6.9
}
fn d_decay() -> f64 {
    0.9
}
fn d_probation() -> u64 {
    5
}
fn d_outlier() -> f64 {
    3.0
}
fn d_violation() -> f64 {
    3.5
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            p_detect: d_p_detect(),
            p_false_alarm: d_p_fa(),
            expected_malicious: d_delta(),
            threshold: d_threshold(),
            decay: d_decay(),
            probation_rounds: d_probation(),
            outlier_factor: d_outlier(),
            violation_weight: d_violation(),
        }
    }
}

impl ReputationConfig {
    /// Every problem with the settings, as sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let prob = |x: f64| x.is_finite() && x > 0.0 && x < 1.0;
        if !prob(self.p_detect) || !prob(self.p_false_alarm) {
            out.push("p_detect and p_false_alarm must be in (0, 1)".to_string());
        } else if self.p_false_alarm >= self.p_detect {
            out.push(format!(
                "p_false_alarm = {} must be below p_detect = {}, or a flag would be evidence of honesty",
                self.p_false_alarm, self.p_detect
            ));
        }
        if !(self.expected_malicious.is_finite() && (0.0..0.5).contains(&self.expected_malicious)) {
            out.push("expected_malicious must be in [0, 0.5)".to_string());
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            out.push("threshold must be a positive number".to_string());
        }
        if !(self.decay.is_finite() && self.decay > 0.0 && self.decay <= 1.0) {
            out.push("decay must be in (0, 1]".to_string());
        }
        if self.probation_rounds == 0 {
            out.push("probation_rounds must be at least 1".to_string());
        }
        if !(self.outlier_factor.is_finite() && self.outlier_factor > 1.0) {
            out.push("outlier_factor must be greater than 1".to_string());
        }
        if !(self.violation_weight.is_finite() && self.violation_weight >= 0.0) {
            out.push("violation_weight must be a non-negative number".to_string());
        }
        out
    }

    /// P(flag | honest) for a node whose evidence comes from a bucket of
    /// `bucket_size` members (1 = per-node evidence).
    pub fn p_false_positive(&self, bucket_size: usize) -> f64 {
        let others = bucket_size.saturating_sub(1) as i32;
        let all_honest = (1.0 - self.expected_malicious).powi(others);
        (1.0 - all_honest) * self.p_detect + all_honest * self.p_false_alarm
    }

    fn weights(&self, bucket_size: usize) -> (f64, f64) {
        let p_fp = self
            .p_false_positive(bucket_size)
            .clamp(1e-9, self.p_detect - 1e-9);
        (
            (self.p_detect / p_fp).ln(),
            ((1.0 - self.p_detect) / (1.0 - p_fp)).ln(),
        )
    }
}

/// One round's evidence about one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// The node's update (or bucket) looked normal.
    Clean {
        /// Members of the bucket the evidence is about (1 = the node alone).
        bucket_size: usize,
    },
    /// The node's update (or bucket) was an outlier.
    Flagged {
        /// Members of the bucket the evidence is about (1 = the node alone).
        bucket_size: usize,
        /// Why, for the audit log.
        reason: String,
    },
}

/// What reputation decided about a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Updates ignored from now on.
    Quarantined,
    /// Quarantine lifted.
    Released,
    /// A flagged shadow update restarted the probation clock.
    ProbationRestarted,
    /// The node's certificate was revoked: its connections were closed and
    /// its update to the open round dropped.
    Revoked,
}

impl Action {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Quarantined => "quarantined",
            Action::Released => "released",
            Action::ProbationRestarted => "probation_restarted",
            Action::Revoked => "revoked",
        }
    }
}

/// A reputation decision, recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Node.
    pub node: String,
    /// What happened.
    pub action: Action,
    /// Score after the decision.
    pub score: f64,
    /// Human-readable reason.
    pub reason: String,
}

/// What is known about one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Log-likelihood ratio score.
    pub score: f64,
    /// Rounds with evidence.
    pub rounds: u64,
    /// Rounds flagged.
    pub flagged: u64,
    /// Attributable violations.
    pub violations: u64,
    /// Version at which the current quarantine began.
    pub quarantined_at: Option<u64>,
    /// Version from which the node is released.
    pub release_at: Option<u64>,
    /// Quarantines so far.
    pub offences: u32,
    /// Last reason the node was flagged or quarantined.
    pub last_reason: String,
}

/// Reputation of every node of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reputation {
    cfg: ReputationConfig,
    nodes: BTreeMap<String, NodeRecord>,
}

/// A stored reputation state that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("stored reputation state does not decode: {0}")]
pub struct DecodeError(String);

impl Reputation {
    /// Empty state.
    pub fn new(cfg: ReputationConfig) -> Self {
        Self {
            cfg,
            nodes: BTreeMap::new(),
        }
    }

    /// Restores a state written by [`Reputation::to_bytes`].
    pub fn from_bytes(cfg: ReputationConfig, bytes: &[u8]) -> Result<Self, DecodeError> {
        let nodes: BTreeMap<String, NodeRecord> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))?;
        if nodes
            .values()
            .any(|r| !r.score.is_finite() || (r.quarantined_at.is_some() != r.release_at.is_some()))
        {
            return Err(DecodeError("inconsistent node record".into()));
        }
        Ok(Self { cfg, nodes })
    }

    /// Canonical serialisation (JSON, nodes in order).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.nodes).unwrap_or_default()
    }

    /// Settings.
    pub fn config(&self) -> &ReputationConfig {
        &self.cfg
    }

    /// Whether `node` is quarantined now.
    pub fn is_quarantined(&self, node: &str) -> bool {
        self.cfg.enabled
            && self
                .nodes
                .get(node)
                .is_some_and(|r| r.quarantined_at.is_some())
    }

    /// Quarantined nodes.
    pub fn quarantined(&self) -> BTreeSet<String> {
        if !self.cfg.enabled {
            return BTreeSet::new();
        }
        self.nodes
            .iter()
            .filter(|(_, r)| r.quarantined_at.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every node's record.
    pub fn records(&self) -> &BTreeMap<String, NodeRecord> {
        &self.nodes
    }

    fn quarantine(&mut self, node: &str, version: u64, reason: String) -> Decision {
        let probation = self.cfg.probation_rounds;
        let r = self.nodes.entry(node.to_string()).or_default();
        let factor = 1u64 << r.offences.min(6);
        r.offences = r.offences.saturating_add(1);
        r.quarantined_at = Some(version);
        r.release_at = Some(version.saturating_add(probation.saturating_mul(factor)));
        r.last_reason = reason.clone();
        Decision {
            node: node.to_string(),
            action: Action::Quarantined,
            score: r.score,
            reason: format!(
                "{reason}; score {:.2} ≥ {:.2}; released at version {}",
                r.score,
                self.cfg.threshold,
                r.release_at.unwrap_or(version)
            ),
        }
    }

    /// An attributable violation (norm bound exceeded, malformed update)
    /// observed while the latest committed version is `version`.
    pub fn violation(&mut self, node: &str, version: u64, reason: &str) -> Option<Decision> {
        if !self.cfg.enabled {
            return None;
        }
        let w = self.cfg.violation_weight;
        let r = self.nodes.entry(node.to_string()).or_default();
        r.violations += 1;
        r.score += w;
        r.last_reason = reason.to_string();
        if r.quarantined_at.is_none() && r.score >= self.cfg.threshold {
            Some(self.quarantine(node, version, format!("violation: {reason}")))
        } else {
            None
        }
    }

    /// Applies one committed round's evidence (`version` is the version the
    /// round produced) and releases nodes whose probation is over.
    pub fn observe_round(
        &mut self,
        version: u64,
        evidence: &[(String, Evidence)],
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return out;
        }
        for (node, ev) in evidence {
            let (flagged, size, reason) = match ev {
                Evidence::Clean { bucket_size } => (false, *bucket_size, ""),
                Evidence::Flagged {
                    bucket_size,
                    reason,
                } => (true, *bucket_size, reason.as_str()),
            };
            let (w_flag, w_clean) = self.cfg.weights(size.max(1));
            let (decay, threshold, probation) = (
                self.cfg.decay,
                self.cfg.threshold,
                self.cfg.probation_rounds,
            );
            let r = self.nodes.entry(node.clone()).or_default();
            if r.quarantined_at.is_some() {
                // Shadow evidence: a flagged update restarts probation.
                r.rounds += 1;
                if flagged {
                    let factor = 1u64 << r.offences.saturating_sub(1).min(6);
                    r.release_at = Some(version.saturating_add(probation.saturating_mul(factor)));
                    r.flagged += 1;
                    r.last_reason = reason.to_string();
                    out.push(Decision {
                        node: node.clone(),
                        action: Action::ProbationRestarted,
                        score: r.score,
                        reason: format!(
                            "{reason}; release moved to version {}",
                            r.release_at.unwrap_or(version)
                        ),
                    });
                }
                continue;
            }
            r.rounds += 1;
            r.score = decay * r.score + if flagged { w_flag } else { w_clean };
            // Bounded credit: a long honest history cannot hide a sudden attack.
            r.score = r.score.max(-threshold);
            if flagged {
                r.flagged += 1;
                r.last_reason = reason.to_string();
                if r.score >= threshold {
                    let reason = format!(
                        "flagged in {} of {} rounds, last: {reason}",
                        r.flagged, r.rounds
                    );
                    out.push(self.quarantine(node, version, reason));
                }
            }
        }
        let threshold = self.cfg.threshold;
        for (node, r) in self.nodes.iter_mut() {
            if let (Some(_), Some(release)) = (r.quarantined_at, r.release_at)
                && version >= release
            {
                r.quarantined_at = None;
                r.release_at = None;
                r.score = 0.75 * threshold;
                out.push(Decision {
                    node: node.clone(),
                    action: Action::Released,
                    score: r.score,
                    reason: format!("probation over at version {version}"),
                });
            }
        }
        out
    }
}

/// Per-node evidence from plaintext updates: distance of each update to the
/// robust aggregate against the median distance, and exclusion by a rule
/// that keeps most updates (Multi-Krum, Bulyan). Exclusion by a rule that
/// keeps fewer than half (Krum picks one) is not evidence.
///
/// `nodes[i]` submitted `deltas[i]`; `selected` are the indices the rule
/// kept (ascending); `shadow` are extra (node, delta) pairs of quarantined
/// nodes, scored against the same median.
pub fn plaintext_evidence(
    cfg: &ReputationConfig,
    nodes: &[String],
    deltas: &[&[f32]],
    aggregate: &[f32],
    selected: &[usize],
    shadow: &[(String, &[f32])],
) -> Vec<(String, Evidence)> {
    let dist = |d: &[f32]| -> f64 {
        d.iter()
            .zip(aggregate)
            .map(|(a, b)| {
                let x = f64::from(*a) - f64::from(*b);
                x * x
            })
            .sum::<f64>()
            .sqrt()
    };
    let dists: Vec<f64> = deltas.iter().map(|d| dist(d)).collect();
    let mut sorted = dists.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0);
    let exclusion_counts = selected.len() * 2 >= deltas.len();
    let limit = cfg.outlier_factor * median;
    let judge = |d: f64, excluded: bool| -> Evidence {
        if d > limit && d > 1e-12 {
            let reason = if median > 0.0 {
                format!("distance to the aggregate {:.1}× the median", d / median)
            } else {
                format!("distance to the aggregate {d:.3e}, the median is 0")
            };
            Evidence::Flagged {
                bucket_size: 1,
                reason,
            }
        } else if excluded {
            Evidence::Flagged {
                bucket_size: 1,
                reason: "left out by the aggregation rule".into(),
            }
        } else {
            Evidence::Clean { bucket_size: 1 }
        }
    };
    let mut out: Vec<(String, Evidence)> = nodes
        .iter()
        .zip(&dists)
        .enumerate()
        .map(|(i, (n, d))| {
            let excluded = exclusion_counts && selected.binary_search(&i).is_err();
            (n.clone(), judge(*d, excluded))
        })
        .collect();
    out.extend(
        shadow
            .iter()
            .map(|(n, d)| (n.clone(), judge(dist(d), false))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flagged() -> Evidence {
        Evidence::Flagged {
            bucket_size: 1,
            reason: "test".into(),
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        assert!(ReputationConfig::default().problems().is_empty());
        let bad = ReputationConfig {
            p_detect: 0.1,
            p_false_alarm: 0.2,
            decay: 0.0,
            probation_rounds: 0,
            outlier_factor: 0.5,
            ..Default::default()
        };
        let p = bad.problems().join("\n");
        for needle in [
            "p_false_alarm",
            "decay",
            "probation_rounds",
            "outlier_factor",
        ] {
            assert!(p.contains(needle), "{needle} missing from {p}");
        }
    }

    #[test]
    fn persistent_attacker_is_quarantined_then_released_after_probation() {
        let mut rep = Reputation::new(ReputationConfig::default());
        let mut quarantined_at = None;
        for version in 1..=10u64 {
            let d = rep.observe_round(
                version,
                &[
                    ("bad".into(), flagged()),
                    ("good".into(), Evidence::Clean { bucket_size: 1 }),
                ],
            );
            if d.iter().any(|d| d.action == Action::Quarantined) {
                quarantined_at = Some(version);
                break;
            }
        }
        // ln(0.8/0.05) = 2.77 per flag with decay 0.9: quarantined on the 3rd.
        assert_eq!(quarantined_at, Some(3));
        assert!(rep.is_quarantined("bad"));
        assert!(!rep.is_quarantined("good"));
        // Probation: 5 versions, clean shadow evidence does not extend it.
        for v in 4..8 {
            let d = rep.observe_round(v, &[("bad".into(), Evidence::Clean { bucket_size: 1 })]);
            assert!(d.is_empty(), "{d:?}");
        }
        let d = rep.observe_round(8, &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].action, Action::Released);
        assert!(!rep.is_quarantined("bad"));
        // A repeat offender comes back fast (score starts at 3/4 threshold)
        // and waits twice as long.
        let d = rep.observe_round(9, &[("bad".into(), flagged())]);
        assert_eq!(d[0].action, Action::Quarantined);
        assert_eq!(rep.records()["bad"].release_at, Some(19));
    }

    #[test]
    fn flagged_shadow_update_restarts_probation() {
        let mut rep = Reputation::new(ReputationConfig::default());
        for v in 1..=3 {
            rep.observe_round(v, &[("bad".into(), flagged())]);
        }
        assert_eq!(rep.records()["bad"].release_at, Some(8));
        let d = rep.observe_round(6, &[("bad".into(), flagged())]);
        assert_eq!(d[0].action, Action::ProbationRestarted);
        assert_eq!(rep.records()["bad"].release_at, Some(11));
    }

    #[test]
    fn violations_quarantine_and_disabled_does_nothing() {
        let mut rep = Reputation::new(ReputationConfig::default());
        assert!(rep.violation("n", 4, "norm 1e9 over bound").is_none());
        let d = rep.violation("n", 4, "norm 1e9 over bound").unwrap();
        assert_eq!(d.action, Action::Quarantined);
        assert!(d.reason.contains("norm"));
        let mut off = Reputation::new(ReputationConfig {
            enabled: false,
            ..Default::default()
        });
        for v in 1..20 {
            assert!(off.observe_round(v, &[("x".into(), flagged())]).is_empty());
            assert!(off.violation("x", v, "r").is_none());
        }
        assert!(off.quarantined().is_empty());
    }

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let mut rep = Reputation::new(ReputationConfig::default());
        for v in 1..=3 {
            rep.observe_round(
                v,
                &[
                    ("a".into(), flagged()),
                    ("b".into(), Evidence::Clean { bucket_size: 4 }),
                ],
            );
        }
        let back = Reputation::from_bytes(ReputationConfig::default(), &rep.to_bytes()).unwrap();
        assert_eq!(back, rep);
        assert!(Reputation::from_bytes(ReputationConfig::default(), b"{\"a\":1}").is_err());
        assert!(Reputation::from_bytes(ReputationConfig::default(), b"\xff").is_err());
    }

    #[test]
    fn bucket_evidence_is_weaker_than_direct_evidence() {
        let cfg = ReputationConfig::default();
        assert!((cfg.p_false_positive(1) - cfg.p_false_alarm).abs() < 1e-12);
        let (direct, _) = cfg.weights(1);
        let (bucket, _) = cfg.weights(4);
        assert!(bucket < direct && bucket > 0.0);
    }

    #[test]
    fn outlier_far_from_aggregate_is_flagged_and_krum_exclusion_is_not_evidence() {
        let cfg = ReputationConfig::default();
        let nodes: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let honest = [
            vec![1.0f32, 0.0],
            vec![1.1, 0.1],
            vec![0.9, -0.1],
            vec![1.0, 0.2],
        ];
        let bad = vec![-40.0f32, 30.0];
        let deltas: Vec<&[f32]> = honest
            .iter()
            .map(|v| v.as_slice())
            .chain([bad.as_slice()])
            .collect();
        let agg = [1.0f32, 0.05];
        // Krum kept one update: exclusion is not evidence.
        let ev = plaintext_evidence(&cfg, &nodes, &deltas, &agg, &[0], &[]);
        assert!(matches!(ev[4].1, Evidence::Flagged { .. }));
        assert!(
            ev[..4]
                .iter()
                .all(|(_, e)| matches!(e, Evidence::Clean { .. }))
        );
        // Multi-Krum kept four: the excluded one is flagged.
        let ev = plaintext_evidence(&cfg, &nodes, &deltas, &agg, &[1, 2, 3, 4], &[]);
        assert!(matches!(ev[0].1, Evidence::Flagged { .. }));
        // Shadow updates are judged on the same scale.
        let ev = plaintext_evidence(
            &cfg,
            &nodes[..4],
            &deltas[..4],
            &agg,
            &[0, 1, 2, 3],
            &[("q".into(), &bad)],
        );
        assert_eq!(ev.len(), 5);
        assert!(matches!(ev[4].1, Evidence::Flagged { .. }));
    }

    proptest! {
        /// An honest node flagged at most at the false-alarm rate never
        /// reaches quarantine when flags are isolated (no two in a row
        /// within 3 rounds), whatever the order.
        #[test]
        fn isolated_false_alarms_never_quarantine(flags in proptest::collection::vec(any::<bool>(), 1..200)) {
            let mut rep = Reputation::new(ReputationConfig::default());
            let mut last_flag: Option<usize> = None;
            for (i, f) in flags.iter().enumerate() {
                let f = *f && last_flag.is_none_or(|l| i - l >= 4);
                if f { last_flag = Some(i); }
                let ev = if f { flagged() } else { Evidence::Clean { bucket_size: 1 } };
                rep.observe_round(i as u64 + 1, &[("h".into(), ev)]);
                prop_assert!(!rep.is_quarantined("h"));
            }
        }

        /// Scores stay finite and bounded below whatever the evidence.
        #[test]
        fn scores_are_bounded(flags in proptest::collection::vec(any::<bool>(), 1..300)) {
            let mut rep = Reputation::new(ReputationConfig::default());
            for (i, f) in flags.iter().enumerate() {
                let ev = if *f { flagged() } else { Evidence::Clean { bucket_size: 1 } };
                rep.observe_round(i as u64 + 1, &[("h".into(), ev)]);
                let s = rep.records()["h"].score;
                prop_assert!(s.is_finite() && s >= -rep.config().threshold);
            }
        }
    }
}
