//! t-of-n Shamir secret sharing over GF(2^8), byte by byte.
//!
//! Each secret byte is the constant term of its own random polynomial of
//! degree `t − 1`; share `i` (x = 1..=n) holds the polynomial values at `x`.
//! Field: GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1;
//! multiplication is a branch-free shift-and-add and inversion is `a^254`,
//! so no secret-dependent table lookups or branches. n ≤ 255.
//!
//! Shares carry no integrity: a wrong share yields a wrong secret. Callers
//! check reconstructed secrets against signed commitments (see
//! [`super::client`]).

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::SecAggError;

/// One share: the evaluation point `x` (1..=255) and one byte per secret byte.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// Evaluation point, never 0.
    pub x: u8,
    /// Polynomial values at `x`, one per secret byte.
    pub y: Vec<u8>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .field("len", &self.y.len())
            .finish_non_exhaustive()
    }
}

/// GF(2^8) multiplication, constant time.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let hi = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & hi);
        b >>= 1;
    }
    p
}

/// GF(2^8) inverse as a^254 (0 maps to 0), constant time.
fn inv(a: u8) -> u8 {
    let a2 = mul(a, a);
    let a4 = mul(a2, a2);
    let a8 = mul(a4, a4);
    let a16 = mul(a8, a8);
    let a32 = mul(a16, a16);
    let a64 = mul(a32, a32);
    let a128 = mul(a64, a64);
    // 254 = 128 + 64 + 32 + 16 + 8 + 4 + 2
    mul(mul(mul(a128, a64), mul(a32, a16)), mul(mul(a8, a4), a2))
}

/// Checks `1 ≤ t ≤ n ≤ 255`.
fn check_params(t: usize, n: usize) -> Result<(), SecAggError> {
    if t == 0 || t > n || n > 255 {
        return Err(SecAggError::Sharing(format!(
            "need 1 ≤ t ≤ n ≤ 255, got t = {t}, n = {n}"
        )));
    }
    Ok(())
}

/// Splits `secret` into `n` shares (x = 1..=n), any `t` of which reconstruct it.
pub fn split<R: RngCore + CryptoRng>(
    secret: &[u8],
    t: usize,
    n: usize,
    rng: &mut R,
) -> Result<Vec<Share>, SecAggError> {
    check_params(t, n)?;
    let mut coeffs = vec![0u8; t.saturating_sub(1)];
    let mut shares: Vec<Share> = (1..=n)
        .map(|x| Share {
            x: x as u8,
            y: vec![0; secret.len()],
        })
        .collect();
    for (pos, &s) in secret.iter().enumerate() {
        rng.fill_bytes(&mut coeffs);
        for share in &mut shares {
            // Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + s
            let mut acc = 0u8;
            for &c in coeffs.iter().rev() {
                acc = mul(acc, share.x) ^ c;
            }
            share.y[pos] = mul(acc, share.x) ^ s;
        }
    }
    coeffs.zeroize();
    Ok(shares)
}

/// Reconstructs the secret from `shares` (at least `t`, distinct non-zero
/// `x`, equal lengths) by Lagrange interpolation at 0.
pub fn reconstruct(shares: &[Share], t: usize) -> Result<Vec<u8>, SecAggError> {
    if t == 0 || shares.len() < t {
        return Err(SecAggError::Sharing(format!(
            "{} shares, threshold {t}",
            shares.len()
        )));
    }
    let len = shares[0].y.len();
    let mut seen = [false; 256];
    for s in shares {
        if s.x == 0 || seen[usize::from(s.x)] {
            return Err(SecAggError::Sharing(format!(
                "share x = {} is zero or repeated",
                s.x
            )));
        }
        seen[usize::from(s.x)] = true;
        if s.y.len() != len {
            return Err(SecAggError::Sharing("shares of different lengths".into()));
        }
    }
    // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j − x_i); subtraction is XOR.
    let basis: Vec<u8> = shares
        .iter()
        .map(|si| {
            let mut num = 1u8;
            let mut den = 1u8;
            for sj in shares.iter().filter(|sj| sj.x != si.x) {
                num = mul(num, sj.x);
                den = mul(den, sj.x ^ si.x);
            }
            mul(num, inv(den))
        })
        .collect();
    let mut secret = vec![0u8; len];
    for (share, &l) in shares.iter().zip(&basis) {
        for (out, &y) in secret.iter_mut().zip(&share.y) {
            *out ^= mul(l, y);
        }
    }
    Ok(secret)
}

/// Checks shares for interpolation: distinct non-zero `x`, equal lengths.
fn check_shares(shares: &[Share]) -> Result<usize, SecAggError> {
    let len = shares.first().map_or(0, |s| s.y.len());
    let mut seen = [false; 256];
    for s in shares {
        if s.x == 0 || seen[usize::from(s.x)] {
            return Err(SecAggError::Sharing(format!(
                "share x = {} is zero or repeated",
                s.x
            )));
        }
        seen[usize::from(s.x)] = true;
        if s.y.len() != len {
            return Err(SecAggError::Sharing("shares of different lengths".into()));
        }
    }
    Ok(len)
}

