//! Protocol messages: plain structs with byte fields, a canonical encoding
//! (see [`super::wire`]) and checked decoders for untrusted bytes.
//!
//! Signed messages are signed over `domain label ‖ encoding without the
//! signature`, with the node's long-term mesh certificate key.

use std::fmt;

use time::OffsetDateTime;
use zeroize::Zeroize;

use super::SecAggError;
use super::wire::{MAX_CERT_BYTES, MAX_MEMBERS, Reader, Writer};
use crate::identity::{Identity, NodeId, TenantId};
use crate::sign::SIGNATURE_LEN;
use crate::{CertSigner, CertVerifier};

const TAG_ADVERT: u8 = 1;
const TAG_SHARE: u8 = 2;
const TAG_MASKED: u8 = 3;
const TAG_REQUEST: u8 = 4;
const TAG_RESPONSE: u8 = 5;

const ADVERT_DOMAIN: &[u8] = b"fedmesh/secagg/v1/key-advert\0";
const MASKED_DOMAIN: &[u8] = b"fedmesh/secagg/v1/masked-input-sha256\0";
const RESPONSE_DOMAIN: &[u8] = b"fedmesh/secagg/v1/unmask-response\0";

/// Plaintext of an encrypted share: x ‖ self-seed share ‖ mask-key share.
pub const SHARE_PLAINTEXT_LEN: usize = 1 + 32 + 32;
/// Ciphertext of an encrypted share (plaintext + Poly1305 tag).
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PLAINTEXT_LEN + 16;

/// A 64-byte Ed25519 signature.
pub type Signature = [u8; SIGNATURE_LEN];

fn to_signature(v: Vec<u8>) -> Result<Signature, SecAggError> {
    Signature::try_from(v.as_slice()).map_err(|_| {
        SecAggError::Config(format!(
            "signer produced {} bytes, expected {SIGNATURE_LEN}",
            v.len()
        ))
    })
}

/// Checks that `signer` is the mesh identity of `node` in `tenant`.
pub(crate) fn check_signer(
    signer: &CertSigner,
    tenant: &TenantId,
    node: &NodeId,
) -> Result<(), SecAggError> {
    let expected = Identity::Node {
        tenant: tenant.clone(),
        node: node.clone(),
    };
    if signer.identity() != &expected {
        return Err(SecAggError::WrongSigner {
            claimed: node.clone(),
            actual: signer.identity().to_string(),
        });
    }
    Ok(())
}

/// Verifies a node signature and that the certificate is that node's.
pub(crate) fn verify_node_signature(
    verifier: &CertVerifier,
    cert_der: &[u8],
    tenant: &TenantId,
    node: &NodeId,
    msg: &[u8],
    signature: &[u8],
    now: OffsetDateTime,
) -> Result<(), SecAggError> {
    let identity = verifier
        .verify(cert_der, msg, signature, now)
        .map_err(|source| SecAggError::Signature {
            node: node.clone(),
            source,
        })?;
    let expected = Identity::Node {
        tenant: tenant.clone(),
        node: node.clone(),
    };
    if identity != expected {
        return Err(SecAggError::WrongSigner {
            claimed: node.clone(),
            actual: identity.to_string(),
        });
    }
    Ok(())
}

/// Round 0: a node's two per-round X25519 public keys and its commitment to
/// its self-mask seed, signed with its mesh certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAdvert {
    /// Tenant of the round.
    pub tenant: TenantId,
    /// Round number.
    pub round: u64,
    /// Bucket index.
    pub bucket: u32,
    /// The advertising node.
    pub node: NodeId,
    /// X25519 public key for pairwise masks (s_u^PK).
    pub mask_public: [u8; 32],
    /// X25519 public key for share encryption (c_u^PK).
    pub enc_public: [u8; 32],
    /// SHA-256 commitment to the self-mask seed b_u.
    pub seed_commitment: [u8; 32],
    /// The node's mesh certificate, DER.
    pub cert_der: Vec<u8>,
    /// Ed25519 signature over [`KeyAdvert::signing_bytes`].
    pub signature: Signature,
}

impl KeyAdvert {
    fn write_unsigned(&self, w: &mut Writer) {
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u32(self.bucket);
        w.name(self.node.as_str());
        w.fixed(&self.mask_public);
        w.fixed(&self.enc_public);
        w.fixed(&self.seed_commitment);
        w.bytes(&self.cert_der);
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.fixed(ADVERT_DOMAIN);
        self.write_unsigned(&mut w);
        w.buf
    }

