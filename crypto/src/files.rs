//! The TLS material of a running coordinator or node and the files it is
//! read from, shared by both so that certificate rotation works the same
//! way on each side.
//!
//! [`TlsMaterial`] is the bytes (CA certificate(s), own certificate and key,
//! optional revocation list) and what both sides derive from them; it does
//! no I/O. [`TlsFiles`] is the one place in this crate that touches the
//! filesystem: it reads those files and takes their (mtime, length) stamp,
//! so a caller's watcher can tell when a rotation replaced any of them.
//! Nothing here writes a file, sleeps or reads the clock.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use time::OffsetDateTime;

use crate::{Result, RevocationList, SecretPem};

/// A TLS file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// Cause.
    pub source: std::io::Error,
}

/// The bytes of one side's TLS material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Mesh CA certificate(s), PEM (the first is the CA in use; a second
    /// one is trusted too during a CA rotation).
    pub ca_pem: String,
    /// This side's certificate, PEM.
    pub cert_pem: String,
    /// Its key, PKCS#8 PEM.
    pub key_pem: SecretPem,
    /// The mesh CA's revocation list, PEM, if one is configured and written.
    pub crl_pem: Option<Vec<u8>>,
}

impl TlsMaterial {
    /// The revocation list, verified against the CA(s), if there is one.
    pub fn revocation_list(&self) -> Result<Option<RevocationList>> {
        self.crl_pem
            .as_deref()
            .map(|pem| RevocationList::from_pem(pem, &self.ca_pem))
            .transpose()
    }

    /// When this side's certificate expires.
    pub fn cert_not_after(&self) -> Result<OffsetDateTime> {
        crate::crl::cert_not_after(&crate::tls::cert_der_from_pem(&self.cert_pem)?)
    }

    /// When the CA in use (the first in the CA file) expires, if readable.
    pub fn ca_not_after(&self) -> Option<OffsetDateTime> {
        crate::tls::first_cert_der(&self.ca_pem)
            .ok()
            .and_then(|d| crate::crl::cert_not_after(&d).ok())
    }
}

/// Where one side's TLS material lives on disk.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Mesh CA certificate(s).
    pub ca_cert: PathBuf,
    /// This side's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Revocation list (optional; a configured list not written yet counts
    /// as empty).
    pub crl: Option<PathBuf>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError {
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM file as text (the bytes of a key file that is not text are wiped).
fn read_text(path: &Path) -> Result<String, FileError> {
    String::from_utf8(read_file(path)?).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        FileError {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM"),
        }
    })
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.ca_cert, &self.cert, &self.key]
            .into_iter()
            .chain(self.crl.as_ref())
    }

    /// Reads every file.
    pub fn read(&self) -> Result<TlsMaterial, FileError> {
        Ok(TlsMaterial {
            ca_pem: read_text(&self.ca_cert)?,
            cert_pem: read_text(&self.cert)?,
            key_pem: SecretPem::new(read_text(&self.key)?),
            crl_pem: self.read_crl()?,
        })
    }

    /// The revocation list's bytes, if one is configured and written yet
    /// (a configured list that does not exist yet counts as empty).
    pub fn read_crl(&self) -> Result<Option<Vec<u8>>, FileError> {
        let Some(path) = &self.crl else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FileError {
                path: path.clone(),
                source,
            }),
        }
    }

    /// (mtime, length) of every file, to tell later whether any changed
    /// (take it before reading the files).
    pub fn stamp(&self) -> FileStamp {
        FileStamp(
            self.paths()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
        )
    }
}

/// The (mtime, length) of a set of files at one moment (`None` for a file
/// that could not be looked at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64)>>);

/// Days left before `not_after` at `now` when fewer than `warn_days` are
/// left and no warning was given yet for that many days left
/// (`warned_days` remembers the last one): at most one warning per day
/// left, negative once expired.
pub fn expiry_warning_due(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    warn_days: u32,
    warned_days: &mut Option<i64>,
) -> Option<i64> {
    let days_left = (not_after - now).whole_days();
    if days_left < i64::from(warn_days) && *warned_days != Some(days_left) {
        *warned_days = Some(days_left);
        Some(days_left)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn reads_stamps_and_notices_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let issued = ca
            .issue_node(&tenant("acme"), &node("n1"), now(), 3)
            .unwrap();
        let files = TlsFiles {
            ca_cert: dir.path().join("ca.crt"),
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
            crl: Some(dir.path().join("crl.pem")),
        };
        std::fs::write(&files.ca_cert, ca.cert_pem()).unwrap();
        std::fs::write(&files.cert, &issued.cert_pem).unwrap();
        std::fs::write(&files.key, issued.key_pem.expose()).unwrap();
        let before = files.stamp();
        let m = files.read().unwrap();
        assert!(m.crl_pem.is_none(), "a list not written yet is empty");
        assert!(m.revocation_list().unwrap().is_none());
        assert_eq!(m.cert_not_after().unwrap(), now() + time::Duration::days(3));
        assert_eq!(m.ca_not_after(), Some(now() + time::Duration::days(365)));
        assert_eq!(files.stamp(), before);

        let crl = ca.issue_crl(&[], 1, now()).unwrap();
        std::fs::write(files.crl.as_ref().unwrap(), &crl).unwrap();
        assert_ne!(files.stamp(), before);
        let m = files.read().unwrap();
        assert_eq!(m.revocation_list().unwrap().map(|l| l.number()), Some(1));

        std::fs::write(&files.key, [0xff, 0xfe]).unwrap();
        let e = files.read().unwrap_err();
        assert_eq!(e.path, files.key);
        std::fs::remove_file(&files.cert).unwrap();
        assert_eq!(files.read().unwrap_err().path, files.cert);
    }

    #[test]
    fn one_expiry_warning_per_day_left() {
        let not_after = now() + time::Duration::days(3);
        let mut warned = None;
        assert_eq!(expiry_warning_due(not_after, now(), 2, &mut warned), None);
        let at = now() + time::Duration::hours(25);
        assert_eq!(expiry_warning_due(not_after, at, 2, &mut warned), Some(1));
        assert_eq!(expiry_warning_due(not_after, at, 2, &mut warned), None);
        let at = now() + time::Duration::days(4);
        assert_eq!(expiry_warning_due(not_after, at, 2, &mut warned), Some(-1));
    }
}
