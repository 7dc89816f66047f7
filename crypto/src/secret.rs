//! Secret key material.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A PEM-encoded private key. Zeroized on drop; `Debug` is redacted; no
/// `Display`, no `Serialize`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM string holding secret key material.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text, for callers that must write it out (to a 0600 file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretPem {
    fn from(pem: String) -> Self {
        Self(pem)
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretPem::new("-----BEGIN PRIVATE KEY-----\nsecret".into());
        assert_eq!(format!("{s:?}"), "SecretPem(<redacted>)");
        assert!(!format!("{s:#?}").contains("secret"));
        assert!(s.expose().contains("secret"));
    }

    #[test]
    fn zeroize_clears() {
        let mut s = SecretPem::from("abc".to_string());
        s.zeroize();
        assert_eq!(s.expose(), "");
    }
}
