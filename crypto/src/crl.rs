//! Certificate revocation: X.509 CRLs signed by the mesh CA.
//!
//! [`MeshCa::issue_crl`](crate::MeshCa::issue_crl) writes one; a
//! [`RevocationList`] is a CRL whose signature has been checked against a
//! trusted mesh CA, reduced to what fedmesh needs: the set of revoked serial
//! numbers and the CRL number (which only grows, so an older list never
//! replaces a newer one). The same DER goes to rustls' client-certificate
//! verifier (see [`crate::tls::ServerTls`]) so a revoked certificate fails the
//! handshake, and to [`crate::CertVerifier`] so a model signed by a revoked
//! coordinator certificate is refused.

use std::collections::BTreeSet;
use std::fmt;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::{CryptoError, Result};

/// Largest CRL accepted, in bytes (DER or PEM): a mesh revokes far fewer
/// certificates than this holds (about 40 bytes per entry).
pub const MAX_CRL_BYTES: usize = 4 << 20;

/// Longest serial number (RFC 5280 §4.1.2.2: at most 20 octets).
pub const MAX_SERIAL_LEN: usize = 20;

/// One certificate to put on a revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// The certificate's serial number (big-endian bytes as in the
    /// certificate, at most [`MAX_SERIAL_LEN`]).
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

/// Why a CRL was refused (a closed set, for callers and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlRefusal {
    /// Larger than [`MAX_CRL_BYTES`].
    #[error("larger than {MAX_CRL_BYTES} bytes")]
    TooLarge,
    /// Not exactly one `X509 CRL` PEM block.
    #[error("expected exactly one X509 CRL PEM block")]
    Pem,
    /// Not a DER CRL, or trailing bytes after it.
    #[error("not a well-formed X.509 CRL")]
    Malformed,
    /// Not issued (signed) by any trusted mesh CA.
    #[error("not signed by a trusted mesh CA")]
    UntrustedIssuer,
    /// No CRL number, or one that does not fit 63 bits.
    #[error("missing or out-of-range CRL number")]
    Number,
    /// A revoked serial number is empty or longer than 20 bytes.
    #[error("a revoked serial number is empty or longer than 20 bytes")]
    Serial,
}

/// Why a verified revocation list may not replace the one in force
/// ([`RevocationList::may_replace`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlSuccession {
    /// Same issuing CA, smaller CRL number: an older list.
    #[error("revocation list number {got} is older than the one in force ({current})")]
    Rollback {
        /// The number offered.
        got: u64,
        /// The number in force.
        current: u64,
    },
    /// Another CA's list while the CA of the list in force is still
    /// trusted: installing it would lift that CA's revocations.
    #[error(
        "the revocation list is issued by another CA than the one in force, which is still trusted; drop that CA in the same reload"
    )]
    IssuerChanged,
}

/// A CRL verified against a trusted mesh CA.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationList {
    der: Vec<u8>,
    /// SHA-256 of the DER of the CA certificate that signed it.
    issuer_ca: [u8; 32],
    number: u64,
    this_update: OffsetDateTime,
    serials: BTreeSet<Vec<u8>>,
    entries: Vec<RevokedCert>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("number", &self.number)
            .field("this_update", &self.this_update)
            .field("revoked", &self.serials.len())
            .finish()
    }
}

fn refused(r: CrlRefusal) -> CryptoError {
    CryptoError::Crl(r)
}

impl RevocationList {
    /// Decodes one PEM `X509 CRL` block and verifies it against the CA
    /// certificate(s) in `ca_pem`.
    pub fn from_pem(crl_pem: &[u8], ca_pem: &str) -> Result<RevocationList> {
        if crl_pem.len() > MAX_CRL_BYTES {
            return Err(refused(CrlRefusal::TooLarge));
        }
        let mut blocks = CertificateRevocationListDer::pem_slice_iter(crl_pem);
        let der = match (blocks.next(), blocks.next()) {
            (Some(Ok(der)), None) => der,
            _ => return Err(refused(CrlRefusal::Pem)),
        };
        Self::from_der(der.as_ref(), ca_pem)
    }

