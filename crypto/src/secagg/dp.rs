//! Distributed differential privacy: an exact discrete Gaussian sampler and
//! an RDP accountant for the subsampled Gaussian mechanism.
//!
//! **Sampler.** Canonne, Kamath and Steinke, "The Discrete Gaussian for
//! Differential Privacy" (NeurIPS 2020), Algorithms 1–3, in exact integer
//! arithmetic (`u128`, checked): the variance is a rational `num/den`,
//! Bernoulli(exp(−γ)) for rational γ uses only uniform integers, no floats
//! are involved in sampling. The RNG is a parameter, so simulations are
//! reproducible.
//!
//! **Distributed noise.** Each of the `k` members of a bucket adds
//! `N_Z(0, σ²/k)` to its quantized update before masking; the unmasked
//! bucket sum then carries noise of variance σ² (a sum of discrete Gaussians
//! is close to, though not exactly, a discrete Gaussian; see DDG §5.2 for
//! the excess divergence). Dropped members' noise is missing from the sum.
//!
//! **Accountant.** RDP of the sampled Gaussian with sampling rate `q` and
//! noise multiplier `z` at integer orders α (2..=128 and 256):
//! `RDP(α) = 1/(α−1) · log Σ_{i=0}^{α} C(α,i) (1−q)^{α−i} q^i exp((i²−i)/(2z²))`,
//! composed additively over T rounds, converted to (ε, δ) either by
//! Mironov's basic bound `min_α RDP(α) − log δ/(α−1)` or by the improved
//! bound of Canonne–Kamath–Steinke / Asoodeh et al.
//! `min_α RDP(α) + log(1 − 1/α) − log(δ·α)/(α−1)`.

use rand::{Rng, RngCore};

use super::SecAggError;

fn overflow() -> SecAggError {
    SecAggError::Dp("integer overflow in the discrete Gaussian sampler (variance too large)".into())
}

/// Uniform integer in `0..bound` (`bound ≥ 1`).
fn uniform<R: RngCore + ?Sized>(rng: &mut R, bound: u128) -> u128 {
    rng.random_range(0..bound)
}

/// Bernoulli(num/den), `0 ≤ num ≤ den`, `den ≥ 1`.
fn bernoulli_ratio<R: RngCore + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    uniform(rng, den) < num
}

/// Bernoulli(exp(−num/den)) for `0 ≤ num/den ≤ 1` (CKS Algorithm 1, first branch).
fn bernoulli_exp_le1<R: RngCore + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, SecAggError> {
    let mut k: u128 = 1;
    loop {
        let kden = den.checked_mul(k).ok_or_else(overflow)?;
        if !bernoulli_ratio(rng, num, kden) {
            return Ok(k % 2 == 1);
        }
        k += 1;
    }
}

/// Bernoulli(exp(−num/den)) for any `num/den ≥ 0`.
fn bernoulli_exp<R: RngCore + ?Sized>(
    rng: &mut R,
    num: u128,
    den: u128,
) -> Result<bool, SecAggError> {
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_le1(rng, 1, 1)? {
            return Ok(false);
        }
    }
    bernoulli_exp_le1(rng, num - whole * den, den)
}

/// Discrete Laplace with scale `t` (P(x) ∝ exp(−|x|/t)), CKS Algorithm 2.
fn discrete_laplace<R: RngCore + ?Sized>(rng: &mut R, t: u128) -> Result<i128, SecAggError> {
    loop {
        let u = uniform(rng, t);
        if !bernoulli_exp_le1(rng, u, t)? {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_le1(rng, 1, 1)? {
            v += 1;
        }
        let x = u
            .checked_add(t.checked_mul(v).ok_or_else(overflow)?)
            .ok_or_else(overflow)?;
        let negative = rng.random::<bool>();
        if negative && x == 0 {
            continue;
        }
        let x = i128::try_from(x).map_err(|_| overflow())?;
        return Ok(if negative { -x } else { x });
    }
}

fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // Newton iteration from an upper bound.
    let mut x = 1u128 << (n.ilog2() / 2 + 1);
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// An exact sampler of the discrete Gaussian `N_Z(0, σ²)` with rational `σ² = num/den`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscreteGaussian {
    num: u128,
    den: u128,
    /// `t = ⌊σ⌋ + 1`, the Laplace scale of the proposal.
    t: u128,
}

/// Largest variance numerator/denominator accepted, so that every
/// intermediate product fits in `u128` for samples below 2^40.
const MAX_PART: u128 = 1 << 40;

impl DiscreteGaussian {
    /// `N_Z(0, num/den)`; `num ≥ 1`, `1 ≤ den`, both ≤ 2^40.
    pub fn new(num: u64, den: u64) -> Result<Self, SecAggError> {
        let (num, den) = (u128::from(num), u128::from(den));
        if num == 0 || den == 0 || num > MAX_PART || den > MAX_PART {
            return Err(SecAggError::Dp(format!(
                "variance {num}/{den} must be positive with numerator and denominator ≤ 2^40"
            )));
        }
        Ok(Self {
            num,
            den,
            t: isqrt(num / den) + 1,
        })
    }

