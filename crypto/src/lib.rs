//! fedmesh-crypto: the mesh certificate authority, node and coordinator
//! certificates, rustls mTLS configurations, typed identities and
//! certificate-bound signatures.
//!
//! # Invariants
//!
//! - No I/O: callers pass PEM strings in and get PEM strings back; nothing
//!   here touches the network. The one exception on the filesystem is
//!   [`files::TlsFiles`], which reads (never writes) the TLS files a
//!   coordinator or node is configured with, so both reload them alike.
//! - No clock: every time-dependent operation takes `now` as a parameter.
//!   (Key generation uses `ring`'s system randomness internally.)
//! - All keys are Ed25519, so signatures are deterministic.
//! - Secret key material only ever lives in [`SecretPem`], which zeroizes on
//!   drop and never prints.
//! - Identity comes from a certificate's single `spiffe://fedmesh/...` URI
//!   SAN, parsed into a typed [`Identity`].

#![deny(missing_docs)]

pub mod ca;
pub mod crl;
mod error;
pub mod files;
pub mod identity;
mod pem;
pub mod secagg;
mod secret;
pub mod sign;
pub mod tls;

pub use ca::{IssuedCert, MeshCa};
pub use crl::{CrlSuccession, RevocationList, RevokedCert};
pub use error::CryptoError;
pub use files::{FileError, FileStamp, TlsFiles, TlsMaterial};
pub use identity::{Identity, NodeId, TenantId};
pub use secagg::{BucketSum, BucketUnmasker, ClientRound, SecAggError};
pub use secret::SecretPem;
pub use sign::{CertSigner, CertVerifier, SharedSigner, TrustedCas};

/// Result alias used throughout this crate.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Lower-case hex SHA-256 of `bytes` (e.g. a certificate fingerprint).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_hex_known_vector() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