/// The values at `x` of the polynomials through `shares` (Lagrange
/// interpolation; `x = 0` gives the secret). Used to check further shares
/// against the polynomial a threshold subset defines.
pub fn interpolate_at(shares: &[Share], x: u8) -> Result<Vec<u8>, SecAggError> {
    if shares.is_empty() {
        return Err(SecAggError::Sharing("no shares".into()));
    }
    let len = check_shares(shares)?;
    // l_i(x) = Π_{j≠i} (x − x_j) / (x_i − x_j); subtraction is XOR.
    let basis: Vec<u8> = shares
        .iter()
        .map(|si| {
            let mut num = 1u8;
            let mut den = 1u8;
            for sj in shares.iter().filter(|sj| sj.x != si.x) {
                num = mul(num, x ^ sj.x);
                den = mul(den, si.x ^ sj.x);
            }
            mul(num, inv(den))
        })
        .collect();
    let mut out = vec![0u8; len];
    for (share, &l) in shares.iter().zip(&basis) {
        for (o, &y) in out.iter_mut().zip(&share.y) {
            *o ^= mul(l, y);
        }
    }
    Ok(out)
}

fn eval(poly: &[u8], x: u8) -> u8 {
    poly.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c)
}

/// Berlekamp–Welch for one byte position: the polynomial of degree < `t`
/// that agrees with all but at most `e` of the points `(xs[i], ys[i])`
/// (coefficients, lowest first), or `None` when there is none.
fn berlekamp_welch(xs: &[u8], ys: &[u8], t: usize, e: usize) -> Option<Vec<u8>> {
    let m = xs.len();
    // Unknowns: a_0..a_{e-1} (E = x^e + Σ a_l x^l), then b_0..b_{e+t-1} (Q).
    // Row i: Σ b_l x_i^l + y_i Σ a_l x_i^l = y_i x_i^e (characteristic 2).
    let cols = 2 * e + t;
    if cols > m {
        return None;
    }
    let mut a: Vec<Vec<u8>> = Vec::with_capacity(m);
    for (&x, &y) in xs.iter().zip(ys) {
        let mut row = vec![0u8; cols + 1];
        let mut pw = vec![1u8; e + t + 1];
        for l in 1..pw.len() {
            pw[l] = mul(pw[l - 1], x);
        }
        for l in 0..e {
            row[l] = mul(y, pw[l]);
        }
        row[e..cols].copy_from_slice(&pw[..e + t]);
        row[cols] = mul(y, pw[e]);
        a.push(row);
    }
    // Gaussian elimination; free unknowns stay 0.
    let mut pivots = Vec::with_capacity(cols);
    let mut r = 0;
    for c in 0..cols {
        let Some(p) = (r..m).find(|&i| a[i][c] != 0) else {
            continue;
        };
        a.swap(r, p);
        let f = inv(a[r][c]);
        for v in a[r].iter_mut() {
            *v = mul(*v, f);
        }
        let pivot_row = a[r].clone();
        for (i, row) in a.iter_mut().enumerate() {
            if i != r && row[c] != 0 {
                let g = row[c];
                for (v, pv) in row.iter_mut().zip(&pivot_row) {
                    *v ^= mul(g, *pv);
                }
            }
        }
        pivots.push(c);
        r += 1;
        if r == m {
            break;
        }
    }
    // Inconsistent: a zero row with a non-zero right-hand side.
    if a[r..].iter().any(|row| row[cols] != 0) {
        return None;
    }
    let mut z = vec![0u8; cols];
    for (i, &c) in pivots.iter().enumerate() {
        z[c] = a[i][cols];
    }
    let mut big_e = z[..e].to_vec();
    big_e.push(1);
    let mut q = z[e..].to_vec();
    // P = Q / E by long division; the remainder must vanish.
    let mut p = vec![0u8; t];
    for d in (0..t).rev() {
        let coef = q[d + e];
        p[d] = coef;
        if coef != 0 {
            for (k, &ec) in big_e.iter().enumerate() {
                q[d + k] ^= mul(coef, ec);
            }
        }
    }
    if q.iter().any(|&v| v != 0) {
        return None;
    }
    Some(p)
}