    /// The nearest rational to a float variance: `round(σ²·2^10)/2^10`
    /// while that numerator fits in 2^40, else `round(σ²)/1` (relative
    /// rounding error below 10^-6 there). `σ²` must be in (0, 2^40].
    pub fn from_variance(variance: f64) -> Result<Self, SecAggError> {
        const DEN: f64 = 1024.0;
        let max = MAX_PART as f64;
        if !(variance.is_finite() && variance > 0.0 && variance <= max) {
            return Err(SecAggError::Dp(format!(
                "variance {variance} must be finite, positive and at most 2^40"
            )));
        }
        if variance * DEN <= max {
            Self::new(((variance * DEN).round() as u64).max(1), DEN as u64)
        } else {
            Self::new(variance.round() as u64, 1)
        }
    }

    /// The variance as a float (for reporting).
    pub fn variance(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// One sample (CKS Algorithm 3).
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> Result<i64, SecAggError> {
        let t = self.t;
        // γ = (|Y|·den·t − num)² / (2·num·den·t²)
        let gamma_den = 2u128
            .checked_mul(self.num)
            .and_then(|v| v.checked_mul(self.den))
            .and_then(|v| v.checked_mul(t))
            .and_then(|v| v.checked_mul(t))
            .ok_or_else(overflow)?;
        loop {
            let y = discrete_laplace(rng, t)?;
            let a = y
                .unsigned_abs()
                .checked_mul(self.den)
                .and_then(|v| v.checked_mul(t))
                .ok_or_else(overflow)?;
            let diff = a.abs_diff(self.num);
            let gamma_num = diff.checked_mul(diff).ok_or_else(overflow)?;
            if bernoulli_exp(rng, gamma_num, gamma_den)? {
                return i64::try_from(y).map_err(|_| overflow());
            }
        }
    }

    /// Adds one sample to each word (mod 2^32).
    pub fn add_noise<R: RngCore + ?Sized>(
        &self,
        words: &mut [u32],
        rng: &mut R,
    ) -> Result<(), SecAggError> {
        for w in words {
            *w = w.wrapping_add(self.sample(rng)? as u32);
        }
        Ok(())
    }
}

/// The RDP orders of the accountant: 2..=128 and 256.
pub fn rdp_orders() -> Vec<u32> {
    (2..=128).chain(std::iter::once(256)).collect()
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// RDP at integer order `alpha ≥ 2` of one round of the Gaussian mechanism
/// with sampling rate `q` and noise multiplier `z`.
pub fn rdp_sampled_gaussian(q: f64, z: f64, alpha: u32) -> Result<f64, SecAggError> {
    if !(q.is_finite() && (0.0..=1.0).contains(&q) && z.is_finite() && z > 0.0) || alpha < 2 {
        return Err(SecAggError::Dp(format!(
            "need 0 ≤ q ≤ 1, z > 0, α ≥ 2; got q = {q}, z = {z}, α = {alpha}"
        )));
    }
    let a = f64::from(alpha);
    if q == 0.0 {
        return Ok(0.0);
    }
    if q == 1.0 {
        return Ok(a / (2.0 * z * z));
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let mut log_sum = f64::NEG_INFINITY;
    let mut log_binom = 0.0f64;
    for i in 0..=alpha {
        let fi = f64::from(i);
        if i > 0 {
            log_binom += (a - fi + 1.0).ln() - fi.ln();
        }
        let term = log_binom + (a - fi) * l1q + fi * lq + (fi * fi - fi) / (2.0 * z * z);
        log_sum = log_add(log_sum, term);
    }
    Ok(log_sum / (a - 1.0))
}

/// ε at `delta` after `rounds` rounds, by both conversions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epsilon {
    /// Mironov 2017, Proposition 3.
    pub basic: f64,
    /// Canonne–Kamath–Steinke 2020 / Asoodeh et al. 2020.
    pub improved: f64,
    /// The order minimizing the improved bound.
    pub order: u32,
}

/// (ε, δ) of `rounds` compositions of the subsampled Gaussian (q, z).
pub fn epsilon(q: f64, z: f64, rounds: u64, delta: f64) -> Result<Epsilon, SecAggError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(SecAggError::Dp(format!("δ must be in (0, 1), got {delta}")));
    }
    let mut basic = f64::INFINITY;
    let mut improved = f64::INFINITY;
    let mut order = 0;
    for alpha in rdp_orders() {
        let rdp = rounds as f64 * rdp_sampled_gaussian(q, z, alpha)?;
        let a = f64::from(alpha);
        let b = rdp - delta.ln() / (a - 1.0);
        basic = basic.min(b.max(0.0));
        let imp = if delta * delta + (-rdp).exp_m1() >= 0.0 {
            0.0
        } else {
            (rdp + (-1.0 / a).ln_1p() - (delta.ln() + a.ln()) / (a - 1.0)).max(0.0)
        };
        if imp < improved {
            improved = imp;
            order = alpha;
        }
    }
    Ok(Epsilon {
        basic,
        improved,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn accountant_matches_reference_rows() {
        // Published (q, z, T, δ) → ε rows of the moments accountant, basic /
        // improved bound.
        let rows = [
            (0.1, 1.0, 100, 1e-5, 8.93, 7.97),
            (0.1, 1.0, 500, 1e-5, 20.0, 18.6),
            (0.05, 1.0, 1000, 1e-5, 13.0, 12.1),
            (0.01, 1.0, 1000, 1e-6, 2.87, 2.44),
            (1.0, 5.0, 100, 1e-5, 11.8, 10.8),
            (1.0, 10.0, 200, 1e-5, 7.84, 7.09),
        ];
        for (q, z, t, d, basic, improved) in rows {
            let e = epsilon(q, z, t, d).unwrap();
            let tol = |x: f64| if x >= 10.0 { 0.051 } else { 0.0051 };
            assert!((e.basic - basic).abs() < tol(basic), "{q} {z} {t}: {e:?}");
            assert!(
                (e.improved - improved).abs() < tol(improved),
                "{q} {z} {t}: {e:?}"
            );
        }
    }

    #[test]
    fn accountant_edge_cases() {
        assert_eq!(rdp_sampled_gaussian(1.0, 2.0, 8).unwrap(), 1.0);
        assert_eq!(rdp_sampled_gaussian(0.0, 2.0, 8).unwrap(), 0.0);
        assert!(rdp_sampled_gaussian(1.5, 1.0, 8).is_err());
        assert!(rdp_sampled_gaussian(0.5, 0.0, 8).is_err());
        assert!(epsilon(0.1, 1.0, 10, 0.0).is_err());
        // Nothing released: ε = 0.
        assert_eq!(epsilon(0.0, 1.0, 10, 1e-5).unwrap().improved, 0.0);
        assert_eq!(rdp_orders().len(), 128);
    }

    #[test]
    fn discrete_gaussian_moments_and_reproducibility() {
        for variance in [0.3, 4.0, 100.0, 2500.0] {
            let g = DiscreteGaussian::from_variance(variance).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(11);
            let n = 20_000;
            let xs: Vec<i64> = (0..n).map(|_| g.sample(&mut rng).unwrap()).collect();
            let mean = xs.iter().sum::<i64>() as f64 / n as f64;
            let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            // The discrete Gaussian's variance is below σ² and within 1% of it for σ² ≥ 4
            // (for σ² = 0.3 it is ≈ 0.27); sampling error of the estimate ≈ σ²·√(2/n) = 1%.
            let expect = if variance < 1.0 { 0.27 } else { variance };
            assert!(
                (var / expect - 1.0).abs() < 0.06,
                "σ² = {variance}: var {var}"
            );
            assert!(
                mean.abs() < 5.0 * (variance / n as f64).sqrt() + 0.01,
                "{mean}"
            );
            let mut again = ChaCha20Rng::seed_from_u64(11);
            assert_eq!(g.sample(&mut again).unwrap(), xs[0]);
        }
    }

    #[test]
    fn discrete_gaussian_pmf_at_zero_and_one() {
        // σ² = 1: P(0) = 1/Σ exp(−k²/2) ≈ 0.39894, P(±1) ≈ 0.24197 each.
        let g = DiscreteGaussian::new(1, 1).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let n = 40_000;
        let mut zero = 0;
        let mut one = 0;
        for _ in 0..n {
            match g.sample(&mut rng).unwrap() {
                0 => zero += 1,
                1 | -1 => one += 1,
                _ => {}
            }
        }
        let (p0, p1) = (zero as f64 / n as f64, one as f64 / n as f64);
        // 5 standard errors (≈ 0.0025 each).
        assert!((p0 - 0.39894).abs() < 0.0125, "{p0}");
        assert!((p1 - 2.0 * 0.24197).abs() < 0.0125, "{p1}");
    }

    #[test]
    fn bad_variance_is_an_error() {
        assert!(DiscreteGaussian::new(0, 1).is_err());
        assert!(DiscreteGaussian::new(1, 0).is_err());
        assert!(DiscreteGaussian::from_variance(f64::NAN).is_err());
        assert!(DiscreteGaussian::from_variance(-1.0).is_err());
        assert!(DiscreteGaussian::from_variance(1e13).is_err());
        // Large variances switch to an integer variance.
        let big = DiscreteGaussian::from_variance(2f64.powi(32) / 2.0).unwrap();
        assert_eq!(big.variance(), 2f64.powi(31));
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let xs: Vec<i64> = (0..2000).map(|_| big.sample(&mut rng).unwrap()).collect();
        let var = xs.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 2000.0;
        // Estimate of σ² from 2000 samples: standard error ≈ 3.2%.
        assert!((var / 2f64.powi(31) - 1.0).abs() < 0.16, "{var}");
        assert_eq!(isqrt(99), 9);
        assert_eq!(isqrt(100), 10);
        assert_eq!(isqrt(u128::from(u64::MAX)), u128::from(u32::MAX));
    }
}
