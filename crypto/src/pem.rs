//! PEM decoding helpers (internal).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::{CryptoError, Result, SecretPem};

/// All certificates in a PEM string, in order. Errors if there are none.
pub(crate) fn cert_ders(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CryptoError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CryptoError::Pem {
            what: "certificate",
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Exactly one certificate from a PEM string.
pub(crate) fn single_cert_der(pem: &str) -> Result<CertificateDer<'static>> {
    let mut certs = cert_ders(pem)?;
    if certs.len() != 1 {
        return Err(CryptoError::Pem {
            what: "certificate",
            reason: format!(
                "expected exactly one CERTIFICATE block, found {}",
                certs.len()
            ),
        });
    }
    certs.pop().ok_or_else(|| CryptoError::Pem {
        what: "certificate",
        reason: "no CERTIFICATE block found".into(),
    })
}

/// The PKCS#8 private key in a PEM string (`-----BEGIN PRIVATE KEY-----`).
/// The returned DER zeroizes on drop.
pub(crate) fn pkcs8_der(key_pem: &SecretPem) -> Result<PrivatePkcs8KeyDer<'static>> {
    // Errors from the PEM parser never include the key bytes.
    PrivatePkcs8KeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|e| CryptoError::Pem {
        what: "private key",
        reason: format!("expected a PKCS#8 PRIVATE KEY block: {e}"),
    })
}
