//! The mesh certificate authority: issues node and coordinator certificates.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ED25519, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::crl::RevokedCert;
use crate::identity::{Identity, NodeId, TenantId};
use crate::{CryptoError, Result, SecretPem};

/// Organization name written into every certificate subject.
const ORGANIZATION: &str = "fedmesh";

/// A certificate and its freshly generated private key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate's private key, PKCS#8 PEM.
    pub key_pem: SecretPem,
}

/// The mesh CA: a self-signed Ed25519 CA that may sign end-entity
/// certificates only (path length 0).
pub struct MeshCa {
    /// The original CA certificate PEM (returned as is so existing chains hold).
    cert_pem: String,
    key_pem: SecretPem,
    key_pair: KeyPair,
    /// The issuer as rcgen needs it (subject DN and key identifier).
    issuer: rcgen::Certificate,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// `[now, now + days]` in UTC, with `days >= 1`.
fn validity(now: OffsetDateTime, days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if days == 0 {
        return Err(CryptoError::InvalidValidity(
            "validity must be at least one day".into(),
        ));
    }
    let not_before = now.to_offset(UtcOffset::UTC);
    let not_after = not_before
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| {
            CryptoError::InvalidValidity(format!("{now} + {days} days is out of range"))
        })?;
    Ok((not_before, not_after))
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn uri_san(identity: &Identity) -> Result<SanType> {
    Ok(SanType::URI(Ia5String::try_from(identity.to_uri())?))
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&PKCS_ED25519)?)
}

impl MeshCa {
    /// Generates a new self-signed Ed25519 CA valid from `now` for
    /// `validity_days` days.
    pub fn generate(common_name: &str, now: OffsetDateTime, validity_days: u32) -> Result<MeshCa> {
        if common_name.is_empty() {
            return Err(CryptoError::InvalidName {
                kind: "CA common name",
                value: String::new(),
                reason: "must not be empty",
            });
        }
        let (not_before, not_after) = validity(now, validity_days)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key_pair = new_key()?;
        let issuer = params.self_signed(&key_pair)?;
        Ok(MeshCa {
            cert_pem: issuer.pem(),
            key_pem: SecretPem::new(key_pair.serialize_pem()),
            key_pair,
            issuer,
        })
    }

