//! The coordinator's pure round arithmetic, shared by the live federation
//! and the in-process simulation engine so both produce bit-identical
//! models: genesis parameters, the server optimiser step (learning rate and
//! heavy-ball momentum) and the merge of federated scaler statistics.

use fedmesh_proto::v1;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Floor on a published standard deviation, so constant features do not
/// blow up after scaling. Must equal the node's scaler floor.
pub const SCALER_STD_FLOOR: f32 = 1e-3;

/// Xavier-uniform initial parameters for the genesis model.
pub fn genesis_params(input_dim: usize, hidden: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (i, o) in fedmesh_proto::model::layer_shapes(input_dim, hidden) {
        let a = (6.0 / (i + o) as f64).sqrt() as f32;
        out.extend((0..i * o).map(|_| rng.random_range(-a..a)));
        out.extend(std::iter::repeat_n(0.0, o));
    }
    out
}

/// Result of one server optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStep {
    /// New global parameters.
    pub params: Vec<f32>,
    /// New momentum buffer (`None` when momentum is off).
    pub momentum: Option<Vec<f32>>,
}

/// One server step: heavy-ball momentum `v = β·v + Δ` (skipped when
/// `beta == 0`), then `w = w + lr·v`. `agg` is the robust aggregate of the
/// round's deltas; all slices have the model's length.
pub fn server_step(
    base: &[f32],
    agg: &[f32],
    prev_momentum: Option<&[f32]>,
    lr: f32,
    beta: f32,
) -> ServerStep {
    let momentum: Option<Vec<f32>> = (beta > 0.0).then(|| match prev_momentum {
        Some(v) => v.iter().zip(agg).map(|(v, d)| beta * v + d).collect(),
        None => agg.to_vec(),
    });
    let step = momentum.as_deref().unwrap_or(agg);
    let params = base.iter().zip(step).map(|(w, d)| w + lr * d).collect();
    ServerStep { params, momentum }
}

/// Merges the nodes' scaler statistics (counts, sums, sums of squares) into
/// the published mean/std; `None` when no node sent statistics.
pub fn merged_scaler<'a>(
    stats: impl Iterator<Item = &'a v1::ScalerStats>,
    dim: usize,
) -> Option<v1::Scaler> {
    let mut count = 0u64;
    let mut sum = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for s in stats {
        count = count.saturating_add(s.count);
        for j in 0..dim {
            sum[j] += s.sum.get(j).copied().unwrap_or(0.0);
            sq[j] += s.sum_sq.get(j).copied().unwrap_or(0.0);
        }
    }
    if count == 0 {
        return None;
    }
    let n = count as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| {
            let m = s / n;
            ((q / n - m * m).max(0.0).sqrt() as f32).max(SCALER_STD_FLOOR)
        })
        .collect();
    Some(v1::Scaler { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_accumulates_and_lr_scales() {
        let s1 = server_step(&[1.0, 1.0], &[1.0, -2.0], None, 0.5, 0.9);
        assert_eq!(s1.params, vec![1.5, 0.0]);
        assert_eq!(s1.momentum.as_deref(), Some(&[1.0, -2.0][..]));
        let s2 = server_step(&s1.params, &[1.0, 0.0], s1.momentum.as_deref(), 1.0, 0.5);
        assert_eq!(s2.momentum.as_deref(), Some(&[1.5, -1.0][..]));
        assert_eq!(s2.params, vec![3.0, -1.0]);
        let plain = server_step(&[0.0], &[2.0], Some(&[9.0]), 1.0, 0.0);
        assert_eq!(plain.params, vec![2.0]);
        assert!(plain.momentum.is_none());
    }

    #[test]
    fn scaler_merge_is_pooled_mean_and_std() {
        let a = v1::ScalerStats {
            count: 2,
            sum: vec![2.0],
            sum_sq: vec![2.0],
        };
        let b = v1::ScalerStats {
            count: 2,
            sum: vec![6.0],
            sum_sq: vec![18.0],
        };
        let s = merged_scaler([&a, &b].into_iter(), 1).unwrap();
        assert!((s.mean[0] - 2.0).abs() < 1e-6);
        assert!((s.std[0] - 1.0).abs() < 1e-6);
        assert!(merged_scaler(std::iter::empty(), 3).is_none());
    }
}
