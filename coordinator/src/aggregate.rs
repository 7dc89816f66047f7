//! Aggregation rules: pure functions over a batch of flat f32 vectors.
//!
//! No I/O, no clock, no randomness: the same batch gives the same bits.
//! Accumulation is in f64 in a fixed order so results do not depend on
//! thread scheduling.

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
}

/// Weighted mean (FedAvg, McMahan et al. 2017): `Σ wᵢ xᵢ / Σ wᵢ`.
///
/// Assumptions: none of the inputs is adversarial (f = 0). One scaled
/// update moves the result arbitrarily; robust rules come with later
/// versions of the coordinator.
pub fn fedavg(updates: &[&[f32]], weights: &[f64]) -> Result<Vec<f32>, AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?;
    let p = first.len();
    if weights.len() != updates.len() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(AggregateError::Weights);
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(AggregateError::Weights);
    }
    let mut acc = vec![0f64; p];
    for (index, (u, w)) in updates.iter().zip(weights).enumerate() {
        if u.len() != p {
            return Err(AggregateError::Shape {
                index,
                expected: p,
                actual: u.len(),
            });
        }
        let w = w / total;
        for (a, &x) in acc.iter_mut().zip(u.iter()) {
            *a += w * f64::from(x);
        }
    }
    Ok(acc.into_iter().map(|a| a as f32).collect())
}

/// Euclidean norm, accumulated in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
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

    proptest! {
        #[test]
        fn permutation_invariant_and_bounded(
            rows in proptest::collection::vec(proptest::collection::vec(-100f32..100.0, 5), 1..8),
            seed in any::<u64>(),
        ) {
            let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
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
    }
}
