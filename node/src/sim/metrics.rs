//! Detection quality metrics: ROC AUC and precision/recall at a threshold.
//!
//! [`roc_auc`] is rank based (Mann–Whitney U with mid-ranks for ties, i.e.
//! tied scores count one half), which is exact and independent of any
//! monotone transform of the scores. A test cross-checks it against linfa's
//! ROC curve on tie-free data.

use serde::{Deserialize, Serialize};

/// Errors of the metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    /// Scores and labels differ in length.
    #[error("{scores} scores but {labels} labels")]
    LengthMismatch {
        /// Number of scores.
        scores: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A score (or the threshold) was NaN or infinite.
    #[error("non-finite score")]
    NonFinite,
    /// No input.
    #[error("empty input")]
    Empty,
    /// AUC needs both positives and negatives.
    #[error("only one class present")]
    OneClass,
}

fn check(scores: &[f32], labels: &[bool]) -> Result<(), MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    if scores.is_empty() {
        return Err(MetricsError::Empty);
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(MetricsError::NonFinite);
    }
    Ok(())
}

/// Area under the ROC curve of `scores` (higher = more anomalous) against
/// `labels` (`true` = attack). Ties count one half.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Result<f32, MetricsError> {
    check(scores, labels)?;
    let n_pos = labels.iter().filter(|l| **l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(MetricsError::OneClass);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Sum of (1-based mid-)ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        let pos_in_group = order[i..=j].iter().filter(|k| labels[**k]).count();
        rank_sum += mid * pos_in_group as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    let u = rank_sum - p * (p + 1.0) / 2.0;
    Ok((u / (p * n)) as f32)
}

/// Confusion counts and derived rates at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecall {
    /// tp / (tp + fp), 0 when nothing is flagged.
    pub precision: f32,
    /// tp / (tp + fn), 0 without positives.
    pub recall: f32,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f32,
    /// fp / (fp + tn), 0 without negatives.
    pub false_positive_rate: f32,
    /// Flagged attacks.
    pub tp: usize,
    /// Flagged benign windows.
    pub fp: usize,
    /// Unflagged benign windows.
    pub tn: usize,
    /// Missed attacks.
    pub fn_: usize,
}

fn ratio(a: usize, b: usize) -> f32 {
    if b == 0 {
        0.0
    } else {
        (a as f64 / b as f64) as f32
    }
}

/// Precision/recall when windows with `score > threshold` are flagged.
pub fn precision_recall(
    scores: &[f32],
    labels: &[bool],
    threshold: f32,
) -> Result<PrecisionRecall, MetricsError> {
    check(scores, labels)?;
    if threshold.is_nan() {
        return Err(MetricsError::NonFinite);
    }
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for (s, l) in scores.iter().zip(labels) {
        match (*s > threshold, *l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Ok(PrecisionRecall {
        precision,
        recall,
        f1,
        false_positive_rate: ratio(fp, fp + tn),
        tp,
        fp,
        tn,
        fn_,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::dataset::Pr;
    use linfa::prelude::BinaryClassification;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn auc_basics_and_ties() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Ok(1.0)
        );
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Ok(0.0)
        );
        assert_eq!(
            roc_auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]),
            Ok(0.5)
        );
        // One positive tied with one of two negatives: (1 + 0.5) / 2.
        assert_eq!(roc_auc(&[0.1, 0.5, 0.5], &[false, false, true]), Ok(0.75));
        assert_eq!(
            roc_auc(&[0.1, 0.2], &[true, true]),
            Err(MetricsError::OneClass)
        );
        assert_eq!(roc_auc(&[], &[]), Err(MetricsError::Empty));
        assert_eq!(
            roc_auc(&[f32::NAN, 1.0], &[true, false]),
            Err(MetricsError::NonFinite)
        );
        assert!(roc_auc(&[1.0], &[true, false]).is_err());
    }

    #[test]
    fn auc_matches_linfa_and_pairwise() {
        let mut r = ChaCha8Rng::seed_from_u64(2);
        let n = 300;
        let labels: Vec<bool> = (0..n).map(|_| r.random_bool(0.3)).collect();
        let scores: Vec<f32> = labels
            .iter()
            .map(|l| r.random::<f32>() * 3.0 + if *l { 1.0 } else { 0.0 })
            .collect();
        let ours = roc_auc(&scores, &labels).unwrap();
        // Pairwise definition.
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (si, li) in scores.iter().zip(&labels) {
            for (sj, lj) in scores.iter().zip(&labels) {
                if *li && !*lj {
                    den += 1.0;
                    num += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((ours - (num / den) as f32).abs() < 1e-5);
        // linfa: map scores monotonically into [0, 1].
        let min = scores.iter().copied().fold(f32::INFINITY, f32::min);
        let probs: Vec<Pr> = scores
            .iter()
            .map(|s| {
                let v = s - min;
                Pr::try_from(v / (1.0 + v)).unwrap()
            })
            .collect();
        let roc = probs.as_slice().roc(&labels).unwrap();
        let linfa_auc = roc.area_under_curve();
        let linfa_auc = linfa_auc.max(1.0 - linfa_auc);
        assert!(
            (ours - linfa_auc).abs() < 1e-3,
            "ours {ours} linfa {linfa_auc}"
        );
    }

    #[test]
    fn precision_recall_counts() {
        let pr = precision_recall(
            &[0.1, 0.6, 0.7, 0.2, 0.9],
            &[false, false, true, true, true],
            0.5,
        )
        .unwrap();
        assert_eq!((pr.tp, pr.fp, pr.tn, pr.fn_), (2, 1, 1, 1));
        assert!((pr.precision - 2.0 / 3.0).abs() < 1e-6);
        assert!((pr.recall - 2.0 / 3.0).abs() < 1e-6);
        assert!((pr.f1 - 2.0 / 3.0).abs() < 1e-6);
        assert!((pr.false_positive_rate - 0.5).abs() < 1e-6);
        assert!(precision_recall(&[0.1], &[true, false], 0.5).is_err());
        assert!(precision_recall(&[0.1], &[true], f32::NAN).is_err());
    }
}
