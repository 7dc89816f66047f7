//! Coordinate-wise rules: median and trimmed mean, and the chunked driver
//! they (and Bulyan's last step) share.
//!
//! [`per_lane_block`] splits the coordinates into fixed chunks of [`CHUNK`]
//! (parallel with rayon; the split depends only on p) and works on
//! sub-blocks of a chunk. The fast path: a sub-block of [`LANES`]
//! coordinates of every update is copied, row by row, into an n × LANES f32
//! buffer (no transpose), and a comparator network (Batcher's odd-even merge
//! sort, pruned to the sorted positions the rule needs) runs on whole rows,
//! so every compare-exchange is a branch-free min/max over LANES
//! coordinates that the compiler vectorizes. A network sorts, so the values
//! it leaves at the positions it was pruned for are the order statistics of
//! the multiset, independent of the batch order. Before the network, −0.0 is
//! mapped to +0.0 (the IEEE order cannot tell them apart; the results are
//! equal as numbers); a sub-block holding a NaN goes to the exact path.
//!
//! The exact path, for a sub-block holding a NaN (never expected: the
//! coordinator validates finiteness), gathers each coordinate's n values as
//! `i32` keys whose integer order is the order of `f32::total_cmp`, so
//! selection compares integers and NaN cannot panic or poison the order.

use rayon::prelude::*;

use super::{AggregateError, CHUNK, Rule, canonical_order, dims};

/// Coordinates per comparator-network row (n × LANES f32 stay in L1).
pub(crate) const LANES: usize = 32;

/// One row of the lane-block buffer: a value per coordinate.
pub(crate) type Lanes = [f32; LANES];

