//! Certificate-bound Ed25519 signatures: a signer holds a mesh certificate
//! and its key; a verifier checks the certificate against the mesh CA, then
//! the signature, and returns the signer's [`Identity`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_SIG_ED25519;

use crate::identity::Identity;
use crate::tls::identity_from_parsed;
use crate::{CryptoError, Result, SecretPem};

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

fn parse_complete(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CryptoError::CertificateParse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// The raw 32-byte Ed25519 public key of a certificate.
fn ed25519_public_key<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a [u8]> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_SIG_ED25519 {
        return Err(CryptoError::UnsupportedKey(format!(
            "certificate key algorithm {} is not Ed25519",
            spki.algorithm.algorithm
        )));
    }
    Ok(spki.subject_public_key.data.as_ref())
}

fn to_datetime(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    t.to_datetime()
}

/// Signs messages with a mesh certificate's Ed25519 key.
pub struct CertSigner {
    key: Ed25519KeyPair,
    cert_der: Vec<u8>,
    identity: Identity,
}

impl fmt::Debug for CertSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSigner")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl CertSigner {
    /// Loads a signer from a certificate PEM (exactly one certificate) and
    /// its PKCS#8 Ed25519 key. Errors if the key does not belong to the
    /// certificate or the certificate carries no fedmesh identity.
    pub fn from_pem(cert_pem: &str, key_pem: &SecretPem) -> Result<CertSigner> {
        let cert_der = crate::pem::single_cert_der(cert_pem)?.to_vec();
        let key_der = crate::pem::pkcs8_der(key_pem)?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_der.secret_pkcs8_der())
            .map_err(|e| CryptoError::UnsupportedKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let cert = parse_complete(&cert_der)?;
        if ed25519_public_key(&cert)? != key.public_key().as_ref() {
            return Err(CryptoError::KeyCertMismatch);
        }
        let identity = identity_from_parsed(&cert)?;
        Ok(CertSigner {
            key,
            cert_der,
            identity,
        })
    }

    /// The Ed25519 signature (64 bytes, deterministic) of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).as_ref().to_vec()
    }

    /// The signer's certificate, DER (send it along with signatures).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The identity in the signer's certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// A [`CertSigner`] that certificate rotation can replace while it is in
/// use: each [`SharedSigner::current`] is one consistent certificate and
/// key, so a signature and the certificate sent with it always match.
/// Clones share the slot.
#[derive(Clone, Debug)]
pub struct SharedSigner(Arc<RwLock<Arc<CertSigner>>>);

impl SharedSigner {
    /// A slot holding `signer`.
    pub fn new(signer: CertSigner) -> SharedSigner {
        SharedSigner(Arc::new(RwLock::new(Arc::new(signer))))
    }

    /// The signer in use now.
    pub fn current(&self) -> Arc<CertSigner> {
        // Only whole values are ever stored, so a poisoned lock is still usable.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the signer; later [`SharedSigner::current`] calls see the new one.
    pub fn replace(&self, signer: CertSigner) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signer);
    }
}

impl From<CertSigner> for SharedSigner {
    fn from(signer: CertSigner) -> Self {
        SharedSigner::new(signer)
    }
}

/// Most certificates a [`CertVerifier`] remembers as chained; when full it
/// forgets them all and starts over (a mesh has far fewer members).
const MAX_CHAINED: usize = 4096;

/// What is left to check per message once a certificate has passed the
/// checks that do not depend on time (parse, chain to a trusted CA, not a
/// CA itself, a fedmesh identity, an Ed25519 key).
struct ChainedCert {
    identity: Identity,
    /// Serial number (normalized), checked against the revocation list.
    serial: Vec<u8>,
    public_key: Vec<u8>,
    validity: Validity,
}

/// The validity periods of a certificate and of the CA that issued it.
struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ca_not_before: OffsetDateTime,
    ca_not_after: OffsetDateTime,
}

