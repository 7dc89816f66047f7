//! `fedmesh-sim aggregate`: replays a recorded batch of updates (`N × P`
//! float32 `.npy`) through any coordinator rule, offline.

use std::path::Path;
use std::time::{Duration, Instant};

use fedmesh_coordinator::aggregate::{Aggregate, AggregateError, Rule, RuleConfig};
use serde::Serialize;

use crate::npy::{self, Matrix, NpyError};

/// Replay failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A `.npy` file was refused.
    #[error("{path}: {source}")]
    Npy {
        /// File.
        path: String,
        /// Cause.
        source: NpyError,
    },
    /// The rule was refused or failed.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// The rule name or its parameters are wrong.
    #[error("{0}")]
    Rule(String),
    /// Weights do not match the batch.
    #[error("{weights} weights for {n} updates")]
    Weights {
        /// Weights given.
        weights: usize,
        /// Updates.
        n: usize,
    },
}

/// Rule parameters as given on the command line (`--f`, `--m`, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleArgs {
    /// Rule name as in the coordinator config (`fedavg`, `median`,
    /// `trimmed_mean`, `krum`, `multi_krum`, `bulyan`, `geometric_median`,
    /// `centered_clipping`).
    pub rule: String,
    /// Byzantine clients tolerated (Krum, Multi-Krum, Bulyan).
    pub f: Option<usize>,
    /// Values trimmed at each end (trimmed mean).
    pub trim: Option<usize>,
    /// Updates averaged by Multi-Krum.
    pub m: Option<usize>,
    /// Centered-clipping radius.
    pub tau: Option<f64>,
    /// Iterations (geometric median, centered clipping).
    pub iters: Option<usize>,
    /// Weiszfeld smoothing.
    pub nu: Option<f64>,
    /// Norm bound applied before the rule.
    pub max_norm: Option<f32>,
}

impl RuleArgs {
    /// The coordinator's [`RuleConfig`], refusing missing or extra
    /// parameters for the named rule.
    pub fn to_config(&self) -> Result<RuleConfig, ReplayError> {
        let need = |v: Option<usize>, flag: &str| {
            v.ok_or_else(|| ReplayError::Rule(format!("rule {} needs --{flag}", self.rule)))
        };
        let mut used: Vec<&str> = Vec::new();
        let rule = match self.rule.as_str() {
            "fedavg" => Rule::FedAvg,
            "median" => Rule::Median,
            "trimmed_mean" => {
                used.push("trim");
                Rule::TrimmedMean {
                    f: need(self.trim.or(self.f), "trim")?,
                }
            }
            "krum" => {
                used.push("f");
                Rule::Krum {
                    f: need(self.f, "f")?,
                }
            }
            "multi_krum" => {
                used.extend(["f", "m"]);
                Rule::MultiKrum {
                    f: need(self.f, "f")?,
                    m: need(self.m, "m")?,
                }
            }
            "bulyan" => {
                used.push("f");
                Rule::Bulyan {
                    f: need(self.f, "f")?,
                }
            }
            "geometric_median" => {
                used.extend(["iters", "nu"]);
                Rule::GeometricMedian {
                    iterations: self.iters.unwrap_or(8),
                    nu: self.nu.unwrap_or(0.1),
                }
            }
            "centered_clipping" => {
                used.extend(["tau", "iters"]);
                Rule::CenteredClipping {
                    tau: self.tau.ok_or_else(|| {
                        ReplayError::Rule("rule centered_clipping needs --tau".into())
                    })?,
                    iterations: self.iters.unwrap_or(1),
                }
            }
            other => {
                return Err(ReplayError::Rule(format!(
                    "unknown rule {other:?} (expected fedavg, median, trimmed_mean, krum, \
                     multi_krum, bulyan, geometric_median or centered_clipping)"
                )));
            }
        };
        let given = [
            ("f", self.f.is_some() && self.rule != "trimmed_mean"),
            ("trim", self.trim.is_some()),
            ("m", self.m.is_some()),
            ("tau", self.tau.is_some()),
            ("iters", self.iters.is_some()),
            ("nu", self.nu.is_some()),
        ];
        for (flag, set) in given {
            if set && !used.contains(&flag) {
                return Err(ReplayError::Rule(format!(
                    "--{flag} does not apply to rule {}",
                    self.rule
                )));
            }
        }
        Ok(RuleConfig {
            rule,
            max_norm: self.max_norm,
        })
    }
}

