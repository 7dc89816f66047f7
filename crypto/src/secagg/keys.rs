//! Per-round X25519 keys, key agreement, key derivation and share
//! encryption.
//!
//! `x25519-dalek` (with `static_secrets` and `zeroize`) rather than ring's
//! X25519: Bonawitz's dropout recovery Shamir-shares the *mask secret key*,
//! and ring's agreement keys cannot be exported. Secrets zeroize on drop.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::SecAggError;
use crate::identity::{NodeId, TenantId};

const HKDF_SALT: &[u8] = b"fedmesh/secagg/v1/hkdf-salt";
const MASK_LABEL: &[u8] = b"fedmesh/secagg/v1/pairwise-mask";
const SHARE_KEY_LABEL: &[u8] = b"fedmesh/secagg/v1/share-key";
const SEED_COMMIT_DOMAIN: &[u8] = b"fedmesh/secagg/v1/self-seed-commitment";

/// A 32-byte secret that zeroizes on drop and never prints.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Secret32(pub(crate) [u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

impl Secret32 {
    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// SHA-256 commitment to a self-mask seed.
pub fn seed_commitment(seed: &[u8; 32]) -> [u8; 32] {
    let mut buf = Zeroizing::new(Vec::with_capacity(SEED_COMMIT_DOMAIN.len() + 32));
    buf.extend_from_slice(SEED_COMMIT_DOMAIN);
    buf.extend_from_slice(seed);
    crate::sha256(&buf)
}

/// The X25519 public key of a secret key.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

fn info(
    label: &[u8],
    tenant: &TenantId,
    round: u64,
    bucket: u32,
    a: &NodeId,
    b: &NodeId,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(label.len() + 160);
    v.extend_from_slice(label);
    for s in [tenant.as_str(), a.as_str(), b.as_str()] {
        // Names are at most 63 bytes.
        v.push(s.len() as u8);
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(&round.to_be_bytes());
    v.extend_from_slice(&bucket.to_be_bytes());
    v
}

fn hkdf(ikm: &[u8], info: &[u8]) -> Result<Secret32, SecAggError> {
    let prk = Salt::new(HKDF_SHA256, HKDF_SALT).extract(ikm);
    let mut out = Secret32([0; 32]);
    prk.expand(&[info], HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out.0))
        .map_err(|_| SecAggError::Config("HKDF output length".into()))?;
    Ok(out)
}

/// The u-coordinates of the points of order dividing 8 that fit in 255
/// bits, canonical or not (0, 1, the two of order 8, p − 1, p, p + 1),
/// little-endian, bit 255 clear (X25519 ignores it).
const SMALL_ORDER: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    t[1][0] = 1;
    t[2] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    t[3] = [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ];
    let mut i = 4;
    while i < 7 {
        let mut j = 1;
        while j < 31 {
            t[i][j] = 0xff;
            j += 1;
        }
        t[i][0] = 0xec + (i as u8 - 4);
        t[i][31] = 0x7f;
        i += 1;
    }
    t
};

/// Whether `public` is a contributory X25519 public key: a key of small
/// order (the all-zero point and the other points of order dividing 8, in
/// any encoding) makes every key agreement with it give the all-zero
/// secret whatever the other side's key, so a node advertising one sinks
/// its bucket. Checked against the list of those encodings (as libsodium
/// does), in constant time; the same answer as agreement with a clamped
/// multiple of the cofactor and `was_contributory` (property-tested), at a
/// fraction of a scalar multiplication's cost — the coordinator checks
/// two keys per node and round.
pub fn is_contributory(public: &[u8; 32]) -> bool {
    let mut key = *public;
    key[31] &= 0x7f;
    let mut small = 0u8;
    for bad in &SMALL_ORDER {
        let diff = key.iter().zip(bad).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        small |= u8::from(diff == 0);
    }
    small == 0
}

