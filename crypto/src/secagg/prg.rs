//! Mask expansion: a 32-byte seed becomes `d` words of `Z_{2^32}` via the
//! ChaCha20 keystream (RFC 8439 block function, 64-bit block counter from 0,
//! stream 0; RustCrypto `chacha20`, which picks its AVX2 backend at run time),
//! read as little-endian `u32`s. The keystream is produced in
//! blocks of [`BLOCK_BYTES`] and folded straight into the accumulator, so no
//! `d`-sized mask vector is ever allocated.

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use zeroize::Zeroize;

/// Bytes of keystream generated per refill.
pub const BLOCK_BYTES: usize = 4096;

/// Whether a mask is added to or subtracted from the accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// `acc += PRG(seed)`
    Add,
    /// `acc -= PRG(seed)`
    Sub,
}

/// Adds (or subtracts) `PRG(seed)` to `acc` word by word, modulo 2^32.
pub fn apply_mask(seed: &[u8; 32], sign: Sign, acc: &mut [u32]) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut buf = [0u8; BLOCK_BYTES];
    for chunk in acc.chunks_mut(BLOCK_BYTES / 4) {
        let bytes = &mut buf[..chunk.len() * 4];
        rng.fill_bytes(bytes);
        match sign {
            Sign::Add => {
                for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                    *a = a.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                }
            }
            Sign::Sub => {
                for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                    *a = a.wrapping_sub(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                }
            }
        }
    }
    buf.zeroize();
}

/// `PRG(seed)` as a fresh vector of `d` words.
pub fn expand(seed: &[u8; 32], d: usize) -> Vec<u32> {
    let mut out = vec![0u32; d];
    apply_mask(seed, Sign::Add, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(hex_str: &str) -> Vec<u32> {
        hex::decode(hex_str)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// RFC 8439 Appendix A.1, test vectors #1 and #2: all-zero key and nonce,
    /// block counters 0 and 1 (consecutive keystream blocks).
    #[test]
    fn rfc8439_zero_key_keystream() {
        let block0 = "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
                      da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586";
        let block1 = "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed\
                      29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f";
        let got = expand(&[0; 32], 32);
        assert_eq!(got[..16], words(block0)[..]);
        assert_eq!(got[16..], words(block1)[..]);
    }

    /// RFC 8439 Appendix A.1 test vector #3 uses key ...01 (last byte 1),
    /// counter 1: its block is the second block of our stream.
    #[test]
    fn rfc8439_key_one_block_one() {
        let mut key = [0u8; 32];
        key[31] = 1;
        let block1 = "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a\
                      8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0";
        assert_eq!(expand(&key, 32)[16..], words(block1)[..]);
    }

    #[test]
    fn add_then_sub_cancels_and_blocks_are_seamless() {
        let seed = [42u8; 32];
        let d = BLOCK_BYTES / 4 * 3 + 7;
        let mut acc: Vec<u32> = (0..d as u32).collect();
        apply_mask(&seed, Sign::Add, &mut acc);
        assert_ne!(acc[..4], [0, 1, 2, 3]);
        // Expansion is a prefix-consistent stream: longer d extends shorter d.
        let long = expand(&seed, d);
        assert_eq!(expand(&seed, 1000)[..], long[..1000]);
        apply_mask(&seed, Sign::Sub, &mut acc);
        assert_eq!(acc, (0..d as u32).collect::<Vec<_>>());
    }
}
