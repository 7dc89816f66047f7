//! Aggregation rules: pure functions over a batch of flat f32 vectors.
//!
//! No I/O, no clock, no randomness: the same batch gives the same bits.
//! Accumulation is in f64 in a fixed order so results do not depend on
//! thread scheduling: work is split into chunks whose boundaries depend only
//! on the input sizes, never on the number of threads, and partial results
//! are combined in chunk order.
//!
//! Besides [`fedavg`] the module has the robust rules of the literature
//! (each cited at its function): [`median`], [`trimmed_mean`],
//! [`krum`], [`multi_krum`], [`bulyan`], [`geometric_median`] and
//! [`centered_clipping`], plus the norm-bounding pre-step [`clip_to_norm`].
//! [`RuleConfig`] names one of them with its parameters (deserializable from
//! the coordinator's TOML), checks the (n, f) assumption of the rule with
//! [`RuleConfig::check`] and applies it with [`RuleConfig::aggregate`].
//!
//! Sums over clients, including per-coordinate sums over the values a rule
//! keeps, are taken in a canonical client order (updates sorted
//! lexicographically by their values), so every rule gives bit-identical
//! results for a permuted batch. Krum ties are broken by that canonical
//! order as well, which is deterministic and independent of batch position.

mod clipping;
mod coordinate;
mod krum;
mod weiszfeld;

use std::borrow::Cow;
use std::cmp::Ordering;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use clipping::{centered_clipping, clip_to_norm};
pub use coordinate::{median, trimmed_mean};
pub use krum::{bulyan, krum, krum_scores, multi_krum, pairwise_sq_distances};
pub use weiszfeld::geometric_median;

/// Coordinates per parallel task for coordinate-wise work.
const CHUNK: usize = 4096;

/// Coordinates per parallel task of a weighted sum: 32 KiB contiguous reads
/// of each update while the f64 accumulator (64 KiB) stays in L2.
const MEAN_CHUNK: usize = 1 << 13;

/// Why a batch could not be aggregated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregateError {
    /// No updates.
    #[error("cannot aggregate an empty batch")]
    Empty,
    /// Vectors of different lengths.
    #[error("update {index} has {actual} values, expected {expected}")]
    Shape {
        /// Position in the batch.
        index: usize,
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// All weights are zero or a weight is not finite.
    #[error("weights must be finite, non-negative and not all zero")]
    Weights,
    /// The batch is too small for the number of Byzantine clients the rule
    /// is configured to tolerate.
    #[error("{rule} needs {needs}: n = {n}, f = {f}")]
    TooFewClients {
        /// Rule name.
        rule: &'static str,
        /// The rule's assumption, e.g. `n >= 2f+3`.
        needs: &'static str,
        /// Updates in the batch.
        n: usize,
        /// Byzantine clients tolerated.
        f: usize,
    },
    /// Multi-Krum asked to average more updates than it may select.
    #[error("multi_krum needs 1 <= m <= n-f-2: n = {n}, f = {f}, m = {m}")]
    MultiKrumM {
        /// Updates in the batch.
        n: usize,
        /// Byzantine clients tolerated.
        f: usize,
        /// Updates to average.
        m: usize,
    },
    /// A rule parameter is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    Parameter {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What is required.
        reason: &'static str,
    },
    /// The centre given to centered clipping has the wrong length.
    #[error("centre has {actual} values, expected {expected}")]
    CenterShape {
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
}

/// Checks that the batch is non-empty and rectangular; returns the length.
fn dims(updates: &[&[f32]]) -> Result<usize, AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    let p = first.len();
    for (index, u) in updates.iter().enumerate() {
        if u.len() != p {
            return Err(AggregateError::Shape {
                index,
                expected: p,
                actual: u.len(),
            });
        }
    }
    Ok(p)
}

/// Checks weights: one per update, finite, non-negative, positive sum.
fn check_weights(weights: &[f64], n: usize) -> Result<f64, AggregateError> {
    if weights.len() != n || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(AggregateError::Weights);
    }
    let total: f64 = weights.iter().sum();
    if total > 0.0 && total.is_finite() {
        Ok(total)
    } else {
        Err(AggregateError::Weights)
    }
}

/// Lexicographic total order of two vectors (`f32::total_cmp` per value).
fn lex_cmp(a: &[f32], b: &[f32]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Indices of the batch sorted by value (lexicographically), then weight.
///
/// Two updates that compare equal are identical (same bits, same weight), so
/// any sum taken in this order has the same bits for every permutation of
/// the batch. Comparing stops at the first differing value, so this is
/// O(n log n) for distinct updates.
fn canonical_order(updates: &[&[f32]], weights: Option<&[f64]>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..updates.len()).collect();
    order.sort_by(|&i, &j| {
        lex_cmp(updates[i], updates[j]).then_with(|| match weights {
            Some(w) => w[i].total_cmp(&w[j]),
            None => Ordering::Equal,
        })
    });
    order
}

