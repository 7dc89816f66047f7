//! Bounds on every numeric field a node sends, and on a model before the
//! coordinator signs it: pure checks with typed reasons.
//!
//! An update is refused (never clamped) when a field is out of bounds: the
//! refusal is attributable evidence against its sender (reputation), while a
//! silently clamped value would hide the attempt and still give the sender
//! the largest share the clamp allows.
//!
//! | field | accepted |
//! |---|---|
//! | `num_samples` | `1 ..= max_samples_per_update` (tenant setting, default 1 000 000) |
//! | `train_loss` | finite, `0 ..= MAX_TRAIN_LOSS` (10⁶) |
//! | `delta` | the model's shape, finite, L2 norm ≤ `max_update_norm` |
//! | `scaler_stats.count` | `1 ..= max_samples_per_update` |
//! | `scaler_stats.sum`, `sum_sq` | `input_dim` finite values each, `sum_sq ≥ 0`, per feature \|sum/count\| ≤ 10⁹, sum_sq/count ≤ 10¹⁸, variance ≥ −10⁻⁶·(mean square) |
//!
//! The merged scaler mean is a count-weighted average of the per-node
//! means and the merged mean square one of the per-node mean squares, so
//! with these bounds it stays within ±10⁹ and its standard deviation below
//! 10⁹: far inside f32 (±3.4·10³⁸), so merging cannot overflow. Before a
//! version is signed, [`check_model`] checks the new parameters (finite,
//! |w| ≤ `max_param_abs`), the momentum buffer (finite) and the scaler
//! (finite, within the bounds above) again, whatever path produced them.

use std::fmt;

use fedmesh_crypto::secagg::SecAggError;
use fedmesh_proto::v1;
use serde::{Deserialize, Serialize};

/// Largest accepted training loss. The autoencoder's reconstruction loss
/// on standardised features is O(1); 10⁶ leaves room for a diverged but
/// honest node while keeping the round's mean loss finite in f32.
pub const MAX_TRAIN_LOSS: f32 = 1e6;

/// Largest accepted |mean| of a scaler feature (sum / count).
pub const MAX_SCALER_ABS_MEAN: f64 = 1e9;

/// Largest accepted mean square of a scaler feature (sum_sq / count), so
/// the standard deviation stays below 10⁹.
pub const MAX_SCALER_MEAN_SQUARE: f64 = 1e18;

/// Relative tolerance on a negative variance (`sum_sq/count − mean²`),
/// which f64 rounding can produce for a constant feature.
pub const VARIANCE_TOLERANCE: f64 = 1e-6;

/// Default of a tenant's `max_samples_per_update`.
pub const DEFAULT_MAX_SAMPLES_PER_UPDATE: u64 = 1_000_000;

/// Default of a tenant's `max_param_abs`.
pub const DEFAULT_MAX_PARAM_ABS: f32 = 1e6;

/// Longest text of a refusal sent to a client or written to a log line or
/// an audit entry, in bytes.
pub const MAX_REFUSAL_TEXT: usize = 512;

/// `text` cut to at most `max` bytes at a character boundary, with `…`
/// appended when something was cut (so the result is at most `max + 3`
/// bytes).
pub fn truncate_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// Free text bounded to [`MAX_REFUSAL_TEXT`] bytes when built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedText(String);

