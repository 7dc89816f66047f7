//! Distance-based rules: Krum, Multi-Krum and Bulyan.
//!
//! All three start from the n×n matrix of squared Euclidean distances,
//! O(n²·p) work, computed by [`pairwise_sq_distances`] from Gram matrices:
//! `‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b`. The updates are first put in canonical
//! (value) order, so every bit below is independent of the batch order. The
//! coordinates are cut into fixed chunks of [`GRAM_CHUNK`] (parallel with
//! rayon); inside a chunk, blocks of [`GRAM_BLOCK`] coordinates of all n
//! updates are copied, coordinate-major (so both sgemm operands are packed
//! from contiguous memory), into a block × n f32 buffer, centred on the
//! block's per-coordinate mean (so a common offset does not cancel
//! catastrophically), and the block's Gram matrix `Y·Yᵀ` is computed by single-threaded sgemm
//! (ndarray → matrixmultiply, AVX2/FMA or AVX-512 picked at run time). For
//! n ≤ [`GRAM_TILE`] that is one product (packing the operands costs more
//! than the kernel, so halving the flops through symmetry does not pay);
//! beyond, only the tiles on and above the diagonal are computed. A
//! block's distances `Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ` are formed in f64 and summed in
//! block order, the chunk partials in chunk order, so the bits do not depend
//! on the thread count. Each pair gets one value, written to both (i, j) and
//! (j, i), so the matrix is exactly symmetric.
//!
//! The Gram identity loses relative accuracy for a pair much closer to each
//! other than to the block centre. Such pairs (distance below
//! [`REFINE`] × the sum of their squared distances to the centres) are
//! recomputed directly, `Σ (aₖ − bₖ)²` with f64 block partials, so every
//! distance keeps a small relative error (see the property test
//! `gram_distances_agree_with_direct_sum`). When more than n pairs need
//! it (far outliers pulled the mean away from the bulk), the Gram pass is
//! redone centred on the medoid first. The direct pass stays cheap unless
//! many updates form tight clusters away from that centre, where it costs up
//! to the direct pairwise pass the Gram matrices replace.

use std::cmp::Ordering;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis, Slice};
use rayon::prelude::*;

use super::coordinate::{
    LANES as NET_LANES, Lanes, median_of, per_lane_block, sorting_network, unkey,
};
use super::{AggregateError, Rule, canonical_order, dims, weighted_sum_in_order};

/// Coordinates per sgemm call (f32 accumulation inside a block).
const GRAM_BLOCK: usize = 4096;
/// Coordinates per parallel task (f64 accumulation across its blocks).
const GRAM_CHUNK: usize = 4 * GRAM_BLOCK;
/// Rows per Gram tile (a multiple of the 8- and 16-row sgemm kernels).
const GRAM_TILE: usize = 128;
/// A Gram distance below this fraction of `cᵢ + cⱼ` (squared distances to
/// the block centres) is recomputed directly.
const REFINE: f64 = 0.25;
/// Coordinates summed in f32 before the partial goes to f64 (direct pass).
const DIST_BLOCK: usize = 256;
/// f32 lanes of the direct distance kernel.
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

/// `‖a − b‖²` summed directly: f32 blocks of [`DIST_BLOCK`], f64 across
/// blocks in order. Symmetric in `a` and `b` to the bit.
pub(crate) fn direct_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.chunks(DIST_BLOCK)
        .zip(b.chunks(DIST_BLOCK))
        .map(|(x, y)| sq_dist_block(x, y))
        .fold(0.0, |s, v| s + v)
}

/// Per-chunk accumulators: packed upper-triangle distances (i < j) and the
/// squared distances of every row to the block centres.
struct GramAcc {
    pairs: Vec<f64>,
    centred: Vec<f64>,
}

/// Index of pair (i, j), i < j, in the packed upper triangle of n×n.
#[inline]
fn pair_index(n: usize, i: usize, j: usize) -> usize {
    i * n - i * (i + 1) / 2 + (j - i - 1)
}

/// What the Gram blocks are centred on.
#[derive(Clone, Copy)]
enum Centre {
    /// The block's per-coordinate mean.
    Mean,
    /// One of the rows (a medoid).
    Row(usize),
}