/// Weighted mean (FedAvg, McMahan et al. 2017): `Σ wᵢ xᵢ / Σ wᵢ`.
///
/// Assumptions: none of the inputs is adversarial (f = 0). One scaled
/// update moves the result arbitrarily; use a robust rule through
/// [`RuleConfig`] when clients may be Byzantine.
///
/// Each coordinate accumulates `wᵢ/Σw · xᵢ` in f64 in batch order; the work
/// is split over coordinate chunks, which does not change the bits.
pub fn fedavg(updates: &[&[f32]], weights: &[f64]) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    let total = check_weights(weights, updates.len())?;
    let scaled: Vec<f64> = weights.iter().map(|w| w / total).collect();
    Ok(weighted_sum_in_order(updates, &scaled, p, |a| a as f32))
}

/// `finish(Σᵢ wᵢ·xᵢ)` per coordinate of the `p`-long `rows`, summed in f64
/// in the given row order: four rows per pass over the accumulator, each
/// coordinate still adding them one after the other
/// (`((a + w₀x₀) + w₁x₁) + …`), so the bits are those of one row per pass
/// with a quarter of the accumulator traffic; coordinate chunks run in
/// parallel, which does not change the bits either.
pub(crate) fn weighted_sum_in_order<T: Copy + Default + Send>(
    rows: &[&[f32]],
    weights: &[f64],
    p: usize,
    finish: impl Fn(f64) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); p];
    let (row_quads, row_rest) = rows.as_chunks::<4>();
    let (weight_quads, weight_rest) = weights.as_chunks::<4>();
    out.par_chunks_mut(MEAN_CHUNK)
        .enumerate()
        .for_each(|(c, out_chunk)| {
            let start = c * MEAN_CHUNK;
            let len = out_chunk.len();
            let mut acc = vec![0f64; len];
            for (quad, w) in row_quads.iter().zip(weight_quads) {
                let [x0, x1, x2, x3] = quad.map(|r| &r[start..start + len]);
                for j in 0..len {
                    let mut a = acc[j];
                    a += w[0] * f64::from(x0[j]);
                    a += w[1] * f64::from(x1[j]);
                    a += w[2] * f64::from(x2[j]);
                    a += w[3] * f64::from(x3[j]);
                    acc[j] = a;
                }
            }
            for (u, &w) in row_rest.iter().zip(weight_rest) {
                for (a, &x) in acc.iter_mut().zip(&u[start..start + len]) {
                    *a += w * f64::from(x);
                }
            }
            for (o, a) in out_chunk.iter_mut().zip(acc) {
                *o = finish(a);
            }
        });
    out
}

/// Euclidean norm, accumulated in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// How the weighted rules (FedAvg, geometric median) weight updates; the
/// other rules treat every update alike.
///
/// Weights are bounded before a rule sees them: the coordinator refuses an
/// update whose `num_samples` is 0 or above the tenant's
/// `max_samples_per_update` (C), so under [`Weighting::Samples`] one
/// update's share of a batch with n − 1 others of s samples each is at most
/// `C / (C + (n−1)·s)`, and under [`Weighting::Equal`] exactly `1/n`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// By the claimed sample count (bounded as above).
    #[default]
    Samples,
    /// Every update weighs 1.
    Equal,
}

impl Weighting {
    /// The weight of an update that claims `num_samples` samples.
    pub fn weight(self, num_samples: u64) -> f64 {
        match self {
            Weighting::Samples => num_samples as f64,
            Weighting::Equal => 1.0,
        }
    }

    /// The weight of an update whose sample-count weight is `samples`
    /// (as [`Weighting::weight`], for callers holding the count as f64).
    pub fn of_weight(self, samples: f64) -> f64 {
        match self {
            Weighting::Samples => samples,
            Weighting::Equal => 1.0,
        }
    }
}

