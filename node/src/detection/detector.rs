//! Anomaly detector: scaler + autoencoder + calibrated threshold.
//!
//! A window's score is the mean squared reconstruction error of its
//! standardized features; `per_feature` keeps the individual squared errors
//! so alerts can name the features that contributed most
//! ([`top_features`]). The threshold comes from [`calibrate_threshold`] over
//! recent benign scores; a window is anomalous when `score > threshold`.

use ndarray::Array2;

use crate::detection::features::{FEATURE_NAMES, FeatureWindow, NUM_FEATURES};
use crate::detection::model::{Autoencoder, ModelError};
use crate::detection::scaler::{Scaler, ScalerError};

/// Errors of the detector.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DetectorError {
    /// Scaler failure (width mismatch, non-finite values).
    #[error(transparent)]
    Scaler(#[from] ScalerError),
    /// Model failure.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Scaler and model widths differ from the feature schema.
    #[error("scaler width {scaler} / model width {model} differ from {NUM_FEATURES} features")]
    Width {
        /// Scaler width.
        scaler: usize,
        /// Model input width.
        model: usize,
    },
    /// No benign scores to calibrate from.
    #[error("no scores to calibrate from")]
    Empty,
    /// A score was NaN or infinite.
    #[error("non-finite score")]
    NonFinite,
    /// The false-alarm rate is outside (0, 0.5].
    #[error("false alarm rate {0} outside (0, 0.5]")]
    Rate(f32),
}

/// Anomaly score of one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// Mean squared reconstruction error over the features.
    pub value: f32,
    /// Squared reconstruction error per feature, in [`FEATURE_NAMES`] order.
    pub per_feature: Vec<f32>,
}

/// A model, its feature scaler and its alert threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Detector {
    /// Autoencoder over standardized features.
    pub model: Autoencoder,
    /// Feature standardization.
    pub scaler: Scaler,
    /// Scores strictly above this raise alerts.
    pub threshold: f32,
}

impl Detector {
    /// Scores every window (one [`Score`] per window, same order).
    pub fn score_windows(&self, windows: &[FeatureWindow]) -> Result<Vec<Score>, DetectorError> {
        let model_dim = self.model.spec().input_dim;
        if self.scaler.dim() != NUM_FEATURES || model_dim != NUM_FEATURES {
            return Err(DetectorError::Width {
                scaler: self.scaler.dim(),
                model: model_dim,
            });
        }
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let x = windows_to_matrix(windows);
        let z = self.scaler.transform(x.view())?;
        let err = self.model.reconstruction_errors(z.view())?;
        Ok(err
            .rows()
            .into_iter()
            .map(|r| {
                let per_feature: Vec<f32> = r.to_vec();
                let value = per_feature.iter().sum::<f32>() / per_feature.len().max(1) as f32;
                Score { value, per_feature }
            })
            .collect())
    }

    /// Whether a score raises an alert (`score > threshold`).
    pub fn is_anomalous(&self, score: &Score) -> bool {
        score.value > self.threshold
    }
}

