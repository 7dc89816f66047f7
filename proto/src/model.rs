//! The flat parameter layout of the fedmesh autoencoder, as carried on the
//! wire. Node and coordinator must agree on it, so it lives with the
//! protocol: layers in order (encoder, then the mirrored decoder), each as
//! its weight matrix (`out × in`, row-major) followed by its bias (`out`).

use sha2::{Digest, Sha256};

/// Name of the feature schema the v1 model consumes. Bumped with the
/// feature list; part of every model schema hash.
pub const FEATURE_SCHEMA_V1: &str = "fedmesh.features.v1";

/// Hex SHA-256 digest of the v1 feature schema (version and feature names)
/// as computed by `fedmesh_node::detection::features::feature_schema_hash`; a node test
/// keeps the two equal. Coordinators use it as the default federation schema.
pub const FEATURE_SCHEMA_V1_DIGEST: &str =
    "2d34de5e3895548c56f14a3ff9cd89200db4007a157b57a9463a5447eb410f02";

/// Number of features in the v1 schema (the autoencoder's input width).
pub const FEATURE_SCHEMA_V1_DIM: usize = 22;

/// Default encoder widths of the autoencoder.
pub const DEFAULT_HIDDEN: [usize; 2] = [32, 8];

/// `(in, out)` widths of each dense layer for an autoencoder with the given
/// input width and encoder widths; the decoder mirrors the encoder.
pub fn layer_shapes(input_dim: usize, hidden: &[usize]) -> Vec<(usize, usize)> {
    let mut widths = Vec::with_capacity(hidden.len() * 2 + 1);
    widths.push(input_dim);
    widths.extend_from_slice(hidden);
    widths.extend(hidden.iter().rev().skip(1).copied());
    widths.push(input_dim);
    widths.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Number of parameters (weights and biases), or `None` on overflow.
pub fn param_count(input_dim: usize, hidden: &[usize]) -> Option<usize> {
    layer_shapes(input_dim, hidden)
        .iter()
        .try_fold(0usize, |acc, &(i, o)| {
            acc.checked_add(i.checked_mul(o)?.checked_add(o)?)
        })
}

/// Schema hash binding a parameter vector to its meaning: the feature schema
/// (name and digest of its feature names), the architecture tag and every
/// width. Two parties with equal hashes interpret a flat vector identically.
pub fn model_schema_hash(
    feature_schema_digest: &[u8; 32],
    input_dim: usize,
    hidden: &[usize],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedmesh-ae-v1\0");
    h.update(FEATURE_SCHEMA_V1.as_bytes());
    h.update([0u8]);
    h.update(feature_schema_digest);
    h.update((input_dim as u64).to_le_bytes());
    h.update((hidden.len() as u64).to_le_bytes());
    for &w in hidden {
        h.update((w as u64).to_le_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_mirrors_the_encoder() {
        assert_eq!(
            layer_shapes(22, &[32, 8]),
            vec![(22, 32), (32, 8), (8, 32), (32, 22)]
        );
        assert_eq!(layer_shapes(4, &[2]), vec![(4, 2), (2, 4)]);
        assert_eq!(param_count(4, &[2]), Some(4 * 2 + 2 + 2 * 4 + 4));
        assert_eq!(param_count(usize::MAX, &[usize::MAX]), None);
    }

    #[test]
    fn schema_hash_depends_on_every_width() {
        let d = [7u8; 32];
        let a = model_schema_hash(&d, 22, &[32, 8]);
        assert_ne!(a, model_schema_hash(&d, 22, &[32, 9]));
        assert_ne!(a, model_schema_hash(&d, 21, &[32, 8]));
        assert_ne!(a, model_schema_hash(&[8u8; 32], 22, &[32, 8]));
        assert_eq!(a, model_schema_hash(&d, 22, &[32, 8]));
    }
}
