//! Coordinate-wise rules: median and trimmed mean, and the chunked driver
//! they (and Bulyan's last step) share.
//!
//! The driver splits the coordinates into fixed chunks of [`CHUNK`]
//! (parallel with rayon), transposes a sub-block of [`SUB`] coordinates of
//! every update into a small buffer, and hands each coordinate's n values to
//! the per-coordinate operation. Values are stored as `i32` keys whose
//! integer order is the order of `f32::total_cmp`, so selection compares
//! integers and NaN (never expected: the coordinator validates finiteness)
//! cannot panic or poison the order.

use rayon::prelude::*;

use super::{AggregateError, CHUNK, Rule, canonical_order, dims};

/// Coordinates transposed at once (n × SUB keys stay in L1/L2).
const SUB: usize = 64;

/// Order-preserving map from `f32` to `i32`: `key(a) < key(b)` exactly when
/// `a.total_cmp(&b)` is `Less`.
#[inline]
pub(crate) fn key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// Inverse of [`key`] (the map is an involution on the bits).
#[inline]
pub(crate) fn unkey(k: i32) -> f32 {
    f32::from_bits((k ^ ((((k >> 31) as u32) >> 1) as i32)) as u32)
}

/// Runs `op` on the keys of every coordinate (in batch order; `op` may
/// reorder them) and collects its results. `scratch` is per task.
pub(crate) fn per_coordinate<S, I, F>(updates: &[&[f32]], p: usize, init: I, op: F) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut [i32], &mut S) -> f32 + Sync + Send,
{
    let n = updates.len();
    let mut out = vec![0f32; p];
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || (vec![0i32; n * SUB], init()),
        |(buf, scratch), (c, out_chunk)| {
            let start = c * CHUNK;
            for (s, out_sub) in out_chunk.chunks_mut(SUB).enumerate() {
                let off = start + s * SUB;
                let len = out_sub.len();
                for (i, u) in updates.iter().enumerate() {
                    for (k, &x) in u[off..off + len].iter().enumerate() {
                        buf[k * n + i] = key(x);
                    }
                }
                for (k, o) in out_sub.iter_mut().enumerate() {
                    *o = op(&mut buf[k * n..(k + 1) * n], scratch);
                }
            }
        },
    );
    out
}

/// Median of non-empty keys in f64 (exact: the mean of two f32 is exact in
/// f64). Reorders `keys`.
pub(crate) fn median_of(keys: &mut [i32]) -> f64 {
    let n = keys.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (left, m, _) = keys.select_nth_unstable(mid);
    let hi = f64::from(unkey(*m));
    if n % 2 == 1 {
        hi
    } else {
        let lo = left
            .iter()
            .copied()
            .max()
            .map_or(hi, |k| f64::from(unkey(k)));
        (lo + hi) / 2.0
    }
}

/// Coordinate-wise median (Yin et al. 2018): per coordinate the middle
/// value, or the mean of the two middle values for even n.
///
/// Tolerates f < n/2 Byzantine values per coordinate: the result lies
/// within the range of the honest values. Selection, not sorting: O(n·p).
pub fn median(updates: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    Ok(per_coordinate(
        updates,
        p,
        || (),
        |keys, _| median_of(keys) as f32,
    ))
}

/// Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate drop the
/// `f` largest and `f` smallest values and average the other n−2f.
///
/// Needs n > 2f. With at most f Byzantine values per coordinate the result
/// lies within the range of the honest values. Two selections find the
/// smallest and largest kept value; the kept values are then summed in f64
/// in canonical client order (no sort), so the bits do not depend on the
/// batch order.
pub fn trimmed_mean(updates: &[&[f32]], f: usize) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    Rule::TrimmedMean { f }.check(n)?;
    let keep = n - 2 * f;
    let rows: Vec<&[f32]> = canonical_order(updates, None)
        .into_iter()
        .map(|i| updates[i])
        .collect();
    Ok(per_coordinate(&rows, p, Vec::new, |keys, scratch| {
        trimmed_of(keys, scratch, f, keep)
    }))
}