/// The `k` features with the largest squared error, largest first.
pub fn top_features(score: &Score, k: usize) -> Vec<(&'static str, f32)> {
    let mut v: Vec<(&'static str, f32)> = FEATURE_NAMES
        .iter()
        .zip(&score.per_feature)
        .map(|(n, e)| (*n, *e))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

/// Lowest alert threshold a node calibrates: the score of one feature one
/// standard deviation from its reconstruction (scores are mean squared
/// errors over the features in z-units, and a scaler's deviations are
/// floored at each feature's resolution,
/// [`crate::detection::features::STD_FLOORS`]). A node whose benign
/// windows are all nearly constant (a host of idle sidecars) otherwise
/// calibrates a threshold near zero, and every measurement-sized wobble is
/// "thousands of times the threshold". Real fleets calibrate above it (the
/// recorded real-workload run: 0.074).
pub const MIN_THRESHOLD: f32 = 1.0 / NUM_FEATURES as f32;

/// [`calibrate_threshold`], raised to at least [`MIN_THRESHOLD`]: the
/// threshold a node alerts with.
pub fn alert_threshold(benign_scores: &[f32], false_alarm_rate: f32) -> Result<f32, DetectorError> {
    Ok(calibrate_threshold(benign_scores, false_alarm_rate)?.max(MIN_THRESHOLD))
}

/// The `(1 - false_alarm_rate)` quantile of benign scores: the smallest
/// observed score such that at most `false_alarm_rate` of the benign scores
/// are strictly above it. `false_alarm_rate` must be in (0, 0.5].
pub fn calibrate_threshold(
    benign_scores: &[f32],
    false_alarm_rate: f32,
) -> Result<f32, DetectorError> {
    if !(false_alarm_rate > 0.0 && false_alarm_rate <= 0.5) {
        return Err(DetectorError::Rate(false_alarm_rate));
    }
    if benign_scores.is_empty() {
        return Err(DetectorError::Empty);
    }
    if benign_scores.iter().any(|s| !s.is_finite()) {
        return Err(DetectorError::NonFinite);
    }
    let mut s = benign_scores.to_vec();
    s.sort_by(f32::total_cmp);
    let n = s.len();
    // The small tolerance absorbs f32 -> f64 rounding of the rate (0.01 -> 0.0099999998).
    let k = ((1.0 - f64::from(false_alarm_rate)) * n as f64 - 1e-6).ceil() as usize;
    let k = k.clamp(1, n) - 1;
    Ok(s[k])
}

/// Stacks the windows' features into an `n × NUM_FEATURES` matrix.
pub fn windows_to_matrix(windows: &[FeatureWindow]) -> Array2<f32> {
    let mut x = Array2::zeros((windows.len(), NUM_FEATURES));
    for (mut row, w) in x.rows_mut().into_iter().zip(windows) {
        for (d, s) in row.iter_mut().zip(&w.features) {
            *d = *s;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::model::{ModelSpec, TrainConfig};
    use crate::detection::scaler::ScalerStats;
    use crate::sim::metrics::{precision_recall, roc_auc};
    use crate::sim::synthetic::{AttackKind, Profile, labelled_windows};
    use crate::telemetry::ContainerId;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn fleet(per_profile: usize) -> Vec<(String, Profile)> {
        let mut v = Vec::new();
        for p in Profile::ALL {
            for i in 0..per_profile {
                v.push((format!("{p}-{i}"), p));
            }
        }
        v
    }

    fn train_detector(seed: u64, windows: u64) -> (Detector, std::time::Duration, usize) {
        let train = labelled_windows(seed, &fleet(4), windows, 10_000, &[]).unwrap();
        let ws: Vec<FeatureWindow> = train.into_iter().map(|(w, _)| w).collect();
        let x = windows_to_matrix(&ws);
        let scaler = Scaler::from_stats(&ScalerStats::from_rows(x.view()).unwrap()).unwrap();
        let z = scaler.transform(x.view()).unwrap();
        let mut model = Autoencoder::new_random(
            ModelSpec::default_for_features(),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap();
        let cfg = TrainConfig {
            epochs: 20,
            patience: 4,
            seed,
            ..TrainConfig::default()
        };
        let t = std::time::Instant::now();
        let report = model.train(z.view(), &cfg, None).unwrap();
        let took = t.elapsed();
        println!("train report {report:?} in {took:?}");
        let mut det = Detector {
            model,
            scaler,
            threshold: 0.0,
        };
        let scores: Vec<f32> = det
            .score_windows(&ws)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        det.threshold = calibrate_threshold(&scores, 0.01).unwrap();
        (det, took, ws.len())
    }

    #[test]
    fn calibrate_quantile() {
        let s: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        assert_eq!(calibrate_threshold(&s, 0.01), Ok(99.0));
        assert_eq!(calibrate_threshold(&s, 0.1), Ok(90.0));
        assert_eq!(calibrate_threshold(&s, 0.5), Ok(50.0));
        assert_eq!(calibrate_threshold(&[3.0], 0.05), Ok(3.0));
        assert!(calibrate_threshold(&[], 0.1).is_err());
        assert!(calibrate_threshold(&[1.0, f32::NAN], 0.1).is_err());
        assert!(calibrate_threshold(&s, 0.0).is_err());
        assert!(calibrate_threshold(&s, 0.6).is_err());
        assert!(calibrate_threshold(&s, f32::NAN).is_err());
    }

    #[test]
    fn top_features_sorted() {
        let mut per_feature = vec![0.0; NUM_FEATURES];
        per_feature[3] = 5.0;
        per_feature[7] = 9.0;
        let s = Score {
            value: 1.0,
            per_feature,
        };
        let top = top_features(&s, 2);
        assert_eq!(top, vec![(FEATURE_NAMES[7], 9.0), (FEATURE_NAMES[3], 5.0)]);
    }

    #[test]
    fn width_and_nan_errors() {
        let model = Autoencoder::new_random(
            ModelSpec::default_for_features(),
            &mut ChaCha8Rng::seed_from_u64(1),
        )
        .unwrap();
        let det = Detector {
            model: model.clone(),
            scaler: Scaler::identity(3),
            threshold: 1.0,
        };
        let w = FeatureWindow {
            container: ContainerId("a".into()),
            start_ms: 0,
            end_ms: 1,
            features: [0.0; NUM_FEATURES],
            restarted: false,
        };
        assert!(det.score_windows(std::slice::from_ref(&w)).is_err());
        let det = Detector {
            model,
            scaler: Scaler::identity(NUM_FEATURES),
            threshold: 1.0,
        };
        assert_eq!(
            det.score_windows(std::slice::from_ref(&w)).unwrap().len(),
            1
        );
        let mut bad = w.clone();
        bad.features[2] = f32::NAN;
        assert!(det.score_windows(&[bad]).is_err());
    }

    /// Timing reference: 2000 windows x 5 epochs (run with `--nocapture`).
    #[test]
    fn training_2000_windows_5_epochs() {
        let data = labelled_windows(5, &fleet(4), 126, 10_000, &[]).unwrap();
        let ws: Vec<FeatureWindow> = data.into_iter().take(2000).map(|(w, _)| w).collect();
        assert_eq!(ws.len(), 2000);
        let x = windows_to_matrix(&ws);
        let scaler = Scaler::from_stats(&ScalerStats::from_rows(x.view()).unwrap()).unwrap();
        let z = scaler.transform(x.view()).unwrap();
        let mut model = Autoencoder::new_random(
            ModelSpec::default_for_features(),
            &mut ChaCha8Rng::seed_from_u64(5),
        )
        .unwrap();
        let cfg = TrainConfig {
            patience: 0,
            ..TrainConfig::default()
        };
        let t = std::time::Instant::now();
        let report = model.train(z.view(), &cfg, None).unwrap();
        println!("2000 windows x 5 epochs: {:?} ({report:?})", t.elapsed());
        assert_eq!(report.epochs_run, 5);
        assert!(report.val_loss < 1.0);
    }

    #[test]
    fn same_seed_same_trained_parameters() {
        let (a, _, _) = train_detector(21, 12);
        let (b, _, _) = train_detector(21, 12);
        assert_eq!(a.model.to_flat(), b.model.to_flat());
        assert_eq!(a.scaler, b.scaler);
        assert_eq!(a.threshold, b.threshold);
    }

    /// Trained on benign windows of all four profiles; evaluated on held-out
    /// windows (different seed, so different containers' base levels) with
    /// every attack kind injected into every profile.
    #[test]
    fn detects_attacks_on_held_out_windows() {
        let (det, took, n_train) = train_detector(100, 130);
        println!("trained on {n_train} windows in {took:?}");
        let fl = fleet(2);
        let mut attacks = Vec::new();
        for (ci, (id, _)) in fl.iter().enumerate() {
            // Two attacks per container, rotating through the kinds.
            for j in 0..2 {
                let kind = AttackKind::ALL[(ci * 2 + j) % AttackKind::ALL.len()];
                attacks.push((id.clone(), kind, 10 + j as u64 * 30, 12));
            }
        }
        let test = labelled_windows(200, &fl, 60, 10_000, &attacks).unwrap();
        let ws: Vec<FeatureWindow> = test.iter().map(|(w, _)| w.clone()).collect();
        let scores: Vec<f32> = det
            .score_windows(&ws)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        let labels: Vec<bool> = test.iter().map(|(_, l)| l.is_some()).collect();
        let overall = roc_auc(&scores, &labels).unwrap();
        let pr = precision_recall(&scores, &labels, det.threshold).unwrap();
        println!(
            "overall AUC {overall:.4}; at threshold {:.4}: {pr:?}",
            det.threshold
        );
        let mut min_kind = f32::INFINITY;
        for kind in AttackKind::ALL {
            let (s, l): (Vec<f32>, Vec<bool>) = test
                .iter()
                .zip(&scores)
                .filter(|((_, lab), _)| lab.is_none() || *lab == Some(kind))
                .map(|((_, lab), s)| (*s, lab.is_some()))
                .unzip();
            let auc = roc_auc(&s, &l).unwrap();
            println!(
                "AUC {kind}: {auc:.4} ({} attacked windows)",
                l.iter().filter(|v| **v).count()
            );
            min_kind = min_kind.min(auc);
        }
        assert!(overall >= 0.9, "overall AUC {overall}");
        assert!(min_kind >= 0.75, "weakest per-kind AUC {min_kind}");
    }
}