    /// Decodes a DER CRL and verifies it against the CA certificate(s) in
    /// `ca_pem`: issuer name, signature, CRL number and serial lengths.
    pub fn from_der(der: &[u8], ca_pem: &str) -> Result<RevocationList> {
        if der.len() > MAX_CRL_BYTES {
            return Err(refused(CrlRefusal::TooLarge));
        }
        let cas = crate::pem::cert_ders(ca_pem)?;
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|_| refused(CrlRefusal::Malformed))?;
        if !rest.is_empty() {
            return Err(refused(CrlRefusal::Malformed));
        }
        let mut issuer_ca = None;
        for ca_der in &cas {
            let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca_der) else {
                continue;
            };
            if ca.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(ca.public_key()).is_ok()
            {
                issuer_ca = Some(crate::sha256(ca_der));
                break;
            }
        }
        let Some(issuer_ca) = issuer_ca else {
            return Err(refused(CrlRefusal::UntrustedIssuer));
        };
        let number = crl
            .crl_number()
            .map(|n| n.to_u64_digits())
            .and_then(|d| match d.as_slice() {
                [] => Some(0),
                [x] if *x <= i64::MAX as u64 => Some(*x),
                _ => None,
            })
            .ok_or(refused(CrlRefusal::Number))?;
        let mut serials = BTreeSet::new();
        let mut entries = Vec::new();
        for revoked in crl.iter_revoked_certificates() {
            let serial = revoked.raw_serial();
            if serial.is_empty() || serial.len() > MAX_SERIAL_LEN + 1 {
                return Err(refused(CrlRefusal::Serial));
            }
            let serial = normalize_serial(serial).to_vec();
            if serials.insert(serial.clone()) {
                entries.push(RevokedCert {
                    serial,
                    revoked_at: revoked.revocation_date.to_datetime(),
                });
            }
        }
        Ok(RevocationList {
            der: der.to_vec(),
            issuer_ca,
            number,
            this_update: crl.last_update().to_datetime(),
            serials,
            entries,
        })
    }

    /// Whether the certificate with this serial number is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.serials.contains(normalize_serial(serial))
    }

    /// Every revoked serial number.
    pub fn serials(&self) -> &BTreeSet<Vec<u8>> {
        &self.serials
    }

    /// Every entry (serial and revocation time), in the list's order, to
    /// carry over into the next list.
    pub fn entries(&self) -> &[RevokedCert] {
        &self.entries
    }

    /// SHA-256 of the DER of the CA certificate that signed this list.
    pub fn issuer_ca_sha256(&self) -> &[u8; 32] {
        &self.issuer_ca
    }

    /// Whether this list may replace `in_force` in a reload that makes
    /// `trusted` the CAs in use. CRL numbers only grow per issuing CA: a
    /// list of the same CA must not be older; a list of another CA may
    /// replace one whose CA is no longer trusted (the last step of a CA
    /// rotation: drop the old CA and install the new CA's list together),
    /// never one whose CA still is, since that would lift its revocations.
    pub fn may_replace(
        &self,
        in_force: &RevocationList,
        trusted: &crate::TrustedCas,
    ) -> std::result::Result<(), CrlSuccession> {
        if self.issuer_ca == in_force.issuer_ca {
            if self.number < in_force.number {
                return Err(CrlSuccession::Rollback {
                    got: self.number,
                    current: in_force.number,
                });
            }
            return Ok(());
        }
        if trusted.contains_sha256(&in_force.issuer_ca) {
            return Err(CrlSuccession::IssuerChanged);
        }
        Ok(())
    }

    /// The CRL number (grows with every list the CA issues).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// When the CA issued this list.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// The CRL, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CRL, PEM (`-----BEGIN X509 CRL-----`).
    pub fn to_pem(&self) -> String {
        pem_block("X509 CRL", &self.der)
    }

    pub(crate) fn rustls_der(&self) -> CertificateRevocationListDer<'static> {
        CertificateRevocationListDer::from(self.der.clone())
    }
}

