//! A linear baseline detector (PCA reconstruction error, fitted by
//! `linfa-reduction`) over the same standardized 22-feature windows as the
//! autoencoder [`fedmesh_node::detection::detector::Detector`], with the same interface shape
//! (fit on benign windows, score windows, calibrate a threshold), so the two
//! can be compared on the same data (e.g. with [`fedmesh_node::sim::metrics::roc_auc`]).
//!
//! Fit: a [`Scaler`] from the benign windows, then PCA on the standardized
//! rows, keeping the fewest leading components that explain
//! [`PcaConfig::variance`] of the variance (at most `NUM_FEATURES - 1`, so
//! there is always a residual). Score: mean squared distance of a
//! standardized window `z` from the principal subspace,
//! `‖z − ẑ‖² / NUM_FEATURES`, where `ẑ` is linfa's projection followed by
//! its `inverse_transform`. The threshold is [`calibrate_threshold`] over benign scores, as for
//! the autoencoder.

use linfa::Dataset;
use linfa::traits::{Fit, Predict};
use linfa_reduction::Pca;
use ndarray::Array2;

use fedmesh_node::detection::detector::{DetectorError, calibrate_threshold, windows_to_matrix};
use fedmesh_node::detection::features::{FeatureWindow, NUM_FEATURES, schema_scaler};
use fedmesh_node::detection::scaler::{Scaler, ScalerError, ScalerStats};

/// Errors of the baseline detector.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// Too few benign windows to fit.
    #[error("need at least {need} benign windows to fit, got {have}")]
    NotEnoughData {
        /// Windows given.
        have: usize,
        /// Windows needed.
        need: usize,
    },
    /// The explained-variance target is outside (0, 1].
    #[error("explained variance target {0} outside (0, 1]")]
    Variance(f64),
    /// Scaler failure (non-finite values).
    #[error(transparent)]
    Scaler(#[from] ScalerError),
    /// linfa's PCA failed.
    #[error("PCA: {0}")]
    Pca(String),
    /// Threshold calibration failed.
    #[error(transparent)]
    Calibrate(#[from] DetectorError),
}

/// Fitting parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcaConfig {
    /// Fraction of the standardized variance the kept components explain.
    pub variance: f64,
    /// Target false-alarm rate of the calibrated threshold.
    pub false_alarm_rate: f32,
}

impl Default for PcaConfig {
    fn default() -> Self {
        Self {
            variance: 0.95,
            false_alarm_rate: 0.01,
        }
    }
}

/// Fewest benign windows [`PcaDetector::fit`] accepts.
pub const MIN_FIT_WINDOWS: usize = 2 * NUM_FEATURES;

/// PCA reconstruction-error detector.
#[derive(Debug, Clone)]
pub struct PcaDetector {
    scaler: Scaler,
    pca: Pca<f64>,
    components: usize,
    /// Scores strictly above this are anomalous.
    pub threshold: f32,
}

fn to_f64(x: &Array2<f32>) -> Array2<f64> {
    x.mapv(f64::from)
}

impl PcaDetector {
    /// Fits scaler and PCA on benign windows and calibrates the threshold on
    /// the same windows' scores (callers with a held-out benign split call
    /// [`PcaDetector::calibrate`] afterwards).
    pub fn fit(benign: &[FeatureWindow], cfg: &PcaConfig) -> Result<Self, BaselineError> {
        let x = windows_to_matrix(benign);
        Self::fit_matrix(&x, cfg)
    }