/// A robust aggregation rule and its parameters.
///
/// Deserializes from a table tagged by `rule`, e.g.
/// `{ rule = "krum", f = 2 }` or `{ rule = "geometric_median" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// Weighted mean; tolerates no Byzantine client (f = 0). Valid for
    /// n ≥ 1. Each weight is bounded by the coordinator before it gets
    /// here (see [`Weighting`]).
    #[serde(rename = "fedavg")]
    FedAvg,
    /// Coordinate-wise median (Yin et al. 2018); average of the two middle
    /// values for even n. Valid for n ≥ 1; a coordinate stays within the
    /// honest range while fewer than half the updates are Byzantine.
    Median,
    /// Coordinate-wise trimmed mean: drop the `f` largest and `f` smallest
    /// values of each coordinate, average the rest. Valid for n ≥ 2f+1.
    TrimmedMean {
        /// Values trimmed at each end.
        f: usize,
    },
    /// Krum (Blanchard et al. 2017): the update with the smallest sum of
    /// squared distances to its n−f−2 nearest neighbours. Valid for
    /// n ≥ 2f+3 (so it scores with at least f+1 neighbours).
    Krum {
        /// Byzantine clients tolerated.
        f: usize,
    },
    /// Multi-Krum: the mean of the `m` updates with the best Krum scores.
    /// Valid for n ≥ 2f+3 and 1 ≤ m ≤ n−f−2.
    MultiKrum {
        /// Byzantine clients tolerated.
        f: usize,
        /// Updates averaged.
        m: usize,
    },
    /// Bulyan (El Mhamdi et al. 2018): θ = n−2f updates chosen by iterated
    /// Krum, then per coordinate the mean of the β = θ−2f values closest to
    /// their median. Valid for n ≥ 4f+3 (β ≥ 3); every selection step
    /// scores with at least one neighbour (see [`bulyan`]).
    Bulyan {
        /// Byzantine clients tolerated.
        f: usize,
    },
    /// Weighted geometric median by smoothed Weiszfeld (RFA, Pillutla et
    /// al. 2022). Valid for n ≥ 1; breakdown point ½. Uses the bounded
    /// weights (see [`Weighting`]).
    GeometricMedian {
        /// Weiszfeld steps (epfml: 8).
        #[serde(default = "d_geomed_iterations")]
        iterations: usize,
        /// Smoothing ν: distances are floored at ν (epfml: 0.1).
        #[serde(default = "d_geomed_nu")]
        nu: f64,
    },
    /// Centered clipping (Karimireddy et al. 2021): from a centre v,
    /// `v ← v + (1/n) Σ (xᵢ − v)·min(1, τ/‖xᵢ − v‖)`, repeated.
    CenteredClipping {
        /// Clipping radius τ.
        tau: f64,
        /// Clipping steps (1 to 3 in the literature).
        #[serde(default = "d_cclip_iterations")]
        iterations: usize,
    },
}

fn d_geomed_iterations() -> usize {
    8
}
fn d_geomed_nu() -> f64 {
    0.1
}
fn d_cclip_iterations() -> usize {
    1
}

/// A rule plus the optional norm-bounding pre-step.
///
/// Flat in TOML: `rule = "trimmed_mean"`, `f = 2`, `max_norm = 10.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleConfig {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// When set, every update is scaled down to at most this L2 norm
    /// ([`clip_to_norm`]) before the rule sees it (Sun et al. 2019).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f32>,
}

impl From<Rule> for RuleConfig {
    fn from(rule: Rule) -> Self {
        Self {
            rule,
            max_norm: None,
        }
    }
}

/// The result of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The aggregated vector.
    pub value: Vec<f32>,
    /// Batch indices of the updates that contributed, ascending: all of them
    /// for mean-, median- and clipping-type rules, the selection for Krum,
    /// Multi-Krum and Bulyan. Input for reputation.
    pub selected: Vec<usize>,
}

fn positive(name: &'static str, value: f64) -> Result<(), AggregateError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(AggregateError::Parameter {
            name,
            value,
            reason: "must be finite and positive",
        })
    }
}

fn at_least_one(name: &'static str, value: usize) -> Result<(), AggregateError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(AggregateError::Parameter {
            name,
            value: value as f64,
            reason: "must be at least 1",
        })
    }
}