    pub(crate) fn sign(mut self, signer: &CertSigner) -> Result<Self, SecAggError> {
        self.signature = to_signature(signer.sign(&self.signing_bytes()))?;
        Ok(self)
    }

    /// Verifies the signature and that the certificate belongs to `node` of `tenant`.
    pub fn verify(&self, verifier: &CertVerifier, now: OffsetDateTime) -> Result<(), SecAggError> {
        verify_node_signature(
            verifier,
            &self.cert_der,
            &self.tenant,
            &self.node,
            &self.signing_bytes(),
            &self.signature,
            now,
        )
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(TAG_ADVERT, 256 + self.cert_der.len());
        self.write_unsigned(&mut w);
        w.fixed(&self.signature);
        w.buf
    }

    /// Checked decoding of untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new("key advert", bytes, TAG_ADVERT)?;
        let m = Self {
            tenant: r.tenant()?,
            round: r.u64()?,
            bucket: r.u32()?,
            node: r.node()?,
            mask_public: r.array()?,
            enc_public: r.array()?,
            seed_commitment: r.array()?,
            cert_der: r.bytes(MAX_CERT_BYTES)?,
            signature: r.array()?,
        };
        r.finish()?;
        Ok(m)
    }
}

/// Round 1: one share pair (of b_src and s_src^SK) encrypted from `src` to
/// `dst`; the coordinator only routes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShare {
    /// Tenant of the round.
    pub tenant: TenantId,
    /// Round number.
    pub round: u64,
    /// Bucket index.
    pub bucket: u32,
    /// Sender (owner of the shared secrets).
    pub src: NodeId,
    /// Recipient.
    pub dst: NodeId,
    /// ChaCha20-Poly1305 ciphertext and tag, [`SHARE_CIPHERTEXT_LEN`] bytes.
    pub ciphertext: Vec<u8>,
}

impl EncryptedShare {
    /// Associated data: the binding (tenant, round, bucket, src, dst).
    pub(crate) fn associated_data(&self) -> Vec<u8> {
        let mut w = Writer::with_header(TAG_SHARE, 160);
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u32(self.bucket);
        w.name(self.src.as_str());
        w.name(self.dst.as_str());
        w.buf
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(TAG_SHARE, 160 + self.ciphertext.len());
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u32(self.bucket);
        w.name(self.src.as_str());
        w.name(self.dst.as_str());
        w.bytes(&self.ciphertext);
        w.buf
    }

    /// Checked decoding of untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new("encrypted share", bytes, TAG_SHARE)?;
        let m = Self {
            tenant: r.tenant()?,
            round: r.u64()?,
            bucket: r.u32()?,
            src: r.node()?,
            dst: r.node()?,
            ciphertext: r.bytes(SHARE_CIPHERTEXT_LEN)?,
        };
        if m.ciphertext.len() != SHARE_CIPHERTEXT_LEN {
            return Err(r.err(format!(
                "ciphertext of {} bytes, expected {SHARE_CIPHERTEXT_LEN}",
                m.ciphertext.len()
            )));
        }
        r.finish()?;
        Ok(m)
    }
}

