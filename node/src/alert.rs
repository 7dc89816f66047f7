//! Alerts and their sinks (JSON lines on stdout and/or a file).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One alert: which container, how anomalous, against which threshold, and
/// which features contributed most, so an operator can see why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Window end, milliseconds (source clock).
    pub ts_ms: u64,
    /// Tenant.
    pub tenant: String,
    /// Node.
    pub node: String,
    /// Container id.
    pub container: String,
    /// Anomaly score (mean squared reconstruction error, scaled space).
    pub score: f32,
    /// Calibrated threshold in force.
    pub threshold: f32,
    /// Global model version in force (`None` for a local bootstrap model).
    pub model_version: Option<u64>,
    /// Top contributing features with their reconstruction error.
    pub top_features: Vec<(String, f32)>,
}

/// Sink errors.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The alert file failed.
    #[error("alert file {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Where alerts go.
pub struct AlertSinks {
    stdout: bool,
    file: Option<(String, std::fs::File)>,
}

impl AlertSinks {
    /// Opens the configured sinks (the file in append mode).
    pub fn open(stdout: bool, file: Option<&Path>) -> Result<Self, AlertError> {
        let file = match file {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| AlertError::Io {
                        path: p.display().to_string(),
                        source,
                    })?;
                Some((p.display().to_string(), f))
            }
        };
        Ok(Self { stdout, file })
    }

    /// Sinks that drop everything (the demo prints its own view).
    pub fn none() -> Self {
        Self {
            stdout: false,
            file: None,
        }
    }

    /// Emits one alert to every sink.
    pub fn emit(&mut self, alert: &Alert) -> Result<(), AlertError> {
        let mut line = serde_json::to_string(alert).unwrap_or_default();
        line.push('\n');
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if let Some((path, f)) = self.file.as_mut() {
            f.write_all(line.as_bytes())
                .map_err(|source| AlertError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}
