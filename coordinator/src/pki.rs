//! File layout of a mesh PKI directory and loading of TLS material.
//!
//! ```text
//! D/ca.crt  D/ca.key                      mesh CA (key 0600)
//! D/coordinator.crt  D/coordinator.key    the coordinator's certificate
//! D/tenants/<tenant>/<node>.crt|.key      node certificates
//! ```

use std::path::{Path, PathBuf};

use fedmesh_crypto::SecretPem;

/// PKI file errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Refusing to overwrite.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
}

/// TLS material of one party.
#[derive(Debug)]
pub struct Pki {
    /// Mesh CA certificate.
    pub ca_pem: String,
    /// Own certificate.
    pub cert_pem: String,
    /// Own key.
    pub key_pem: SecretPem,
}

fn read(path: &Path, what: &str) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(source.kind(), format!("cannot read {what}: {source}")),
    })
}

impl Pki {
    /// Loads CA certificate, certificate and key from three files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            ca_pem: read(ca, "CA certificate")?,
            cert_pem: read(cert, "certificate")?,
            key_pem: SecretPem::new(read(key, "private key")?),
        })
    }
}

/// Paths inside a PKI directory.
pub mod layout {
    use std::path::{Path, PathBuf};

    /// CA certificate.
    pub fn ca_cert(d: &Path) -> PathBuf {
        d.join("ca.crt")
    }
    /// CA key.
    pub fn ca_key(d: &Path) -> PathBuf {
        d.join("ca.key")
    }
    /// Coordinator certificate.
    pub fn coordinator_cert(d: &Path) -> PathBuf {
        d.join("coordinator.crt")
    }
    /// Coordinator key.
    pub fn coordinator_key(d: &Path) -> PathBuf {
        d.join("coordinator.key")
    }
    /// A node's certificate.
    pub fn node_cert(d: &Path, tenant: &str, node: &str) -> PathBuf {
        d.join("tenants").join(tenant).join(format!("{node}.crt"))
    }
    /// A node's key.
    pub fn node_key(d: &Path, tenant: &str, node: &str) -> PathBuf {
        d.join("tenants").join(tenant).join(format!("{node}.key"))
    }
}

/// Writes a public file, creating parent directories.
pub fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)
}

/// Writes a secret file with mode 0600, refusing to overwrite.
pub fn write_secret(path: &Path, secret: &SecretPem) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return Err(PkiError::Exists(path.to_owned()));
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(secret.expose().as_bytes()).map_err(io)
}
