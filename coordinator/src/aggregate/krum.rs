//! Distance-based rules: Krum, Multi-Krum and Bulyan.
//!
//! All three start from the n×n matrix of squared Euclidean distances,
//! O(n²·p) work. [`pairwise_sq_distances`] computes it in one pass over the
//! data: the coordinates are cut into fixed chunks of [`DIST_CHUNK`]
//! processed in parallel; inside a chunk, blocks of [`DIST_BLOCK`]
//! coordinates of all n updates (n × 1 KiB) stay in cache while every pair
//! is visited. A block's squared differences are summed in f32 over 16
//! independent lanes (auto-vectorized), the lanes are added in f64, and the
//! f64 partials are summed in block order, then chunk order, so the bits do
//! not depend on the thread count. `(a−b)²` and `(b−a)²` are the same
//! float, so a pair's distance does not depend on which of the two comes
//! first in the batch.

use rayon::prelude::*;

use super::coordinate::{median_of, per_coordinate, unkey};
use super::{AggregateError, CHUNK, Rule, canonical_order, dims};

/// Coordinates summed in f32 before the partial goes to f64.
const DIST_BLOCK: usize = 256;
/// Coordinates per parallel task.
const DIST_CHUNK: usize = 8192;
/// f32 lanes of the distance kernel.
const LANES: usize = 16;

/// `Σ (aₖ − bₖ)²` over one block: f32 lanes, f64 total.
#[inline]
fn sq_dist_block(a: &[f32], b: &[f32]) -> f64 {
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    let mut s = 0f64;
    for v in acc {
        s += f64::from(v);
    }
    for (x, y) in ra.iter().zip(rb) {
        let d = f64::from(*x) - f64::from(*y);
        s += d * d;
    }
    s
}

/// The n×n matrix (row-major) of squared Euclidean distances between the
/// updates; zero diagonal, exactly symmetric.
pub fn pairwise_sq_distances(updates: &[&[f32]]) -> Result<Vec<f64>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    let npairs = n * (n - 1) / 2;
    let chunks = p.div_ceil(DIST_CHUNK);
    let partials: Vec<Vec<f64>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let lo = c * DIST_CHUNK;
            let hi = (lo + DIST_CHUNK).min(p);
            let mut acc = vec![0f64; npairs];
            let mut b = lo;
            while b < hi {
                let e = (b + DIST_BLOCK).min(hi);
                let mut k = 0;
                for i in 0..n {
                    let xi = &updates[i][b..e];
                    for xj in &updates[i + 1..] {
                        acc[k] += sq_dist_block(xi, &xj[b..e]);
                        k += 1;
                    }
                }
                b = e;
            }
            acc
        })
        .collect();
    let mut pairs = vec![0f64; npairs];
    for part in &partials {
        for (s, v) in pairs.iter_mut().zip(part) {
            *s += v;
        }
    }
    let mut d = vec![0f64; n * n];
    let mut k = 0;
    for i in 0..n {
        for j in i + 1..n {
            d[i * n + j] = pairs[k];
            d[j * n + i] = pairs[k];
            k += 1;
        }
    }
    Ok(d)
}

/// Krum scores of `members` within `members`: the sum of the squared
/// distances to the `members.len() − f − 2` nearest other members (none if
/// that is not positive), summed in ascending order.
fn scores_within(d: &[f64], n: usize, members: &[usize], f: usize) -> Vec<f64> {
    let k = members.len().saturating_sub(f + 2);
    let mut row = Vec::with_capacity(members.len());
    members
        .iter()
        .map(|&i| {
            row.clear();
            row.extend(members.iter().filter(|&&j| j != i).map(|&j| d[i * n + j]));
            row.sort_unstable_by(f64::total_cmp);
            row.iter().take(k).sum()
        })
        .collect()
}

