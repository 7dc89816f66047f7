//! How serious a detection is: a leaf shared by the rules (each rule has
//! one), the model (from score and threshold) and the alerts and responses
//! that act on it.

use serde::{Deserialize, Serialize};

/// How serious an alert is; ordered `low < medium < high < critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Suspicious.
    Medium,
    /// Likely an attack.
    High,
    /// An attack step that should not happen in a container at all.
    Critical,
}

impl Severity {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Severity of a model alert: `high` from twice the threshold on,
    /// `medium` below.
    pub fn of_score(score: f32, threshold: f32) -> Severity {
        if threshold > 0.0 && score >= 2.0 * threshold {
            Severity::High
        } else {
            Severity::Medium
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
