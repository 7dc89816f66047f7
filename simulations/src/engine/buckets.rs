//! Secure-aggregation buckets, simulated.
//!
//! With bucket size k the coordinator never sees an individual update: the
//! round's submissions are shuffled into buckets of k, each bucket is summed
//! under masking, and the robust rule runs over the bucket means
//! (Karimireddy et al.'s bucketing, which SecAgg buckets give for free).
//! [`PlaintextBuckets`] computes exactly the sums the masked protocol
//! reveals, in plaintext. [`BucketSummer`] is the seam where a masked
//! implementation (the crypto crate's secure aggregation) plugs in.

use rand::Rng;
use rand::seq::SliceRandom;

/// One member's contribution to a bucket.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The update.
    pub update: &'a [f32],
    /// Its weight (sample count).
    pub weight: f64,
    /// The member sent shares that do not reconstruct.
    pub bad_shares: bool,
}

/// Why a bucket's sum could not be revealed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketError {
    /// A member's shares did not reconstruct; the bucket is lost.
    #[error("member {0} sent bad shares")]
    BadShares(usize),
    /// Empty bucket or zero total weight.
    #[error("empty bucket")]
    Empty,
}

/// Reveals the weighted mean of a bucket and its total weight.
pub trait BucketSummer {
    /// `Σ wᵢ xᵢ / Σ wᵢ` and `Σ wᵢ`, or why the bucket is lost.
    fn weighted_mean(&self, members: &[Member<'_>]) -> Result<(Vec<f32>, f64), BucketError>;
}

/// Plaintext sums: accumulates `wᵢ xᵢ` in f64 in member order.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaintextBuckets;

impl BucketSummer for PlaintextBuckets {
    fn weighted_mean(&self, members: &[Member<'_>]) -> Result<(Vec<f32>, f64), BucketError> {
        if let Some(i) = members.iter().position(|m| m.bad_shares) {
            return Err(BucketError::BadShares(i));
        }
        let first = members.first().ok_or(BucketError::Empty)?;
        let total: f64 = members.iter().map(|m| m.weight).sum();
        if !(total > 0.0 && total.is_finite()) {
            return Err(BucketError::Empty);
        }
        let mut acc = vec![0f64; first.update.len()];
        for m in members {
            for (a, &x) in acc.iter_mut().zip(m.update) {
                *a += m.weight * f64::from(x);
            }
        }
        Ok((acc.iter().map(|a| (a / total) as f32).collect(), total))
    }
}

/// Shuffles `0..n` with `rng` and cuts it into buckets of `k` (the last
/// one smaller when k does not divide n). k ≤ 1 gives singletons in order.
pub fn assign(n: usize, k: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    if k <= 1 {
        return idx.into_iter().map(|i| vec![i]).collect();
    }
    idx.shuffle(rng);
    idx.chunks(k)
        .map(|c| {
            let mut b = c.to_vec();
            b.sort_unstable();
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn plaintext_bucket_is_the_weighted_mean() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        let m = |u, w| Member {
            update: u,
            weight: w,
            bad_shares: false,
        };
        let (v, w) = PlaintextBuckets
            .weighted_mean(&[m(&a, 1.0), m(&b, 3.0)])
            .unwrap();
        assert_eq!(v, vec![2.5, 5.0]);
        assert_eq!(w, 4.0);
        let mut bad = m(&b, 1.0);
        bad.bad_shares = true;
        assert_eq!(
            PlaintextBuckets.weighted_mean(&[m(&a, 1.0), bad]),
            Err(BucketError::BadShares(1))
        );
        assert_eq!(PlaintextBuckets.weighted_mean(&[]), Err(BucketError::Empty));
    }

    #[test]
    fn assignment_covers_everyone_once_and_is_seeded() {
        let mut r1 = ChaCha20Rng::seed_from_u64(3);
        let mut r2 = ChaCha20Rng::seed_from_u64(3);
        let a = assign(7, 3, &mut r1);
        assert_eq!(a, assign(7, 3, &mut r2));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(assign(3, 1, &mut r1), vec![vec![0], vec![1], vec![2]]);
    }
}