/// Gram distances of the columns `lo..hi` of `rows` (n rows), in blocks.
fn gram_chunk(
    rows: &[&[f32]],
    lo: usize,
    hi: usize,
    on: Centre,
    buf: &mut Vec<f32>,
    g: &mut Vec<f32>,
) -> GramAcc {
    let n = rows.len();
    let mut acc = GramAcc {
        pairs: vec![0f64; n * (n - 1) / 2],
        centred: vec![0f64; n],
    };
    let mut centre = [0f32; GRAM_BLOCK];
    let tiles: Vec<(usize, usize)> = (0..n)
        .step_by(GRAM_TILE)
        .map(|t| (t, (t + GRAM_TILE).min(n)))
        .collect();
    let mut b = lo;
    while b < hi {
        let e = (b + GRAM_BLOCK).min(hi);
        let w = e - b;
        let centre = &mut centre[..w];
        match on {
            // Per-coordinate mean, summed in f32 in row (canonical) order:
            // it only has to be a deterministic point near the data.
            Centre::Mean => {
                centre.fill(0.0);
                // Four rows per sweep (more memory streams in flight);
                // each coordinate adds the rows in order.
                let (quads, rest) = rows.as_chunks::<4>();
                for q in quads {
                    let [r0, r1, r2, r3] = q.map(|r| &r[b..e]);
                    for ((((c, &x0), &x1), &x2), &x3) in
                        centre.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3)
                    {
                        *c = *c + x0 + x1 + x2 + x3;
                    }
                }
                for r in rest {
                    for (c, &x) in centre.iter_mut().zip(&r[b..e]) {
                        *c += x;
                    }
                }
                let inv = 1.0 / n as f32;
                for c in centre.iter_mut() {
                    *c *= inv;
                }
            }
            Centre::Row(k) => centre.copy_from_slice(&rows[k][b..e]),
        }
        // Coordinate-major copy, centred: buf[k·n + i] = rows[i][b + k] − c[k].
        // Both sgemm operands are then read contiguously when packed (the
        // row-major layout made one of them a 16 KiB-stride gather).
        if buf.len() != w * n {
            // (Every element is overwritten below.)
            buf.clear();
            buf.resize(w * n, 0.0);
        }
        // Eight rows at a time: each coordinate's eight values are one
        // contiguous 32-byte store.
        let (octets, rest) = rows.as_chunks::<8>();
        for (o, oct) in octets.iter().enumerate() {
            let i0 = o * 8;
            let src = oct.map(|r| &r[b..e]);
            for (k, &c) in centre.iter().enumerate() {
                let dst = &mut buf[k * n + i0..k * n + i0 + 8];
                for (d, r) in dst.iter_mut().zip(&src) {
                    *d = r[k] - c;
                }
            }
        }
        for (j, r) in rest.iter().enumerate() {
            let i = octets.len() * 8 + j;
            for ((k, &x), &c) in r[b..e].iter().enumerate().zip(centre.iter()) {
                buf[k * n + i] = x - c;
            }
        }
        g.clear();
        g.resize(n * n, 0.0);
        // Yᵀ (w × n) row-major over buf; Y (n × w) is its transposed view.
        if let (Ok(yt), Ok(mut gv)) = (
            ArrayView2::from_shape((w, n), &buf[..]),
            ArrayViewMut2::from_shape((n, n), &mut g[..]),
        ) {
            let y = yt.t();
            for (ti, &(i0, i1)) in tiles.iter().enumerate() {
                let a = y.slice_axis(Axis(0), Slice::from(i0..i1));
                for &(j0, j1) in &tiles[ti..] {
                    let bt = yt.slice_axis(Axis(1), Slice::from(j0..j1));
                    let mut c = gv.view_mut();
                    c.slice_axis_inplace(Axis(0), Slice::from(i0..i1));
                    c.slice_axis_inplace(Axis(1), Slice::from(j0..j1));
                    general_mat_mul(1.0, &a, &bt, 0.0, &mut c);
                }
            }
        }
        for i in 0..n {
            let gii = f64::from(g[i * n + i]);
            acc.centred[i] += gii;
            for j in i + 1..n {
                let d = gii + f64::from(g[j * n + j]) - 2.0 * f64::from(g[i * n + j]);
                acc.pairs[pair_index(n, i, j)] += d;
            }
        }
        b = e;
    }
    acc
}

