//! Model-poisoning attacks as pure functions over the honest updates of a
//! round (an omniscient attacker who sees every honest update), each cited
//! at its function.
//!
//! Notation: honest updates `x_1..x_h`, coordinate-wise mean `μ` and
//! standard deviation `σ` (unbiased, `h − 1` in the denominator as
//! `torch.std`), `n` participants of which `f` are Byzantine. Statistics are
//! accumulated in f64 in batch order, so every function is deterministic.
//!
//! | row | attack | function |
//! |---|---|---|
//! | 1 | sign flip `−k·μ` | [`sign_flip`] |
//! | 2 | scaling / model replacement `γ·Δ`, `γ = n/η` | [`model_replacement`] |
//! | 3 | Gaussian noise `N(0, σ²I)` | [`gaussian`] |
//! | 4 | ALIE `μ − z·σ` | [`alie`], [`alie_z`] |
//! | 5 | IPM `−ε·μ` | [`ipm`] |
//! | 6 | min-max / min-sum `μ − λ·p` with bisection on λ | [`min_max`], [`min_sum`] |
//! | 9 | Sybil: one crafted update under k identities | [`sybil`] |
//! | 10 | mimic one honest client | [`mimic`] |
//!
//! Data poisoning (rows 7/8) is not a function of the honest updates: the
//! attacker trains on poisoned data; the engine does that and may then
//! scale the result with [`model_replacement`].

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal as StdNormal};

/// Why an attack could not be crafted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttackError {
    /// No honest updates to compute statistics from.
    #[error("the attack needs at least {needs} honest update(s), got {got}")]
    TooFewHonest {
        /// Required.
        needs: usize,
        /// Given.
        got: usize,
    },
    /// Honest updates of different lengths.
    #[error("honest update {index} has {actual} values, expected {expected}")]
    Shape {
        /// Position.
        index: usize,
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// A parameter is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    Parameter {
        /// Parameter.
        name: &'static str,
        /// Value given.
        value: f64,
        /// Requirement.
        reason: &'static str,
    },
    /// ALIE's z is undefined for these (n, f): no supporters are needed or
    /// the quantile falls outside (0, 1).
    #[error("ALIE z is undefined for n = {n}, f = {f} ({mode:?})")]
    AlieUndefined {
        /// Participants.
        n: usize,
        /// Byzantine.
        f: usize,
        /// Formula.
        mode: ZRule,
    },
}

/// How ALIE's `z` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "z_rule", deny_unknown_fields)]
pub enum ZRule {
    /// epfml/byzfl code: `s = ⌊n/2 + 1⌋ − f`, `z = Φ⁻¹((n − f − s)/(n − f))`.
    Epfml,
    /// Baruch et al. (NeurIPS'19, as commonly restated; not checked against
    /// the paper):
    /// `z = Φ⁻¹((n − s)/n)`, the largest z with `Φ(z) < (n − s)/n`.
    Paper,
    /// A fixed z (byzfl default 1.5; NDSS'21 uses 0.726 for n = 50, f = 10).
    Fixed {
        /// The z.
        z: f64,
    },
}

/// Perturbation direction `p` of min-max / min-sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Perturbation {
    /// `μ/‖μ‖` ("unit_vec").
    UnitVec,
    /// `sign(μ)`.
    Sign,
    /// `σ` ("std").
    Std,
}

/// Coordinate-wise mean and unbiased standard deviation (0 for h = 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Mean.
    pub mean: Vec<f64>,
    /// Standard deviation.
    pub std: Vec<f64>,
}

fn dims(honest: &[&[f32]], needs: usize) -> Result<usize, AttackError> {
    if honest.len() < needs {
        return Err(AttackError::TooFewHonest {
            needs,
            got: honest.len(),
        });
    }
    let p = honest.first().map_or(0, |u| u.len());
    for (index, u) in honest.iter().enumerate() {
        if u.len() != p {
            return Err(AttackError::Shape {
                index,
                expected: p,
                actual: u.len(),
            });
        }
    }
    Ok(p)
}

fn finite(name: &'static str, value: f64) -> Result<(), AttackError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(AttackError::Parameter {
            name,
            value,
            reason: "must be finite",
        })
    }
}

fn positive(name: &'static str, value: f64) -> Result<(), AttackError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(AttackError::Parameter {
            name,
            value,
            reason: "must be finite and positive",
        })
    }
}