/// X25519 of `secret` with `peer_public`; refuses a non-contributory result
/// (a low-order peer key).
fn agree(
    secret: &[u8; 32],
    peer_public: &[u8; 32],
    peer: &NodeId,
) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
    let sk = StaticSecret::from(*secret);
    let shared = sk.diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(SecAggError::WeakKey(peer.clone()));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Pairwise mask seed s_{u,v} = HKDF(X25519(s_u^SK, s_v^PK), label ‖ tenant ‖
/// u<v sorted ids ‖ round ‖ bucket). Symmetric in (u, v).
#[allow(clippy::too_many_arguments)]
pub fn pairwise_seed(
    my_secret: &[u8; 32],
    me: &NodeId,
    peer_public: &[u8; 32],
    peer: &NodeId,
    tenant: &TenantId,
    round: u64,
    bucket: u32,
) -> Result<Secret32, SecAggError> {
    let shared = agree(my_secret, peer_public, peer)?;
    let (lo, hi) = if me < peer { (me, peer) } else { (peer, me) };
    hkdf(
        shared.as_ref(),
        &info(MASK_LABEL, tenant, round, bucket, lo, hi),
    )
}

/// X25519(c_me, c_peer): the secret both directions of share encryption
/// between two nodes derive their keys from. A node computes it once per
/// peer and round (it seals to the peer and opens the peer's share with it).
pub(crate) fn share_secret(
    my_secret: &[u8; 32],
    peer_public: &[u8; 32],
    peer: &NodeId,
) -> Result<Secret32, SecAggError> {
    let shared = agree(my_secret, peer_public, peer)?;
    Ok(Secret32(*shared))
}

/// Directional share-encryption key for `src → dst`:
/// HKDF(X25519(c_src, c_dst), label ‖ tenant ‖ src ‖ dst ‖ round ‖ bucket).
/// Each key encrypts exactly one message, so a fixed nonce is safe.
fn share_key(shared: &Secret32, b: &ShareBinding<'_>) -> Result<LessSafeKey, SecAggError> {
    let key = hkdf(
        shared.expose(),
        &info(SHARE_KEY_LABEL, b.tenant, b.round, b.bucket, b.src, b.dst),
    )?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, key.expose())
        .map_err(|_| SecAggError::Config("ChaCha20-Poly1305 key length".into()))?;
    Ok(LessSafeKey::new(unbound))
}

/// Binding of one encrypted share.
pub(crate) struct ShareBinding<'a> {
    pub tenant: &'a TenantId,
    pub round: u64,
    pub bucket: u32,
    pub src: &'a NodeId,
    pub dst: &'a NodeId,
}

/// Encrypts `plaintext` from `src` to `dst` under their [`share_secret`].
pub(crate) fn seal(
    shared: &Secret32,
    b: &ShareBinding<'_>,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SecAggError> {
    let key = share_key(shared, b)?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| SecAggError::Config("share encryption failed".into()))?;
    Ok(buf)
}