impl BoundedText {
    /// `text`, truncated to [`MAX_REFUSAL_TEXT`] bytes.
    pub fn new(text: &str) -> Self {
        Self(truncate_text(text, MAX_REFUSAL_TEXT).into_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BoundedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a scaler statistic of an update is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalerProblem {
    /// `sum` or `sum_sq` does not have one value per feature.
    #[error(
        "scaler_stats has {sum} sums and {sum_sq} sums of squares, the model has {dim} features"
    )]
    Width {
        /// Sums sent.
        sum: usize,
        /// Sums of squares sent.
        sum_sq: usize,
        /// Features of the model.
        dim: usize,
    },
    /// `count` is 0 or above the tenant's cap.
    #[error("scaler_stats count {count} is not in 1..={max}")]
    Count {
        /// Count sent.
        count: u64,
        /// The cap (`max_samples_per_update`).
        max: u64,
    },
    /// A sum or sum of squares is NaN or infinite.
    #[error("scaler_stats value of feature {feature} is not finite")]
    NonFinite {
        /// Feature index.
        feature: usize,
    },
    /// A sum of squares is negative.
    #[error("scaler_stats sum of squares of feature {feature} is negative")]
    NegativeSumSq {
        /// Feature index.
        feature: usize,
    },
    /// |sum / count| is above [`MAX_SCALER_ABS_MEAN`].
    #[error("scaler_stats mean of feature {feature} is outside ±{MAX_SCALER_ABS_MEAN:e}")]
    Mean {
        /// Feature index.
        feature: usize,
    },
    /// sum_sq / count is above [`MAX_SCALER_MEAN_SQUARE`].
    #[error("scaler_stats mean square of feature {feature} is above {MAX_SCALER_MEAN_SQUARE:e}")]
    MeanSquare {
        /// Feature index.
        feature: usize,
    },
    /// The implied variance is negative beyond rounding.
    #[error("scaler_stats of feature {feature} imply a negative variance")]
    Variance {
        /// Feature index.
        feature: usize,
    },
}

/// Why an update or another node request is refused: a closed set, each
/// with a metric label ([`InvalidReason::label`]) and a bounded message
/// (a few hundred bytes at most, whatever the request's size).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReason {
    /// The node extracts another feature schema than the federation's.
    #[error("node extracts feature schema {node}, this federation uses {expected}")]
    FeatureSchema {
        /// First bytes of the node's digest, hex.
        node: String,
        /// First bytes of the federation's digest, hex.
        expected: String,
    },
    /// The update's model schema hash is not the federation's.
    #[error("schema hash does not match the federation's model")]
    SchemaHash,
    /// The update has no delta tensor.
    #[error("missing delta")]
    MissingDelta,
    /// The delta tensor does not decode (dtype, size, length, NaN).
    #[error("{0}")]
    Tensor(fedmesh_proto::TensorError),
    /// The delta has another shape than the model.
    #[error("delta has shape {got}, the model needs [{expected}]")]
    Shape {
        /// Summary of the shape sent.
        got: fedmesh_proto::ShapeSummary,
        /// Parameters of the model.
        expected: usize,
    },
    /// The delta's L2 norm is above `max_update_norm`.
    #[error("delta norm {norm:.3} exceeds the bound {bound}")]
    Norm {
        /// Norm of the delta.
        norm: f64,
        /// The tenant's bound.
        bound: f32,
    },
    /// `num_samples` is 0 or above `max_samples_per_update`.
    #[error("num_samples {got} is not in 1..={max}")]
    NumSamples {
        /// Samples claimed.
        got: u64,
        /// The tenant's cap.
        max: u64,
    },
    /// `train_loss` is not finite or outside `0..=MAX_TRAIN_LOSS`.
    #[error("train_loss {got} is not a number in [0, {MAX_TRAIN_LOSS:e}]")]
    TrainLoss {
        /// Loss sent.
        got: f32,
    },
    /// The scaler statistics are out of bounds.
    #[error("{0}")]
    Scaler(ScalerProblem),
    /// A secure-aggregation message broke the protocol.
    #[error("{detail}")]
    SecureProtocol {
        /// What kind of violation.
        kind: SecureViolation,
        /// The secure-aggregation layer's description, bounded.
        detail: BoundedText,
    },
    /// The federation's own configuration is unusable (at start-up).
    #[error("configuration: {0}")]
    Config(&'static str),
}

impl InvalidReason {
    /// Every metric label this type can produce.
    pub const LABELS: &'static [&'static str] = &[
        "invalid_feature_schema",
        "invalid_schema_hash",
        "invalid_missing_delta",
        "invalid_tensor",
        "invalid_shape",
        "invalid_norm",
        "invalid_num_samples",
        "invalid_train_loss",
        "invalid_scaler",
        "invalid_secure_message",
        "invalid_config",
    ];

    /// The metric label of this reason (one of [`InvalidReason::LABELS`]).
    pub fn label(&self) -> &'static str {
        match self {
            InvalidReason::FeatureSchema { .. } => "invalid_feature_schema",
            InvalidReason::SchemaHash => "invalid_schema_hash",
            InvalidReason::MissingDelta => "invalid_missing_delta",
            InvalidReason::Tensor(_) => "invalid_tensor",
            InvalidReason::Shape { .. } => "invalid_shape",
            InvalidReason::Norm { .. } => "invalid_norm",
            InvalidReason::NumSamples { .. } => "invalid_num_samples",
            InvalidReason::TrainLoss { .. } => "invalid_train_loss",
            InvalidReason::Scaler(_) => "invalid_scaler",
            InvalidReason::SecureProtocol { .. } => "invalid_secure_message",
            InvalidReason::Config(_) => "invalid_config",
        }
    }

    /// A secure-aggregation protocol violation of `kind`, described by
    /// `detail` (truncated to [`MAX_REFUSAL_TEXT`] bytes).
    pub fn secure_protocol(kind: SecureViolation, detail: &str) -> Self {
        InvalidReason::SecureProtocol {
            kind,
            detail: BoundedText::new(detail),
        }
    }

    /// The refusal of a secure-aggregation message the protocol layer
    /// rejected with `e`.
    pub fn secure_message(e: &SecAggError) -> Self {
        Self::secure_protocol(SecureViolation::of(e), &e.to_string())
    }
}