/// Locates wrong shares among `shares` (Reed–Solomon decoding by
/// Berlekamp–Welch, byte position by byte position): the indices of the
/// shares that disagree with the unique polynomial of degree < `t` agreeing
/// with all but at most `⌊(m − t)/2⌋` of them in every byte. `None` when
/// that bound leaves no room for an error (m < t + 2), when some position
/// does not decode, or when the positions together name more shares than
/// the bound. A result is a candidate only: callers check the secret the
/// remaining shares give against a commitment.
pub fn locate_errors(shares: &[Share], t: usize) -> Result<Option<Vec<usize>>, SecAggError> {
    let len = check_shares(shares)?;
    let m = shares.len();
    if t == 0 || m < t + 2 {
        return Ok(None);
    }
    let e = (m - t) / 2;
    let xs: Vec<u8> = shares.iter().map(|s| s.x).collect();
    let mut bad = vec![false; m];
    let mut ys = vec![0u8; m];
    for pos in 0..len {
        for (y, s) in ys.iter_mut().zip(shares) {
            *y = s.y[pos];
        }
        let Some(p) = berlekamp_welch(&xs, &ys, t, e) else {
            return Ok(None);
        };
        for (i, (&x, &y)) in xs.iter().zip(&ys).enumerate() {
            if eval(&p, x) != y {
                bad[i] = true;
            }
        }
        if bad.iter().filter(|b| **b).count() > e {
            return Ok(None);
        }
    }
    Ok(Some((0..m).filter(|&i| bad[i]).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn field_axioms_spot_checks() {
        // FIPS-197 §4.2: {57} · {83} = {c1}, {57} · {13} = {fe}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
        assert_eq!(mul(0x57, 0x13), 0xfe);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
        }
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn fixed_rng_fixed_shares() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret: Vec<u8> = (0u8..32).collect();
        let shares = split(&secret, 3, 5, &mut rng).unwrap();
        let got: Vec<String> = shares.iter().map(|s| hex::encode(&s.y)).collect();
        assert_eq!(got, super::super::test_vectors::SHAMIR_3_OF_5.to_vec());
        // Every 3-subset (and larger) reconstructs; every 2-subset does not.
        for a in 0..5 {
            for b in a + 1..5 {
                let pair = [shares[a].clone(), shares[b].clone()];
                assert!(reconstruct(&pair, 3).is_err());
                for c in b + 1..5 {
                    let sub = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(reconstruct(&sub, 3).unwrap(), secret);
                }
            }
        }
        assert_eq!(reconstruct(&shares, 3).unwrap(), secret);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        assert!(split(b"s", 0, 3, &mut rng).is_err());
        assert!(split(b"s", 4, 3, &mut rng).is_err());
        assert!(split(b"s", 2, 256, &mut rng).is_err());
        let shares = split(b"secret", 2, 3, &mut rng).unwrap();
        let dup = [shares[0].clone(), shares[0].clone()];
        assert!(reconstruct(&dup, 2).is_err());
        let mut short = shares[1].clone();
        short.y.pop();
        assert!(reconstruct(&[shares[0].clone(), short], 2).is_err());
        let zero = Share {
            x: 0,
            y: vec![0; 6],
        };
        assert!(reconstruct(&[shares[0].clone(), zero], 2).is_err());
        assert!(!format!("{:?}", shares[0]).contains(&format!("{:?}", shares[0].y)));
    }

    #[test]
    fn interpolation_checks_further_shares() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let shares = split(b"0123456789abcdef", 3, 6, &mut rng).unwrap();
        for s in &shares[3..] {
            assert_eq!(interpolate_at(&shares[..3], s.x).unwrap(), s.y);
        }
        assert_eq!(
            interpolate_at(&shares[..3], 0).unwrap(),
            b"0123456789abcdef"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn berlekamp_welch_finds_up_to_half_the_slack(
            n in 3usize..40,
            t_frac in 0.0f64..1.0,
            seed in any::<u64>(),
            which in any::<u64>(),
        ) {
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let secret: Vec<u8> = (0..32).map(|_| rng.next_u32() as u8).collect();
            let mut shares = split(&secret, t, n, &mut rng).unwrap();
            let e = (n - t) / 2;
            let mut pick = ChaCha20Rng::seed_from_u64(which);
            let mut wrong = std::collections::BTreeSet::new();
            while wrong.len() < e {
                wrong.insert((pick.next_u64() % n as u64) as usize);
            }
            for &i in &wrong {
                // Garbage, but at least one byte surely differs.
                let mut g = vec![0u8; 32];
                pick.fill_bytes(&mut g);
                g[0] = shares[i].y[0] ^ 0x5a;
                shares[i].y = g;
            }
            let found = locate_errors(&shares, t).unwrap();
            if n < t + 2 {
                prop_assert!(found.is_none());
            } else {
                let found = found.unwrap();
                prop_assert_eq!(found.iter().copied().collect::<std::collections::BTreeSet<_>>(), wrong);
                let good: Vec<Share> = (0..n).filter(|i| !found.contains(i)).map(|i| shares[i].clone()).collect();
                prop_assert_eq!(reconstruct(&good, t).unwrap(), secret);
            }
        }
    }

    proptest! {
        #[test]
        fn any_t_subset_reconstructs(
            secret in proptest::collection::vec(any::<u8>(), 1..40),
            n in 1usize..12,
            t_frac in 0.0f64..1.0,
            seed in any::<u64>(),
            pick in any::<u64>(),
        ) {
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut shares = split(&secret, t, n, &mut rng).unwrap();
            // A pseudo-random t-subset.
            let mut pick_rng = ChaCha20Rng::seed_from_u64(pick);
            for i in (1..shares.len()).rev() {
                let j = (pick_rng.next_u64() % (i as u64 + 1)) as usize;
                shares.swap(i, j);
            }
            prop_assert_eq!(reconstruct(&shares[..t], t).unwrap(), secret);
        }
    }
}