/// Decrypts a share sent by `src` to `dst` under their [`share_secret`].
pub(crate) fn open(
    shared: &Secret32,
    b: &ShareBinding<'_>,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecAggError> {
    let key = share_key(shared, b)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| SecAggError::ShareDecrypt {
            sender: b.src.clone(),
            recipient: b.dst.clone(),
        })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn pairwise_seed_is_symmetric_and_bound() {
        let t: TenantId = "acme".parse().unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (pa, pb) = (public_key(&a), public_key(&b));
        let ab = pairwise_seed(&a, &n("a"), &pb, &n("b"), &t, 3, 0).unwrap();
        let ba = pairwise_seed(&b, &n("b"), &pa, &n("a"), &t, 3, 0).unwrap();
        assert_eq!(ab.expose(), ba.expose());
        let other_round = pairwise_seed(&a, &n("a"), &pb, &n("b"), &t, 4, 0).unwrap();
        assert_ne!(ab.expose(), other_round.expose());
        let other_bucket = pairwise_seed(&a, &n("a"), &pb, &n("b"), &t, 3, 1).unwrap();
        assert_ne!(ab.expose(), other_bucket.expose());
        // A low-order point is refused.
        assert!(matches!(
            pairwise_seed(&a, &n("a"), &[0; 32], &n("b"), &t, 3, 0),
            Err(SecAggError::WeakKey(_))
        ));
        assert_eq!(format!("{ab:?}"), "Secret32(<redacted>)");
    }

    /// The small-order points of Curve25519 (u-coordinates, RFC 7748 §7 and
    /// the libsodium blocklist), including their non-canonical encodings.
    pub(crate) fn low_order_points() -> Vec<[u8; 32]> {
        let hexes = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        hexes
            .iter()
            .map(|h| hex::decode(h).unwrap().try_into().unwrap())
            .collect()
    }

    fn contributory_by_agreement(public: &[u8; 32]) -> bool {
        StaticSecret::from([0x5a; 32])
            .diffie_hellman(&PublicKey::from(*public))
            .was_contributory()
    }

    #[test]
    fn the_list_check_agrees_with_agreement_on_every_small_order_encoding() {
        for p in low_order_points() {
            for top in [0u8, 0x80] {
                let mut k = p;
                k[31] |= top;
                assert!(!contributory_by_agreement(&k), "{}", hex::encode(k));
                assert!(!is_contributory(&k), "{}", hex::encode(k));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_list_check_agrees_with_agreement(key in proptest::prelude::any::<[u8; 32]>(), pick in 0usize..8) {
            // Random keys, and keys one bit away from a small-order one.
            let mut k = key;
            if let Some(p) = low_order_points().get(pick) {
                k = *p;
                k[key[0] as usize % 32] ^= 1 << (key[1] % 8);
            }
            proptest::prop_assert_eq!(is_contributory(&k), contributory_by_agreement(&k));
        }
    }

    #[test]
    fn low_order_keys_are_not_contributory() {
        for p in low_order_points() {
            assert!(!is_contributory(&p), "{}", hex::encode(p));
            // Whatever the honest side's secret, agreement gives zeros.
            assert!(share_secret(&[9; 32], &p, &n("x")).is_err());
        }
        for s in [[1u8; 32], [7; 32], [0xff; 32]] {
            assert!(is_contributory(&public_key(&s)));
        }
    }

    #[test]
    fn rfc7748_x25519_vector() {
        // RFC 7748 §6.1: Alice's and Bob's keys.
        let alice: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            hex::encode(public_key(&alice)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn share_encryption_round_trip_and_binding() {
        let t: TenantId = "acme".parse().unwrap();
        let (cu, cv) = ([5u8; 32], [6u8; 32]);
        let (pu, pv) = (public_key(&cu), public_key(&cv));
        let (u, v, w) = (n("u"), n("v"), n("w"));
        let bind = ShareBinding {
            tenant: &t,
            round: 1,
            bucket: 2,
            src: &u,
            dst: &v,
        };
        let at_u = share_secret(&cu, &pv, &v).unwrap();
        let at_v = share_secret(&cv, &pu, &u).unwrap();
        assert_eq!(at_u.expose(), at_v.expose());
        let ct = seal(&at_u, &bind, b"ad", b"secret share").unwrap();
        assert_eq!(ct.len(), 12 + 16);
        assert_eq!(
            &open(&at_v, &bind, b"ad", &ct).unwrap()[..],
            b"secret share"
        );
        // Wrong AD, tampered ciphertext, wrong direction, other recipient: attributable errors.
        let e = open(&at_v, &bind, b"ae", &ct).unwrap_err();
        assert!(
            matches!(&e, SecAggError::ShareDecrypt { sender, .. } if sender == &u),
            "{e}"
        );
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(open(&at_v, &bind, b"ad", &bad).is_err());
        let back = ShareBinding {
            tenant: &t,
            round: 1,
            bucket: 2,
            src: &v,
            dst: &u,
        };
        assert!(open(&at_u, &back, b"ad", &ct).is_err());
        let third = ShareBinding {
            tenant: &t,
            round: 1,
            bucket: 2,
            src: &u,
            dst: &w,
        };
        assert!(open(&at_v, &third, b"ad", &ct).is_err());
        let later = ShareBinding {
            tenant: &t,
            round: 2,
            bucket: 2,
            src: &u,
            dst: &v,
        };
        assert!(open(&at_v, &later, b"ad", &ct).is_err());
    }
}