/// Batcher's odd-even merge sort network for `n` inputs: compare-exchange
/// pairs `(i, j)`, `i < j`, after which position `i` holds the `i`-th
/// smallest value. Built for the next power of two; pairs that touch a
/// position ≥ n are dropped (those would hold +∞ and never move).
pub(crate) fn sorting_network(n: usize) -> Vec<(usize, usize)> {
    let t = n.next_power_of_two();
    let mut out = Vec::new();
    let mut p = 1;
    while p < t {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < t {
                for i in 0..k.min(t - j - k) {
                    let (a, b) = (i + j, i + j + k);
                    if a / (2 * p) == b / (2 * p) && b < n {
                        out.push((a, b));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    out
}

/// `net` without the compare-exchanges that cannot affect the values at
/// positions `outputs` (walked backwards from the outputs).
pub(crate) fn prune_network(
    net: &[(usize, usize)],
    n: usize,
    outputs: &[usize],
) -> Vec<(usize, usize)> {
    let mut needed = vec![false; n];
    for &o in outputs {
        if let Some(x) = needed.get_mut(o) {
            *x = true;
        }
    }
    let mut kept: Vec<(usize, usize)> = net
        .iter()
        .rev()
        .filter(|&&(a, b)| {
            let keep = needed[a] || needed[b];
            if keep {
                needed[a] = true;
                needed[b] = true;
            }
            keep
        })
        .copied()
        .collect();
    kept.reverse();
    kept
}

/// Runs a network on the rows of a lane block. `if x < y` compiles to
/// `minps`/`maxps`; with no NaN and no −0.0 it is an exact compare-exchange.
#[allow(clippy::needless_range_loop)]
fn run_network(rows: &mut [Lanes], net: &[(usize, usize)]) {
    for &(i, j) in net {
        let (left, right) = rows.split_at_mut(j);
        let (a, b) = (&mut left[i], &mut right[0]);
        let mut lo = [0f32; LANES];
        let mut hi = [0f32; LANES];
        // Indexing (not zipped iterators): this form vectorizes.
        for k in 0..LANES {
            let (x, y) = (a[k], b[k]);
            lo[k] = if x < y { x } else { y };
            hi[k] = if x < y { y } else { x };
        }
        *a = lo;
        *b = hi;
    }
}

/// Copies coordinates `off..off + len` of every row into the lane block
/// (−0.0 → +0.0, unused lanes 0); false if a value is NaN.
fn load_lanes(updates: &[&[f32]], off: usize, len: usize, rows: &mut [Lanes]) -> bool {
    let mut nan = false;
    for (dst, u) in rows.iter_mut().zip(updates) {
        for (d, &x) in dst.iter_mut().zip(&u[off..off + len]) {
            nan |= x.is_nan();
            *d = x + 0.0;
        }
        dst[len..].fill(0.0);
    }
    !nan
}

/// Runs `net` on every lane block of the coordinates and `finish` on the
/// result (lane block after the network, the updates, the offset of the
/// block, its outputs). A block holding a NaN goes to `exact` instead, with
/// the keys of one coordinate at a time (in batch order).
pub(crate) fn per_lane_block<S, I, F, E>(
    updates: &[&[f32]],
    p: usize,
    net: &[(usize, usize)],
    init: I,
    finish: F,
    exact: E,
) -> Vec<f32>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&[Lanes], &[&[f32]], usize, &mut [f32]) + Sync + Send,
    E: Fn(&mut [i32], &mut S) -> f32 + Sync + Send,
{
    let n = updates.len();
    let mut out = vec![0f32; p];
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || (vec![[0f32; LANES]; n], vec![0i32; n], init()),
        |(rows, keys, scratch), (c, out_chunk)| {
            let start = c * CHUNK;
            for (s, out_sub) in out_chunk.chunks_mut(LANES).enumerate() {
                let off = start + s * LANES;
                let len = out_sub.len();
                if load_lanes(updates, off, len, rows) {
                    run_network(rows, net);
                    finish(rows, updates, off, out_sub);
                } else {
                    for (k, o) in out_sub.iter_mut().enumerate() {
                        for (key_i, u) in keys.iter_mut().zip(updates) {
                            *key_i = key(u[off + k]);
                        }
                        *o = exact(keys, scratch);
                    }
                }
            }
        },
    );
    out
}

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
/// value, or the mean of the two middle values for even n (in f64).
///
/// Tolerates f < n/2 Byzantine values per coordinate: the result lies
/// within the range of the honest values. A comparator network pruned to
/// the middle position(s) runs on blocks of [`LANES`] coordinates; O(n log²n)
/// branch-free compare-exchanges per coordinate, vectorized across
/// coordinates.
pub fn median(updates: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    let mid = n / 2;
    let outputs = if n % 2 == 1 {
        vec![mid]
    } else {
        vec![mid - 1, mid]
    };
    let net = prune_network(&sorting_network(n), n, &outputs);
    Ok(per_lane_block(
        updates,
        p,
        &net,
        || (),
        |rows, _, _, out| {
            if n % 2 == 1 {
                for (o, &v) in out.iter_mut().zip(&rows[mid]) {
                    *o = v;
                }
            } else {
                for ((o, &a), &b) in out.iter_mut().zip(&rows[mid - 1]).zip(&rows[mid]) {
                    *o = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
                }
            }
        },
        |keys, _| median_of(keys) as f32,
    ))
}

/// Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate drop the
/// `f` largest and `f` smallest values and average the other n−2f.
///
/// Needs n > 2f. With at most f Byzantine values per coordinate the result
/// lies within the range of the honest values. A comparator network pruned
/// to sorted positions f and n−1−f finds the smallest and largest kept
/// value `lo` and `hi` of every coordinate; then one pass over the updates
/// in canonical client order sums the values strictly between them in f64
/// and counts the copies of `lo` and `hi` that are kept, which are added
/// last. No value outside [lo, hi] enters the sum, so a huge outlier cannot
/// cancel precision, and the bits do not depend on the batch order.
pub fn trimmed_mean(updates: &[&[f32]], f: usize) -> Result<Vec<f32>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    Rule::TrimmedMean { f }.check(n)?;
    let keep = n - 2 * f;
    let rows: Vec<&[f32]> = canonical_order(updates, None)
        .into_iter()
        .map(|i| updates[i])
        .collect();
    let (ilo, ihi) = (f, n - 1 - f);
    let net = prune_network(&sorting_network(n), n, &[ilo, ihi]);
    Ok(per_lane_block(
        &rows,
        p,
        &net,
        Vec::new,
        |lanes, src, off, out| trimmed_lanes(&lanes[ilo], &lanes[ihi], src, off, out, f),
        |keys, scratch| trimmed_of(keys, scratch, f, keep),
    ))
}

/// Trimmed means of one lane block given the smallest and largest kept
/// value of each coordinate.
fn trimmed_lanes(
    lo: &Lanes,
    hi: &Lanes,
    updates: &[&[f32]],
    off: usize,
    out: &mut [f32],
    f: usize,
) {
    let n = updates.len();
    let keep = (n - 2 * f) as f64;
    let len = out.len();
    let mut sum = [0f64; LANES];
    let mut le_lo = [0u32; LANES];
    let mut lt_hi = [0u32; LANES];
    for u in updates {
        let src = &u[off..off + len];
        for ((((s, a), b), (&l, &h)), &x) in sum
            .iter_mut()
            .zip(le_lo.iter_mut())
            .zip(lt_hi.iter_mut())
            .zip(lo.iter().zip(hi))
            .zip(src)
        {
            let v = x + 0.0;
            *s += if l < v && v < h { f64::from(v) } else { 0.0 };
            *a += u32::from(v <= l);
            *b += u32::from(v < h);
        }
    }
    for (k, o) in out.iter_mut().enumerate() {
        let (l, h) = (lo[k], hi[k]);
        *o = if l < h {
            // Kept copies: sorted positions f..=n−1−f.
            let take_lo = (le_lo[k] as usize).saturating_sub(f) as f64;
            let take_hi = (n - f).saturating_sub(lt_hi[k] as usize) as f64;
            ((sum[k] + take_lo * f64::from(l) + take_hi * f64::from(h)) / keep) as f32
        } else {
            l
        };
    }
}

/// Mean of the values left after dropping the `f` smallest and `f` largest
/// (`keep = n − 2f >= 1`), summed in the order of `keys` (exact path).
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

    /// 0-1 principle: a network sorts every input iff it sorts every 0/1
    /// input; exhaustive up to n = 16, random values beyond.
    #[test]
    fn sorting_network_sorts() {
        for n in 1..=16usize {
            let net = sorting_network(n);
            for mask in 0u32..(1 << n) {
                let mut v: Vec<u32> = (0..n).map(|i| (mask >> i) & 1).collect();
                for &(a, b) in &net {
                    if v[a] > v[b] {
                        v.swap(a, b);
                    }
                }
                assert!(v.windows(2).all(|w| w[0] <= w[1]), "n={n} mask={mask:b}");
            }
        }
        for n in [17usize, 31, 64, 80, 100, 127, 130] {
            let net = sorting_network(n);
            for seed in 0..50u64 {
                let perm = permutation(n, seed);
                let mut v: Vec<usize> = perm.iter().map(|&i| i % 7 + i / 3).collect();
                let mut want = v.clone();
                want.sort_unstable();
                for &(a, b) in &net {
                    if v[a] > v[b] {
                        v.swap(a, b);
                    }
                }
                assert_eq!(v, want, "n={n}");
                let mut v: Vec<usize> = perm.iter().map(|&i| i % 7 + i / 3).collect();
                let outs = [0, n / 2, n - 1];
                for &(a, b) in &prune_network(&net, n, &outs) {
                    if v[a] > v[b] {
                        v.swap(a, b);
                    }
                }
                for o in outs {
                    assert_eq!(v[o], want[o], "n={n} pruned at {o}");
                }
            }
        }
    }

    /// A NaN sends its lane block to the exact path; the other coordinates
    /// of the block are unaffected. −0.0 is taken as +0.0.
    #[test]
    fn nan_block_uses_exact_path_and_signed_zero_is_zero() {
        let p = LANES + 5;
        let mut rows: Vec<Vec<f32>> = (0..7)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 13 + j * 5) % 17) as f32 - 8.0)
                    .collect()
            })
            .collect();
        let want_med = naive_median(&rows);
        let want_tm = naive_trimmed(&rows, 2);
        rows[3][10] = f32::NAN;
        let med = median(&refs(&rows)).unwrap();
        let tm = trimmed_mean(&refs(&rows), 2).unwrap();
        for j in (0..p).filter(|&j| j != 10) {
            assert_eq!(f64::from(med[j]), want_med[j], "{j}");
            assert!((f64::from(tm[j]) - want_tm[j]).abs() <= 1e-6, "{j}");
        }
        let zeros = [vec![-0.0f32], vec![-0.0], vec![0.0]];
        assert_eq!(median(&refs(&zeros)).unwrap()[0], 0.0);
        assert_eq!(trimmed_mean(&refs(&zeros), 1).unwrap()[0], 0.0);
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
        let p = 2 * CHUNK + LANES + 3;
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
