//! Detection quality of a detector on labelled windows: ROC AUC overall
//! and per attack kind, precision/recall at the calibrated threshold.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::detection::detector::Detector;
use crate::detection::features::FeatureWindow;
use crate::sim::metrics::{precision_recall, roc_auc};
use crate::sim::synthetic::{AttackKind, Profile, labelled_windows};

/// Quality figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Windows evaluated.
    pub windows: usize,
    /// Attack windows among them.
    pub attack_windows: usize,
    /// ROC AUC over all windows.
    pub auc: f32,
    /// Precision at the threshold.
    pub precision: f32,
    /// Recall at the threshold.
    pub recall: f32,
    /// False-positive rate at the threshold.
    pub false_positive_rate: f32,
    /// AUC of each attack kind against all benign windows.
    pub auc_per_kind: BTreeMap<String, f32>,
    /// Recall of each attack kind at the threshold.
    pub recall_per_kind: BTreeMap<String, f32>,
}

/// Evaluation failures.
#[derive(Debug, thiserror::Error)]
#[error("evaluation: {0}")]
pub struct EvalError(pub String);

/// Scores labelled windows and summarises detection quality.
pub fn evaluate(
    det: &Detector,
    data: &[(FeatureWindow, Option<AttackKind>)],
) -> Result<EvalReport, EvalError> {
    let e = |x: &dyn std::fmt::Display| EvalError(x.to_string());
    let windows: Vec<FeatureWindow> = data.iter().map(|(w, _)| w.clone()).collect();
    let scores: Vec<f32> = det
        .score_windows(&windows)
        .map_err(|x| e(&x))?
        .into_iter()
        .map(|s| s.value)
        .collect();
    let labels: Vec<bool> = data.iter().map(|(_, l)| l.is_some()).collect();
    let auc = roc_auc(&scores, &labels).map_err(|x| e(&x))?;
    let pr = precision_recall(&scores, &labels, det.threshold).map_err(|x| e(&x))?;
    let mut auc_per_kind = BTreeMap::new();
    let mut recall_per_kind = BTreeMap::new();
    for kind in AttackKind::ALL {
        let (mut s, mut l) = (Vec::new(), Vec::new());
        for ((_, lab), sc) in data.iter().zip(&scores) {
            match lab {
                None => {
                    s.push(*sc);
                    l.push(false);
                }
                Some(k) if *k == kind => {
                    s.push(*sc);
                    l.push(true);
                }
                Some(_) => {}
            }
        }
        if l.iter().any(|x| *x) && l.iter().any(|x| !*x) {
            auc_per_kind.insert(kind.to_string(), roc_auc(&s, &l).map_err(|x| e(&x))?);
            let r = precision_recall(&s, &l, det.threshold).map_err(|x| e(&x))?;
            recall_per_kind.insert(kind.to_string(), r.recall);
        }
    }
    Ok(EvalReport {
        windows: data.len(),
        attack_windows: labels.iter().filter(|x| **x).count(),
        auc,
        precision: pr.precision,
        recall: pr.recall,
        false_positive_rate: pr.false_positive_rate,
        auc_per_kind,
        recall_per_kind,
    })
}

/// A standard held-out set: `per_profile` containers of each of `profiles`
/// for `windows` windows, every attack kind injected into one container
/// each (round-robin), starting halfway through.
pub fn standard_heldout(
    seed: u64,
    profiles: &[Profile],
    per_profile: usize,
    windows: u64,
    window_ms: u64,
) -> Result<Vec<(FeatureWindow, Option<AttackKind>)>, EvalError> {
    if profiles.is_empty() || per_profile == 0 || windows < 4 {
        return Err(EvalError(
            "need at least one profile, one container and four windows".into(),
        ));
    }
    let mut containers = Vec::new();
    for &p in profiles {
        for i in 0..per_profile {
            containers.push((format!("eval-{p}-{i}"), p));
        }
    }
    let start = windows / 2;
    let attacks: Vec<(String, AttackKind, u64, u64)> = AttackKind::ALL
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                containers[i % containers.len()].0.clone(),
                *k,
                start,
                windows - start,
            )
        })
        .collect();
    labelled_windows(seed, &containers, windows, window_ms, &attacks)
        .map_err(|x| EvalError(x.to_string()))
}
