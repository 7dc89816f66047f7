//! File layout of a mesh PKI directory and loading of TLS material.
//!
//! ```text
//! D/ca.crt  D/ca.key                      mesh CA (key 0600)
//! D/coordinator.crt  D/coordinator.key    the coordinator's certificate
//! D/tenants/<tenant>/<node>.crt|.key      node certificates
//! D/issued/<serial>.crt                   every certificate ever issued (for `ca revoke`)
//! D/crl.pem                               the CA's revocation list (`ca revoke`)
//! ```
//!
//! Files that running processes watch (certificates, keys, the revocation
//! list) are replaced atomically (written aside, then renamed), so a reader
//! never sees half a file.

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
    /// The ledger of issued certificates.
    pub fn issued_dir(d: &Path) -> PathBuf {
        d.join("issued")
    }
    /// One issued certificate, by serial (hex).
    pub fn issued_cert(d: &Path, serial_hex: &str) -> PathBuf {
        issued_dir(d).join(format!("{serial_hex}.crt"))
    }
    /// The revocation list.
    pub fn crl(d: &Path) -> PathBuf {
        d.join("crl.pem")
    }
}

/// Replaces `path` atomically: writes a sibling temporary file with `mode`,
/// then renames it over `path`.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Replaces a public file atomically (mode 0644).
pub fn replace_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    replace_file(path, contents, 0o644)
}

/// Replaces a secret file atomically (mode 0600), e.g. a rotated key.
pub fn replace_secret(path: &Path, secret: &SecretPem) -> Result<(), PkiError> {
    replace_file(path, secret.expose().as_bytes(), 0o600)
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