/// A DER INTEGER's content without the leading zero byte that keeps a
/// positive number positive, so serials compare the same however encoded.
pub fn normalize_serial(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    }
}

/// A serial number as lower-case hex (as `ca revoke --serial` takes it).
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(serial)
}

/// Parses a hex serial number (an optional `0x` prefix, `:` separators
/// allowed), normalized as in [`normalize_serial`].
pub fn parse_serial_hex(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&digits).map_err(|_| refused(CrlRefusal::Serial))?;
    if bytes.is_empty() || bytes.len() > MAX_SERIAL_LEN + 1 {
        return Err(refused(CrlRefusal::Serial));
    }
    Ok(normalize_serial(&bytes).to_vec())
}

/// The serial number of a certificate (DER), normalized as in
/// [`normalize_serial`].
pub fn cert_serial(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
    Ok(normalize_serial(cert.raw_serial()).to_vec())
}

/// The end of a certificate's validity period (DER).
pub fn cert_not_after(cert_der: &[u8]) -> Result<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use std::fmt::Write as _;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The alphabet is ASCII, so every chunk is valid UTF-8.
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;
    use crate::test_util::*;
    use proptest::prelude::*;
    use time::Duration;

    fn serial_of(pem: &str) -> Vec<u8> {
        cert_serial(&der(pem)).unwrap()
    }

    #[test]
    fn issued_crl_round_trips_and_verifies() {
        let ca = ca();
        let a = ca.issue_node(&tenant("t"), &node("a"), now(), 30).unwrap();
        let b = ca.issue_node(&tenant("t"), &node("b"), now(), 30).unwrap();
        let pem = ca
            .issue_crl(
                &[RevokedCert {
                    serial: serial_of(&a.cert_pem),
                    revoked_at: now(),
                }],
                7,
                now(),
            )
            .unwrap();
        let crl = RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).unwrap();
        assert_eq!(crl.number(), 7);
        assert_eq!(crl.this_update(), now());
        assert!(crl.is_revoked(&serial_of(&a.cert_pem)));
        assert!(!crl.is_revoked(&serial_of(&b.cert_pem)));
        assert_eq!(
            crl.entries(),
            &[RevokedCert {
                serial: serial_of(&a.cert_pem),
                revoked_at: now()
            }]
        );
        assert_eq!(crl.to_pem(), pem, "our PEM encoder matches rcgen's");
        assert!(format!("{crl:?}").contains("revoked: 1"));
        // An empty list is a valid list.
        let empty = ca.issue_crl(&[], 1, now()).unwrap();
        let empty = RevocationList::from_pem(empty.as_bytes(), ca.cert_pem()).unwrap();
        assert!(empty.serials().is_empty());
    }

    /// Numbers only grow per CA; another CA's list replaces the one in
    /// force only once that list's CA is no longer trusted.
    #[test]
    fn succession_is_per_issuing_ca() {
        let (old, new) = (
            ca(),
            MeshCa::generate("fedmesh test CA 2", now(), 365).unwrap(),
        );
        let both = format!("{}{}", new.cert_pem(), old.cert_pem());
        let list = |ca: &MeshCa, number| {
            let pem = ca.issue_crl(&[], number, now()).unwrap();
            RevocationList::from_pem(pem.as_bytes(), &both).unwrap()
        };
        let trust = |pem: &str| crate::TrustedCas::from_pem(pem).unwrap();
        let in_force = list(&old, 5);
        assert_eq!(
            in_force.issuer_ca_sha256(),
            &crate::sha256(&der(old.cert_pem()))
        );
        assert_eq!(list(&old, 5).may_replace(&in_force, &trust(&both)), Ok(()));
        assert_eq!(list(&old, 6).may_replace(&in_force, &trust(&both)), Ok(()));
        assert_eq!(
            list(&old, 4).may_replace(&in_force, &trust(&both)),
            Err(CrlSuccession::Rollback { got: 4, current: 5 })
        );
        // The new CA's first list, while the old CA is trusted: refused.
        assert_eq!(
            list(&new, 1).may_replace(&in_force, &trust(&both)),
            Err(CrlSuccession::IssuerChanged)
        );
        // ... and together with dropping the old CA: accepted.
        assert_eq!(
            list(&new, 1).may_replace(&in_force, &trust(new.cert_pem())),
            Ok(())
        );
    }

    #[test]
    fn foreign_tampered_and_malformed_crls_are_refused() {
        let ca = ca();
        let evil = crate::MeshCa::generate("fedmesh test CA", now(), 365).unwrap();
        let pem = evil.issue_crl(&[], 1, now()).unwrap();
        assert!(matches!(
            RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::UntrustedIssuer))
        ));
        let good = ca.issue_crl(&[], 1, now()).unwrap();
        let mut der = RevocationList::from_pem(good.as_bytes(), ca.cert_pem())
            .unwrap()
            .der()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(matches!(
            RevocationList::from_der(&der, ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::UntrustedIssuer))
        ));
        assert!(matches!(
            RevocationList::from_der(b"garbage", ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::Malformed))
        ));
        assert!(matches!(
            RevocationList::from_pem(b"", ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::Pem))
        ));
        let two = format!("{good}{good}");
        assert!(matches!(
            RevocationList::from_pem(two.as_bytes(), ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::Pem))
        ));
        assert!(matches!(
            RevocationList::from_pem(&vec![b'A'; MAX_CRL_BYTES + 1], ca.cert_pem()),
            Err(CryptoError::Crl(CrlRefusal::TooLarge))
        ));
        // Both CAs trusted (CA rotation): the other CA's list is accepted.
        let both = format!("{}{}", ca.cert_pem(), evil.cert_pem());
        RevocationList::from_pem(pem.as_bytes(), &both).unwrap();
    }

    #[test]
    fn serials_compare_without_the_sign_byte() {
        assert_eq!(normalize_serial(&[0, 0x80, 1]), &[0x80, 1]);
        assert_eq!(normalize_serial(&[0]), &[0]);
        assert_eq!(normalize_serial(&[0x40, 1]), &[0x40, 1]);
        assert_eq!(parse_serial_hex("0x00:80:01").unwrap(), vec![0x80, 1]);
        assert_eq!(serial_hex(&[0x80, 1]), "8001");
        assert!(parse_serial_hex("xyz").is_err());
        assert!(parse_serial_hex("").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_set_of_serials_round_trips(
            serials in proptest::collection::btree_set(
                (0x01u8..0x80, proptest::collection::vec(any::<u8>(), 0..19))
                    .prop_map(|(h, t)| { let mut s = vec![h]; s.extend(t); s }),
                0..12,
            ),
            number in 0u64..=i64::MAX as u64,
            secs in 0i64..86_400 * 365,
        ) {
            let ca = ca();
            let at = now() + Duration::seconds(secs);
            let revoked: Vec<RevokedCert> = serials
                .iter()
                .map(|s| RevokedCert { serial: s.clone(), revoked_at: at })
                .collect();
            let pem = ca.issue_crl(&revoked, number, at).unwrap();
            let crl = RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).unwrap();
            prop_assert_eq!(crl.serials(), &serials);
            prop_assert_eq!(crl.number(), number);
            for s in &serials {
                prop_assert!(crl.is_revoked(s));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let ca_pem = ca().cert_pem().to_owned();
            let _ = RevocationList::from_der(&bytes, &ca_pem);
            let _ = RevocationList::from_pem(&bytes, &ca_pem);
        }

        #[test]
        fn flipped_bytes_of_a_valid_crl_never_pass_as_another_list(
            idx in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let ca = ca();
            let pem = ca
                .issue_crl(&[RevokedCert { serial: vec![0x41; 20], revoked_at: now() }], 3, now())
                .unwrap();
            let good = RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).unwrap();
            let mut der = good.der().to_vec();
            let i = idx.index(der.len());
            der[i] ^= 1 << bit;
            if let Ok(other) = RevocationList::from_der(&der, ca.cert_pem()) {
                // Only encodings that leave the signed content unchanged pass.
                prop_assert_eq!(other.serials(), good.serials());
                prop_assert_eq!(other.number(), good.number());
            }
        }
    }
}