/// Krum scores of every update (Blanchard et al. 2017): the sum of squared
/// distances to its n−f−2 nearest neighbours. Needs n ≥ 2f+3.
pub fn krum_scores(updates: &[&[f32]], f: usize) -> Result<Vec<f64>, AggregateError> {
    dims(updates)?;
    Rule::Krum { f }.check(updates.len())?;
    let d = pairwise_sq_distances(updates)?;
    let all: Vec<usize> = (0..updates.len()).collect();
    Ok(scores_within(&d, updates.len(), &all, f))
}

/// Position of each update in the canonical (value) order: the Krum
/// tie-break.
fn ranks(updates: &[&[f32]]) -> Vec<usize> {
    let mut rank = vec![0; updates.len()];
    for (r, i) in canonical_order(updates, None).into_iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// Mean of `rows` per coordinate, summed in f64 in the given order.
fn mean_in_order(rows: &[&[f32]], p: usize) -> Vec<f32> {
    let m = rows.len() as f64;
    let mut out = vec![0f32; p];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out_chunk)| {
            let start = c * CHUNK;
            let mut acc = vec![0f64; out_chunk.len()];
            for r in rows {
                for (a, &x) in acc.iter_mut().zip(&r[start..start + out_chunk.len()]) {
                    *a += f64::from(x);
                }
            }
            for (o, a) in out_chunk.iter_mut().zip(acc) {
                *o = (a / m) as f32;
            }
        });
    out
}

/// Multi-Krum without the parameter check: the mean of the `m` best-scored
/// updates (score, then canonical order), and their indices ascending.
pub(crate) fn multi_krum_selected(
    updates: &[&[f32]],
    f: usize,
    m: usize,
) -> Result<(Vec<f32>, Vec<usize>), AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    let d = pairwise_sq_distances(updates)?;
    let all: Vec<usize> = (0..n).collect();
    let scores = scores_within(&d, n, &all, f);
    let rank = ranks(updates);
    let mut order = all;
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(rank[a].cmp(&rank[b])));
    order.truncate(m.min(n));
    let rows: Vec<&[f32]> = order.iter().map(|&i| updates[i]).collect();
    let value = mean_in_order(&rows, p);
    order.sort_unstable();
    Ok((value, order))
}

/// Krum: the update with the smallest Krum score (ties: the smaller update
/// in lexicographic value order). Needs n ≥ 2f+3; with at most f Byzantine
/// updates the choice is an update whose distance to the honest ones is
/// bounded by the honest spread.
pub fn krum(updates: &[&[f32]], f: usize) -> Result<Vec<f32>, AggregateError> {
    dims(updates)?;
    Rule::Krum { f }.check(updates.len())?;
    Ok(multi_krum_selected(updates, f, 1)?.0)
}

/// Multi-Krum: the mean of the `m` updates with the smallest Krum scores.
/// Needs n ≥ 2f+3 and 1 ≤ m ≤ n−f−2.
pub fn multi_krum(updates: &[&[f32]], f: usize, m: usize) -> Result<Vec<f32>, AggregateError> {
    dims(updates)?;
    Rule::MultiKrum { f, m }.check(updates.len())?;
    Ok(multi_krum_selected(updates, f, m)?.0)
}

/// Bulyan without the parameter check; returns the value and the θ updates
/// selected by iterated Krum, ascending.
pub(crate) fn bulyan_selected(
    updates: &[&[f32]],
    f: usize,
) -> Result<(Vec<f32>, Vec<usize>), AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    let d = pairwise_sq_distances(updates)?;
    let rank = ranks(updates);
    let theta = n.saturating_sub(2 * f).max(1);
    let beta = theta.saturating_sub(2 * f).max(1);
    let mut members: Vec<usize> = (0..n).collect();
    let mut selection = Vec::with_capacity(theta);
    for _ in 0..theta {
        let scores = scores_within(&d, n, &members, f);
        let best = (0..members.len()).min_by(|&a, &b| {
            scores[a]
                .total_cmp(&scores[b])
                .then(rank[members[a]].cmp(&rank[members[b]]))
        });
        let Some(best) = best else { break };
        selection.push(members.remove(best));
    }
    // Canonical order for the per-coordinate sums.
    selection.sort_unstable_by_key(|&i| rank[i]);
    let rows: Vec<&[f32]> = selection.iter().map(|&i| updates[i]).collect();
    let value = per_coordinate(
        &rows,
        p,
        || (Vec::new(), Vec::new()),
        |keys, scratch: &mut Scratch| closest_mean(keys, scratch, beta),
    );
    selection.sort_unstable();
    Ok((value, selection))
}