/// SHA-256 of words as little-endian bytes.
fn words_digest(words: &[u32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = [0u8; 4096];
    for chunk in words.chunks(buf.len() / 4) {
        for (b, w) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        ctx.update(&buf[..chunk.len() * 4]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Round 2: a node's masked, quantized update, signed and bound to
/// (tenant, round, model version, bucket, node).
#[derive(Clone, PartialEq, Eq)]
pub struct MaskedInput {
    /// Tenant of the round.
    pub tenant: TenantId,
    /// Round number.
    pub round: u64,
    /// Global model version the update was trained from.
    pub model_version: u64,
    /// Bucket index.
    pub bucket: u32,
    /// The sending node.
    pub node: NodeId,
    /// y_u in Z_{2^32}.
    pub words: Vec<u32>,
    /// Ed25519 signature over [`MaskedInput::signing_bytes`].
    pub signature: Signature,
}

impl fmt::Debug for MaskedInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskedInput")
            .field("tenant", &self.tenant)
            .field("round", &self.round)
            .field("model_version", &self.model_version)
            .field("bucket", &self.bucket)
            .field("node", &self.node)
            .field("dim", &self.words.len())
            .finish_non_exhaustive()
    }
}

impl MaskedInput {
    fn write_unsigned(&self, w: &mut Writer) {
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u64(self.model_version);
        w.u32(self.bucket);
        w.name(self.node.as_str());
        w.words(&self.words);
    }

    /// The bytes the signature covers: the domain label, the binding and
    /// the SHA-256 of the words (little endian), so a 400 kB update is
    /// hashed once with SHA-256 instead of copied and hashed twice by
    /// Ed25519's SHA-512.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.fixed(MASKED_DOMAIN);
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u64(self.model_version);
        w.u32(self.bucket);
        w.name(self.node.as_str());
        w.u64(self.words.len() as u64);
        w.fixed(&words_digest(&self.words));
        w.buf
    }

    pub(crate) fn sign(mut self, signer: &CertSigner) -> Result<Self, SecAggError> {
        self.signature = to_signature(signer.sign(&self.signing_bytes()))?;
        Ok(self)
    }

    /// Verifies the signature with the sender's certificate (from its
    /// verified [`KeyAdvert`]).
    pub fn verify(
        &self,
        verifier: &CertVerifier,
        cert_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        verify_node_signature(
            verifier,
            cert_der,
            &self.tenant,
            &self.node,
            &self.signing_bytes(),
            &self.signature,
            now,
        )
    }

    /// Canonical encoding: 4 bytes per parameter plus a constant header.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(TAG_MASKED, 160 + 4 * self.words.len());
        self.write_unsigned(&mut w);
        w.fixed(&self.signature);
        w.buf
    }

    /// Checked decoding of untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new("masked input", bytes, TAG_MASKED)?;
        let m = Self {
            tenant: r.tenant()?,
            round: r.u64()?,
            model_version: r.u64()?,
            bucket: r.u32()?,
            node: r.node()?,
            words: r.words()?,
            signature: r.array()?,
        };
        r.finish()?;
        Ok(m)
    }
}

/// Round 3 (coordinator → survivors): who survived and who dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskRequest {
    /// Tenant of the round.
    pub tenant: TenantId,
    /// Round number.
    pub round: u64,
    /// Bucket index.
    pub bucket: u32,
    /// Nodes whose masked input arrived, sorted.
    pub survivors: Vec<NodeId>,
    /// Nodes that shared keys but sent no masked input, sorted.
    pub dropped: Vec<NodeId>,
}

impl UnmaskRequest {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(TAG_REQUEST, 128 + 64 * self.survivors.len());
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u32(self.bucket);
        w.names(&self.survivors);
        w.names(&self.dropped);
        w.buf
    }

    /// Checked decoding of untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new("unmask request", bytes, TAG_REQUEST)?;
        let m = Self {
            tenant: r.tenant()?,
            round: r.u64()?,
            bucket: r.u32()?,
            survivors: r.sorted_nodes()?,
            dropped: r.sorted_nodes()?,
        };
        r.finish()?;
        Ok(m)
    }
}

/// Round 3 (survivor → coordinator): the responder's shares of the self-mask
/// seeds of survivors and of the mask keys of dropped nodes, signed.
/// Share bytes are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct UnmaskResponse {
    /// Tenant of the round.
    pub tenant: TenantId,
    /// Round number.
    pub round: u64,
    /// Bucket index.
    pub bucket: u32,
    /// The responding node.
    pub node: NodeId,
    /// (survivor, share of its self-mask seed b), sorted by node.
    pub seed_shares: Vec<(NodeId, [u8; 32])>,
    /// (dropped node, share of its mask secret key s^SK), sorted by node.
    pub key_shares: Vec<(NodeId, [u8; 32])>,
    /// Ed25519 signature over [`UnmaskResponse::signing_bytes`].
    pub signature: Signature,
}

impl Drop for UnmaskResponse {
    fn drop(&mut self) {
        for (_, s) in self
            .seed_shares
            .iter_mut()
            .chain(self.key_shares.iter_mut())
        {
            s.zeroize();
        }
    }
}

impl fmt::Debug for UnmaskResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: &[(NodeId, [u8; 32])]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        f.debug_struct("UnmaskResponse")
            .field("tenant", &self.tenant)
            .field("round", &self.round)
            .field("bucket", &self.bucket)
            .field("node", &self.node)
            .field("seed_shares_for", &ids(&self.seed_shares))
            .field("key_shares_for", &ids(&self.key_shares))
            .finish_non_exhaustive()
    }
}