/// The kinds of secure-aggregation protocol violation a member can commit
/// (a closed set: callers and tests tell them apart without parsing text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureViolation {
    /// The request names another bucket than the sender's.
    WrongBucket,
    /// The request carries no message.
    EmptyRequest,
    /// The message names another node than the sender's certificate.
    ClaimsOtherNode,
    /// The message's bytes do not decode.
    Decode,
    /// A signature does not verify, or is another member's.
    Signature,
    /// The message is bound to another tenant, round, bucket or member set.
    Binding,
    /// Shares that do not decrypt, name the wrong owners, or disagree with
    /// the owner's signed commitments.
    Share,
    /// A key that is not contributory (a low-order X25519 point).
    WeakKey,
    /// A masked input or request asking for both secrets of one member.
    Message,
}

impl SecureViolation {
    /// The kind of the protocol layer's refusal `e`.
    pub fn of(e: &SecAggError) -> Self {
        match e {
            SecAggError::Decode { .. } => SecureViolation::Decode,
            SecAggError::Signature { .. } | SecAggError::WrongSigner { .. } => {
                SecureViolation::Signature
            }
            SecAggError::Binding(_) => SecureViolation::Binding,
            SecAggError::ShareDecrypt { .. }
            | SecAggError::Sharing(_)
            | SecAggError::Reconstruction { .. } => SecureViolation::Share,
            SecAggError::WeakKey(_) => SecureViolation::WeakKey,
            _ => SecureViolation::Message,
        }
    }

    /// A short name (for logs and test summaries).
    pub fn name(self) -> &'static str {
        match self {
            SecureViolation::WrongBucket => "wrong_bucket",
            SecureViolation::EmptyRequest => "empty_request",
            SecureViolation::ClaimsOtherNode => "claims_other_node",
            SecureViolation::Decode => "decode",
            SecureViolation::Signature => "signature",
            SecureViolation::Binding => "binding",
            SecureViolation::Share => "share",
            SecureViolation::WeakKey => "weak_key",
            SecureViolation::Message => "message",
        }
    }
}

/// Checks a claimed sample count: `1 ..= max`.
pub fn check_num_samples(got: u64, max: u64) -> Result<(), InvalidReason> {
    if (1..=max).contains(&got) {
        Ok(())
    } else {
        Err(InvalidReason::NumSamples { got, max })
    }
}

/// Checks a reported training loss: finite, `0 ..= MAX_TRAIN_LOSS`.
pub fn check_train_loss(got: f32) -> Result<(), InvalidReason> {
    if got.is_finite() && (0.0..=MAX_TRAIN_LOSS).contains(&got) {
        Ok(())
    } else {
        Err(InvalidReason::TrainLoss { got })
    }
}

/// Checks a node's scaler statistics for a model of `dim` features: widths,
/// `count` in `1 ..= max_count`, and per feature finite values, `sum_sq ≥
/// 0`, |mean| ≤ [`MAX_SCALER_ABS_MEAN`], mean square ≤
/// [`MAX_SCALER_MEAN_SQUARE`] and a variance that is not negative beyond
/// [`VARIANCE_TOLERANCE`] (relative to the mean square).
pub fn check_scaler_stats(
    s: &v1::ScalerStats,
    dim: usize,
    max_count: u64,
) -> Result<(), ScalerProblem> {
    if s.sum.len() != dim || s.sum_sq.len() != dim {
        return Err(ScalerProblem::Width {
            sum: s.sum.len(),
            sum_sq: s.sum_sq.len(),
            dim,
        });
    }
    if !(1..=max_count).contains(&s.count) {
        return Err(ScalerProblem::Count {
            count: s.count,
            max: max_count,
        });
    }
    let n = s.count as f64;
    for (feature, (&sum, &sq)) in s.sum.iter().zip(&s.sum_sq).enumerate() {
        if !sum.is_finite() || !sq.is_finite() {
            return Err(ScalerProblem::NonFinite { feature });
        }
        if sq < 0.0 {
            return Err(ScalerProblem::NegativeSumSq { feature });
        }
        let mean = sum / n;
        let mean_sq = sq / n;
        if mean.abs() > MAX_SCALER_ABS_MEAN {
            return Err(ScalerProblem::Mean { feature });
        }
        if mean_sq > MAX_SCALER_MEAN_SQUARE {
            return Err(ScalerProblem::MeanSquare { feature });
        }
        if mean_sq - mean * mean < -VARIANCE_TOLERANCE * mean_sq.max(f64::MIN_POSITIVE) {
            return Err(ScalerProblem::Variance { feature });
        }
    }
    Ok(())
}