impl Validity {
    /// Both periods contain `now` (bounds inclusive).
    fn check(&self, now: OffsetDateTime) -> Result<()> {
        if now < self.not_before {
            return Err(CryptoError::NotYetValid {
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(CryptoError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        if now < self.ca_not_before || now > self.ca_not_after {
            return Err(CryptoError::UntrustedCertificate(format!(
                "the issuing mesh CA is not valid at {now}"
            )));
        }
        Ok(())
    }
}

impl ChainedCert {
    /// The signature alone (the caller has checked the validity periods).
    fn verify_signature(&self, msg: &[u8], signature: &[u8]) -> Result<Identity> {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(msg, signature)
            .map_err(|_| CryptoError::BadSignature)?;
        Ok(self.identity.clone())
    }
}

/// The mesh CA certificates a [`CertVerifier`] trusts, parsed and checked
/// ([`TrustedCas::from_pem`]); install them with
/// [`CertVerifier::set_trusted_cas`].
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedCas(Vec<Vec<u8>>);

impl fmt::Debug for TrustedCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustedCas").field(&self.0.len()).finish()
    }
}

impl TrustedCas {
    /// The CA certificate(s) in `ca_pem`. Each must be a self-signed CA
    /// certificate.
    pub fn from_pem(ca_pem: &str) -> Result<TrustedCas> {
        let mut ca_ders = Vec::new();
        for der in crate::pem::cert_ders(ca_pem)? {
            let cert = parse_complete(&der)?;
            if !cert.is_ca() {
                return Err(CryptoError::NotACa(
                    "basicConstraints does not have cA=true".into(),
                ));
            }
            cert.verify_signature(None).map_err(|e| {
                CryptoError::NotACa(format!("CA certificate is not validly self-signed: {e}"))
            })?;
            ca_ders.push(der.to_vec());
        }
        Ok(TrustedCas(ca_ders))
    }

    /// Whether one of the CA certificates has this SHA-256 (of its DER).
    pub fn contains_sha256(&self, digest: &[u8; 32]) -> bool {
        self.0.iter().any(|der| &crate::sha256(der) == digest)
    }

    /// How many CA certificates.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No CA at all (nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The trusted CAs and the certificates remembered as chained to them,
/// replaced together so that a certificate chained under CAs no longer
/// trusted is never taken from memory.
struct Trust {
    cas: TrustedCas,
    /// Certificates that passed the time-independent checks.
    chained: Mutex<HashMap<[u8; 32], Arc<ChainedCert>>>,
}

/// Verifies signatures made by [`CertSigner`]s holding mesh certificates.
///
/// A certificate that chained once is remembered by the SHA-256 of its DER,
/// so later messages from the same signer cost one Ed25519 check instead of
/// two plus two certificate parses; the validity periods and the revocation
/// list are still checked for each message. Clones share what they remember,
/// the trusted CAs ([`CertVerifier::set_trusted_cas`]) and the revocation
/// list ([`CertVerifier::set_revocations`]), so a reload reaches every
/// holder of a clone.
#[derive(Clone)]
pub struct CertVerifier {
    /// The trusted CAs (several during a CA rotation) with their memory.
    trust: Arc<RwLock<Arc<Trust>>>,
    /// Revoked serial numbers (normalized), shared by clones.
    revoked: Arc<RwLock<Arc<BTreeSet<Vec<u8>>>>>,
}

impl fmt::Debug for CertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertVerifier")
            .field("trusted_cas", &self.trust().cas.len())
            .field("chained_certificates", &self.chained_count())
            .finish()
    }
}

impl CertVerifier {
    /// A verifier trusting the CA certificate(s) in `ca_pem`. Each must be a
    /// self-signed CA certificate.
    pub fn new(ca_pem: &str) -> Result<CertVerifier> {
        Ok(Self::with_cas(TrustedCas::from_pem(ca_pem)?))
    }

    /// A verifier trusting `cas`.
    pub fn with_cas(cas: TrustedCas) -> CertVerifier {
        CertVerifier {
            trust: Arc::new(RwLock::new(Arc::new(Trust {
                cas,
                chained: Mutex::default(),
            }))),
            revoked: Arc::default(),
        }
    }