impl UnmaskResponse {
    fn write_unsigned(&self, w: &mut Writer) {
        w.name(self.tenant.as_str());
        w.u64(self.round);
        w.u32(self.bucket);
        w.name(self.node.as_str());
        for list in [&self.seed_shares, &self.key_shares] {
            w.u32(list.len() as u32);
            for (id, share) in list.iter() {
                w.name(id.as_str());
                w.fixed(share);
            }
        }
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.fixed(RESPONSE_DOMAIN);
        self.write_unsigned(&mut w);
        w.buf
    }

    pub(crate) fn sign(mut self, signer: &CertSigner) -> Result<Self, SecAggError> {
        self.signature = to_signature(signer.sign(&self.signing_bytes()))?;
        Ok(self)
    }

    /// Verifies the signature with the responder's certificate.
    pub fn verify(
        &self,
        verifier: &CertVerifier,
        cert_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        verify_node_signature(
            verifier,
            cert_der,
            &self.tenant,
            &self.node,
            &self.signing_bytes(),
            &self.signature,
            now,
        )
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.seed_shares.len() + self.key_shares.len();
        let mut w = Writer::with_header(TAG_RESPONSE, 160 + 100 * n);
        self.write_unsigned(&mut w);
        w.fixed(&self.signature);
        w.buf
    }