    /// Reloads a CA from its certificate and private key PEM.
    ///
    /// Checks that the certificate is a CA and that the key is the Ed25519
    /// key of that certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &SecretPem) -> Result<MeshCa> {
        let der = crate::pem::single_cert_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
        if !cert.is_ca() {
            return Err(CryptoError::NotACa(
                "basicConstraints does not have cA=true".into(),
            ));
        }
        let key_pair = KeyPair::from_pem(key_pem.expose())
            .map_err(|e| CryptoError::UnsupportedKey(e.to_string()))?;
        if key_pair.algorithm() != &PKCS_ED25519 {
            return Err(CryptoError::UnsupportedKey(
                "the mesh CA key must be Ed25519".into(),
            ));
        }
        if key_pair.public_key_der() != cert.public_key().raw {
            return Err(CryptoError::KeyCertMismatch);
        }
        let params = CertificateParams::from_ca_cert_der(&der)?;
        // Re-signing only rebuilds rcgen's issuer view (subject DN, key id);
        // the original PEM stays the CA certificate everyone trusts.
        let issuer = params.self_signed(&key_pair)?;
        Ok(MeshCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.clone(),
            key_pair,
            issuer,
        })
    }

    /// The CA certificate, PEM (the trust anchor to distribute).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &SecretPem {
        &self.key_pem
    }

    fn leaf_params(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<CertificateParams> {
        let (not_before, not_after) = validity(now, validity_days)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.subject_alt_names = sans;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn sign_leaf(&self, mut params: CertificateParams) -> Result<IssuedCert> {
        let key = new_key()?;
        // A 20-byte serial from the key's digest with the top byte in
        // 0x40..=0x7f: positive, never shortened by DER, so every certificate
        // of a kind has the same length (rcgen's default serial loses a byte
        // when its first byte masks to zero, which made byte counts of
        // messages carrying certificates vary between runs).
        let mut serial = crate::sha256(&key.public_key_der())[..20].to_vec();
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(serial.into());
        let cert = params.signed_by(&key, &self.issuer, &self.key_pair)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: SecretPem::new(key.serialize_pem()),
        })
    }

    /// Issues a CRL revoking `revoked`, numbered `number` (a CRL number
    /// must grow with every list: readers refuse to go back to a lower one),
    /// dated `now`. Returns the PEM (`-----BEGIN X509 CRL-----`).
    ///
    /// The list names its next update a year ahead; fedmesh does not enforce
    /// it (a list stays in force until a newer one replaces it).
    pub fn issue_crl(
        &self,
        revoked: &[RevokedCert],
        number: u64,
        now: OffsetDateTime,
    ) -> Result<String> {
        let (this_update, next_update) = validity(now, 365)?;
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            if r.serial.is_empty() || r.serial.len() > crate::crl::MAX_SERIAL_LEN {
                return Err(CryptoError::Crl(crate::crl::CrlRefusal::Serial));
            }
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: r.revoked_at.to_offset(UtcOffset::UTC),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer, &self.key_pair)?.pem()?)
    }

    /// Issues a node certificate: CN `{tenant}/{node}`, exactly one URI SAN
    /// (`spiffe://fedmesh/tenant/{tenant}/node/{node}`), EKU clientAuth.
    pub fn issue_node(
        &self,
        tenant: &TenantId,
        node: &NodeId,
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<IssuedCert> {
        let identity = Identity::Node {
            tenant: tenant.clone(),
            node: node.clone(),
        };
        let params = self.leaf_params(
            &format!("{tenant}/{node}"),
            vec![uri_san(&identity)?],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now,
            validity_days,
        )?;
        self.sign_leaf(params)
    }

    /// Issues a coordinator certificate: CN `coordinator/{name}`, SANs = the
    /// coordinator URI, each DNS name and each IP address; EKU serverAuth and
    /// clientAuth.
    pub fn issue_coordinator(
        &self,
        name: &NodeId,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<IssuedCert> {
        let identity = Identity::Coordinator { name: name.clone() };
        let mut sans = vec![uri_san(&identity)?];
        for dns in dns_names {
            if dns.is_empty() {
                return Err(CryptoError::InvalidName {
                    kind: "DNS name",
                    value: dns.clone(),
                    reason: "must not be empty",
                });
            }
            sans.push(SanType::DnsName(Ia5String::try_from(dns.as_str())?));
        }
        sans.extend(ip_addrs.iter().copied().map(SanType::IpAddress));
        let params = self.leaf_params(
            &identity.to_string(),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            now,
            validity_days,
        )?;
        self.sign_leaf(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::tls::identity_from_cert_der;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn issued_node_cert_carries_identity() {
        let ca = ca();
        let issued = ca
            .issue_node(&tenant("acme"), &node("n1"), now(), 30)
            .unwrap();
        let leaf_der = der(&issued.cert_pem);
        assert_eq!(
            identity_from_cert_der(&leaf_der).unwrap(),
            node_identity("acme", "n1")
        );

        let (_, cert) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert!(!cert.is_ca());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "acme/n1");
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans,
            &vec![GeneralName::URI("spiffe://fedmesh/tenant/acme/node/n1")]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth);
        assert_eq!(cert.validity().not_before.to_datetime(), now());
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            now() + Duration::days(30)
        );
        // Signed by the CA.
        let ca_der = der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    }

    #[test]
    fn leaf_certificates_have_one_length_and_a_20_byte_serial() {
        let ca = ca();
        let lens: std::collections::BTreeSet<usize> = (0..64)
            .map(|_| {
                let c = ca
                    .issue_node(&tenant("acme"), &node("n1"), now(), 30)
                    .unwrap();
                let der = der(&c.cert_pem);
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                assert_eq!(cert.raw_serial().len(), 20);
                der.len()
            })
            .collect();
        assert_eq!(lens.len(), 1, "{lens:?}");
    }

    #[test]
    fn ca_cert_shape() {
        let ca = ca();
        let der = der(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        cert.verify_signature(None).unwrap();
        assert!(ca.key_pem().expose().contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains(ca.key_pem().expose()));
    }

    #[test]
    fn coordinator_cert_sans() {
        let ca = ca();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let issued = ca
            .issue_coordinator(&node("main"), &["localhost".to_string()], &[ip], now(), 30)
            .unwrap();
        let der = der(&issued.cert_pem);
        assert_eq!(
            identity_from_cert_der(&der).unwrap(),
            Identity::Coordinator { name: node("main") }
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans,
            &vec![
                GeneralName::URI("spiffe://fedmesh/coordinator/main"),
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
    }

    #[test]
    fn from_pem_round_trip_issues_chaining_certs() {
        let original = ca();
        let reloaded = MeshCa::from_pem(original.cert_pem(), original.key_pem()).unwrap();
        assert_eq!(reloaded.cert_pem(), original.cert_pem());
        let issued = reloaded
            .issue_node(&tenant("acme"), &node("n2"), now(), 10)
            .unwrap();
        // Verifies against the ORIGINAL CA PEM: same issuer name, same key.
        let verifier = crate::CertVerifier::new(original.cert_pem()).unwrap();
        let signer = crate::CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        let sig = signer.sign(b"m");
        assert_eq!(
            verifier
                .verify(signer.cert_der(), b"m", &sig, now() + Duration::hours(1))
                .unwrap(),
            node_identity("acme", "n2")
        );
    }

    #[test]
    fn from_pem_rejects_wrong_key_and_non_ca() {
        let a = ca();
        let b = ca();
        assert!(matches!(
            MeshCa::from_pem(a.cert_pem(), b.key_pem()),
            Err(CryptoError::KeyCertMismatch)
        ));
        let leaf = a.issue_node(&tenant("t"), &node("n"), now(), 1).unwrap();
        assert!(matches!(
            MeshCa::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CryptoError::NotACa(_))
        ));
        assert!(matches!(
            MeshCa::from_pem("not pem", a.key_pem()),
            Err(CryptoError::Pem { .. })
        ));
    }

    #[test]
    fn validity_is_checked() {
        assert!(matches!(
            MeshCa::generate("ca", now(), 0),
            Err(CryptoError::InvalidValidity(_))
        ));
        let ca = ca();
        assert!(matches!(
            ca.issue_node(&tenant("t"), &node("n"), now(), u32::MAX),
            Err(CryptoError::InvalidValidity(_))
        ));
        assert!(matches!(
            MeshCa::generate("", now(), 1),
            Err(CryptoError::InvalidName { .. })
        ));
    }
}