    fn trust(&self) -> Arc<Trust> {
        // Only whole values are ever stored, so a poisoned lock is still usable.
        self.trust.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Trusts `cas` from now on instead of the CAs trusted so far (for this
    /// verifier and all its clones), e.g. after the CA file changed. Returns
    /// whether they differ; if so, the certificates remembered as chained
    /// are forgotten and checked afresh against `cas`.
    pub fn set_trusted_cas(&self, cas: TrustedCas) -> bool {
        let mut slot = self.trust.write().unwrap_or_else(|e| e.into_inner());
        if slot.cas == cas {
            return false;
        }
        *slot = Arc::new(Trust {
            cas,
            chained: Mutex::default(),
        });
        true
    }

    /// The CAs trusted now.
    pub fn trusted_cas(&self) -> TrustedCas {
        self.trust().cas.clone()
    }

    /// Refuses, from now on, every certificate on `list` (for this verifier
    /// and all its clones), replacing the previous list. The caller has
    /// verified `list` against the mesh CA ([`crate::RevocationList::from_pem`]).
    pub fn set_revocations(&self, list: &crate::RevocationList) {
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list.serials().clone());
    }

    /// How many serial numbers are refused as revoked.
    pub fn revoked_count(&self) -> usize {
        self.revoked_set().len()
    }

    fn revoked_set(&self) -> Arc<BTreeSet<Vec<u8>>> {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check_not_revoked(&self, chained: &ChainedCert) -> Result<()> {
        if self.revoked_set().contains(&chained.serial) {
            return Err(CryptoError::Revoked {
                serial: hex::encode(&chained.serial),
            });
        }
        Ok(())
    }

    /// How many certificates this verifier (and its clones) remember as chained.
    pub fn chained_count(&self) -> usize {
        self.trust().chained_map().len()
    }

    /// Checks that `signer_cert_der` is an end-entity certificate issued by
    /// the mesh CA and valid at `now`, that `signature` is its Ed25519
    /// signature over `msg`, and returns the certificate's identity.
    pub fn verify(
        &self,
        signer_cert_der: &[u8],
        msg: &[u8],
        signature: &[u8],
        now: OffsetDateTime,
    ) -> Result<Identity> {
        let key = crate::sha256(signer_cert_der);
        // One consistent set of CAs and memory for the whole check.
        let trust = self.trust();
        let known = trust.chained_map().get(&key).cloned();
        if let Some(chained) = known {
            chained.validity.check(now)?;
            self.check_not_revoked(&chained)?;
            return chained.verify_signature(msg, signature);
        }
        let cert = parse_complete(signer_cert_der)?;
        let (ca_not_before, ca_not_after) = trust.issuing_ca_validity(&cert)?;
        let validity = cert.validity();
        let validity = Validity {
            not_before: to_datetime(validity.not_before),
            not_after: to_datetime(validity.not_after),
            ca_not_before,
            ca_not_after,
        };
        // Time before the other checks, so errors read as they always did.
        validity.check(now)?;
        let bc = cert
            .basic_constraints()
            .map_err(|e| CryptoError::CertificateParse(format!("basicConstraints: {e}")))?;
        if bc.is_some_and(|bc| bc.value.ca) {
            return Err(CryptoError::CertificateIsCa);
        }
        let chained = Arc::new(ChainedCert {
            identity: identity_from_parsed(&cert)?,
            serial: crate::crl::normalize_serial(cert.raw_serial()).to_vec(),
            public_key: ed25519_public_key(&cert)?.to_vec(),
            validity,
        });
        {
            let mut map = trust.chained_map();
            if map.len() >= MAX_CHAINED {
                map.clear();
            }
            map.insert(key, chained.clone());
        }
        // The validity periods were checked above.
        self.check_not_revoked(&chained)?;
        chained.verify_signature(msg, signature)
    }
}

impl Trust {
    fn chained_map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<ChainedCert>>> {
        // The map holds only complete entries, so a poisoned lock is still usable.
        self.chained.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds the trusted CA that signed `cert` and returns its validity period.
    fn issuing_ca_validity(
        &self,
        cert: &X509Certificate<'_>,
    ) -> Result<(OffsetDateTime, OffsetDateTime)> {
        let mut reason = "issuer is not the mesh CA";
        for ca_der in &self.cas.0 {
            let ca = parse_complete(ca_der)?;
            if ca.subject().as_raw() != cert.issuer().as_raw() {
                continue;
            }
            if cert.verify_signature(Some(ca.public_key())).is_err() {
                reason = "certificate signature does not verify against the mesh CA";
                continue;
            }
            let v = ca.validity();
            return Ok((to_datetime(v.not_before), to_datetime(v.not_after)));
        }
        Err(CryptoError::UntrustedCertificate(reason.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;
    use crate::test_util::*;
    use time::Duration;

    fn signer(ca: &MeshCa) -> CertSigner {
        let issued = ca
            .issue_node(&tenant("acme"), &node("n1"), now(), 30)
            .unwrap();
        CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
    }

    fn later() -> OffsetDateTime {
        now() + Duration::days(1)
    }

    #[test]
    fn sign_verify_round_trip() {
        let ca = ca();
        let s = signer(&ca);
        assert_eq!(s.identity(), &node_identity("acme", "n1"));
        let sig = s.sign(b"update bytes");
        assert_eq!(sig.len(), SIGNATURE_LEN);
        assert_eq!(sig, s.sign(b"update bytes"), "Ed25519 is deterministic");
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        assert_eq!(
            v.verify(s.cert_der(), b"update bytes", &sig, later())
                .unwrap(),
            node_identity("acme", "n1")
        );
        // Boundaries of the validity period are inclusive.
        v.verify(s.cert_der(), b"update bytes", &sig, now())
            .unwrap();
        v.verify(
            s.cert_der(),
            b"update bytes",
            &sig,
            now() + Duration::days(30),
        )
        .unwrap();
        assert!(format!("{s:?}").contains("acme"));
    }

    #[test]
    fn coordinator_signatures_verify() {
        let ca = ca();
        let issued = ca
            .issue_coordinator(&node("main"), &[], &[], now(), 5)
            .unwrap();
        let s = CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let sig = s.sign(b"global model v7");
        assert_eq!(
            v.verify(s.cert_der(), b"global model v7", &sig, later())
                .unwrap(),
            Identity::Coordinator { name: node("main") }
        );
    }

    #[test]
    fn tampering_is_refused() {
        let ca = ca();
        let s = signer(&ca);
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let sig = s.sign(b"update bytes");
        assert!(matches!(
            v.verify(s.cert_der(), b"update bytez", &sig, later()),
            Err(CryptoError::BadSignature)
        ));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(matches!(
            v.verify(s.cert_der(), b"update bytes", &bad, later()),
            Err(CryptoError::BadSignature)
        ));
        assert!(matches!(
            v.verify(s.cert_der(), b"update bytes", &sig[..63], later()),
            Err(CryptoError::BadSignature)
        ));
        // A valid signature by another mesh node does not pass as this node's.
        let other = ca
            .issue_node(&tenant("acme"), &node("n2"), now(), 30)
            .unwrap();
        let other = CertSigner::from_pem(&other.cert_pem, &other.key_pem).unwrap();
        assert!(matches!(
            v.verify(
                s.cert_der(),
                b"update bytes",
                &other.sign(b"update bytes"),
                later()
            ),
            Err(CryptoError::BadSignature)
        ));
        // Tampered certificate bytes.
        let mut cert = s.cert_der().to_vec();
        let last = cert.len() - 1;
        cert[last] ^= 1;
        assert!(matches!(
            v.verify(&cert, b"update bytes", &sig, later()),
            Err(CryptoError::UntrustedCertificate(_))
        ));
    }

    #[test]
    fn other_ca_is_refused() {
        let ca = ca();
        let evil = crate::test_util::ca();
        let s = signer(&evil);
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let sig = s.sign(b"m");
        assert!(matches!(
            v.verify(s.cert_der(), b"m", &sig, later()),
            Err(CryptoError::UntrustedCertificate(_))
        ));

        // Same subject name as the mesh CA, different key.
        let forged = MeshCa::generate("fedmesh test CA", now(), 365).unwrap();
        let s = signer(&forged);
        let sig = s.sign(b"m");
        match v.verify(s.cert_der(), b"m", &sig, later()) {
            Err(CryptoError::UntrustedCertificate(reason)) => {
                assert!(reason.contains("signature"), "{reason}")
            }
            other => panic!("{other:?}"),
        }

        // Both CAs trusted (rotation): accepted.
        let both = CertVerifier::new(&format!("{}{}", ca.cert_pem(), forged.cert_pem())).unwrap();
        both.verify(s.cert_der(), b"m", &sig, later()).unwrap();
    }

    /// The second message of a signer takes the remembered-chain path; it
    /// must refuse exactly what the full check refuses.
    #[test]
    fn remembered_certificates_are_still_checked() {
        let ca = ca();
        let s = signer(&ca);
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let shared = v.clone();
        assert_eq!(v.chained_count(), 0);
        // A failed chain is not remembered.
        let evil = signer(&crate::test_util::ca());
        assert!(
            v.verify(evil.cert_der(), b"m", &evil.sign(b"m"), later())
                .is_err()
        );
        assert_eq!(v.chained_count(), 0);
        // A CA certificate is not remembered.
        assert!(
            v.verify(&der(ca.cert_pem()), b"m", &[0; 64], later())
                .is_err()
        );
        assert_eq!(v.chained_count(), 0);

        let sig = s.sign(b"m");
        assert_eq!(
            v.verify(s.cert_der(), b"m", &sig, later()).unwrap(),
            node_identity("acme", "n1")
        );
        assert_eq!(shared.chained_count(), 1, "clones share the memory");
        for _ in 0..2 {
            assert_eq!(
                shared.verify(s.cert_der(), b"m", &sig, later()).unwrap(),
                node_identity("acme", "n1")
            );
            assert!(matches!(
                shared.verify(s.cert_der(), b"n", &sig, later()),
                Err(CryptoError::BadSignature)
            ));
            assert!(matches!(
                shared.verify(s.cert_der(), b"m", &sig, now() - Duration::seconds(1)),
                Err(CryptoError::NotYetValid { .. })
            ));
            assert!(matches!(
                shared.verify(s.cert_der(), b"m", &sig, now() + Duration::days(31)),
                Err(CryptoError::Expired { .. })
            ));
        }
        // A signature of the remembered signer does not pass under another
        // certificate, and a tampered copy of the remembered one is checked afresh.
        let other = ca
            .issue_node(&tenant("acme"), &node("n2"), now(), 30)
            .unwrap();
        let other = CertSigner::from_pem(&other.cert_pem, &other.key_pem).unwrap();
        assert!(matches!(
            v.verify(other.cert_der(), b"m", &sig, later()),
            Err(CryptoError::BadSignature)
        ));
        let mut cert = s.cert_der().to_vec();
        let last = cert.len() - 1;
        cert[last] ^= 1;
        assert!(matches!(
            v.verify(&cert, b"m", &sig, later()),
            Err(CryptoError::UntrustedCertificate(_))
        ));
        assert_eq!(v.chained_count(), 2);
        assert!(format!("{v:?}").contains("chained_certificates: 2"));
    }

    /// A model signed by a revoked coordinator certificate is refused, on
    /// the first message and on a remembered certificate alike, by every
    /// clone; a re-issued certificate for the same identity still passes.
    #[test]
    fn revoked_signer_is_refused() {
        let ca = ca();
        let coord = ca
            .issue_coordinator(&node("main"), &[], &[], now(), 30)
            .unwrap();
        let s = CertSigner::from_pem(&coord.cert_pem, &coord.key_pem).unwrap();
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let agent_copy = v.clone();
        let sig = s.sign(b"global model v3");
        v.verify(s.cert_der(), b"global model v3", &sig, later())
            .unwrap();
        let serial = crate::crl::cert_serial(s.cert_der()).unwrap();
        let crl = ca
            .issue_crl(
                &[crate::RevokedCert {
                    serial: serial.clone(),
                    revoked_at: now(),
                }],
                1,
                now(),
            )
            .unwrap();
        let crl = crate::RevocationList::from_pem(crl.as_bytes(), ca.cert_pem()).unwrap();
        v.set_revocations(&crl);
        assert_eq!(agent_copy.revoked_count(), 1);
        for verifier in [&v, &agent_copy, &CertVerifier::new(ca.cert_pem()).unwrap()] {
            if verifier.revoked_count() == 0 {
                verifier.set_revocations(&crl);
            }
            match verifier.verify(s.cert_der(), b"global model v3", &sig, later()) {
                Err(CryptoError::Revoked { serial: hex_serial }) => {
                    assert_eq!(hex_serial, hex::encode(&serial))
                }
                other => panic!("{other:?}"),
            }
        }
        let fresh = ca
            .issue_coordinator(&node("main"), &[], &[], now(), 30)
            .unwrap();
        let fresh = CertSigner::from_pem(&fresh.cert_pem, &fresh.key_pem).unwrap();
        let shared = SharedSigner::new(s);
        shared.replace(fresh);
        let current = shared.current();
        let sig = current.sign(b"global model v4");
        assert_eq!(
            agent_copy
                .verify(current.cert_der(), b"global model v4", &sig, later())
                .unwrap(),
            Identity::Coordinator { name: node("main") }
        );
    }

    /// A CA rotation reaches every clone: a signer of the new CA passes once
    /// both are trusted, and a signer of the dropped CA is refused from
    /// then on, even though it was remembered as chained.
    #[test]
    fn trusted_cas_follow_a_ca_rotation() {
        let old_ca = ca();
        let new_ca = MeshCa::generate("fedmesh test CA 2", now(), 365).unwrap();
        let old = signer(&old_ca);
        let new = signer(&new_ca);
        let v = CertVerifier::new(old_ca.cert_pem()).unwrap();
        let agent_copy = v.clone();
        let (old_sig, new_sig) = (old.sign(b"m"), new.sign(b"m"));
        v.verify(old.cert_der(), b"m", &old_sig, later()).unwrap();
        assert!(matches!(
            agent_copy.verify(new.cert_der(), b"m", &new_sig, later()),
            Err(CryptoError::UntrustedCertificate(_))
        ));

        let both = format!("{}{}", new_ca.cert_pem(), old_ca.cert_pem());
        assert!(v.set_trusted_cas(TrustedCas::from_pem(&both).unwrap()));
        assert!(
            !v.set_trusted_cas(TrustedCas::from_pem(&both).unwrap()),
            "the same CAs change nothing"
        );
        assert_eq!(agent_copy.trusted_cas().len(), 2);
        for s in [&old, &new] {
            assert_eq!(
                agent_copy
                    .verify(s.cert_der(), b"m", &s.sign(b"m"), later())
                    .unwrap(),
                node_identity("acme", "n1")
            );
        }
        assert_eq!(agent_copy.chained_count(), 2);

        assert!(v.set_trusted_cas(TrustedCas::from_pem(new_ca.cert_pem()).unwrap()));
        assert_eq!(agent_copy.chained_count(), 0, "memory is forgotten");
        assert!(matches!(
            agent_copy.verify(old.cert_der(), b"m", &old_sig, later()),
            Err(CryptoError::UntrustedCertificate(_))
        ));
        agent_copy
            .verify(new.cert_der(), b"m", &new_sig, later())
            .unwrap();
        // A file that is not a CA is refused before anything changes.
        let leaf = new_ca
            .issue_node(&tenant("acme"), &node("x"), now(), 1)
            .unwrap();
        assert!(matches!(
            TrustedCas::from_pem(&leaf.cert_pem),
            Err(CryptoError::NotACa(_))
        ));
    }

    #[test]
    fn validity_period_is_enforced() {
        let ca = ca();
        let s = signer(&ca);
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let sig = s.sign(b"m");
        assert!(matches!(
            v.verify(s.cert_der(), b"m", &sig, now() - Duration::seconds(1)),
            Err(CryptoError::NotYetValid { .. })
        ));
        assert!(matches!(
            v.verify(
                s.cert_der(),
                b"m",
                &sig,
                now() + Duration::days(30) + Duration::seconds(1)
            ),
            Err(CryptoError::Expired { .. })
        ));
        // A leaf outliving its CA is refused once the CA has expired.
        let short_ca = MeshCa::generate("short", now(), 1).unwrap();
        let s = signer(&short_ca);
        let v = CertVerifier::new(short_ca.cert_pem()).unwrap();
        assert!(matches!(
            v.verify(s.cert_der(), b"m", &s.sign(b"m"), now() + Duration::days(2)),
            Err(CryptoError::UntrustedCertificate(_))
        ));
    }

    #[test]
    fn ca_cert_as_signer_is_refused() {
        let ca = ca();
        // The CA's own cert is self-signed by the CA, so it chains; it must
        // still be refused as a signer.
        let ca_der = der(ca.cert_pem());
        let v = CertVerifier::new(ca.cert_pem()).unwrap();
        let result = v.verify(&ca_der, b"m", &[0; 64], later());
        assert!(
            matches!(result, Err(CryptoError::CertificateIsCa)),
            "{result:?}"
        );
        assert!(matches!(
            CertVerifier::new(
                &ca.issue_node(&tenant("t"), &node("n"), now(), 1)
                    .unwrap()
                    .cert_pem
            ),
            Err(CryptoError::NotACa(_))
        ));
    }

    #[test]
    fn key_cert_mismatch_is_refused() {
        let ca = ca();
        let a = ca
            .issue_node(&tenant("acme"), &node("a"), now(), 1)
            .unwrap();
        let b = ca
            .issue_node(&tenant("acme"), &node("b"), now(), 1)
            .unwrap();
        assert!(matches!(
            CertSigner::from_pem(&a.cert_pem, &b.key_pem),
            Err(CryptoError::KeyCertMismatch)
        ));
        assert!(matches!(
            CertSigner::from_pem(&a.cert_pem, &SecretPem::new(a.cert_pem.clone())),
            Err(CryptoError::Pem { .. })
        ));
        assert!(matches!(
            CertSigner::from_pem("", &a.key_pem),
            Err(CryptoError::Pem { .. })
        ));
    }
}