impl Rule {
    /// The rule's name as in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::FedAvg => "fedavg",
            Rule::Median => "median",
            Rule::TrimmedMean { .. } => "trimmed_mean",
            Rule::Krum { .. } => "krum",
            Rule::MultiKrum { .. } => "multi_krum",
            Rule::Bulyan { .. } => "bulyan",
            Rule::GeometricMedian { .. } => "geometric_median",
            Rule::CenteredClipping { .. } => "centered_clipping",
        }
    }

    /// The smallest batch the rule accepts ([`Rule::check`] refuses every
    /// smaller `n`, and accepts every `n` from here on):
    ///
    /// | rule | valid (n, f) |
    /// |---|---|
    /// | `fedavg` | n ≥ 1 (f = 0: tolerates no Byzantine update) |
    /// | `median` | n ≥ 1 (breakdown point ½: any f < n/2) |
    /// | `trimmed_mean` | n ≥ 2f+1 (n > 2f) |
    /// | `krum` | n ≥ 2f+3 |
    /// | `multi_krum` | n ≥ 2f+3 and 1 ≤ m ≤ n−f−2, i.e. n ≥ max(2f+3, m+f+2) |
    /// | `bulyan` | n ≥ 4f+3 |
    /// | `geometric_median` | n ≥ 1 (breakdown point ½) |
    /// | `centered_clipping` | n ≥ 1 |
    ///
    /// Saturates instead of overflowing for absurd `f`, so such a
    /// configuration is refused rather than wrapped.
    pub fn min_clients(&self) -> usize {
        match *self {
            Rule::FedAvg
            | Rule::Median
            | Rule::GeometricMedian { .. }
            | Rule::CenteredClipping { .. } => 1,
            Rule::TrimmedMean { f } => f.saturating_mul(2).saturating_add(1),
            Rule::Krum { f } => f.saturating_mul(2).saturating_add(3),
            Rule::MultiKrum { f, m } => f
                .saturating_mul(2)
                .saturating_add(3)
                .max(m.saturating_add(f).saturating_add(2)),
            Rule::Bulyan { f } => f.saturating_mul(4).saturating_add(3),
        }
    }

    /// Refuses parameters, and batch sizes `n`, that break the rule's
    /// assumption, saying which one. The conditions are those of
    /// [`Rule::min_clients`]; every selection step of Krum, Multi-Krum and
    /// Bulyan then scores with at least one neighbour (see
    /// [`krum_scores`] and [`bulyan`]), so no step degenerates into a tie
    /// of zero scores. The coordinator calls this at config load (with the
    /// tenant's quorum, the smallest batch that can commit) and again on
    /// every batch.
    pub fn check(&self, n: usize) -> Result<(), AggregateError> {
        if n == 0 {
            return Err(AggregateError::Empty);
        }
        let too_few = |needs, f| AggregateError::TooFewClients {
            rule: self.name(),
            needs,
            n,
            f,
        };
        let enough = n >= self.min_clients();
        match *self {
            Rule::FedAvg | Rule::Median => Ok(()),
            Rule::TrimmedMean { f } => {
                if enough {
                    Ok(())
                } else {
                    Err(too_few("n > 2f", f))
                }
            }
            Rule::Krum { f } => {
                if enough {
                    Ok(())
                } else {
                    Err(too_few("n >= 2f+3", f))
                }
            }
            Rule::MultiKrum { f, m } => {
                if n < f.saturating_mul(2).saturating_add(3) {
                    Err(too_few("n >= 2f+3", f))
                } else if m == 0 || !enough {
                    Err(AggregateError::MultiKrumM { n, f, m })
                } else {
                    Ok(())
                }
            }
            Rule::Bulyan { f } => {
                if enough {
                    Ok(())
                } else {
                    Err(too_few("n >= 4f+3", f))
                }
            }
            Rule::GeometricMedian { iterations, nu } => {
                at_least_one("iterations", iterations)?;
                positive("nu", nu)
            }
            Rule::CenteredClipping { tau, iterations } => {
                at_least_one("iterations", iterations)?;
                positive("tau", tau)
            }
        }
    }

    /// Applies the rule to a batch. `weights` (one per update, finite,
    /// non-negative, positive sum) are used by FedAvg and the geometric
    /// median; the other rules treat clients equally, so a client cannot
    /// buy influence by claiming more samples. `center` is centered
    /// clipping's starting point (e.g. the previous aggregate); the other
    /// rules ignore it.
    pub fn aggregate_from(
        &self,
        updates: &[&[f32]],
        weights: &[f64],
        center: Option<&[f32]>,
    ) -> Result<Aggregate, AggregateError> {
        let n = updates.len();
        dims(updates)?;
        check_weights(weights, n)?;
        self.check(n)?;
        let all = || (0..n).collect::<Vec<usize>>();
        let (value, selected) = match *self {
            Rule::FedAvg => {
                let order = canonical_order(updates, Some(weights));
                let u: Vec<&[f32]> = order.iter().map(|&i| updates[i]).collect();
                let w: Vec<f64> = order.iter().map(|&i| weights[i]).collect();
                (fedavg(&u, &w)?, all())
            }
            Rule::Median => (median(updates)?, all()),
            Rule::TrimmedMean { f } => (trimmed_mean(updates, f)?, all()),
            Rule::Krum { f } => krum::multi_krum_selected(updates, f, 1)?,
            Rule::MultiKrum { f, m } => krum::multi_krum_selected(updates, f, m)?,
            Rule::Bulyan { f } => krum::bulyan_selected(updates, f)?,
            Rule::GeometricMedian { iterations, nu } => {
                (geometric_median(updates, weights, iterations, nu)?, all())
            }
            Rule::CenteredClipping { tau, iterations } => {
                (centered_clipping(updates, center, tau, iterations)?, all())
            }
        };
        Ok(Aggregate { value, selected })
    }
}

impl RuleConfig {
    /// Refuses parameters, and batch sizes `n`, that break the rule's
    /// assumption (see [`Rule::check`]); also checks `max_norm`.
    pub fn check(&self, n: usize) -> Result<(), AggregateError> {
        if let Some(c) = self.max_norm {
            positive("max_norm", f64::from(c))?;
        }
        self.rule.check(n)
    }

    /// Norm-bounds the updates if `max_norm` is set, then applies the rule
    /// (see [`Rule::aggregate_from`]) with no centre.
    pub fn aggregate(
        &self,
        updates: &[&[f32]],
        weights: &[f64],
    ) -> Result<Aggregate, AggregateError> {
        self.aggregate_from(updates, weights, None)
    }

    /// As [`RuleConfig::aggregate`], with centered clipping starting from
    /// `center` (the previous aggregate) instead of the coordinate-wise
    /// median.
    pub fn aggregate_from(
        &self,
        updates: &[&[f32]],
        weights: &[f64],
        center: Option<&[f32]>,
    ) -> Result<Aggregate, AggregateError> {
        self.check(updates.len())?;
        dims(updates)?;
        match self.max_norm {
            None => self.rule.aggregate_from(updates, weights, center),
            Some(c) => {
                let clipped: Vec<Cow<'_, [f32]>> = updates
                    .par_iter()
                    .map(|u| clipping::clip_cow(u, c))
                    .collect();
                let refs: Vec<&[f32]> = clipped.iter().map(|u| u.as_ref()).collect();
                self.rule.aggregate_from(&refs, weights, center)
            }
        }
    }
}

