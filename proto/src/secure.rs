//! What travels next to the quantized update inside a masked input when a
//! tenant aggregates in buckets (k > 1): the node's training loss and its
//! per-feature first and second moments for the federated scaler, as
//! fixed-point words that secure aggregation sums in `Z_{2^32}` together
//! with the update. The coordinator only ever sees bucket sums of them.
//!
//! Layout for an input width `d`: `[loss, mean_0 … mean_{d−1}, meansq_0 …
//! meansq_{d−1}]`, each value clamped to `[0, EXTRA_MAX]` and scaled by
//! `EXTRA_SCALE` (2⁻¹⁶ resolution). With at most [`MAX_EXTRA_MEMBERS`]
//! members a bucket sum stays below 2³¹, so distributed DP noise (which can
//! push a sum slightly below zero) is decoded as two's complement.

use sha2::{Digest, Sha256};

/// Digest of the global model a secure round starts from, one input of the
/// bucket shuffle seed: SHA-256 over a domain label, the version and the
/// parameters (f32, little endian). It depends on the model alone (not on
/// the signature or timestamp), so a simulation replays the same buckets.
pub fn model_digest(version: u64, params: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedmesh/secagg/v1/model\0");
    h.update(version.to_le_bytes());
    for p in params {
        h.update(p.to_le_bytes());
    }
    h.finalize().into()
}

/// Fixed-point scale of the extra words.
pub const EXTRA_SCALE: f64 = 65_536.0;
/// Largest encodable value (features are log1p-scaled or ratios: their
/// squares stay far below this).
pub const EXTRA_MAX: f64 = 512.0;
/// Most members a bucket may have for the extra words not to wrap.
pub const MAX_EXTRA_MEMBERS: usize = 63;

/// Number of extra words for input width `d`.
pub fn extra_words(input_dim: usize) -> usize {
    1 + 2 * input_dim
}

fn fixed(v: f64) -> u32 {
    let v = if v.is_finite() {
        v.clamp(0.0, EXTRA_MAX)
    } else {
        0.0
    };
    // At most 2^25: fits.
    (v * EXTRA_SCALE).round() as u32
}

/// Encodes one node's extra words. `mean` and `mean_sq` must have the same
/// length (the input width); non-finite or negative values encode as 0,
/// values above [`EXTRA_MAX`] as the maximum.
pub fn encode_extra(train_loss: f32, mean: &[f64], mean_sq: &[f64]) -> Vec<u32> {
    let mut w = Vec::with_capacity(1 + mean.len() + mean_sq.len());
    w.push(fixed(f64::from(train_loss)));
    w.extend(mean.iter().map(|&v| fixed(v)));
    w.extend(mean_sq.iter().map(|&v| fixed(v)));
    w
}

/// Sums of the extra values over a bucket (or several).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraSums {
    /// Members whose words are in the sums.
    pub members: u64,
    /// Sum of the members' training losses.
    pub loss: f64,
    /// Per feature: sum of the members' means.
    pub mean: Vec<f64>,
    /// Per feature: sum of the members' mean squares.
    pub mean_sq: Vec<f64>,
}

impl ExtraSums {
    /// Empty sums for input width `d`.
    pub fn new(input_dim: usize) -> Self {
        Self {
            members: 0,
            loss: 0.0,
            mean: vec![0.0; input_dim],
            mean_sq: vec![0.0; input_dim],
        }
    }

    /// Adds a bucket's summed words. Refuses (returning `false`, changing
    /// nothing) words of the wrong length.
    pub fn add_bucket(&mut self, words: &[u32], members: usize) -> bool {
        let d = self.mean.len();
        if words.len() != extra_words(d) {
            return false;
        }
        let value = |w: u32| f64::from(w as i32) / EXTRA_SCALE;
        self.members += members as u64;
        self.loss += value(words[0]);
        for j in 0..d {
            self.mean[j] += value(words[1 + j]);
            self.mean_sq[j] += value(words[1 + d + j]);
        }
        true
    }

    /// Mean training loss over the members (0 without members).
    pub fn mean_loss(&self) -> f64 {
        if self.members == 0 {
            0.0
        } else {
            self.loss / self.members as f64
        }
    }

    /// The scaler these moments define: per feature the average of the
    /// members' means and `sqrt(E[x²] − mean²)` floored at `std_floor`;
    /// `None` without members.
    pub fn scaler(&self, std_floor: f32) -> Option<crate::v1::Scaler> {
        if self.members == 0 {
            return None;
        }
        let n = self.members as f64;
        let mean: Vec<f32> = self.mean.iter().map(|m| (m / n) as f32).collect();
        let std = self
            .mean
            .iter()
            .zip(&self.mean_sq)
            .map(|(m, q)| {
                let m = m / n;
                ((q / n - m * m).max(0.0).sqrt() as f32).max(std_floor)
            })
            .collect();
        Some(crate::v1::Scaler { mean, std })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_vector() {
        assert_eq!(
            encode_extra(0.5, &[1.0], &[2.25]),
            vec![32_768, 65_536, 147_456]
        );
        // Clamped, and garbage becomes 0.
        assert_eq!(
            encode_extra(f32::NAN, &[-3.0], &[1e9]),
            vec![0, 0, (EXTRA_MAX * EXTRA_SCALE) as u32]
        );
        let mut s = ExtraSums::new(2);
        assert!(!s.add_bucket(&[1, 2, 3], 1));
        assert_eq!(s.members, 0);
        assert!(s.scaler(0.1).is_none());
    }

    proptest! {
        /// The wrapped sum of up to 63 members' words decodes to the sum of
        /// their values within the fixed-point resolution, also with small
        /// negative noise on the sum.
        #[test]
        fn bucket_sums_decode(
            nodes in proptest::collection::vec(
                (0.0f32..10.0, proptest::collection::vec(0.0f64..20.0, 3)), 1..=MAX_EXTRA_MEMBERS),
            noise in -50i64..50,
        ) {
            let mut sum = vec![0u32; extra_words(3)];
            let (mut loss, mut mean, mut sq) = (0.0, [0.0f64; 3], [0.0f64; 3]);
            for (l, m) in &nodes {
                let msq: Vec<f64> = m.iter().map(|v| v * v).collect();
                for (s, w) in sum.iter_mut().zip(encode_extra(*l, m, &msq)) {
                    *s = s.wrapping_add(w);
                }
                loss += f64::from(*l);
                for j in 0..3 {
                    mean[j] += m[j];
                    sq[j] += msq[j];
                }
            }
            for s in sum.iter_mut() {
                *s = s.wrapping_add(noise as u32);
            }
            let mut e = ExtraSums::new(3);
            prop_assert!(e.add_bucket(&sum, nodes.len()));
            let tol = (nodes.len() as f64 + 50.0) / EXTRA_SCALE;
            prop_assert!((e.loss - loss).abs() <= tol + 1e-6 * loss);
            for j in 0..3 {
                prop_assert!((e.mean[j] - mean[j]).abs() <= tol);
                prop_assert!((e.mean_sq[j] - sq[j]).abs() <= tol + 1e-9 * sq[j]);
            }
            let sc = e.scaler(0.01).unwrap();
            prop_assert_eq!(sc.mean.len(), 3);
            prop_assert!(sc.std.iter().all(|s| s.is_finite() && *s >= 0.01));
        }
    }
}
