//! Quantization of float updates into `Z_{2^32}` and back.
//!
//! `quantize`: L2-clip to norm `C` (scale the whole vector by `C/‖x‖` when
//! `‖x‖ > C`), multiply by the fixed-point `scale`, round stochastically
//! (`⌊v⌋ + Bernoulli(v − ⌊v⌋)`, unbiased, seeded RNG), and store as two's
//! complement `u32`. All later arithmetic wraps modulo 2^32.
//!
//! **Headroom.** After clipping every coordinate satisfies `|x_i| ≤ C`, so a
//! quantized value has `|q_i| ≤ B = ⌈C·scale⌉` and needs
//! `bits_per_value = ⌈log2(B + 1)⌉ + 1` bits (sign included). A bucket sum of
//! `k` members, plus distributed DP noise of total standard deviation `σ`
//! (quantized units), is bounded by `k·B + 12σ` (the noise of a coordinate
//! exceeds 12σ with probability below 10^-32). It decodes correctly while
//! that bound is ≤ 2^31 − 1, so the largest safe bucket is
//! `⌊(2^31 − 1 − ⌈12σ⌉) / B⌋`; [`QuantConfig::check_bucket`] refuses
//! larger buckets. Example: `C = 1`, `scale = 2^16` gives 18 bits per value
//! and buckets up to 32 767 members without noise.
//!
//! **Error.** Each value is off by less than `1/scale` from the clipped
//! float, so a dequantized bucket sum of `k` members differs from the float
//! sum of the clipped updates by less than `k/scale` per coordinate (plus
//! the DP noise, when enabled).

use rand::Rng;

use super::SecAggError;

/// Noise headroom in standard deviations (see the module docs).
pub const NOISE_TAILS: f64 = 12.0;

/// Uniform draws taken from the RNG at a time by [`QuantConfig::quantize`].
const DRAW_BLOCK: usize = 512;

/// 2^-53: a `u64`'s top 53 bits times this is uniform in [0, 1).
const UNIT_53: f64 = 1.0 / (1u64 << 53) as f64;

/// `v.floor()` for finite `|v| < 2^63` without a libm call (the x86-64
/// baseline has no rounding instruction): truncate, then step down for
/// negative non-integers.
fn floor_in_range(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v { t - 1.0 } else { t }
}

/// Clip norm and fixed-point scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantConfig {
    clip_norm: f64,
    scale: f64,
}

impl QuantConfig {
    /// Validates `clip_norm > 0`, `scale > 0` (both finite) and that one
    /// clipped value fits: `C·scale ≤ 2^30`.
    pub fn new(clip_norm: f64, scale: f64) -> Result<Self, SecAggError> {
        if !(clip_norm.is_finite() && clip_norm > 0.0 && scale.is_finite() && scale > 0.0) {
            return Err(SecAggError::Config(format!(
                "clip norm ({clip_norm}) and scale ({scale}) must be finite and positive"
            )));
        }
        if clip_norm * scale > f64::from(1u32 << 30) {
            return Err(SecAggError::Config(format!(
                "clip norm × scale = {} exceeds 2^30",
                clip_norm * scale
            )));
        }
        Ok(Self { clip_norm, scale })
    }

    /// The L2 clip norm `C`.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// The fixed-point scale (quantized units per unit).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `B = ⌈C·scale⌉`, the largest magnitude of one quantized value.
    pub fn value_bound(&self) -> u64 {
        (self.clip_norm * self.scale).ceil().max(1.0) as u64
    }

    /// Bits one quantized value needs, sign included.
    pub fn bits_per_value(&self) -> u32 {
        (u64::BITS - self.value_bound().leading_zeros()) + 1
    }

    /// Largest bucket whose sum cannot wrap, given the total noise standard
    /// deviation `noise_sigma` (quantized units; 0 without DP).
    pub fn max_bucket_size(&self, noise_sigma: f64) -> usize {
        let headroom = (NOISE_TAILS * noise_sigma.max(0.0)).ceil();
        let room = f64::from(i32::MAX) - headroom;
        if room <= 0.0 {
            return 0;
        }
        (room / self.value_bound() as f64).floor() as usize
    }

