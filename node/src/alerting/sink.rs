//! Where alerts go: JSON lines on stdout and/or a file, and any further
//! [`AlertSink`] (the webhook outbox, [`crate::alerting::webhook::Outbox`]).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::alerting::alert::Alert;

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
    /// A further sink (e.g. the webhook outbox) failed to record the alert.
    #[error(transparent)]
    Sink(Box<dyn std::error::Error + Send + Sync>),
}

/// A further destination of every alert, after stdout and the file (the
/// webhook outbox). `emit` runs on the detection loop, once per alert: it
/// records the alert and returns; delivery happens elsewhere.
pub trait AlertSink: Send {
    /// Records one alert.
    fn emit(&mut self, alert: &Alert) -> Result<(), AlertError>;
}

/// Where alerts go. Clones share the same sinks (the detection loop and the
/// response task write to one file and one outbox); one record is written
/// whole before the next.
#[derive(Clone)]
pub struct AlertSinks {
    inner: Arc<Mutex<Sinks>>,
}

struct Sinks {
    stdout: bool,
    file: Option<(String, std::fs::File)>,
    further: Vec<Box<dyn AlertSink>>,
}

impl AlertSinks {
    fn of(sinks: Sinks) -> Self {
        Self {
            inner: Arc::new(Mutex::new(sinks)),
        }
    }
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
        Ok(Self::of(Sinks {
            stdout,
            file,
            further: Vec::new(),
        }))
    }

    /// Sinks that drop everything (the demo prints its own view).
    pub fn none() -> Self {
        Self::of(Sinks {
            stdout: false,
            file: None,
            further: Vec::new(),
        })
    }

    /// Also emits every alert to `sink` (e.g. the webhook outbox, delivered
    /// by [`crate::alerting::webhook::run_delivery`]). Sinks are tried in
    /// the order they were added.
    pub fn with_sink(self, sink: impl AlertSink + 'static) -> Self {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .further
            .push(Box::new(sink));
        self
    }

    /// Emits one alert to every sink. Every sink is tried; the first error
    /// is returned.
    pub fn emit(&self, alert: &Alert) -> Result<(), AlertError> {
        let mut line = serde_json::to_string(alert).unwrap_or_default();
        line.push('\n');
        let mut result = Ok(());
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let sinks = &mut *guard;
        if sinks.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if let Some((path, f)) = sinks.file.as_mut()
            && let Err(source) = f.write_all(line.as_bytes())
        {
            result = Err(AlertError::Io {
                path: path.clone(),
                source,
            });
        }
        for sink in &mut sinks.further {
            if let Err(e) = sink.emit(alert)
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}