    /// Checked decoding of untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new("unmask response", bytes, TAG_RESPONSE)?;
        let tenant = r.tenant()?;
        let round = r.u64()?;
        let bucket = r.u32()?;
        let node = r.node()?;
        let mut lists: [Vec<(NodeId, [u8; 32])>; 2] = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let count = r.count(MAX_MEMBERS)?;
            for _ in 0..count {
                let id = r.node()?;
                if list.last().is_some_and(|(last, _)| *last >= id) {
                    return Err(r.err("share owners not strictly increasing".into()));
                }
                list.push((id, r.array()?));
            }
        }
        let [seed_shares, key_shares] = lists;
        let signature = r.array()?;
        r.finish()?;
        Ok(Self {
            tenant,
            round,
            bucket,
            node,
            seed_shares,
            key_shares,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,20}"
    }

    fn node() -> impl Strategy<Value = NodeId> {
        name().prop_map(|s| s.parse().unwrap())
    }

    fn tenant() -> impl Strategy<Value = TenantId> {
        name().prop_map(|s| s.parse().unwrap())
    }

    fn sorted_nodes() -> impl Strategy<Value = Vec<NodeId>> {
        proptest::collection::btree_set(node(), 0..6).prop_map(|s| s.into_iter().collect())
    }

    fn shares() -> impl Strategy<Value = Vec<(NodeId, [u8; 32])>> {
        proptest::collection::btree_map(node(), any::<[u8; 32]>(), 0..5)
            .prop_map(|m| m.into_iter().collect())
    }

    fn sig() -> impl Strategy<Value = Signature> {
        proptest::collection::vec(any::<u8>(), 64).prop_map(|v| v.try_into().unwrap())
    }

    /// Every strict prefix and every extension by one byte must be refused.
    fn check_canonical<T, F>(bytes: &[u8], decode: F)
    where
        F: Fn(&[u8]) -> Result<T, SecAggError>,
    {
        for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing byte accepted");
    }

    proptest! {
        #[test]
        fn advert_round_trip(
            tenant in tenant(), node in node(), round in any::<u64>(), bucket in any::<u32>(),
            mask in any::<[u8; 32]>(), enc in any::<[u8; 32]>(), commit in any::<[u8; 32]>(),
            cert in proptest::collection::vec(any::<u8>(), 0..300), signature in sig(),
        ) {
            let m = KeyAdvert { tenant, round, bucket, node, mask_public: mask, enc_public: enc,
                seed_commitment: commit, cert_der: cert, signature };
            let bytes = m.encode();
            prop_assert_eq!(&KeyAdvert::decode(&bytes).unwrap(), &m);
            check_canonical(&bytes, KeyAdvert::decode);
            // Another message type's decoder refuses it.
            prop_assert!(MaskedInput::decode(&bytes).is_err());
        }

        #[test]
        fn share_round_trip(
            tenant in tenant(), src in node(), dst in node(), round in any::<u64>(),
            bucket in any::<u32>(),
            ct in proptest::collection::vec(any::<u8>(), SHARE_CIPHERTEXT_LEN),
        ) {
            let m = EncryptedShare { tenant, round, bucket, src, dst, ciphertext: ct };
            let bytes = m.encode();
            prop_assert_eq!(&EncryptedShare::decode(&bytes).unwrap(), &m);
            check_canonical(&bytes, EncryptedShare::decode);
        }

        #[test]
        fn masked_round_trip(
            tenant in tenant(), node in node(), round in any::<u64>(), version in any::<u64>(),
            bucket in any::<u32>(), words in proptest::collection::vec(any::<u32>(), 0..200),
            signature in sig(),
        ) {
            let m = MaskedInput { tenant, round, model_version: version, bucket, node,
                words, signature };
            let bytes = m.encode();
            // 4 bytes per parameter plus a header of at most 2 + 64 + 8 + 8 + 4 + 64 + 4 + 64.
            prop_assert!(bytes.len() <= 4 * m.words.len() + 218);
            prop_assert_eq!(&MaskedInput::decode(&bytes).unwrap(), &m);
            check_canonical(&bytes, MaskedInput::decode);
        }

        #[test]
        fn request_round_trip(
            tenant in tenant(), round in any::<u64>(), bucket in any::<u32>(),
            survivors in sorted_nodes(), dropped in sorted_nodes(),
        ) {
            let m = UnmaskRequest { tenant, round, bucket, survivors, dropped };
            let bytes = m.encode();
            prop_assert_eq!(&UnmaskRequest::decode(&bytes).unwrap(), &m);
            check_canonical(&bytes, UnmaskRequest::decode);
        }

        #[test]
        fn response_round_trip(
            tenant in tenant(), node in node(), round in any::<u64>(), bucket in any::<u32>(),
            seed_shares in shares(), key_shares in shares(), signature in sig(),
        ) {
            let m = UnmaskResponse { tenant, round, bucket, node, seed_shares, key_shares,
                signature };
            let bytes = m.encode();
            prop_assert_eq!(&UnmaskResponse::decode(&bytes).unwrap(), &m);
            check_canonical(&bytes, UnmaskResponse::decode);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            // Also with a valid header so the decoders get past the tag.
            for tag in 1..=5u8 {
                let mut b = vec![super::super::wire::VERSION, tag];
                b.extend_from_slice(&bytes);
                let _ = KeyAdvert::decode(&b);
                let _ = EncryptedShare::decode(&b);
                let _ = MaskedInput::decode(&b);
                let _ = UnmaskRequest::decode(&b);
                let _ = UnmaskResponse::decode(&b);
            }
        }
    }

    #[test]
    fn unsorted_or_oversized_fields_are_refused() {
        let t: TenantId = "acme".parse().unwrap();
        let (a, b): (NodeId, NodeId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let m = UnmaskRequest {
            tenant: t.clone(),
            round: 1,
            bucket: 0,
            survivors: vec![b.clone(), a.clone()],
            dropped: vec![],
        };
        assert!(UnmaskRequest::decode(&m.encode()).is_err());
        let m = UnmaskRequest {
            tenant: t.clone(),
            round: 1,
            bucket: 0,
            survivors: vec![a.clone(), a.clone()],
            dropped: vec![],
        };
        assert!(UnmaskRequest::decode(&m.encode()).is_err());
        // A word count far beyond the bytes present fails without allocating it.
        let mut w = Writer::with_header(TAG_MASKED, 64);
        w.name("acme");
        w.u64(1);
        w.u64(1);
        w.u32(0);
        w.name("a");
        w.u32(u32::MAX);
        let e = MaskedInput::decode(&w.buf).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // A bad name is a decode error.
        let mut w = Writer::with_header(TAG_REQUEST, 64);
        w.name("Not Valid");
        assert!(UnmaskRequest::decode(&w.buf).is_err());
        // Wrong ciphertext length.
        let s = EncryptedShare {
            tenant: t,
            round: 1,
            bucket: 0,
            src: a,
            dst: b,
            ciphertext: vec![0; 10],
        };
        assert!(EncryptedShare::decode(&s.encode()).is_err());
        assert!(KeyAdvert::decode(&[2, 1]).is_err(), "unknown version");
    }
}