/// Test helpers shared by the submodules.
#[cfg(test)]
pub(crate) mod testutil {
    use proptest::prelude::*;

    /// A batch of `n` in `n_range` updates of `p` in `p_range` values in
    /// [-10, 10], plus a permutation seed.
    pub fn batch(
        n_range: std::ops::Range<usize>,
        p_range: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<Vec<f32>>> {
        (n_range, p_range).prop_flat_map(|(n, p)| {
            proptest::collection::vec(proptest::collection::vec(-10f32..10.0, p), n)
        })
    }

    /// Slices of a batch.
    pub fn refs(rows: &[Vec<f32>]) -> Vec<&[f32]> {
        rows.iter().map(|r| r.as_slice()).collect()
    }

    /// A deterministic permutation of `0..n` from a seed (Fisher-Yates with
    /// a splitmix64 stream).
    pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
        perm
    }

    /// `rows` permuted by `perm`.
    pub fn permute<T: Clone>(rows: &[T], perm: &[usize]) -> Vec<T> {
        perm.iter().map(|&i| rows[i].clone()).collect()
    }

    /// Per-coordinate [min, max] of a set of rows.
    pub fn ranges(rows: &[Vec<f32>]) -> Vec<(f32, f32)> {
        let p = rows.first().map_or(0, |r| r.len());
        (0..p)
            .map(|j| {
                rows.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
                        (lo.min(r[j]), hi.max(r[j]))
                    })
            })
            .collect()
    }

    /// Bit patterns, for exact comparison.
    pub fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weighted_mean_matches_hand_computation() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        let m = fedavg(&[&a, &b], &[1.0, 3.0]).unwrap();
        assert_eq!(m, vec![2.5, 5.0]);
    }

    #[test]
    fn refuses_bad_batches() {
        assert_eq!(fedavg(&[], &[]), Err(AggregateError::Empty));
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        assert!(matches!(
            fedavg(&[&a, &b], &[1.0, 1.0]),
            Err(AggregateError::Shape { index: 1, .. })
        ));
        assert_eq!(fedavg(&[&a], &[0.0]), Err(AggregateError::Weights));
        assert_eq!(fedavg(&[&a], &[f64::NAN]), Err(AggregateError::Weights));
    }

    #[test]
    fn chunked_fedavg_matches_sequential_bits() {
        // Longer than one chunk, so several parallel tasks contribute.
        let p = 3 * CHUNK + 17;
        let rows: Vec<Vec<f32>> = (0..5)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 31 + j * 7) % 101) as f32 * 0.37 - 17.0)
                    .collect()
            })
            .collect();
        let w = [1.0, 2.0, 3.5, 0.25, 7.0];
        let got = fedavg(&refs(&rows), &w).unwrap();
        let total: f64 = w.iter().sum();
        for (j, g) in got.iter().enumerate() {
            let mut acc = 0f64;
            for (r, wi) in rows.iter().zip(&w) {
                acc += wi / total * f64::from(r[j]);
            }
            assert_eq!(g.to_bits(), (acc as f32).to_bits());
        }
    }

    fn all_rules(n: usize) -> Vec<Rule> {
        let f = (n.saturating_sub(3)) / 4;
        vec![
            Rule::FedAvg,
            Rule::Median,
            Rule::TrimmedMean { f },
            Rule::Krum { f },
            Rule::MultiKrum { f, m: n - f - 2 },
            Rule::Bulyan { f },
            Rule::GeometricMedian {
                iterations: 8,
                nu: 0.1,
            },
            Rule::CenteredClipping {
                tau: 1.0,
                iterations: 3,
            },
        ]
    }

    #[test]
    fn every_rule_refuses_empty_and_ragged_batches() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        for rule in all_rules(7) {
            let cfg = RuleConfig::from(rule.clone());
            assert_eq!(
                cfg.aggregate(&[], &[]),
                Err(AggregateError::Empty),
                "{rule:?}"
            );
            let rows: Vec<&[f32]> = vec![&a, &a, &a, &a, &a, &a, &b];
            assert_eq!(
                cfg.aggregate(&rows, &[1.0; 7]),
                Err(AggregateError::Shape {
                    index: 6,
                    expected: 2,
                    actual: 1
                }),
                "{rule:?}"
            );
            let rows: Vec<&[f32]> = vec![&a; 7];
            assert_eq!(
                cfg.aggregate(&rows, &[1.0; 6]),
                Err(AggregateError::Weights),
                "{rule:?}"
            );
            assert_eq!(
                cfg.aggregate(&rows, &[0.0; 7]),
                Err(AggregateError::Weights),
                "{rule:?}"
            );
            // Identical updates aggregate to themselves.
            let agg = cfg.aggregate(&rows, &[1.0; 7]).unwrap();
            assert_eq!(agg.value, a.to_vec(), "{rule:?}");
        }
    }

    #[test]
    fn refused_configurations_say_why() {
        let err = |r: Rule, n| r.check(n).unwrap_err().to_string();
        assert_eq!(
            err(Rule::Krum { f: 2 }, 6),
            "krum needs n >= 2f+3: n = 6, f = 2"
        );
        assert!(Rule::Krum { f: 2 }.check(7).is_ok());
        assert_eq!(
            err(Rule::TrimmedMean { f: 2 }, 4),
            "trimmed_mean needs n > 2f: n = 4, f = 2"
        );
        assert!(Rule::TrimmedMean { f: 2 }.check(5).is_ok());
        assert_eq!(
            err(Rule::Bulyan { f: 2 }, 10),
            "bulyan needs n >= 4f+3: n = 10, f = 2"
        );
        assert!(Rule::Bulyan { f: 2 }.check(11).is_ok());
        assert_eq!(
            err(Rule::MultiKrum { f: 2, m: 3 }, 6),
            "multi_krum needs n >= 2f+3: n = 6, f = 2"
        );
        assert_eq!(
            err(Rule::MultiKrum { f: 2, m: 6 }, 9),
            "multi_krum needs 1 <= m <= n-f-2: n = 9, f = 2, m = 6"
        );
        assert_eq!(
            err(Rule::MultiKrum { f: 2, m: 0 }, 9),
            "multi_krum needs 1 <= m <= n-f-2: n = 9, f = 2, m = 0"
        );
        assert!(Rule::MultiKrum { f: 2, m: 5 }.check(9).is_ok());
        assert_eq!(
            err(
                Rule::CenteredClipping {
                    tau: 0.0,
                    iterations: 1
                },
                5
            ),
            "invalid tau = 0: must be finite and positive"
        );
        assert_eq!(
            err(
                Rule::GeometricMedian {
                    iterations: 0,
                    nu: 0.1
                },
                5
            ),
            "invalid iterations = 0: must be at least 1"
        );
        let cfg = RuleConfig {
            rule: Rule::Median,
            max_norm: Some(-1.0),
        };
        assert_eq!(
            cfg.check(3).unwrap_err().to_string(),
            "invalid max_norm = -1: must be finite and positive"
        );
        assert_eq!(Rule::Median.check(0), Err(AggregateError::Empty));
        // aggregate refuses too, before touching the data.
        let a = [0f32; 3];
        let rows: Vec<&[f32]> = vec![&a; 6];
        assert_eq!(
            RuleConfig::from(Rule::Krum { f: 2 }).aggregate(&rows, &[1.0; 6]),
            Err(AggregateError::TooFewClients {
                rule: "krum",
                needs: "n >= 2f+3",
                n: 6,
                f: 2
            })
        );
    }

    #[test]
    fn rule_config_deserializes_flat_and_refuses_unknown_fields() {
        let cfg: RuleConfig = toml::from_str("rule = \"krum\"\nf = 2\nmax_norm = 5.0").unwrap();
        assert_eq!(
            cfg,
            RuleConfig {
                rule: Rule::Krum { f: 2 },
                max_norm: Some(5.0)
            }
        );
        let cfg: RuleConfig = toml::from_str("rule = \"geometric_median\"").unwrap();
        assert_eq!(
            cfg.rule,
            Rule::GeometricMedian {
                iterations: 8,
                nu: 0.1
            }
        );
        let cfg: RuleConfig = toml::from_str("rule = \"fedavg\"").unwrap();
        assert_eq!(cfg.rule, Rule::FedAvg);
        let cfg: RuleConfig =
            toml::from_str("rule = \"centered_clipping\"\ntau = 10.0\niterations = 3").unwrap();
        assert_eq!(
            cfg.rule,
            Rule::CenteredClipping {
                tau: 10.0,
                iterations: 3
            }
        );
        let cfg: RuleConfig = toml::from_str("rule = \"multi_krum\"\nf = 1\nm = 3").unwrap();
        assert_eq!(cfg.rule, Rule::MultiKrum { f: 1, m: 3 });
        assert!(toml::from_str::<RuleConfig>("rule = \"krum\"\nf = 2\nm = 3").is_err());
        assert!(toml::from_str::<RuleConfig>("rule = \"krum\"").is_err());
        assert!(toml::from_str::<RuleConfig>("rule = \"krum2\"\nf = 1").is_err());
        assert!(toml::from_str::<RuleConfig>("rule = \"trimmed_mean\"\nbeta = 0.1").is_err());
        // Round trip.
        let cfg = RuleConfig {
            rule: Rule::Bulyan { f: 3 },
            max_norm: Some(2.5),
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<RuleConfig>(&text).unwrap(), cfg);
    }

    #[test]
    fn max_norm_bounds_every_update_before_the_rule() {
        let big = [300f32, 400.0]; // norm 500
        let small = [0.3f32, 0.4]; // norm 0.5
        let cfg = RuleConfig {
            rule: Rule::FedAvg,
            max_norm: Some(5.0),
        };
        let agg = cfg.aggregate(&[&big, &small], &[1.0, 1.0]).unwrap();
        // (3, 4) and (0.3, 0.4) averaged.
        assert!((agg.value[0] - 1.65).abs() < 1e-6);
        assert!((agg.value[1] - 2.2).abs() < 1e-6);
        assert_eq!(agg.selected, vec![0, 1]);
    }

    #[test]
    fn min_clients_is_the_boundary_of_check() {
        for f in 0..5 {
            for rule in [
                Rule::FedAvg,
                Rule::Median,
                Rule::TrimmedMean { f },
                Rule::Krum { f },
                Rule::MultiKrum { f, m: 1 },
                Rule::MultiKrum { f, m: f + 2 },
                Rule::Bulyan { f },
                Rule::GeometricMedian {
                    iterations: 8,
                    nu: 0.1,
                },
                Rule::CenteredClipping {
                    tau: 1.0,
                    iterations: 1,
                },
            ] {
                let min = rule.min_clients();
                assert!(rule.check(min).is_ok(), "{rule:?} at {min}");
                assert!(rule.check(min + 7).is_ok(), "{rule:?} at {}", min + 7);
                if min > 1 {
                    assert!(rule.check(min - 1).is_err(), "{rule:?} at {}", min - 1);
                }
            }
        }
        // Absurd parameters saturate and are refused, never overflow.
        assert!(
            Rule::Bulyan { f: usize::MAX }
                .check(usize::MAX - 1)
                .is_err()
        );
        assert!(Rule::TrimmedMean { f: usize::MAX }.check(10).is_err());
        assert!(
            Rule::MultiKrum {
                f: 1,
                m: usize::MAX
            }
            .check(10)
            .is_err()
        );
    }

    /// Issue 14: Bulyan with f = 1 ends its selection with three
    /// candidates, where Krum's neighbour count n−f−2 is 0. A far outlier
    /// that is lexicographically smallest used to win that all-zero tie.
    #[test]
    fn bulyan_f1_last_step_does_not_pick_the_outlier() {
        let mut rows: Vec<Vec<f32>> = (0..6)
            .map(|i| vec![0.1 * i as f32, 1.0 - 0.05 * i as f32, 0.3])
            .collect();
        rows.push(vec![-1e6; 3]);
        let agg = Rule::Bulyan { f: 1 }
            .aggregate_from(&refs(&rows), &[1.0; 7], None)
            .unwrap();
        assert_eq!(agg.selected.len(), 5);
        assert!(!agg.selected.contains(&6), "{:?}", agg.selected);
    }

    #[test]
    fn weighting_bounds_a_liars_share() {
        assert_eq!(Weighting::Equal.weight(u64::MAX), 1.0);
        assert_eq!(Weighting::Samples.weight(4096), 4096.0);
        // Equal weights: a node claiming 2^64 − 1 samples gets 1/n.
        let honest = [0f32; 2];
        let liar = [9f32; 2];
        let rows: Vec<&[f32]> = vec![&honest, &honest, &liar];
        let w: Vec<f64> = [10, 10, u64::MAX]
            .iter()
            .map(|&s| Weighting::Equal.weight(s))
            .collect();
        let agg = RuleConfig::from(Rule::FedAvg).aggregate(&rows, &w).unwrap();
        assert_eq!(agg.value, vec![3.0, 3.0]);
    }

    proptest! {
        /// For every rule at its valid (n, f) edge cases (the smallest n,
        /// and up to two more; at least 3 so that one update is a minority),
        /// one far outlier among clustered updates is never chosen by a
        /// selection step (Krum, Multi-Krum, Bulyan with f >= 1) and never
        /// drags the output of any rule that tolerates it away from the
        /// cluster: the distance to the cluster's centroid stays within
        /// (√p + 1)·R + 4 (R the cluster's radius), whatever the outlier's
        /// magnitude. FedAvg and f = 0 trimmed mean / Bulyan are means and
        /// claim no robustness.
        #[test]
        fn a_single_far_outlier_never_wins(
            f in 0usize..4,
            extra in 0usize..3,
            m_pick in any::<bool>(),
            cluster in proptest::collection::vec(proptest::collection::vec(-1f32..1.0, 8), 20),
            p in 1usize..8,
            signs in proptest::collection::vec(any::<bool>(), 8),
            scale in 1e4f32..1e6,
            seed in any::<u64>(),
        ) {
            let geomed = Rule::GeometricMedian { iterations: 8, nu: 0.1 };
            let cclip = Rule::CenteredClipping { tau: 1.0, iterations: 3 };
            let multi = |n: usize| Rule::MultiKrum { f, m: if m_pick { n - f - 2 } else { 1 } };
            let base: Vec<Rule> = vec![
                Rule::Median,
                Rule::TrimmedMean { f },
                Rule::Krum { f },
                Rule::MultiKrum { f, m: 1 },
                Rule::Bulyan { f },
                geomed,
                cclip,
            ];
            for template in base {
                let n = template.min_clients().max(3) + extra;
                let rule = match template {
                    Rule::MultiKrum { .. } => multi(n),
                    r => r,
                };
                prop_assert!(rule.check(n).is_ok());
                let mut rows: Vec<Vec<f32>> = cluster[..n - 1].iter().map(|r| r[..p].to_vec()).collect();
                let centroid: Vec<f64> = (0..p)
                    .map(|j| rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / (n - 1) as f64)
                    .collect();
                let dist = |v: &[f32]| {
                    v.iter().zip(&centroid).map(|(x, c)| (f64::from(*x) - c).powi(2)).sum::<f64>().sqrt()
                };
                let radius = rows.iter().map(|r| dist(r)).fold(0.0, f64::max);
                rows.push((0..p).map(|j| if signs[j] { scale } else { -scale }).collect());
                let perm = permutation(n, seed);
                let rows = permute(&rows, &perm);
                let outlier = perm.iter().position(|&i| i == n - 1).unwrap_or(n);
                let agg = RuleConfig::from(rule.clone()).aggregate(&refs(&rows), &vec![1.0; n]).unwrap();
                let selects = matches!(rule, Rule::Krum { .. } | Rule::MultiKrum { .. })
                    || matches!(rule, Rule::Bulyan { f } if f >= 1);
                if selects {
                    prop_assert!(!agg.selected.contains(&outlier), "{:?} n={} selected {:?}", rule, n, agg.selected);
                }
                let mean_like = matches!(rule, Rule::TrimmedMean { f: 0 } | Rule::Bulyan { f: 0 });
                if !mean_like {
                    let bound = ((p as f64).sqrt() + 1.0) * radius + 4.0;
                    prop_assert!(dist(&agg.value) <= bound, "{:?} n={}: {} > {}", rule, n, dist(&agg.value), bound);
                }
            }
        }

        #[test]
        fn fedavg_permutation_invariant_and_bounded(
            rows in proptest::collection::vec(proptest::collection::vec(-100f32..100.0, 5), 1..8),
            seed in any::<u64>(),
        ) {
            let refs = refs(&rows);
            let w = vec![1.0; refs.len()];
            let m = fedavg(&refs, &w).unwrap();
            let mut perm = refs.clone();
            let k = (seed as usize) % perm.len();
            perm.rotate_left(k);
            let m2 = fedavg(&perm, &w).unwrap();
            for (x, y) in m.iter().zip(&m2) {
                prop_assert!((x - y).abs() <= 1e-4);
            }
            for j in 0..5 {
                let lo = rows.iter().map(|r| r[j]).fold(f32::INFINITY, f32::min);
                let hi = rows.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max);
                prop_assert!(m[j] >= lo - 1e-3 && m[j] <= hi + 1e-3);
            }
        }

        /// Every rule through `RuleConfig` gives the same bits for a
        /// permuted batch (Krum ties are broken by value, not position) and
        /// reports the same contributors.
        #[test]
        fn every_rule_is_permutation_invariant(
            rows in batch(7..16, 1..40),
            weights in proptest::collection::vec(0.5f64..4.0, 16),
            seed in any::<u64>(),
            max_norm in proptest::option::of(1f32..30.0),
        ) {
            let n = rows.len();
            let w = &weights[..n];
            let perm = permutation(n, seed);
            let prows = permute(&rows, &perm);
            let pw = permute(w, &perm);
            let seen: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| max_norm.map_or_else(|| r.clone(), |c| clip_to_norm(r, c)))
                .collect();
            let distinct = (0..n).all(|i| (0..i).all(|j| bits(&seen[i]) != bits(&seen[j])));
            for rule in all_rules(n) {
                let cfg = RuleConfig { rule: rule.clone(), max_norm };
                let a = cfg.aggregate(&refs(&rows), w).unwrap();
                let b = cfg.aggregate(&refs(&prows), &pw).unwrap();
                prop_assert_eq!(bits(&a.value), bits(&b.value), "{:?}", rule);
                // Which of two identical updates is selected may change.
                if distinct {
                    let mut mapped: Vec<usize> = b.selected.iter().map(|&i| perm[i]).collect();
                    mapped.sort_unstable();
                    prop_assert_eq!(&a.selected, &mapped, "{:?}", rule);
                }
            }
        }

        /// Duplicated updates (ties everywhere) are still permutation
        /// invariant, including Krum's choice.
        #[test]
        fn ties_are_broken_by_value(
            rows in batch(3..6, 1..6),
            seed in any::<u64>(),
        ) {
            let mut dup = rows.clone();
            dup.extend(rows.iter().cloned());
            dup.extend(rows.iter().cloned());
            let n = dup.len();
            let perm = permutation(n, seed);
            let prows = permute(&dup, &perm);
            for rule in all_rules(n) {
                let cfg = RuleConfig::from(rule.clone());
                let a = cfg.aggregate(&refs(&dup), &vec![1.0; n]).unwrap();
                let b = cfg.aggregate(&refs(&prows), &vec![1.0; n]).unwrap();
                prop_assert_eq!(bits(&a.value), bits(&b.value), "{:?}", rule);
            }
        }
    }
}
