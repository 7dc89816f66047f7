//! Geometric median by smoothed Weiszfeld iterations (RFA).

use rayon::prelude::*;

use super::{
    AggregateError, Rule, canonical_order, check_weights, dims, median, weighted_sum_in_order,
};

/// f64 lanes of the distance kernel.
const LANES: usize = 8;

/// `‖x − v‖` with x in f32 and v in f64, summed over 8 independent lanes in
/// a fixed order (vectorizable, deterministic).
pub(crate) fn dist_to(x: &[f32], v: &[f64]) -> f64 {
    let (cx, rx) = x.as_chunks::<LANES>();
    let (cv, rv) = v.as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for (a, b) in cx.iter().zip(cv) {
        for l in 0..LANES {
            let d = f64::from(a[l]) - b[l];
            acc[l] += d * d;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (a, b) in rx.iter().zip(rv) {
        let d = f64::from(*a) - b;
        s += d * d;
    }
    s.sqrt()
}

/// Weighted geometric median `argmin_v Σ αᵢ‖v − xᵢ‖` approximated by
/// `iterations` smoothed Weiszfeld steps (Pillutla, Kakade, Harchaoui 2022):
/// `βᵢ = αᵢ / max(ν, ‖v − xᵢ‖)`, `v ← Σ βᵢxᵢ / Σ βᵢ`.
///
/// Breakdown point ½. The iteration starts from the coordinate-wise median
/// (a robust start, so a few steps suffice even with far outliers; epfml
/// uses T = 8, ν = 0.1). Weights α are the given `weights`. Sums over
/// clients run in canonical (value) order, so the result is bit-identical
/// for a permuted batch.
pub fn geometric_median(
    updates: &[&[f32]],
    weights: &[f64],
    iterations: usize,
    nu: f64,
) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    check_weights(weights, updates.len())?;
    Rule::GeometricMedian { iterations, nu }.check(updates.len())?;
    let order = canonical_order(updates, Some(weights));
    let rows: Vec<&[f32]> = order.iter().map(|&i| updates[i]).collect();
    let alpha: Vec<f64> = order.iter().map(|&i| weights[i]).collect();
    let mut v: Vec<f64> = median(&rows)?.into_iter().map(f64::from).collect();
    for _ in 0..iterations {
        let dist: Vec<f64> = rows.par_iter().map(|r| dist_to(r, &v)).collect();
        let beta: Vec<f64> = alpha
            .iter()
            .zip(&dist)
            .map(|(a, d)| a / d.max(nu))
            .collect();
        let total: f64 = beta.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            break;
        }
        let coef: Vec<f64> = beta.iter().map(|b| b / total).collect();
        v = weighted_sum_in_order(&rows, &coef, p, |a| a);
    }
    Ok(v.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use proptest::prelude::*;

    fn naive_dist(a: &[f32], v: &[f64]) -> f64 {
        a.iter()
            .zip(v)
            .map(|(x, y)| (f64::from(*x) - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Straightforward Weiszfeld in f64 from the naive coordinate-wise
    /// median, clients in batch order.
    fn naive_geomed(rows: &[Vec<f32>], w: &[f64], iterations: usize, nu: f64) -> Vec<f64> {
        let p = rows[0].len();
        let mut v: Vec<f64> = (0..p)
            .map(|j| {
                let mut c: Vec<f64> = rows.iter().map(|r| f64::from(r[j])).collect();
                c.sort_by(f64::total_cmp);
                let n = c.len();
                if n % 2 == 1 {
                    c[n / 2]
                } else {
                    (c[n / 2 - 1] + c[n / 2]) / 2.0
                }
            })
            .collect();
        for _ in 0..iterations {
            let beta: Vec<f64> = rows
                .iter()
                .zip(w)
                .map(|(r, a)| a / naive_dist(r, &v).max(nu))
                .collect();
            let total: f64 = beta.iter().sum();
            v = (0..p)
                .map(|j| {
                    rows.iter()
                        .zip(&beta)
                        .map(|(r, b)| b * f64::from(r[j]))
                        .sum::<f64>()
                        / total
                })
                .collect();
        }
        v
    }

    fn objective(rows: &[Vec<f32>], v: &[f64]) -> f64 {
        rows.iter().map(|r| naive_dist(r, v)).sum()
    }

    #[test]
    fn symmetric_points_give_their_centre() {
        let rows = [
            vec![1f32, 0.0],
            vec![-1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.0, -1.0],
        ];
        let g = geometric_median(&refs(&rows), &[1.0; 4], 8, 1e-6).unwrap();
        assert_eq!(g, vec![0.0, 0.0]);
    }

    #[test]
    fn refusals() {
        let rows = vec![vec![0f32; 2]; 3];
        assert_eq!(
            geometric_median(&[], &[], 8, 0.1),
            Err(AggregateError::Empty)
        );
        assert_eq!(
            geometric_median(&refs(&rows), &[1.0; 2], 8, 0.1),
            Err(AggregateError::Weights)
        );
        assert_eq!(
            geometric_median(&refs(&rows), &[1.0; 3], 8, 0.0)
                .unwrap_err()
                .to_string(),
            "invalid nu = 0: must be finite and positive"
        );
    }

    proptest! {
        #[test]
        fn agrees_with_naive(
            rows in batch(1..12, 1..40),
            w in proptest::collection::vec(0.1f64..5.0, 12),
            iterations in 1usize..10,
        ) {
            let w = &w[..rows.len()];
            let got = geometric_median(&refs(&rows), w, iterations, 0.1).unwrap();
            let want = naive_geomed(&rows, w, iterations, 0.1);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }

        /// More Weiszfeld steps do not increase the objective (up to f32
        /// rounding of the output): a sanity check of the iteration.
        #[test]
        fn steps_descend(rows in batch(3..12, 1..20)) {
            let n = rows.len();
            let one = geometric_median(&refs(&rows), &vec![1.0; n], 1, 1e-6).unwrap();
            let eight = geometric_median(&refs(&rows), &vec![1.0; n], 8, 1e-6).unwrap();
            let f1 = objective(&rows, &one.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
            let f8 = objective(&rows, &eight.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
            prop_assert!(f8 <= f1 * (1.0 + 1e-5) + 1e-4);
        }

        /// f < h outliers at ±1e6: the result stays near the honest
        /// cluster. Bound tested: ‖g − μ‖ ≤ 2(n−f)/(n−2f) · R + 1e-3 where μ
        /// is the honest mean and R the largest honest distance to μ (the
        /// geometric median's robustness bound for f < n/2).
        #[test]
        fn outliers_have_bounded_influence(
            honest in batch(3..12, 1..20),
            signs in proptest::collection::vec(any::<bool>(), 11 * 20),
            seed in any::<u64>(),
        ) {
            let h = honest.len();
            let p = honest[0].len();
            let f = h - 1;
            let mut rows = honest.clone();
            for a in 0..f {
                rows.push((0..p).map(|j| if signs[a * 20 + j] { 1e6 } else { -1e6 }).collect());
            }
            let n = rows.len();
            let rows = permute(&rows, &permutation(n, seed));
            let g = geometric_median(&refs(&rows), &vec![1.0; n], 8, 0.1).unwrap();
            let mu: Vec<f64> = (0..p)
                .map(|j| honest.iter().map(|r| f64::from(r[j])).sum::<f64>() / h as f64)
                .collect();
            let r = honest.iter().map(|x| naive_dist(x, &mu)).fold(0.0, f64::max);
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
            let err = g64.iter().zip(&mu).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let bound = 2.0 * (n - f) as f64 / (n - 2 * f) as f64 * r + 1e-3;
            prop_assert!(err <= bound, "err {} bound {}", err, bound);
        }
    }
}