    /// Refuses a bucket of `members` whose sum could wrap around.
    pub fn check_bucket(&self, members: usize, noise_sigma: f64) -> Result<(), SecAggError> {
        let max_members = self.max_bucket_size(noise_sigma);
        if members > max_members || !noise_sigma.is_finite() {
            let worst = members as f64 * self.value_bound() as f64
                + (NOISE_TAILS * noise_sigma.max(0.0)).ceil();
            return Err(SecAggError::Overflow {
                members,
                needed_bits: worst.log2().floor() as u32 + 2,
                max_members,
            });
        }
        Ok(())
    }

    /// Upper bound of the per-coordinate difference between a dequantized
    /// sum of `members` updates and the float sum of the clipped updates.
    pub fn max_sum_error(&self, members: usize) -> f64 {
        members as f64 / self.scale
    }

    /// The factor that clips `x` to the L2 norm `C` (1 when within it), and
    /// the original norm. Refuses non-finite values.
    fn clip_factor(&self, x: &[f32]) -> Result<(f64, f64), SecAggError> {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(SecAggError::InvalidUpdate(format!(
                "value {i} is not finite"
            )));
        }
        let norm = x
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let factor = if norm > self.clip_norm {
            self.clip_norm / norm
        } else {
            1.0
        };
        Ok((factor, norm))
    }

    /// Clips `x` to the L2 norm `C` (returns the clipped copy and the original norm).
    pub fn clip(&self, x: &[f32]) -> Result<(Vec<f64>, f64), SecAggError> {
        let (factor, norm) = self.clip_factor(x)?;
        Ok((x.iter().map(|&v| f64::from(v) * factor).collect(), norm))
    }

    /// Clips, scales and stochastically rounds `x` into two's-complement words.
    pub fn quantize<R: Rng + ?Sized>(
        &self,
        x: &[f32],
        rng: &mut R,
    ) -> Result<Vec<u32>, SecAggError> {
        // The clipped values of `clip`, computed on the fly.
        let (factor, _) = self.clip_factor(x)?;
        let bound = self.value_bound() as f64;
        let mut out = Vec::with_capacity(x.len());
        // One uniform f64 per value, drawn exactly as `rng.random::<f64>()`
        // draws it (the top 53 bits of a `u64`), but a block of `u64`s at a
        // time: `Fill` for `[u64]` reads the same little-endian stream as
        // successive `next_u64` calls.
        let mut draws = [0u64; DRAW_BLOCK];
        for chunk in x.chunks(DRAW_BLOCK) {
            let draws = &mut draws[..chunk.len()];
            rng.fill(draws);
            out.extend(chunk.iter().zip(draws.iter()).map(|(&v, &r)| {
                let scaled = f64::from(v) * factor * self.scale;
                let floor = floor_in_range(scaled);
                let uniform = (r >> 11) as f64 * UNIT_53;
                let up = uniform < scaled - floor;
                // Clamping only absorbs float rounding of the clip factor.
                let q = (floor + f64::from(u8::from(up))).clamp(-bound, bound);
                (q as i64) as u32
            }));
        }
        Ok(out)
    }

    /// Interprets a (bucket) sum as two's complement and divides by the scale.
    pub fn dequantize(&self, sum: &[u32]) -> Vec<f64> {
        sum.iter()
            .map(|&w| f64::from(w as i32) / self.scale)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn headroom_figures() {
        let q = QuantConfig::new(1.0, 65536.0).unwrap();
        assert_eq!(q.value_bound(), 65536);
        assert_eq!(q.bits_per_value(), 18);
        assert_eq!(q.max_bucket_size(0.0), 32767);
        q.check_bucket(32767, 0.0).unwrap();
        let e = q.check_bucket(32768, 0.0).unwrap_err();
        assert!(
            matches!(
                e,
                SecAggError::Overflow {
                    needed_bits: 33,
                    max_members: 32767,
                    ..
                }
            ),
            "{e}"
        );
        // Noise headroom shrinks the bucket.
        assert!(q.max_bucket_size(1e6) < 32767);
        assert!(q.check_bucket(8, f64::NAN).is_err());
        assert!(QuantConfig::new(0.0, 1.0).is_err());
        assert!(QuantConfig::new(1.0, f64::INFINITY).is_err());
        assert!(QuantConfig::new(2.0, f64::from(1u32 << 30)).is_err());
    }

    #[test]
    fn fixed_vector() {
        let q = QuantConfig::new(2.0, 256.0).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        // Norm 5 → clipped by 2/5.
        let x = [3.0f32, -4.0, 0.0, 0.0];
        let words = q.quantize(&x, &mut rng).unwrap();
        // 1.2·256 = 307.2 → 307 or 308; −1.6·256 = −409.6 → −410 or −409.
        assert_eq!(words, super::super::test_vectors::QUANT_VECTOR.to_vec());
        assert!(q.quantize(&[f32::NAN], &mut rng).is_err());
        assert_eq!(q.dequantize(&[u32::MAX, 256]), vec![-1.0 / 256.0, 1.0]);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let q = QuantConfig::new(10.0, 1.0).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|_| q.dequantize(&q.quantize(&[0.3], &mut rng).unwrap())[0])
            .sum::<f64>()
            / f64::from(n);
        // Bernoulli(0.3) mean, sd of the estimate ≈ 0.0032; 5 sd.
        assert!((mean - 0.3).abs() < 0.017, "{mean}");
    }

    /// The per-value formulation `quantize` had before drawing in blocks.
    fn quantize_per_value<R: rand::Rng>(q: &QuantConfig, x: &[f32], rng: &mut R) -> Vec<u32> {
        let (clipped, _) = q.clip(x).unwrap();
        let bound = q.value_bound() as f64;
        clipped
            .iter()
            .map(|&v| {
                let scaled = v * q.scale();
                let floor = scaled.floor();
                let up = rng.random::<f64>() < scaled - floor;
                let q = (floor + f64::from(u8::from(up))).clamp(-bound, bound);
                (q as i64) as u32
            })
            .collect()
    }

    proptest! {
        /// Same words and same RNG position afterwards as drawing one f64
        /// per value, from any offset in the stream and across draw blocks.
        #[test]
        fn block_draws_match_per_value_draws(
            len in 0usize..1500,
            skip in 0usize..5,
            seed in any::<u64>(),
            clip in 0.5f64..100.0,
            scale_bits in 0u32..20,
        ) {
            let q = QuantConfig::new(clip, f64::from(1u32 << scale_bits)).unwrap();
            use rand::{Rng as _, RngCore as _};
            let mut gen_rng = ChaCha20Rng::seed_from_u64(!seed);
            let x: Vec<f32> = (0..len).map(|_| gen_rng.random_range(-3.0f32..3.0)).collect();
            let (mut a, mut b) = (ChaCha20Rng::seed_from_u64(seed), ChaCha20Rng::seed_from_u64(seed));
            for _ in 0..skip {
                a.next_u32();
                b.next_u32();
            }
            prop_assert_eq!(q.quantize(&x, &mut a).unwrap(), quantize_per_value(&q, &x, &mut b));
            prop_assert_eq!(a.next_u64(), b.next_u64());
        }

        #[test]
        fn floor_in_range_is_floor(v in -1e12f64..1e12, frac in prop::sample::select(vec![0.0, 0.5, -0.5, 1e-9, -1e-9])) {
            let v = v.trunc() + frac;
            prop_assert_eq!(floor_in_range(v), v.floor());
            prop_assert_eq!(floor_in_range(-0.0), 0.0);
        }

        #[test]
        fn error_is_below_one_unit(
            x in proptest::collection::vec(-3.0f32..3.0, 1..50),
            seed in any::<u64>(),
        ) {
            let q = QuantConfig::new(4.0, 1000.0).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let (clipped, _) = q.clip(&x).unwrap();
            let back = q.dequantize(&q.quantize(&x, &mut rng).unwrap());
            for (c, b) in clipped.iter().zip(&back) {
                prop_assert!((c - b).abs() < 1.0 / 1000.0 + 1e-12);
            }
            let norm: f64 = clipped.iter().map(|v| v * v).sum::<f64>().sqrt();
            prop_assert!(norm <= 4.0 + 1e-9);
        }
    }
}