/// Per-task buffers of [`closest_mean`].
type Scratch = (Vec<i32>, Vec<(f64, i32)>);

/// Order of (distance to the median, value): the β smallest are kept, ties
/// in distance go to the smaller value.
fn by_distance(a: &(f64, i32), b: &(f64, i32)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Mean of the `beta` values closest to their median (ties: the smaller
/// value), summed in f64 in the order of `keys` (canonical client order).
/// One selection for the median, one for the β-th distance; no sort.
fn closest_mean(keys: &[i32], (copy, dist): &mut Scratch, beta: usize) -> f32 {
    if keys.is_empty() || beta == 0 {
        return 0.0;
    }
    copy.clear();
    copy.extend_from_slice(keys);
    let med = median_of(copy);
    let d = |k: i32| ((f64::from(unkey(k)) - med).abs(), k);
    dist.clear();
    dist.extend(keys.iter().map(|&k| d(k)));
    let beta = beta.min(keys.len());
    let pivot = *dist.select_nth_unstable_by(beta - 1, by_distance).1;
    let below = keys
        .iter()
        .filter(|&&k| by_distance(&d(k), &pivot).is_lt())
        .count();
    let mut ties = beta - below;
    let mut sum = 0f64;
    for &k in keys {
        let take = match by_distance(&d(k), &pivot) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                true
            }
            _ => false,
        };
        if take {
            sum += f64::from(unkey(k));
        }
    }
    (sum / beta as f64) as f32
}