/// Gram distances (packed upper triangle) and squared distances to the
/// block centres of all `rows`, over fixed chunks in parallel, combined in
/// chunk order.
fn gram_pass(rows: &[&[f32]], p: usize, on: Centre) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len();
    let partials: Vec<GramAcc> = (0..p.div_ceil(GRAM_CHUNK))
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(buf, g), c| {
                let lo = c * GRAM_CHUNK;
                gram_chunk(rows, lo, (lo + GRAM_CHUNK).min(p), on, buf, g)
            },
        )
        .collect();
    let mut pairs = vec![0f64; n * (n.max(1) - 1) / 2];
    let mut centred = vec![0f64; n];
    for part in &partials {
        for (s, v) in pairs.iter_mut().zip(&part.pairs) {
            *s += v;
        }
        for (s, v) in centred.iter_mut().zip(&part.centred) {
            *s += v;
        }
    }
    (pairs, centred)
}

/// Pairs (i < j) whose Gram distance is below [`REFINE`] × `cᵢ + cⱼ`, or
/// NaN (non-finite input): these get the direct pass.
fn close_pairs(pairs: &[f64], centred: &[f64]) -> Vec<(usize, usize)> {
    let n = centred.len();
    (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .filter(|&(i, j)| {
            !matches!(
                pairs[pair_index(n, i, j)].partial_cmp(&(REFINE * (centred[i] + centred[j]))),
                Some(Ordering::Greater | Ordering::Equal)
            )
        })
        .collect()
}

/// The n×n matrix (row-major) of squared Euclidean distances between the
/// updates; zero diagonal, exactly symmetric, bit-identical for a permuted
/// batch (rows and columns permuted alike) and for any thread count.
pub fn pairwise_sq_distances(updates: &[&[f32]]) -> Result<Vec<f64>, AggregateError> {
    let p = dims(updates)?;
    let n = updates.len();
    let order = canonical_order(updates, None);
    let rows: Vec<&[f32]> = order.iter().map(|&i| updates[i]).collect();
    let (mut pairs, mut centred) = gram_pass(&rows, p, Centre::Mean);
    let mut close = close_pairs(&pairs, &centred);
    if close.len() > n {
        // Many pairs much closer than their spread: far outliers pulled the
        // mean away from the bulk. Centre on the medoid (smallest sum of
        // the approximate distances, first in canonical order on a tie),
        // so the direct pass stays small.
        let sums: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .filter(|&j| j != i)
                    .map(|j| pairs[pair_index(n, i.min(j), i.max(j))])
                    .fold(0.0, |s, v| s + v)
            })
            .collect();
        let medoid = (0..n)
            .min_by(|&a, &b| sums[a].total_cmp(&sums[b]))
            .unwrap_or(0);
        (pairs, centred) = gram_pass(&rows, p, Centre::Row(medoid));
        close = close_pairs(&pairs, &centred);
    }
    let exact: Vec<f64> = close
        .par_iter()
        .map(|&(i, j)| direct_sq_dist(rows[i], rows[j]))
        .collect();
    for (&(i, j), v) in close.iter().zip(exact) {
        pairs[pair_index(n, i, j)] = v;
    }
    // Back to batch order.
    let mut d = vec![0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v = pairs[pair_index(n, i, j)];
            let (a, b) = (order[i], order[j]);
            d[a * n + b] = v;
            d[b * n + a] = v;
        }
    }
    Ok(d)
}

/// Krum's neighbour count for a set of `members` updates: `members − f − 2`
/// (Blanchard et al. 2017), at least 1 and at most `members − 1`.
///
/// Krum itself always has `n − f − 2 ≥ f + 1 ≥ 1` (it needs n ≥ 2f+3).
/// Bulyan's iterated Krum does not: its step over the remaining set R has
/// |R| = n − t, down to 2f + 1 on the last step, where `|R| − f − 2 = f − 1`
/// is 0 for f = 1. With no neighbour every score is 0 and the tie-break
/// picks an update regardless of distance (possibly a far outlier). One
/// neighbour is the smallest count that still measures isolation, and for
/// |R| ≥ 3 an update of a cluster has a nearer neighbour than a single far
/// outlier, so such a step can never choose it.
pub(crate) fn neighbours(members: usize, f: usize) -> usize {
    members
        .saturating_sub(f + 2)
        .max(1)
        .min(members.saturating_sub(1))
}