    /// [`PcaDetector::fit`] on an `n × NUM_FEATURES` matrix of raw features.
    pub fn fit_matrix(x: &Array2<f32>, cfg: &PcaConfig) -> Result<Self, BaselineError> {
        if !(cfg.variance > 0.0 && cfg.variance <= 1.0) {
            return Err(BaselineError::Variance(cfg.variance));
        }
        if x.nrows() < MIN_FIT_WINDOWS {
            return Err(BaselineError::NotEnoughData {
                have: x.nrows(),
                need: MIN_FIT_WINDOWS,
            });
        }
        if x.ncols() != NUM_FEATURES {
            return Err(ScalerError::Dim {
                expected: NUM_FEATURES,
                got: x.ncols(),
            }
            .into());
        }
        // The same per-feature floors as the autoencoder's scaler.
        let scaler = schema_scaler(Scaler::from_stats(&ScalerStats::from_rows(x.view())?)?);
        let z = to_f64(&scaler.transform(x.view())?);
        let data = Dataset::from(z.clone());
        let full = Pca::params(NUM_FEATURES - 1)
            .fit(&data)
            .map_err(|e| BaselineError::Pca(e.to_string()))?;
        // Fraction of the total variance (not only of the kept components').
        let total: f64 = (&z - full.mean()).mapv(|v| v * v).sum();
        let mut components = NUM_FEATURES - 1;
        if total > 0.0 {
            let mut cum = 0.0;
            for (i, s) in full.singular_values().iter().enumerate() {
                cum += s * s / total;
                if cum >= cfg.variance {
                    components = i + 1;
                    break;
                }
            }
        }
        let components = components.clamp(1, NUM_FEATURES - 1);
        let pca = Pca::params(components)
            .fit(&data)
            .map_err(|e| BaselineError::Pca(e.to_string()))?;
        let mut det = Self {
            scaler,
            pca,
            components,
            threshold: f32::MAX,
        };
        let scores = det.score_matrix(&z);
        det.threshold = calibrate_threshold(&scores, cfg.false_alarm_rate)?;
        Ok(det)
    }

    /// Principal components kept.
    pub fn components(&self) -> usize {
        self.components
    }

    /// The feature scaler fitted on the benign windows.
    pub fn scaler(&self) -> &Scaler {
        &self.scaler
    }

    fn score_matrix(&self, z: &Array2<f64>) -> Vec<f32> {
        let proj: Array2<f64> = self.pca.predict(z);
        let back = self.pca.inverse_transform(proj);
        z.rows()
            .into_iter()
            .zip(back.rows())
            .map(|(row, r)| {
                let err: f64 = row.iter().zip(r).map(|(v, w)| (v - w) * (v - w)).sum();
                (err / NUM_FEATURES as f64) as f32
            })
            .collect()
    }