/// What one replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// Rule name.
    pub rule: String,
    /// Updates.
    pub n: usize,
    /// Parameters per update.
    pub p: usize,
    /// Batch indices that contributed (the selection for Krum-type rules).
    pub selected: Vec<usize>,
    /// Aggregation time in milliseconds (reading and writing excluded).
    pub ms: f64,
    /// Time to read and check the batch (and weights), milliseconds.
    pub read_ms: f64,
    /// Time to write the aggregate, milliseconds.
    pub write_ms: f64,
    /// Peak resident memory of this process so far (`VmHWM`), bytes,
    /// where readable.
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident memory of this process (`VmHWM`), bytes, where readable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Aggregates a batch with a rule; returns the result and the time the rule
/// took.
pub fn aggregate_batch(
    batch: &Matrix,
    weights: Option<&[f64]>,
    cfg: &RuleConfig,
) -> Result<(Aggregate, Duration), ReplayError> {
    let rows = batch.row_slices();
    let ones;
    let w = match weights {
        Some(w) => {
            if w.len() != batch.rows {
                return Err(ReplayError::Weights {
                    weights: w.len(),
                    n: batch.rows,
                });
            }
            w
        }
        None => {
            ones = vec![1.0; batch.rows];
            &ones
        }
    };
    let t = Instant::now();
    let agg = cfg.aggregate(&rows, w)?;
    Ok((agg, t.elapsed()))
}

/// Reads `input` (and `weights`), aggregates, writes the result vector to
/// `output` as `.npy`.
pub fn replay_files(
    input: &Path,
    weights: Option<&Path>,
    output: &Path,
    cfg: &RuleConfig,
) -> Result<ReplayReport, ReplayError> {
    let npy_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| ReplayError::Npy { path, source }
    };
    let t = Instant::now();
    let batch = npy::read_matrix(input).map_err(npy_err(input))?;
    let w = weights
        .map(|p| npy::read_vector(p).map_err(npy_err(p)))
        .transpose()?;
    let read = t.elapsed();
    let (agg, took) = aggregate_batch(&batch, w.as_deref(), cfg)?;
    let t = Instant::now();
    npy::write(output, &npy::encode_vector(&agg.value)).map_err(npy_err(output))?;
    let write = t.elapsed();
    Ok(ReplayReport {
        rule: cfg.rule.name().to_string(),
        n: batch.rows,
        p: batch.cols,
        selected: agg.selected,
        ms: took.as_secs_f64() * 1e3,
        read_ms: read.as_secs_f64() * 1e3,
        write_ms: write.as_secs_f64() * 1e3,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_memory_is_read_from_proc() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(super::peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }

    use super::*;

    fn args(rule: &str) -> RuleArgs {
        RuleArgs {
            rule: rule.into(),
            ..RuleArgs::default()
        }
    }

    #[test]
    fn rule_args_map_to_configs_and_refuse_misfits() {
        let cfg = RuleArgs {
            f: Some(2),
            ..args("krum")
        }
        .to_config()
        .unwrap();
        assert_eq!(cfg.rule, Rule::Krum { f: 2 });
        let cfg = RuleArgs {
            trim: Some(3),
            ..args("trimmed_mean")
        }
        .to_config()
        .unwrap();
        assert_eq!(cfg.rule, Rule::TrimmedMean { f: 3 });
        assert_eq!(
            args("krum").to_config().unwrap_err().to_string(),
            "rule krum needs --f"
        );
        assert_eq!(
            RuleArgs {
                tau: Some(1.0),
                ..args("median")
            }
            .to_config()
            .unwrap_err()
            .to_string(),
            "--tau does not apply to rule median"
        );
        assert!(args("krum2").to_config().is_err());
    }

    #[test]
    fn replays_files_and_checks_weights() {
        let dir = tempfile::tempdir().unwrap();
        let m = Matrix {
            rows: 3,
            cols: 2,
            data: vec![1.0, 10.0, 2.0, 20.0, 30.0, 0.0],
        };
        let input = dir.path().join("in.npy");
        let out = dir.path().join("out.npy");
        npy::write(&input, &npy::encode_matrix(&m)).unwrap();
        let r = replay_files(&input, None, &out, &args("median").to_config().unwrap()).unwrap();
        assert_eq!((r.n, r.p), (3, 2));
        let v = npy::read_vector(&out).unwrap();
        assert_eq!(v, vec![2.0, 10.0]);
        let wpath = dir.path().join("w.npy");
        npy::write(&wpath, &npy::encode_vector(&[1.0, 1.0])).unwrap();
        let e = replay_files(
            &input,
            Some(&wpath),
            &out,
            &args("fedavg").to_config().unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "2 weights for 3 updates");
        let e = replay_files(
            &dir.path().join("missing.npy"),
            None,
            &out,
            &args("fedavg").to_config().unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing.npy"), "{e}");
    }
}
