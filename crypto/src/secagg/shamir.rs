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