/// Coordinate-wise mean and standard deviation of the honest updates.
pub fn stats(honest: &[&[f32]]) -> Result<Stats, AttackError> {
    let p = dims(honest, 1)?;
    let h = honest.len() as f64;
    let mut mean = vec![0f64; p];
    for u in honest {
        for (m, &x) in mean.iter_mut().zip(*u) {
            *m += f64::from(x);
        }
    }
    for m in &mut mean {
        *m /= h;
    }
    let mut var = vec![0f64; p];
    for u in honest {
        for ((v, &x), m) in var.iter_mut().zip(*u).zip(&mean) {
            let d = f64::from(x) - m;
            *v += d * d;
        }
    }
    let denom = (h - 1.0).max(1.0);
    let std = var.iter().map(|v| (v / denom).sqrt()).collect();
    Ok(Stats { mean, std })
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Sign flip: `−k·μ` (byzfl `SignFlipping` is k = 1).
pub fn sign_flip(honest: &[&[f32]], k: f64) -> Result<Vec<f32>, AttackError> {
    finite("k", k)?;
    let s = stats(honest)?;
    Ok(s.mean.iter().map(|m| (-k * m) as f32).collect())
}

/// Model replacement (Bagdasaryan et al.): the attacker's own delta
/// `X − G` scaled by `γ = n/η`, so that after a mean over `n` participants
/// and a server step with learning rate `η` the global model lands near the
/// attacker's model `X`. Returns `(γ·delta, γ)`.
pub fn model_replacement(
    delta: &[f32],
    n: usize,
    eta: f64,
) -> Result<(Vec<f32>, f64), AttackError> {
    positive("eta", eta)?;
    if n == 0 {
        return Err(AttackError::Parameter {
            name: "n",
            value: 0.0,
            reason: "must be at least 1",
        });
    }
    let gamma = n as f64 / eta;
    Ok((scale(delta, gamma), gamma))
}

/// `γ·v` in f64, rounded to f32.
pub fn scale(v: &[f32], gamma: f64) -> Vec<f32> {
    v.iter().map(|&x| (gamma * f64::from(x)) as f32).collect()
}

/// The scalar spread of the honest updates: `sqrt(mean_j σ_j²)`.
pub fn honest_sigma(honest: &[&[f32]]) -> Result<f64, AttackError> {
    let s = stats(honest)?;
    if s.std.is_empty() {
        return Ok(0.0);
    }
    Ok((s.std.iter().map(|v| v * v).sum::<f64>() / s.std.len() as f64).sqrt())
}

/// Gaussian noise: `x ~ N(0, σ²I)` with `σ = sigma`, or
/// `σ = sigma · honest_sigma` when `relative`.
pub fn gaussian(
    honest: &[&[f32]],
    sigma: f64,
    relative: bool,
    rng: &mut impl Rng,
) -> Result<Vec<f32>, AttackError> {
    positive("sigma", sigma)?;
    let p = dims(honest, 1)?;
    let sd = if relative {
        sigma * honest_sigma(honest)?
    } else {
        sigma
    };
    if sd == 0.0 {
        return Ok(vec![0.0; p]);
    }
    let normal = Normal::new(0.0, sd).map_err(|_| AttackError::Parameter {
        name: "sigma",
        value: sd,
        reason: "must be finite and positive",
    })?;
    Ok((0..p).map(|_| normal.sample(rng) as f32).collect())
}

/// ALIE's z for `n` participants of which `f` are Byzantine.
pub fn alie_z(n: usize, f: usize, rule: ZRule) -> Result<f64, AttackError> {
    let undefined = || AttackError::AlieUndefined { n, f, mode: rule };
    let supporters = |n: usize, f: usize| (n / 2 + 1) as i64 - f as i64;
    let q = match rule {
        ZRule::Fixed { z } => {
            finite("z", z)?;
            return Ok(z);
        }
        ZRule::Epfml => {
            if f >= n {
                return Err(undefined());
            }
            let s = supporters(n, f);
            (n as f64 - f as f64 - s as f64) / (n - f) as f64
        }
        ZRule::Paper => {
            if n == 0 {
                return Err(undefined());
            }
            let s = supporters(n, f);
            (n as f64 - s as f64) / n as f64
        }
    };
    if !(q > 0.0 && q < 1.0) {
        return Err(undefined());
    }
    let phi = StdNormal::new(0.0, 1.0).map_err(|_| undefined())?;
    Ok(phi.inverse_cdf(q))
}

/// ALIE (Baruch et al. 2019): `μ − z·σ` coordinate-wise (epfml
/// sign; pass a negative z for the byzfl/NDSS `μ + z·σ`). Every Byzantine
/// client sends this same vector.
pub fn alie(honest: &[&[f32]], z: f64) -> Result<Vec<f32>, AttackError> {
    finite("z", z)?;
    let s = stats(honest)?;
    Ok(s.mean
        .iter()
        .zip(&s.std)
        .map(|(m, sd)| (m - z * sd) as f32)
        .collect())
}

/// Inner-product manipulation (Xie et al.): `−ε·μ` (epfml ε = 0.1;
/// byzfl `FallOfEmpires(τ)` is ε = τ − 1).
pub fn ipm(honest: &[&[f32]], epsilon: f64) -> Result<Vec<f32>, AttackError> {
    positive("epsilon", epsilon)?;
    sign_flip(honest, epsilon)
}

/// Mimic (Karimireddy et al. 2022): a copy of honest update
/// `target`.
pub fn mimic(honest: &[&[f32]], target: usize) -> Result<Vec<f32>, AttackError> {
    dims(honest, 1)?;
    honest
        .get(target)
        .map(|u| u.to_vec())
        .ok_or(AttackError::Parameter {
            name: "target",
            value: target as f64,
            reason: "must index an honest update",
        })
}

/// Sybil: the same crafted update under `k` identities.
pub fn sybil(update: &[f32], k: usize) -> Vec<Vec<f32>> {
    vec![update.to_vec(); k]
}

fn sq_dist64(a: &[f64], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, &y)| {
            let d = x - f64::from(y);
            d * d
        })
        .sum()
}