/// Why a new version is not signed: the aggregate would not be a usable
/// model. A closed set with metric labels ([`CommitRefusal::label`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitRefusal {
    /// A new parameter is NaN or infinite.
    #[error("new parameter {index} is not finite")]
    NonFiniteParams {
        /// First bad index.
        index: usize,
    },
    /// A new parameter's magnitude is above `max_param_abs`.
    #[error("new parameter {index} = {value:e} is outside ±{bound:e}")]
    ParamsOutOfRange {
        /// First bad index.
        index: usize,
        /// Its value.
        value: f32,
        /// The tenant's bound.
        bound: f32,
    },
    /// The server momentum buffer is not finite.
    #[error("server momentum {index} is not finite")]
    NonFiniteMomentum {
        /// First bad index.
        index: usize,
    },
    /// The merged scaler is not finite, has the wrong width or is outside
    /// the scaler bounds.
    #[error("merged scaler {field} of feature {feature} is not finite or out of bounds")]
    Scaler {
        /// `"mean"`, `"std"` or `"width"`.
        field: &'static str,
        /// Feature index.
        feature: usize,
    },
}

impl CommitRefusal {
    /// Every metric label this type can produce.
    pub const LABELS: &'static [&'static str] = &[
        "non_finite_params",
        "params_out_of_range",
        "non_finite_momentum",
        "scaler_out_of_range",
    ];

    /// The metric label of this refusal (one of [`CommitRefusal::LABELS`]).
    pub fn label(&self) -> &'static str {
        match self {
            CommitRefusal::NonFiniteParams { .. } => "non_finite_params",
            CommitRefusal::ParamsOutOfRange { .. } => "params_out_of_range",
            CommitRefusal::NonFiniteMomentum { .. } => "non_finite_momentum",
            CommitRefusal::Scaler { .. } => "scaler_out_of_range",
        }
    }
}

/// The last guard before a version is signed: every parameter finite with
/// |w| ≤ `max_param_abs`, the momentum buffer finite, and the scaler (if
/// any) `dim` wide with finite means within ±[`MAX_SCALER_ABS_MEAN`] and
/// finite, non-negative standard deviations below √[`MAX_SCALER_MEAN_SQUARE`]
/// (both with a 10⁻⁶ relative margin for rounding).
pub fn check_model(
    params: &[f32],
    momentum: Option<&[f32]>,
    scaler: Option<&v1::Scaler>,
    dim: usize,
    max_param_abs: f32,
) -> Result<(), CommitRefusal> {
    if let Some(index) = params.iter().position(|w| !w.is_finite()) {
        return Err(CommitRefusal::NonFiniteParams { index });
    }
    if let Some(index) = params.iter().position(|w| w.abs() > max_param_abs) {
        return Err(CommitRefusal::ParamsOutOfRange {
            index,
            value: params[index],
            bound: max_param_abs,
        });
    }
    if let Some(index) = momentum.and_then(|m| m.iter().position(|v| !v.is_finite())) {
        return Err(CommitRefusal::NonFiniteMomentum { index });
    }
    if let Some(s) = scaler {
        if s.mean.len() != dim || s.std.len() != dim {
            return Err(CommitRefusal::Scaler {
                field: "width",
                feature: s.mean.len().min(s.std.len()),
            });
        }
        let margin = 1.0 + 1e-6;
        let max_mean = MAX_SCALER_ABS_MEAN * margin;
        let max_std = MAX_SCALER_MEAN_SQUARE.sqrt() * margin;
        if let Some(feature) = s
            .mean
            .iter()
            .position(|m| !(m.is_finite() && f64::from(m.abs()) <= max_mean))
        {
            return Err(CommitRefusal::Scaler {
                field: "mean",
                feature,
            });
        }
        if let Some(feature) = s
            .std
            .iter()
            .position(|v| !(v.is_finite() && *v >= 0.0 && f64::from(*v) <= max_std))
        {
            return Err(CommitRefusal::Scaler {
                field: "std",
                feature,
            });
        }
    }
    Ok(())
}