    /// One score per window (same order); higher is more anomalous.
    pub fn score_windows(&self, windows: &[FeatureWindow]) -> Result<Vec<f32>, BaselineError> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let x = windows_to_matrix(windows);
        let z = to_f64(&self.scaler.transform(x.view())?);
        Ok(self.score_matrix(&z))
    }

    /// Sets the threshold to the `(1 - false_alarm_rate)` quantile of the
    /// scores of `benign` windows and returns it.
    pub fn calibrate(
        &mut self,
        benign: &[FeatureWindow],
        false_alarm_rate: f32,
    ) -> Result<f32, BaselineError> {
        let scores = self.score_windows(benign)?;
        self.threshold = calibrate_threshold(&scores, false_alarm_rate)?;
        Ok(self.threshold)
    }

    /// Whether a score raises an alert (`score > threshold`).
    pub fn is_anomalous(&self, score: f32) -> bool {
        score > self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_node::detection::features::idx;
    use fedmesh_node::sim::metrics::roc_auc;
    use fedmesh_node::sim::synthetic::{AttackKind, Profile, labelled_windows};
    use fedmesh_node::telemetry::ContainerId;

    fn fleet(per_profile: usize) -> Vec<(String, Profile)> {
        let mut v = Vec::new();
        for p in Profile::ALL {
            for i in 0..per_profile {
                v.push((format!("{p}-{i}"), p));
            }
        }
        v
    }

    fn benign(seed: u64, windows: u64) -> Vec<FeatureWindow> {
        labelled_windows(seed, &fleet(3), windows, 10_000, &[])
            .unwrap()
            .into_iter()
            .map(|(w, _)| w)
            .collect()
    }

    #[test]
    fn separates_obvious_anomalies() {
        let train = benign(7, 40);
        let det = PcaDetector::fit(&train, &PcaConfig::default()).unwrap();
        assert!(det.components() >= 1 && det.components() < NUM_FEATURES);
        let held = benign(8, 20);
        let mut odd = held[..10].to_vec();
        for w in &mut odd {
            w.features[idx::CPU_CORES] += 8.0;
            w.features[idx::ESCAPE] += 3.0;
            w.features[idx::NEW_DST_IPS] += 4.0;
        }
        let normal = det.score_windows(&held).unwrap();
        let anomalous = det.score_windows(&odd).unwrap();
        let max_normal = normal.iter().copied().fold(0.0f32, f32::max);
        let min_odd = anomalous.iter().copied().fold(f32::MAX, f32::min);
        assert!(min_odd > max_normal, "{min_odd} <= {max_normal}");
        assert!(anomalous.iter().all(|s| det.is_anomalous(*s)));
        let held_alarms = normal.iter().filter(|s| det.is_anomalous(**s)).count();
        assert!(held_alarms * 10 < held.len(), "{held_alarms} false alarms");
    }

    #[test]
    fn detects_synthetic_attacks_better_than_chance() {
        let det = PcaDetector::fit(&benign(11, 60), &PcaConfig::default()).unwrap();
        let fl = fleet(1);
        let attacks: Vec<_> = AttackKind::ALL
            .iter()
            .enumerate()
            .map(|(i, k)| (fl[i % fl.len()].0.clone(), *k, 20, 20))
            .collect();
        let test = labelled_windows(12, &fl, 40, 10_000, &attacks).unwrap();
        let ws: Vec<FeatureWindow> = test.iter().map(|(w, _)| w.clone()).collect();
        let labels: Vec<bool> = test.iter().map(|(_, l)| l.is_some()).collect();
        let scores = det.score_windows(&ws).unwrap();
        let auc = roc_auc(&scores, &labels).unwrap();
        assert!(auc > 0.8, "AUC {auc}");
    }

    #[test]
    fn calibration_moves_the_threshold() {
        let train = benign(3, 30);
        let mut det = PcaDetector::fit(&train, &PcaConfig::default()).unwrap();
        let strict = det.calibrate(&train, 0.01).unwrap();
        let loose = det.calibrate(&train, 0.5).unwrap();
        assert!(loose <= strict);
        assert_eq!(det.threshold, loose);
    }

    #[test]
    fn bad_input_is_an_error() {
        let few = benign(1, 3);
        assert!(matches!(
            PcaDetector::fit(&few[..5], &PcaConfig::default()),
            Err(BaselineError::NotEnoughData { have: 5, .. })
        ));
        let train = benign(1, 30);
        let bad_cfg = PcaConfig {
            variance: 1.5,
            ..PcaConfig::default()
        };
        assert!(matches!(
            PcaDetector::fit(&train, &bad_cfg),
            Err(BaselineError::Variance(_))
        ));
        let det = PcaDetector::fit(&train, &PcaConfig::default()).unwrap();
        let mut nan = FeatureWindow {
            container: ContainerId("x".into()),
            start_ms: 0,
            end_ms: 1,
            features: [0.0; NUM_FEATURES],
            restarted: false,
        };
        nan.features[4] = f32::NAN;
        assert!(det.score_windows(&[nan]).is_err());
        assert!(det.score_windows(&[]).unwrap().is_empty());
        let mut with_nan = train.clone();
        with_nan[0].features[0] = f32::INFINITY;
        assert!(PcaDetector::fit(&with_nan, &PcaConfig::default()).is_err());
    }

    #[test]
    fn same_data_same_detector() {
        let train = benign(5, 30);
        let a = PcaDetector::fit(&train, &PcaConfig::default()).unwrap();
        let b = PcaDetector::fit(&train, &PcaConfig::default()).unwrap();
        assert_eq!(a.threshold, b.threshold);
        assert_eq!(
            a.score_windows(&train).unwrap(),
            b.score_windows(&train).unwrap()
        );
    }
}