/// Bulyan (El Mhamdi, Guerraoui, Rouault 2018): select θ = n−2f updates by
/// repeatedly taking the Krum winner of the remaining ones (Krum with the
/// same f on the shrinking set), then per coordinate average the
/// β = θ−2f selected values closest to their median. Needs n ≥ 4f+3.
pub fn bulyan(updates: &[&[f32]], f: usize) -> Result<Vec<f32>, AggregateError> {
    dims(updates)?;
    Rule::Bulyan { f }.check(updates.len())?;
    Ok(bulyan_selected(updates, f)?.0)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use proptest::prelude::*;

    fn naive_distances(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
        rows.iter()
            .map(|a| {
                rows.iter()
                    .map(|b| {
                        a.iter()
                            .zip(b)
                            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    fn naive_scores(d: &[Vec<f64>], members: &[usize], f: usize) -> Vec<f64> {
        members
            .iter()
            .map(|&i| {
                let mut row: Vec<f64> = members
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| d[i][j])
                    .collect();
                row.sort_by(f64::total_cmp);
                row.iter().take(members.len().saturating_sub(f + 2)).sum()
            })
            .collect()
    }

    fn rel_close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
    }

    /// Naive Bulyan: iterated naive Krum (exact distances), then per
    /// coordinate a full sort by distance to the median.
    fn naive_bulyan(rows: &[Vec<f32>], f: usize) -> (Vec<f64>, Vec<usize>) {
        let n = rows.len();
        let d = naive_distances(rows);
        let theta = n - 2 * f;
        let beta = theta - 2 * f;
        let mut members: Vec<usize> = (0..n).collect();
        let mut sel = vec![];
        for _ in 0..theta {
            let s = naive_scores(&d, &members, f);
            let mut best = 0;
            for k in 1..members.len() {
                let lex = rows[members[k]]
                    .iter()
                    .zip(&rows[members[best]])
                    .map(|(a, b)| a.total_cmp(b))
                    .find(|o| o.is_ne());
                // Ties (possible when no neighbour is counted) go to the
                // lexicographically smaller update.
                if s[k] < s[best] || (s[k] == s[best] && lex == Some(std::cmp::Ordering::Less)) {
                    best = k;
                }
            }
            sel.push(members.remove(best));
        }
        let value = (0..rows[0].len())
            .map(|j| {
                let mut col: Vec<f64> = sel.iter().map(|&i| f64::from(rows[i][j])).collect();
                col.sort_by(f64::total_cmp);
                let med = if theta % 2 == 1 {
                    col[theta / 2]
                } else {
                    (col[theta / 2 - 1] + col[theta / 2]) / 2.0
                };
                col.sort_by(|a, b| (a - med).abs().total_cmp(&(b - med).abs()));
                col[..beta].iter().sum::<f64>() / beta as f64
            })
            .collect();
        sel.sort_unstable();
        (value, sel)
    }

    #[test]
    fn distances_match_naive_across_blocks_and_chunks() {
        let p = DIST_CHUNK + 3 * DIST_BLOCK + 5;
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 37.0)
                    .collect()
            })
            .collect();
        let d = pairwise_sq_distances(&refs(&rows)).unwrap();
        let nd = naive_distances(&rows);
        for i in 0..6 {
            for j in 0..6 {
                assert!(rel_close(d[i * 6 + j], nd[i][j]), "{i} {j}");
                assert_eq!(d[i * 6 + j].to_bits(), d[j * 6 + i].to_bits());
            }
        }
    }

    #[test]
    fn hand_computed_krum() {
        // Three close points and one far away: f = 0 needs n >= 3.
        let rows = [
            vec![0f32, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![10.0, 10.0],
        ];
        // n - f - 2 = 2 neighbours. Scores: [2, 1+2, 1+2, 181+181].
        let s = krum_scores(&refs(&rows), 0).unwrap();
        assert_eq!(s, vec![2.0, 3.0, 3.0, 362.0]);
        assert_eq!(krum(&refs(&rows), 0).unwrap(), vec![0.0, 0.0]);
        // Tie between [1, 0] and [0, 1]: the lexicographically smaller wins.
        assert_eq!(multi_krum(&refs(&rows), 0, 2).unwrap(), vec![0.0, 0.5]);
        let agg = Rule::MultiKrum { f: 0, m: 2 }
            .aggregate_from(&refs(&rows), &[1.0; 4], None)
            .unwrap();
        assert_eq!(agg.selected, vec![0, 2]);
    }

    #[test]
    fn refusals() {
        let rows = vec![vec![0f32; 4]; 6];
        assert_eq!(
            krum(&refs(&rows), 2).unwrap_err().to_string(),
            "krum needs n >= 2f+3: n = 6, f = 2"
        );
        assert_eq!(
            multi_krum(&refs(&rows), 1, 4).unwrap_err().to_string(),
            "multi_krum needs 1 <= m <= n-f-2: n = 6, f = 1, m = 4"
        );
        assert_eq!(
            bulyan(&refs(&rows), 1).unwrap_err().to_string(),
            "bulyan needs n >= 4f+3: n = 6, f = 1"
        );
        assert_eq!(krum(&[], 0), Err(AggregateError::Empty));
        assert_eq!(pairwise_sq_distances(&[]), Err(AggregateError::Empty));
        let ragged = [vec![0f32; 4], vec![0f32; 4], vec![0f32; 3]];
        assert!(matches!(
            bulyan(&refs(&ragged), 0),
            Err(AggregateError::Shape { index: 2, .. })
        ));
    }

    proptest! {
        /// Scores agree with the O(n²) naive computation; Krum picks an
        /// update whose exact score is minimal up to rounding; Multi-Krum
        /// averages m updates whose exact scores are all <= the exact
        /// scores of those left out (up to rounding).
        #[test]
        fn krum_agrees_with_naive(rows in batch(3..14, 1..40), f in 0usize..6, m in 1usize..12) {
            let n = rows.len();
            let f = f % ((n - 3) / 2 + 1); // n >= 2f + 3
            let d = naive_distances(&rows);
            let all: Vec<usize> = (0..n).collect();
            let exact = naive_scores(&d, &all, f);
            let got = krum_scores(&refs(&rows), f).unwrap();
            for (a, b) in got.iter().zip(&exact) {
                prop_assert!(rel_close(*a, *b));
            }
            let best = exact.iter().copied().fold(f64::INFINITY, f64::min);
            let agg = Rule::Krum { f }.aggregate_from(&refs(&rows), &vec![1.0; n], None).unwrap();
            prop_assert_eq!(agg.selected.len(), 1);
            prop_assert!(rel_close(exact[agg.selected[0]], best));
            prop_assert_eq!(&agg.value, &rows[agg.selected[0]]);

            let m = m.min(n - f - 2);
            let agg = Rule::MultiKrum { f, m }.aggregate_from(&refs(&rows), &vec![1.0; n], None).unwrap();
            prop_assert_eq!(agg.selected.len(), m);
            let worst_in = agg.selected.iter().map(|&i| exact[i]).fold(f64::NEG_INFINITY, f64::max);
            for i in (0..n).filter(|i| !agg.selected.contains(i)) {
                prop_assert!(worst_in <= exact[i] * (1.0 + 1e-5) + 1e-5);
            }
            for (j, v) in agg.value.iter().enumerate() {
                let mean = agg.selected.iter().map(|&i| f64::from(rows[i][j])).sum::<f64>() / m as f64;
                prop_assert!(rel_close(f64::from(*v), mean));
            }
        }

        /// Bulyan agrees with a naive implementation when the naive Krum
        /// choices are unambiguous (distinct random inputs).
        #[test]
        fn bulyan_agrees_with_naive(rows in batch(3..16, 1..30), f in 0usize..4) {
            let n = rows.len();
            let f = f % ((n - 3) / 4 + 1); // n >= 4f + 3
            let (want, want_sel) = naive_bulyan(&rows, f);
            let agg = Rule::Bulyan { f }.aggregate_from(&refs(&rows), &vec![1.0; n], None).unwrap();
            prop_assert_eq!(&agg.selected, &want_sel);
            for (a, b) in agg.value.iter().zip(&want) {
                prop_assert!((f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }

        /// f outliers at ±1e6 among n >= 4f+3 honest-plus-outlier updates:
        /// Krum and Multi-Krum never select an outlier, Bulyan's selection
        /// may keep some but its value stays in the honest per-coordinate
        /// range.
        #[test]
        fn outliers_are_not_selected(
            honest in batch(7..16, 1..20),
            signs in proptest::collection::vec(any::<bool>(), 4 * 20),
            seed in any::<u64>(),
        ) {
            let h = honest.len();
            let p = honest[0].len();
            let f = ((h - 3) / 3).min(4); // n = h + f >= 4f + 3
            let mut rows = honest.clone();
            for a in 0..f {
                rows.push((0..p).map(|j| if signs[a * 20 + j] { 1e6 } else { -1e6 }).collect());
            }
            let n = rows.len();
            let perm = permutation(n, seed);
            let rows = permute(&rows, &perm);
            let is_honest = |i: usize| perm[i] < h;
            let w = vec![1.0; n];
            let k = Rule::Krum { f }.aggregate_from(&refs(&rows), &w, None).unwrap();
            prop_assert!(k.selected.iter().all(|&i| is_honest(i)));
            let mk = Rule::MultiKrum { f, m: n - f - 2 }.aggregate_from(&refs(&rows), &w, None).unwrap();
            prop_assert!(mk.selected.iter().all(|&i| is_honest(i)));
            let b = Rule::Bulyan { f }.aggregate_from(&refs(&rows), &w, None).unwrap();
            let range = ranges(&honest);
            for out in [&k.value, &mk.value, &b.value] {
                for (x, (lo, hi)) in out.iter().zip(&range) {
                    prop_assert!(*x >= *lo && *x <= *hi, "{} not in [{}, {}]", x, lo, hi);
                }
            }
        }
    }
}