/// A round whose aggregate failed the commit guard: nothing was signed and
/// the version did not advance. Recorded in the next version's audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedCommit {
    /// The aborted round.
    pub round: u64,
    /// Reason label, from [`CommitRefusal::LABELS`].
    pub reason: String,
    /// What was wrong, at most 512 bytes.
    pub detail: String,
    /// When, unix milliseconds.
    pub unix_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_step::merged_scaler;

    fn stats(count: u64, sum: f64, sum_sq: f64) -> v1::ScalerStats {
        v1::ScalerStats {
            count,
            sum: vec![sum],
            sum_sq: vec![sum_sq],
        }
    }

    #[test]
    fn sample_counts_are_capped() {
        assert!(check_num_samples(1, 10).is_ok());
        assert!(check_num_samples(10, 10).is_ok());
        assert_eq!(
            check_num_samples(0, 10),
            Err(InvalidReason::NumSamples { got: 0, max: 10 })
        );
        let huge = check_num_samples(u64::MAX, DEFAULT_MAX_SAMPLES_PER_UPDATE).unwrap_err();
        assert_eq!(huge.label(), "invalid_num_samples");
        assert_eq!(
            huge.to_string(),
            "num_samples 18446744073709551615 is not in 1..=1000000"
        );
    }

    #[test]
    fn losses_are_finite_and_in_range() {
        assert!(check_train_loss(0.0).is_ok());
        assert!(check_train_loss(MAX_TRAIN_LOSS).is_ok());
        for bad in [-0.1, f32::NAN, f32::INFINITY, 2e6] {
            assert!(check_train_loss(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scaler_stats_bounds() {
        let max = 100;
        assert!(check_scaler_stats(&stats(4, 8.0, 20.0), 1, max).is_ok());
        // Constant feature: variance exactly 0, or a rounding hair below.
        assert!(
            check_scaler_stats(&stats(3, 3.0 * 0.1, 3.0 * 0.01 * (1.0 - 1e-12)), 1, max).is_ok()
        );
        let bad = |s: v1::ScalerStats| check_scaler_stats(&s, 1, max).unwrap_err();
        assert!(matches!(
            bad(stats(0, 0.0, 0.0)),
            ScalerProblem::Count { .. }
        ));
        assert!(matches!(
            bad(stats(101, 0.0, 0.0)),
            ScalerProblem::Count { .. }
        ));
        assert!(matches!(
            bad(stats(1, f64::NAN, 0.0)),
            ScalerProblem::NonFinite { feature: 0 }
        ));
        assert!(matches!(
            bad(stats(1, 0.0, -1.0)),
            ScalerProblem::NegativeSumSq { .. }
        ));
        assert!(matches!(
            bad(stats(1, 2e9, 4e18)),
            ScalerProblem::Mean { .. }
        ));
        assert!(matches!(
            bad(stats(1, 0.0, 2e18)),
            ScalerProblem::MeanSquare { .. }
        ));
        assert!(matches!(
            bad(stats(2, 4.0, 1.0)),
            ScalerProblem::Variance { .. }
        ));
        let wide = v1::ScalerStats {
            count: 1,
            sum: vec![0.0; 2],
            sum_sq: vec![0.0],
        };
        assert!(matches!(
            check_scaler_stats(&wide, 2, max),
            Err(ScalerProblem::Width { .. })
        ));
    }

    /// The finding of issue 14: statistics that are finite f64 but whose
    /// merged mean overflows f32 (sum 1e300 over one row) are refused, and
    /// everything the bounds accept merges into a finite scaler.
    #[test]
    fn finite_f64_stats_that_overflow_f32_are_refused() {
        let overflow = stats(1, 1e300, 1e300);
        assert!(overflow.sum[0].is_finite());
        let merged = merged_scaler(std::iter::once(&overflow), 1).unwrap();
        assert!(!merged.mean[0].is_finite(), "the unchecked merge overflows");
        assert!(check_scaler_stats(&overflow, 1, u64::MAX).is_err());
        let edge = stats(
            DEFAULT_MAX_SAMPLES_PER_UPDATE,
            MAX_SCALER_ABS_MEAN * DEFAULT_MAX_SAMPLES_PER_UPDATE as f64,
            MAX_SCALER_MEAN_SQUARE * DEFAULT_MAX_SAMPLES_PER_UPDATE as f64,
        );
        assert!(check_scaler_stats(&edge, 1, DEFAULT_MAX_SAMPLES_PER_UPDATE).is_ok());
        let many = vec![edge; 1000];
        let merged = merged_scaler(many.iter(), 1).unwrap();
        assert!(check_model(&[0.0], None, Some(&merged), 1, 1.0).is_ok());
    }

    #[test]
    fn the_commit_guard_refuses_unusable_models() {
        let ok = v1::Scaler {
            mean: vec![0.5],
            std: vec![1.0],
        };
        assert!(check_model(&[1.0, -1.0], Some(&[0.0, 0.0]), Some(&ok), 1, 10.0).is_ok());
        let r = check_model(&[1.0, f32::NAN], None, None, 1, 10.0).unwrap_err();
        assert_eq!(r, CommitRefusal::NonFiniteParams { index: 1 });
        let r = check_model(&[11.0], None, None, 1, 10.0).unwrap_err();
        assert_eq!(r.label(), "params_out_of_range");
        let r = check_model(&[1.0], Some(&[f32::INFINITY]), None, 1, 10.0).unwrap_err();
        assert_eq!(r.label(), "non_finite_momentum");
        let inf = v1::Scaler {
            mean: vec![f32::INFINITY],
            std: vec![1.0],
        };
        let r = check_model(&[1.0], None, Some(&inf), 1, 10.0).unwrap_err();
        assert_eq!(
            r,
            CommitRefusal::Scaler {
                field: "mean",
                feature: 0
            }
        );
        let narrow = v1::Scaler {
            mean: vec![],
            std: vec![],
        };
        assert!(check_model(&[1.0], None, Some(&narrow), 1, 10.0).is_err());
        for r in [
            CommitRefusal::NonFiniteParams { index: 0 },
            CommitRefusal::NonFiniteMomentum { index: 0 },
            CommitRefusal::ParamsOutOfRange {
                index: 0,
                value: 0.0,
                bound: 0.0,
            },
            CommitRefusal::Scaler {
                field: "std",
                feature: 0,
            },
        ] {
            assert!(CommitRefusal::LABELS.contains(&r.label()));
        }
    }

    #[test]
    fn texts_are_truncated_at_char_boundaries() {
        assert_eq!(truncate_text("abc", 3), "abc");
        assert_eq!(truncate_text("abcd", 3), "abc…");
        // 'é' is two bytes: cutting at 2 would split it.
        assert_eq!(truncate_text("aéb", 2), "a…");
        let long = "ü".repeat(10_000);
        let b = BoundedText::new(&long);
        assert!(b.as_str().len() <= MAX_REFUSAL_TEXT + 3);
        let r = InvalidReason::secure_protocol(SecureViolation::Decode, &long);
        assert!(r.to_string().len() <= MAX_REFUSAL_TEXT + 3);
    }

    #[test]
    fn every_reason_label_is_from_the_closed_set() {
        let reasons = vec![
            InvalidReason::FeatureSchema {
                node: "00".into(),
                expected: "11".into(),
            },
            InvalidReason::SchemaHash,
            InvalidReason::MissingDelta,
            InvalidReason::Tensor(fedmesh_proto::TensorError::NonFinite { index: 0 }),
            InvalidReason::Shape {
                got: fedmesh_proto::ShapeSummary::of(&[1, 2]),
                expected: 3,
            },
            InvalidReason::Norm {
                norm: 1.0,
                bound: 0.5,
            },
            InvalidReason::NumSamples { got: 0, max: 1 },
            InvalidReason::TrainLoss { got: f32::NAN },
            InvalidReason::Scaler(ScalerProblem::Mean { feature: 0 }),
            InvalidReason::secure_protocol(SecureViolation::Binding, "x"),
            InvalidReason::Config("x"),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for r in &reasons {
            assert!(InvalidReason::LABELS.contains(&r.label()), "{r:?}");
            assert!(r.to_string().len() <= MAX_REFUSAL_TEXT + 3);
            seen.insert(r.label());
        }
        assert_eq!(seen.len(), InvalidReason::LABELS.len());
    }
}