/// Mean of the values left after dropping the `f` smallest and `f` largest
/// (`keep = n − 2f >= 1`), summed in the order of `keys`.
fn trimmed_of(keys: &[i32], scratch: &mut Vec<i32>, f: usize, keep: usize) -> f32 {
    let n = keys.len();
    scratch.clear();
    scratch.extend_from_slice(keys);
    let (_, lo, rest) = scratch.select_nth_unstable(f);
    let lo = *lo;
    // The largest kept value, at sorted position n−f−1 = f+1 + (keep−2).
    let hi = if keep >= 2 {
        *rest.select_nth_unstable(keep - 2).1
    } else {
        lo
    };
    if lo == hi {
        return unkey(lo);
    }
    // Copies of lo and hi that are kept (the others were trimmed).
    let (mut le_lo, mut lt_hi) = (0usize, 0usize);
    for &k in keys {
        le_lo += usize::from(k <= lo);
        lt_hi += usize::from(k < hi);
    }
    let mut take_lo = le_lo - f;
    let mut take_hi = (n - f) - lt_hi;
    let mut sum = 0f64;
    for &k in keys {
        let take = if k > lo && k < hi {
            true
        } else if k == lo && take_lo > 0 {
            take_lo -= 1;
            true
        } else if k == hi && take_hi > 0 {
            take_hi -= 1;
            true
        } else {
            false
        };
        if take {
            sum += f64::from(unkey(k));
        }
    }
    (sum / keep as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use proptest::prelude::*;

    fn naive_sorted_column(rows: &[Vec<f32>], j: usize) -> Vec<f64> {
        let mut col: Vec<f64> = rows.iter().map(|r| f64::from(r[j])).collect();
        col.sort_by(f64::total_cmp);
        col
    }

    fn naive_median(rows: &[Vec<f32>]) -> Vec<f64> {
        (0..rows[0].len())
            .map(|j| {
                let c = naive_sorted_column(rows, j);
                let n = c.len();
                if n % 2 == 1 {
                    c[n / 2]
                } else {
                    (c[n / 2 - 1] + c[n / 2]) / 2.0
                }
            })
            .collect()
    }

    fn naive_trimmed(rows: &[Vec<f32>], f: usize) -> Vec<f64> {
        (0..rows[0].len())
            .map(|j| {
                let c = naive_sorted_column(rows, j);
                let kept = &c[f..c.len() - f];
                kept.iter().sum::<f64>() / kept.len() as f64
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (f64::from(*x) - y).abs() <= 1e-5 * (1.0 + y.abs()))
    }

    #[test]
    fn key_order_is_total_cmp() {
        let vals = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-40,
            1.0,
            3.5,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        for a in vals {
            assert_eq!(unkey(key(a)).to_bits(), a.to_bits());
            for b in vals {
                assert_eq!(key(a).cmp(&key(b)), a.total_cmp(&b), "{a} {b}");
            }
        }
    }

    #[test]
    fn hand_computed() {
        let rows = [
            vec![1f32, 10.0],
            vec![3.0, -2.0],
            vec![2.0, 4.0],
            vec![100.0, 5.0],
        ];
        assert_eq!(median(&refs(&rows)).unwrap(), vec![2.5, 4.5]);
        assert_eq!(median(&refs(&rows[..3])).unwrap(), vec![2.0, 4.0]);
        assert_eq!(trimmed_mean(&refs(&rows), 1).unwrap(), vec![2.5, 4.5]);
        assert_eq!(trimmed_mean(&refs(&rows[..3]), 1).unwrap(), vec![2.0, 4.0]);
        assert_eq!(
            trimmed_mean(&refs(&rows), 0).unwrap(),
            vec![26.5, 17.0 / 4.0]
        );
    }

    #[test]
    fn nan_does_not_panic() {
        let rows = [vec![f32::NAN, 1.0], vec![0.0, f32::NAN], vec![1.0, 2.0]];
        assert!(median(&refs(&rows)).is_ok());
        assert!(trimmed_mean(&refs(&rows), 1).is_ok());
    }

    #[test]
    fn refusals() {
        assert_eq!(median(&[]), Err(AggregateError::Empty));
        assert_eq!(trimmed_mean(&[], 0), Err(AggregateError::Empty));
        let rows = [vec![1f32; 3], vec![1f32; 2]];
        assert!(matches!(
            median(&refs(&rows)),
            Err(AggregateError::Shape { index: 1, .. })
        ));
        let rows = vec![vec![1f32; 3]; 4];
        assert_eq!(
            trimmed_mean(&refs(&rows), 2).unwrap_err().to_string(),
            "trimmed_mean needs n > 2f: n = 4, f = 2"
        );
    }

    #[test]
    fn spans_several_chunks() {
        let p = 2 * CHUNK + SUB + 3;
        let rows: Vec<Vec<f32>> = (0..9)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 7.0)
                    .collect()
            })
            .collect();
        assert!(close(&median(&refs(&rows)).unwrap(), &naive_median(&rows)));
        assert!(close(
            &trimmed_mean(&refs(&rows), 3).unwrap(),
            &naive_trimmed(&rows, 3)
        ));
    }

    proptest! {
        #[test]
        fn agree_with_naive_sort(rows in batch(1..20, 1..50), f in 0usize..10) {
            prop_assert!(close(&median(&refs(&rows)).unwrap(), &naive_median(&rows)));
            let n = rows.len();
            if n > 2 * f {
                prop_assert!(close(&trimmed_mean(&refs(&rows), f).unwrap(), &naive_trimmed(&rows, f)));
            } else {
                prop_assert!(trimmed_mean(&refs(&rows), f).is_err());
            }
        }

        #[test]
        fn permutation_gives_same_bits(rows in batch(1..20, 1..50), seed in any::<u64>()) {
            let n = rows.len();
            let f = (n - 1) / 2;
            let perm = permutation(n, seed);
            let prows = permute(&rows, &perm);
            prop_assert_eq!(bits(&median(&refs(&rows)).unwrap()), bits(&median(&refs(&prows)).unwrap()));
            prop_assert_eq!(
                bits(&trimmed_mean(&refs(&rows), f).unwrap()),
                bits(&trimmed_mean(&refs(&prows), f).unwrap())
            );
        }

        /// With f outliers at ±1e6 (any sign per value) among n > 2f
        /// updates, median and trimmed mean stay inside the per-coordinate
        /// range of the honest values.
        #[test]
        fn outliers_do_not_move_the_result_outside_honest_range(
            honest in batch(3..15, 1..30),
            signs in proptest::collection::vec(any::<bool>(), 7 * 30),
            seed in any::<u64>(),
        ) {
            let h = honest.len();
            let p = honest[0].len();
            let f = (h - 1).min(7); // n = h + f > 2f
            let mut rows = honest.clone();
            for a in 0..f {
                rows.push((0..p).map(|j| if signs[a * 30 + j] { 1e6 } else { -1e6 }).collect());
            }
            let rows = permute(&rows, &permutation(rows.len(), seed));
            let range = ranges(&honest);
            for out in [median(&refs(&rows)).unwrap(), trimmed_mean(&refs(&rows), f).unwrap()] {
                for (x, (lo, hi)) in out.iter().zip(&range) {
                    prop_assert!(*x >= *lo && *x <= *hi, "{} not in [{}, {}]", x, lo, hi);
                }
            }
        }
    }
}