/// Krum scores of `members` within `members`: the sum of the squared
/// distances to the [`neighbours`]`(members.len(), f)` nearest other
/// members, summed in ascending order.
fn scores_within(d: &[f64], n: usize, members: &[usize], f: usize) -> Vec<f64> {
    let k = neighbours(members.len(), f);
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

/// Mean of `rows` per coordinate, summed in f64 in the given order (unit
/// weights: `1·x` is exact, so these are the bits of a plain sum).
fn mean_in_order(rows: &[&[f32]], p: usize) -> Vec<f32> {
    let m = rows.len() as f64;
    weighted_sum_in_order(rows, &vec![1.0; rows.len()], p, |a| (a / m) as f32)
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
    let net = sorting_network(rows.len());
    let value = per_lane_block(
        &rows,
        p,
        &net,
        || (Vec::new(), Vec::new()),
        |sorted, _, _, out| closest_lanes(sorted, beta, out),
        |keys, scratch: &mut Scratch| closest_mean(keys, scratch, beta),
    );
    selection.sort_unstable();
    Ok((value, selection))
}

/// Bulyan's last step on a sorted lane block (θ rows): per coordinate the
/// mean of the `beta` values closest to the median (ties: the smaller
/// value). Those are a window of the sorted values, found by dropping θ−β
/// values from the two ends, each time the end farther from the median
/// (the larger value on a tie), all lanes in lockstep; the window is summed
/// in f64 in sorted order.
fn closest_lanes(sorted: &[Lanes], beta: usize, out: &mut [f32]) {
    let t = sorted.len();
    let beta = beta.min(t);
    if beta == 0 {
        out.fill(0.0);
        return;
    }
    let mid = t / 2;
    let mut med = [0f64; NET_LANES];
    for (k, m) in med.iter_mut().enumerate() {
        *m = if t % 2 == 1 {
            f64::from(sorted[mid][k])
        } else {
            (f64::from(sorted[mid - 1][k]) + f64::from(sorted[mid][k])) / 2.0
        };
    }
    let mut left = [0usize; NET_LANES];
    let mut right = [t - 1; NET_LANES];
    for _ in 0..t - beta {
        for (k, (l, r)) in left.iter_mut().zip(right.iter_mut()).enumerate() {
            let dl = (f64::from(sorted[*l][k]) - med[k]).abs();
            let dr = (f64::from(sorted[*r][k]) - med[k]).abs();
            let drop_left = usize::from(dl > dr);
            *l += drop_left;
            *r -= 1 - drop_left;
        }
    }
    let mut sum = [0f64; NET_LANES];
    for (i, row) in sorted.iter().enumerate() {
        for ((s, &l), &v) in sum.iter_mut().zip(&left).zip(row) {
            *s += if l <= i && i < l + beta {
                f64::from(v)
            } else {
                0.0
            };
        }
    }
    for (o, s) in out.iter_mut().zip(sum) {
        *o = (s / beta as f64) as f32;
    }
}

/// Per-task buffers of [`closest_mean`].
type Scratch = (Vec<i32>, Vec<(f64, i32)>);

/// Order of (distance to the median, value): the β smallest are kept, ties
/// in distance go to the smaller value.
fn by_distance(a: &(f64, i32), b: &(f64, i32)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Mean of the `beta` values closest to their median (ties: the smaller
/// value), summed in f64 in the order of `keys` (canonical client order);
/// the exact path for blocks holding a NaN.
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
/// β = θ−2f selected values closest to their median. Needs n ≥ 4f+3
/// (so β ≥ 3). Every selection step scores with [`neighbours`] — at least
/// one neighbour — so the last steps for f = 1, where Krum's own count
/// `|R| − f − 2` is 0, still measure distance instead of tying. With f = 0
/// every update is selected and the value is the coordinate-wise mean.
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
                row.iter().take(neighbours(members.len(), f)).sum()
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
    fn distances_match_naive_with_several_gram_tiles() {
        // More rows than one tile: the off-diagonal tile products of the
        // coordinate-major buffer (strided views) must land in place.
        let n = GRAM_TILE + 9;
        let p = GRAM_BLOCK + 3;
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7919 + j * 104_729) % 1009) as f32 / 53.0)
                    .collect()
            })
            .collect();
        let d = pairwise_sq_distances(&refs(&rows)).unwrap();
        let nd = naive_distances(&rows);
        for i in 0..n {
            for j in 0..n {
                // The Gram bound of `gram_distances_agree_with_direct_sum`.
                let (a, b) = (d[i * n + j], nd[i][j]);
                assert!((a - b).abs() <= 1e-4 * b, "{i} {j}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn distances_match_naive_across_blocks_and_chunks() {
        let p = GRAM_CHUNK + 3 * GRAM_BLOCK + 5;
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
    fn distances_do_not_depend_on_thread_count() {
        let p = 2 * GRAM_CHUNK + GRAM_BLOCK + 7;
        let rows: Vec<Vec<f32>> = (0..13)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 37.0)
                    .collect()
            })
            .collect();
        let with = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| pairwise_sq_distances(&refs(&rows)).unwrap())
        };
        let one: Vec<u64> = with(1).iter().map(|x| x.to_bits()).collect();
        let three: Vec<u64> = with(3).iter().map(|x| x.to_bits()).collect();
        assert_eq!(one, three);
    }

    #[test]
    fn non_finite_values_give_non_finite_distances_without_panic() {
        let rows = [
            vec![0f32, 1.0, 2.0],
            vec![f32::NAN, 1.0, 2.0],
            vec![f32::INFINITY, 1.0, 2.0],
            vec![1f32, 1.0, 2.0],
        ];
        let d = pairwise_sq_distances(&refs(&rows)).unwrap();
        assert_eq!(d[3], 1.0);
        assert!(d[1].is_nan());
        assert!(d[2].is_infinite());
        assert!(krum(&refs(&rows), 0).is_ok());
    }

    /// Two far outliers pull the block means away from the honest updates;
    /// the medoid re-centring keeps the distances accurate.
    #[test]
    fn far_outliers_keep_distances_accurate() {
        let p = GRAM_BLOCK + 301;
        let mut rows: Vec<Vec<f32>> = (0..12)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 500.0 - 1.0)
                    .collect()
            })
            .collect();
        rows[3] = rows[3].iter().map(|x| 1e6 + x).collect();
        rows[8] = rows[8].iter().map(|x| -3e5 * x).collect();
        let n = rows.len();
        let d = pairwise_sq_distances(&refs(&rows)).unwrap();
        let want = naive_distances(&rows);
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (d[i * n + j], want[i][j]);
                assert!((a - b).abs() <= 1e-4 * b, "{i} {j}: {a} vs {b}");
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

        /// The Gram-based distances agree with the direct f64 sum of squared
        /// differences within a relative 1e-4 (typically ~1e-6), including batches far from
        /// the origin (large common offset, small spread) and pairs much
        /// closer to each other than to the rest (the cancellation case the
        /// direct recomputation covers), across several blocks.
        #[test]
        fn gram_distances_agree_with_direct_sum(
            base in batch(2..12, 1..(GRAM_BLOCK + 300)),
            offset in prop_oneof![Just(0f32), -1e4f32..1e4],
            scale in prop_oneof![Just(1f32), 1e-4f32..1.0],
            near in proptest::collection::vec((0usize..12, 0usize..12, -6i32..0), 0..6),
        ) {
            let n = base.len();
            let mut rows: Vec<Vec<f32>> = base
                .iter()
                .map(|r| r.iter().map(|x| offset + scale * x).collect())
                .collect();
            for (k, &(a, b, e)) in near.iter().enumerate() {
                let (a, b) = (a % n, b % n);
                let eps = 10f32.powi(e) * scale;
                rows[a] = rows[b]
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x + eps * ((((j + k) * 7) % 11) as f32 - 5.0) / 5.0)
                    .collect();
            }
            let d = pairwise_sq_distances(&refs(&rows)).unwrap();
            let want = naive_distances(&rows);
            for i in 0..n {
                prop_assert_eq!(d[i * n + i], 0.0);
                for j in 0..n {
                    let (a, b) = (d[i * n + j], want[i][j]);
                    prop_assert!((a - b).abs() <= 1e-4 * b, "{} {}: {} vs {}", i, j, a, b);
                    prop_assert_eq!(a.to_bits(), d[j * n + i].to_bits());
                }
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
