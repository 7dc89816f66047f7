//! The public parameters of one bucket, shared by nodes and coordinator.

use super::SecAggError;
use super::quant::QuantConfig;
use super::wire::{MAX_DIM, MAX_MEMBERS};
use crate::identity::{NodeId, TenantId};

/// The default reconstruction threshold `t = ⌈2n/3⌉` (1 for n = 1).
pub fn default_threshold(n: usize) -> usize {
    (2 * n).div_ceil(3).max(1)
}

/// Everything both sides of a bucket must agree on.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketParams {
    tenant: TenantId,
    round: u64,
    model_version: u64,
    bucket: u32,
    members: Vec<NodeId>,
    threshold: usize,
    dim: usize,
    quant: QuantConfig,
    noise_multiplier: Option<f64>,
    extra_words: usize,
}

impl BucketParams {
    /// Validates and builds bucket parameters.
    ///
    /// - `members`: distinct, at most 255 (sorted here; the sorted order
    ///   defines mask signs and Shamir evaluation points).
    /// - `threshold`: `None` for `⌈2n/3⌉`; otherwise `n/2 < t ≤ n` (t = 1 for n = 1).
    /// - `dim`: 1..=2^26 parameters.
    /// - `noise_multiplier` z: distributed DP so that the bucket sum carries
    ///   discrete Gaussian noise of standard deviation `z·C` (each member adds
    ///   its `1/n` share of the variance).
    /// - the quantization must have headroom for `n` members plus the noise
    ///   ([`QuantConfig::check_bucket`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: TenantId,
        round: u64,
        model_version: u64,
        bucket: u32,
        members: Vec<NodeId>,
        threshold: Option<usize>,
        dim: usize,
        quant: QuantConfig,
        noise_multiplier: Option<f64>,
    ) -> Result<Self, SecAggError> {
        let mut members = members;
        members.sort();
        let n = members.len();
        if n == 0 || n > MAX_MEMBERS {
            return Err(SecAggError::Config(format!(
                "a bucket needs 1 to {MAX_MEMBERS} members, got {n}"
            )));
        }
        if members.windows(2).any(|w| w[0] == w[1]) {
            return Err(SecAggError::Config("bucket lists a member twice".into()));
        }
        let threshold = threshold.unwrap_or_else(|| default_threshold(n));
        if threshold > n || 2 * threshold <= n {
            return Err(SecAggError::Config(format!(
                "threshold {threshold} must satisfy n/2 < t ≤ n for n = {n}"
            )));
        }
        if dim == 0 || dim > MAX_DIM {
            return Err(SecAggError::Config(format!(
                "dimension {dim} outside 1..={MAX_DIM}"
            )));
        }
        if let Some(z) = noise_multiplier
            && !(z.is_finite() && z > 0.0)
        {
            return Err(SecAggError::Config(format!(
                "noise multiplier {z} must be finite and positive"
            )));
        }
        let params = Self {
            tenant,
            round,
            model_version,
            bucket,
            members,
            threshold,
            dim,
            quant,
            noise_multiplier,
            extra_words: 0,
        };
        quant.check_bucket(n, params.noise_sigma())?;
        Ok(params)
    }

    /// Appends `n` raw words to every member's masked vector: fixed-point
    /// values the caller encodes itself (for example the federated scaler's
    /// moments and the training loss), masked and summed in `Z_{2^32}` like
    /// the quantized update but neither clipped nor scaled; the caller must
    /// leave headroom for the bucket's sum. DP noise, when on, covers them
    /// too.
    pub fn with_extra_words(mut self, n: usize) -> Result<Self, SecAggError> {
        if self.dim.saturating_add(n) > MAX_DIM {
            return Err(SecAggError::Config(format!(
                "dimension {} plus {n} extra words exceeds {MAX_DIM}",
                self.dim
            )));
        }
        self.extra_words = n;
        Ok(self)
    }

    /// Raw words appended after the quantized update.
    pub fn extra_words(&self) -> usize {
        self.extra_words
    }

    /// Words of a masked input: the quantized update, then the extra words.
    pub fn words(&self) -> usize {
        self.dim + self.extra_words
    }

    /// Refuses a message bound to another tenant, round or bucket.
    pub(crate) fn check_binding(
        &self,
        tenant: &TenantId,
        round: u64,
        bucket: u32,
    ) -> Result<(), SecAggError> {
        if *tenant != self.tenant || round != self.round || bucket != self.bucket {
            return Err(SecAggError::Binding(format!(
                "message for {tenant}/round {round}/bucket {bucket}, this is {}/round {}/bucket {}",
                self.tenant, self.round, self.bucket
            )));
        }
        Ok(())
    }

    /// Tenant of the round.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    /// Round number.
    pub fn round(&self) -> u64 {
        self.round
    }
    /// Global model version the round trains from.
    pub fn model_version(&self) -> u64 {
        self.model_version
    }
    /// Bucket index.
    pub fn bucket(&self) -> u32 {
        self.bucket
    }
    /// Members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }
    /// Reconstruction threshold t.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
    /// Update dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Quantization.
    pub fn quant(&self) -> &QuantConfig {
        &self.quant
    }
    /// Whether the bucket is masked (more than one member).
    pub fn masked(&self) -> bool {
        self.members.len() > 1
    }
    /// Distributed-DP noise multiplier, if enabled.
    pub fn noise_multiplier(&self) -> Option<f64> {
        self.noise_multiplier
    }
    /// Standard deviation of the total noise of a full bucket sum, quantized units (0 without DP).
    pub fn noise_sigma(&self) -> f64 {
        self.noise_multiplier
            .map_or(0.0, |z| z * self.quant.clip_norm() * self.quant.scale())
    }
    /// Variance each member adds, quantized units: σ²/n.
    pub fn local_noise_variance(&self) -> Option<f64> {
        self.noise_multiplier
            .map(|_| self.noise_sigma().powi(2) / self.members.len() as f64)
    }
    /// Position of `node` in the sorted member list.
    pub fn index_of(&self, node: &NodeId) -> Option<usize> {
        self.members.binary_search(node).ok()
    }
    /// Shamir evaluation point of `node` (index + 1).
    pub(crate) fn x_of(&self, node: &NodeId) -> Option<u8> {
        self.index_of(node).map(|i| (i + 1) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| format!("n{i}").parse().unwrap()).collect()
    }

    fn params(n: usize, t: Option<usize>) -> Result<BucketParams, SecAggError> {
        BucketParams::new(
            "acme".parse().unwrap(),
            1,
            1,
            0,
            ids(n),
            t,
            10,
            QuantConfig::new(1.0, 1024.0).unwrap(),
            None,
        )
    }

    #[test]
    fn thresholds() {
        let got: Vec<usize> = (1..=9).map(default_threshold).collect();
        assert_eq!(got, vec![1, 2, 2, 3, 4, 4, 5, 6, 6]);
        assert_eq!(params(8, None).unwrap().threshold(), 6);
        assert!(params(8, Some(4)).is_err(), "t must exceed n/2");
        params(8, Some(5)).unwrap();
        assert!(params(8, Some(9)).is_err());
        assert!(params(0, None).is_err());
        assert!(params(256, None).is_err());
        let mut dup = ids(3);
        dup.push(dup[0].clone());
        assert!(
            BucketParams::new(
                "acme".parse().unwrap(),
                1,
                1,
                0,
                dup,
                None,
                10,
                QuantConfig::new(1.0, 1.0).unwrap(),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn overflowing_configuration_is_refused() {
        let q = QuantConfig::new(1.0, f64::from(1u32 << 25)).unwrap();
        let e = BucketParams::new(
            "acme".parse().unwrap(),
            1,
            1,
            0,
            ids(100),
            None,
            10,
            q,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                SecAggError::Overflow {
                    max_members: 63,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            BucketParams::new(
                "acme".parse().unwrap(),
                1,
                1,
                0,
                ids(8),
                None,
                10,
                q,
                Some(f64::NAN)
            )
            .is_err()
        );
    }
}
