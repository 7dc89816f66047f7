//! Pinned outputs of fixed inputs (see the tests that use them). A change
//! here is a protocol change: nodes and coordinators of different versions
//! would disagree.

/// `assign_buckets`: tenant "acme", round 7, participants n000..n005,
/// model digest [9; 32], k = 3.
pub const BUCKET_VECTOR: [[&str; 3]; 2] = [["n000", "n001", "n004"], ["n002", "n003", "n005"]];

/// `shamir::split` of the bytes 0..32, t = 3, n = 5, RNG `ChaCha20Rng::seed_from_u64(1)`.
pub const SHAMIR_3_OF_5: [&str; 5] = [
    "ad24b4373d2dd7a606224c124cb14950d8499d355e378acb77354044bbb7ece0",
    "f3104ec664fc90dd30b66f4be573fbc01099a31cc84b0028eceaecefc23801a6",
    "5e35f8f25dd4417c3e9d2952a5cfbc9fd8c12c3a82699cf483c6b6b06592f359",
    "035476108c7e8d92e8e549587a8508550afa8d1a8cc1ee2f437efedba1e48d1d",
    "ae71c024b5565c33e6ce0f413a394f0ac2a2023cc6e372f32c52a484064e7fe2",
];

/// `quantize([3, −4, 0, 0])` with C = 2, scale 256, RNG `ChaCha20Rng::seed_from_u64(5)`:
/// clipped to (1.2, −1.6), scaled to (307.2, −409.6), rounded to (307, −410).
pub const QUANT_VECTOR: [u32; 4] = [307, (-410i32) as u32, 0, 0];