fn sq_dist32(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

fn direction(s: &Stats, p: Perturbation) -> Vec<f64> {
    match p {
        Perturbation::UnitVec => {
            let norm = s.mean.iter().map(|m| m * m).sum::<f64>().sqrt();
            if norm == 0.0 {
                vec![0.0; s.mean.len()]
            } else {
                s.mean.iter().map(|m| m / norm).collect()
            }
        }
        Perturbation::Sign => s
            .mean
            .iter()
            .map(|&m| {
                if m > 0.0 {
                    1.0
                } else if m < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            })
            .collect(),
        Perturbation::Std => s.std.clone(),
    }
}

/// Bisection on λ exactly as `our_attack_dist` in the NDSS'21 code: start at
/// `lambda0`, step `λ_fail = λ`; on success `λ_succ = λ`, `λ += λ_fail/2`,
/// otherwise `λ −= λ_fail/2`; halve `λ_fail`; stop when
/// `|λ_succ − λ| < 1e-5`. Returns `λ_succ` (0 if no λ succeeded).
pub fn bisect_lambda(lambda0: f64, mut ok: impl FnMut(f64) -> bool) -> f64 {
    const THRESHOLD: f64 = 1e-5;
    let mut lambda = lambda0;
    let mut lambda_fail = lambda;
    let mut lambda_succ = 0.0;
    // Each step halves λ_fail, so |λ_succ − λ| shrinks geometrically; the
    // cap only guards against a non-finite start.
    for _ in 0..200 {
        if (lambda_succ - lambda).abs() < THRESHOLD {
            break;
        }
        if ok(lambda) {
            lambda_succ = lambda;
            lambda += lambda_fail / 2.0;
        } else {
            lambda -= lambda_fail / 2.0;
        }
        lambda_fail /= 2.0;
    }
    lambda_succ
}

/// A crafted min-max / min-sum update and the λ found.
#[derive(Debug, Clone, PartialEq)]
pub struct Crafted {
    /// `μ − λ·p`.
    pub update: Vec<f32>,
    /// λ.
    pub lambda: f64,
}

fn craft(
    honest: &[&[f32]],
    p: Perturbation,
    lambda0: f64,
    ok: impl Fn(&[f64]) -> bool,
) -> Result<Crafted, AttackError> {
    positive("lambda0", lambda0)?;
    let s = stats(honest)?;
    let dir = direction(&s, p);
    let at = |lambda: f64| -> Vec<f64> {
        s.mean
            .iter()
            .zip(&dir)
            .map(|(m, d)| m - lambda * d)
            .collect()
    };
    let lambda = bisect_lambda(lambda0, |l| ok(&at(l)));
    Ok(Crafted {
        update: to_f32(&at(lambda)),
        lambda,
    })
}

/// Min-max (Shejwalkar & Houmansadr 2021): the largest λ with
/// `max_i ‖x_mal − x_i‖² ≤ max_{i,j} ‖x_i − x_j‖²`.
pub fn min_max(honest: &[&[f32]], p: Perturbation, lambda0: f64) -> Result<Crafted, AttackError> {
    dims(honest, 2)?;
    let mut max_d = 0f64;
    for i in 0..honest.len() {
        for j in 0..i {
            max_d = max_d.max(sq_dist32(honest[i], honest[j]));
        }
    }
    craft(honest, p, lambda0, |mal| {
        honest.iter().map(|x| sq_dist64(mal, x)).fold(0.0, f64::max) <= max_d
    })
}

/// Min-sum: the largest λ with
/// `Σ_i ‖x_mal − x_i‖² ≤ min_i Σ_j ‖x_i − x_j‖²`.
pub fn min_sum(honest: &[&[f32]], p: Perturbation, lambda0: f64) -> Result<Crafted, AttackError> {
    dims(honest, 2)?;
    let min_score = (0..honest.len())
        .map(|i| honest.iter().map(|x| sq_dist32(honest[i], x)).sum::<f64>())
        .fold(f64::INFINITY, f64::min);
    craft(honest, p, lambda0, |mal| {
        honest.iter().map(|x| sq_dist64(mal, x)).sum::<f64>() <= min_score
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    // Honest updates (1, 2), (3, 2), (5, 8): μ = (3, 4), σ = (2, √12).
    fn honest() -> Vec<Vec<f32>> {
        vec![vec![1.0, 2.0], vec![3.0, 2.0], vec![5.0, 8.0]]
    }
    fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
        v.iter().map(|r| r.as_slice()).collect()
    }

    #[test]
    fn stats_are_mean_and_unbiased_std() {
        let h = honest();
        let s = stats(&refs(&h)).unwrap();
        assert_eq!(s.mean, vec![3.0, 4.0]);
        assert!((s.std[0] - 2.0).abs() < 1e-12);
        assert!((s.std[1] - 12f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn sign_flip_and_ipm() {
        let h = honest();
        close(&sign_flip(&refs(&h), 1.0).unwrap(), &[-3.0, -4.0]);
        close(&sign_flip(&refs(&h), 4.0).unwrap(), &[-12.0, -16.0]);
        close(&ipm(&refs(&h), 0.1).unwrap(), &[-0.3, -0.4]);
        assert!(ipm(&refs(&h), 0.0).is_err());
        assert!(sign_flip(&[], 1.0).is_err());
    }

    #[test]
    fn model_replacement_scales_by_n_over_eta() {
        let (v, g) = model_replacement(&[1.0, -2.0], 10, 0.5).unwrap();
        assert_eq!(g, 20.0);
        close(&v, &[20.0, -40.0]);
        assert!(model_replacement(&[1.0], 0, 1.0).is_err());
        assert!(model_replacement(&[1.0], 3, 0.0).is_err());
    }

    #[test]
    fn alie_z_both_ways_and_fixed() {
        // n = 25, f = 5: s = 13 − 5 = 8; epfml q = 12/20 = 0.6, Φ⁻¹(0.6) = 0.253347.
        let z = alie_z(25, 5, ZRule::Epfml).unwrap();
        assert!((z - 0.253_347).abs() < 1e-5, "{z}");
        // Paper: q = (25 − 8)/25 = 0.68, Φ⁻¹(0.68) = 0.467699.
        let z = alie_z(25, 5, ZRule::Paper).unwrap();
        assert!((z - 0.467_699).abs() < 1e-5, "{z}");
        assert_eq!(alie_z(50, 10, ZRule::Fixed { z: 0.726 }).unwrap(), 0.726);
        // n = 4, f = 1: s = 2, epfml q = 1/3 → Φ⁻¹ = −0.430727.
        let z = alie_z(4, 1, ZRule::Epfml).unwrap();
        assert!((z + 0.430_727).abs() < 1e-5, "{z}");
        // n = 2, f = 0: s = 2, epfml q = 0 → undefined.
        assert!(matches!(
            alie_z(2, 0, ZRule::Epfml),
            Err(AttackError::AlieUndefined { .. })
        ));
        assert!(alie_z(3, 3, ZRule::Epfml).is_err());
    }

    #[test]
    fn alie_moves_z_stds_below_the_mean() {
        let h = honest();
        let got = alie(&refs(&h), 1.5).unwrap();
        close(&got, &[3.0 - 3.0, (4.0 - 1.5 * 12f64.sqrt()) as f32]);
        assert!(alie(&refs(&h), f64::NAN).is_err());
    }

    #[test]
    fn mimic_and_sybil() {
        let h = honest();
        assert_eq!(mimic(&refs(&h), 2).unwrap(), vec![5.0, 8.0]);
        assert!(mimic(&refs(&h), 3).is_err());
        assert_eq!(sybil(&[1.0, 2.0], 3), vec![vec![1.0, 2.0]; 3]);
    }

    #[test]
    fn gaussian_is_seeded_and_scaled() {
        let h = honest();
        let mut a = ChaCha20Rng::seed_from_u64(7);
        let mut b = ChaCha20Rng::seed_from_u64(7);
        let x = gaussian(&refs(&h), 200.0, false, &mut a).unwrap();
        let y = gaussian(&refs(&h), 200.0, false, &mut b).unwrap();
        assert_eq!(x, y);
        // σ_honest = sqrt((4 + 12)/2) = √8.
        assert!((honest_sigma(&refs(&h)).unwrap() - 8f64.sqrt()).abs() < 1e-12);
        let rows: Vec<Vec<f32>> = vec![vec![0.0; 20_000], vec![2.0; 20_000]];
        // σ_honest = √2, so σ = 10√2: the sample std must be close to it.
        let v = gaussian(&refs(&rows), 10.0, true, &mut a).unwrap();
        let sd = (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((sd - 10.0 * 2f64.sqrt()).abs() < 0.3, "{sd}");
        assert!(gaussian(&refs(&h), -1.0, false, &mut a).is_err());
    }

    #[test]
    fn bisection_follows_the_published_steps() {
        // Condition λ ≤ 3 from λ0 = 10: 10 fail → 5 fail → 2.5 ok → 3.75
        // fail → 3.125 fail → 2.8125 ok …; converges to 3 from below.
        let mut seen = Vec::new();
        let l = bisect_lambda(10.0, |l| {
            seen.push(l);
            l <= 3.0
        });
        assert_eq!(&seen[..5], &[10.0, 5.0, 2.5, 3.75, 3.125]);
        assert!(l <= 3.0 && 3.0 - l < 1e-4, "{l}");
        // Nothing succeeds: λ_succ stays 0.
        assert_eq!(bisect_lambda(10.0, |_| false), 0.0);
    }

    #[test]
    fn min_max_hits_the_max_pairwise_distance() {
        // Honest (0,0), (2,0): μ = (1,0), unit p = (1,0), max pair dist² = 4.
        // x_mal = (1 − λ, 0); max_i dist² = (1 + λ)² ≤ 4 ⇒ λ ≤ 1.
        let rows = vec![vec![0.0f32, 0.0], vec![2.0, 0.0]];
        let c = min_max(&refs(&rows), Perturbation::UnitVec, 10.0).unwrap();
        assert!((c.lambda - 1.0).abs() < 1e-4, "{}", c.lambda);
        assert!(
            c.update[0].abs() < 1e-4 && c.update[1] == 0.0,
            "{:?}",
            c.update
        );
        // Min-sum: Σ dist² = (1−λ)² + (1+λ)² = 2 + 2λ² ≤ min_i Σ_j = 4 ⇒ λ ≤ 1.
        let c = min_sum(&refs(&rows), Perturbation::Sign, 10.0).unwrap();
        assert!((c.lambda - 1.0).abs() < 1e-4, "{}", c.lambda);
        // Std direction: σ = (√2, 0); x_mal = (1 − √2λ, 0); (1 + √2λ)² ≤ 4 ⇒ λ ≤ 1/√2.
        let c = min_max(&refs(&rows), Perturbation::Std, 10.0).unwrap();
        assert!((c.lambda - 0.5f64.sqrt()).abs() < 1e-4, "{}", c.lambda);
        assert!(min_max(&refs(&rows[..1]), Perturbation::Std, 10.0).is_err());
    }

    #[test]
    fn ragged_honest_updates_are_refused() {
        let rows = vec![vec![0.0f32, 0.0], vec![2.0]];
        assert!(matches!(
            stats(&refs(&rows)),
            Err(AttackError::Shape { index: 1, .. })
        ));
    }
}
