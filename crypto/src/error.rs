//! The crate's error type.

use time::OffsetDateTime;

/// Everything that can go wrong in fedmesh-crypto. Messages never contain
/// secret key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A tenant or node name failed validation.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name ("tenant id", "node id").
        kind: &'static str,
        /// The rejected input.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A string is not a well-formed fedmesh identity URI.
    #[error("invalid identity URI {uri:?}: {reason}")]
    InvalidIdentityUri {
        /// The rejected URI.
        uri: String,
        /// Why it was rejected.
        reason: String,
    },
    /// PEM input could not be decoded or did not contain what was expected.
    #[error("bad PEM ({what}): {reason}")]
    Pem {
        /// What was being decoded ("certificate", "private key").
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A certificate could not be parsed as X.509 DER.
    #[error("cannot parse certificate: {0}")]
    CertificateParse(String),
    /// A certificate has no fedmesh identity URI SAN.
    #[error("certificate carries no spiffe://fedmesh/ identity")]
    NoIdentity,
    /// A certificate carries more than one fedmesh identity URI SAN.
    #[error("certificate carries {0} spiffe://fedmesh/ identities, expected exactly one")]
    MultipleIdentities(usize),
    /// Certificate generation (rcgen) failed.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
    /// A requested validity period is unusable (zero days or out of range).
    #[error("invalid validity period: {0}")]
    InvalidValidity(String),
    /// A key is not a usable Ed25519 key.
    #[error("unsupported or invalid key: {0}")]
    UnsupportedKey(String),
    /// A private key does not belong to the certificate it was paired with.
    #[error("private key does not match the certificate's public key")]
    KeyCertMismatch,
    /// The certificate given as CA is not a CA certificate.
    #[error("not a CA certificate: {0}")]
    NotACa(String),
    /// A certificate is not issued by the mesh CA (or the CA itself is unusable).
    #[error("untrusted certificate: {0}")]
    UntrustedCertificate(String),
    /// A certificate is not yet valid at the given time.
    #[error("certificate not valid before {not_before}, now is {now}")]
    NotYetValid {
        /// Start of the validity period.
        not_before: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// A certificate has expired at the given time.
    #[error("certificate expired at {not_after}, now is {now}")]
    Expired {
        /// End of the validity period.
        not_after: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// A CA certificate was presented where an end-entity certificate is required.
    #[error("certificate is a CA certificate, expected an end-entity certificate")]
    CertificateIsCa,
    /// A certificate revocation list was refused.
    #[error("revocation list refused: {0}")]
    Crl(crate::crl::CrlRefusal),
    /// The certificate is on the mesh CA's revocation list.
    #[error("certificate {serial} is revoked")]
    Revoked {
        /// Its serial number, hex.
        serial: String,
    },
    /// An Ed25519 signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// rustls refused a configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}
