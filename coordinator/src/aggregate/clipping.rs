//! Norm bounding and centered clipping.

use std::borrow::Cow;

use rayon::prelude::*;

use super::weiszfeld::dist_to;
use super::{AggregateError, CHUNK, Rule, canonical_order, dims, l2_norm, median};

/// `update` scaled by `min(1, c/‖update‖)`: its L2 norm becomes at most `c`
/// (up to f32 rounding). Updates already within the bound are returned
/// unchanged; a non-positive `c` gives the zero vector for any non-zero
/// update (Sun et al. 2019, "Can you really backdoor FL?").
pub fn clip_to_norm(update: &[f32], c: f32) -> Vec<f32> {
    clip_cow(update, c).into_owned()
}

/// [`clip_to_norm`] without copying updates that are within the bound.
pub(crate) fn clip_cow(update: &[f32], c: f32) -> Cow<'_, [f32]> {
    let norm = l2_norm(update);
    let c = f64::from(c);
    if norm > c {
        let scale = c.max(0.0) / norm;
        Cow::Owned(
            update
                .iter()
                .map(|&x| (f64::from(x) * scale) as f32)
                .collect(),
        )
    } else {
        Cow::Borrowed(update)
    }
}

/// Centered clipping (Karimireddy, He, Jaggi 2021): starting from `center`
/// (the previous aggregate; the coordinate-wise median when `None`),
/// `iterations` times
/// `v ← v + (1/n) Σᵢ (xᵢ − v)·min(1, τ/‖xᵢ − v‖)`.
///
/// Every term has norm at most τ, so each step moves v by at most τ and the
/// result is within `τ·iterations` of the centre; one client moves it by at
/// most `τ/n` per step. Unweighted. Sums over clients run in canonical
/// (value) order, so the result is bit-identical for a permuted batch.
pub fn centered_clipping(
    updates: &[&[f32]],
    center: Option<&[f32]>,
    tau: f64,
    iterations: usize,
) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    Rule::CenteredClipping { tau, iterations }.check(n)?;
    let order = canonical_order(updates, None);
    let rows: Vec<&[f32]> = order.iter().map(|&i| updates[i]).collect();
    let start = match center {
        Some(c) if c.len() != p => {
            return Err(AggregateError::CenterShape {
                expected: p,
                actual: c.len(),
            });
        }
        Some(c) => c.to_vec(),
        None => median(&rows)?,
    };
    let mut v: Vec<f64> = start.into_iter().map(f64::from).collect();
    let inv_n = 1.0 / n as f64;
    for _ in 0..iterations {
        let scale: Vec<f64> = rows
            .par_iter()
            .map(|r| {
                let d = dist_to(r, &v);
                if d > tau { tau / d } else { 1.0 }
            })
            .collect();
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, vc)| {
            let s = c * CHUNK;
            let mut acc = vec![0f64; vc.len()];
            for (r, &k) in rows.iter().zip(&scale) {
                for ((a, &x), &y) in acc.iter_mut().zip(&r[s..s + vc.len()]).zip(vc.iter()) {
                    *a += k * (f64::from(x) - y);
                }
            }
            for (y, a) in vc.iter_mut().zip(acc) {
                *y += a * inv_n;
            }
        });
    }
    Ok(v.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use proptest::prelude::*;

    fn naive_norm(v: &[f64]) -> f64 {
        v.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// The textbook loop in f64, clients in batch order.
    fn naive_cclip(rows: &[Vec<f32>], center: &[f32], tau: f64, iterations: usize) -> Vec<f64> {
        let n = rows.len() as f64;
        let mut v: Vec<f64> = center.iter().map(|&x| f64::from(x)).collect();
        for _ in 0..iterations {
            let mut step = vec![0f64; v.len()];
            for r in rows {
                let diff: Vec<f64> = r.iter().zip(&v).map(|(x, y)| f64::from(*x) - y).collect();
                let norm = naive_norm(&diff);
                let k = if norm > 0.0 {
                    (tau / norm).min(1.0)
                } else {
                    1.0
                };
                for (s, d) in step.iter_mut().zip(&diff) {
                    *s += k * d / n;
                }
            }
            for (y, s) in v.iter_mut().zip(step) {
                *y += s;
            }
        }
        v
    }

    #[test]
    fn clip_to_norm_bounds_and_keeps_direction() {
        assert_eq!(clip_to_norm(&[3.0, 4.0], 1.0), vec![0.6, 0.8]);
        assert_eq!(clip_to_norm(&[3.0, 4.0], 5.0), vec![3.0, 4.0]);
        assert_eq!(clip_to_norm(&[3.0, 4.0], 0.0), vec![0.0, 0.0]);
        assert_eq!(clip_to_norm(&[], 1.0), Vec::<f32>::new());
    }

    #[test]
    fn refusals() {
        let rows = vec![vec![0f32; 3]; 3];
        assert_eq!(
            centered_clipping(&refs(&rows), Some(&[0.0; 2]), 1.0, 1),
            Err(AggregateError::CenterShape {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            centered_clipping(&refs(&rows), None, f64::NAN, 1)
                .unwrap_err()
                .to_string(),
            "invalid tau = NaN: must be finite and positive"
        );
        assert_eq!(
            centered_clipping(&[], None, 1.0, 1),
            Err(AggregateError::Empty)
        );
    }

    #[test]
    fn uses_the_given_centre() {
        let rows = [vec![10f32, 0.0], vec![10.0, 0.0]];
        // From the origin, one step of radius 1 towards (10, 0).
        let v = centered_clipping(&refs(&rows), Some(&[0.0, 0.0]), 1.0, 1).unwrap();
        assert_eq!(v, vec![1.0, 0.0]);
        let v = centered_clipping(&refs(&rows), Some(&[0.0, 0.0]), 1.0, 3).unwrap();
        assert_eq!(v, vec![3.0, 0.0]);
        // Default centre: the median, already at (10, 0).
        let v = centered_clipping(&refs(&rows), None, 1.0, 3).unwrap();
        assert_eq!(v, vec![10.0, 0.0]);
    }

    proptest! {
        #[test]
        fn clip_to_norm_never_exceeds(v in proptest::collection::vec(-1e3f32..1e3, 0..50), c in 1e-3f32..1e3) {
            let out = clip_to_norm(&v, c);
            prop_assert!(l2_norm(&out) <= f64::from(c) * (1.0 + 1e-6));
            if l2_norm(&v) <= f64::from(c) {
                prop_assert_eq!(out, v);
            }
        }

        #[test]
        fn agrees_with_naive(
            rows in batch(1..12, 1..40),
            center in proptest::collection::vec(-10f32..10.0, 40),
            tau in 0.1f64..20.0,
            iterations in 1usize..4,
        ) {
            let p = rows[0].len();
            let got = centered_clipping(&refs(&rows), Some(&center[..p]), tau, iterations).unwrap();
            let want = naive_cclip(&rows, &center[..p], tau, iterations);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }

        /// Bound tested: with f = h−1 outliers at ±1e6 among h honest
        /// updates, the result is within τ·L of the centre (the given one,
        /// or the median of the whole batch): ‖v − centre‖ ≤ τ·L for L
        /// iterations, however large the outliers.
        #[test]
        fn moves_at_most_tau_per_step(
            honest in batch(2..12, 1..20),
            signs in proptest::collection::vec(any::<bool>(), 11 * 20),
            tau in 0.1f64..5.0,
            iterations in 1usize..4,
            given in any::<bool>(),
        ) {
            let h = honest.len();
            let p = honest[0].len();
            let f = h - 1;
            let mut rows = honest.clone();
            for a in 0..f {
                rows.push((0..p).map(|j| if signs[a * 20 + j] { 1e6 } else { -1e6 }).collect());
            }
            let centre = if given { honest[0].clone() } else { median(&refs(&rows)).unwrap() };
            let v = centered_clipping(&refs(&rows), given.then_some(honest[0].as_slice()), tau, iterations).unwrap();
            let moved: f64 = v
                .iter()
                .zip(&centre)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>()
                .sqrt();
            prop_assert!(moved <= tau * iterations as f64 * (1.0 + 1e-5) + 1e-4, "moved {} > {}", moved, tau * iterations as f64);
        }
    }
}
