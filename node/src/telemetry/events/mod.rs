//! Shared machinery for JSON-lines telemetry sources (Falco, Tetragon),
//! one concern per file:
//!
//! - [`reader`]: [`JsonLineReader`] reads lines from any
//!   [`BufRead`](std::io::BufRead) (a file, stdin, a socket) through a
//!   bounded line splitter and feeds them to a [`LineParser`] such as
//!   [`super::falco::parse_falco_line`] or
//!   [`super::tetragon::parse_tetragon_line`].
//! - [`follow`]: [`FollowFile`] follows a file as it grows (`tail -F`).
//! - [`normalize`]: container id normalisation ([`normalize_container_id`]),
//!   CRI log prefix stripping ([`strip_cri_prefix`]) and RFC 3339
//!   timestamps ([`parse_rfc3339_ms`]).
//! - [`paths`]: the sensitive-file tables ([`classify_file_access`]).
//! - [`json`]: the typed, borrowed JSON slot framework the parsers declare
//!   their fields with (`json_fields!`).
//!
//! Here: the error and statistics types every source shares. Both readers
//! keep a [`ParseStats`]: every line is either turned into events or
//! counted under a skip reason ([`ParseError::reason`]); nothing panics and
//! no line is buffered beyond the configured maximum line length (longer
//! lines are dropped while they stream past and counted as
//! `line_too_long`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ContainerId, Event, KernelEventKind};

pub mod follow;
pub(crate) mod json;
pub mod normalize;
pub mod paths;
pub mod reader;

pub use follow::{
    DEFAULT_POLL_INTERVAL, FollowFile, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, StartAt,
};
pub use normalize::{normalize_container_id, parse_rfc3339_ms, strip_cri_prefix};
pub use paths::classify_file_access;
pub use reader::JsonLineReader;

/// Default maximum length of one line (1 MiB); longer lines are skipped.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// Length of the short container id every source emits (Docker's short id).
///
/// cgroup paths carry the 64-hex id, Falco usually the 12-hex short id,
/// Tetragon the 64-hex id (or 31 hex in `process.docker`); the common prefix
/// of all of them is the 12-hex short id, so every source uses it as the
/// [`ContainerId`] to make their events join in one feature window.
pub const SHORT_ID_LEN: usize = 12;

/// Parser of one JSON line into events (Falco's, Tetragon's).
pub type LineParser = fn(&str) -> Result<Vec<Event>, ParseError>;

/// Why one line could not be turned into events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is empty or whitespace only.
    #[error("empty line")]
    Empty,
    /// The line is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The line is JSON but not an object.
    #[error("top-level JSON value is not an object")]
    NotAnObject,
    /// A required field is absent (or `null`).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an out-of-range value.
    #[error("field `{0}` has the wrong type or an out-of-range value")]
    InvalidField(&'static str),
    /// No usable timestamp.
    #[error("invalid or out-of-range timestamp")]
    InvalidTimestamp,
    /// The container id is neither 12..=64 hex digits nor a known scheme.
    #[error("invalid container id")]
    InvalidContainerId,
    /// The event happened on the host, not in a container.
    #[error("host event (not in a container)")]
    HostEvent,
    /// A sensor self-report (e.g. Falco's `syscall event drop`).
    #[error("sensor-internal event")]
    SensorInternal,
    /// A record of a kind this parser does not handle (reason inside).
    #[error("unsupported record: {0}")]
    Unsupported(&'static str),
    /// A well-formed event that maps to no [`Event`] (reason inside).
    #[error("event maps to nothing: {0}")]
    Unmapped(&'static str),
    /// A partial (`P`) CRI log line: a fragment of a longer record.
    #[error("partial CRI log line")]
    CriPartial,
    /// The line exceeded the reader's maximum line length.
    #[error("line longer than the maximum line length")]
    LineTooLong,
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
}

impl ParseError {
    /// A stable, low-cardinality reason used as the key of
    /// [`ParseStats::skipped_by_reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty_line",
            ParseError::InvalidJson(_) => "invalid_json",
            ParseError::NotAnObject => "not_an_object",
            ParseError::MissingField(_) => "missing_field",
            ParseError::InvalidField(_) => "invalid_field",
            ParseError::InvalidTimestamp => "invalid_timestamp",
            ParseError::InvalidContainerId => "invalid_container_id",
            ParseError::HostEvent => "host_event",
            ParseError::SensorInternal => "sensor_internal",
            ParseError::Unsupported(r) | ParseError::Unmapped(r) => r,
            ParseError::CriPartial => "cri_partial_line",
            ParseError::LineTooLong => "line_too_long",
            ParseError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// Counters of one line source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ParseStats {
    /// Lines seen (including skipped ones).
    pub lines: u64,
    /// Events produced.
    pub events: u64,
    /// Skipped lines per [`ParseError::reason`].
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
}

impl ParseStats {
    /// Total number of skipped lines.
    pub fn skipped(&self) -> u64 {
        self.skipped_by_reason
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Adds `other`'s counters to `self`.
    pub fn merge(&mut self, other: &ParseStats) {
        self.lines = self.lines.saturating_add(other.lines);
        self.events = self.events.saturating_add(other.events);
        for (k, v) in &other.skipped_by_reason {
            let e = self.skipped_by_reason.entry(k).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Records one skipped line; logs at a bounded rate (the 1st, 2nd, 4th,
    /// 8th, ... occurrence of each reason).
    pub fn record_skip(&mut self, err: &ParseError) {
        self.lines = self.lines.saturating_add(1);
        let n = self.skipped_by_reason.entry(err.reason()).or_insert(0);
        *n = n.saturating_add(1);
        if n.is_power_of_two() {
            tracing::debug!(reason = err.reason(), count = *n, error = %err, "telemetry line skipped");
        }
    }

    fn record_events(&mut self, n: usize) {
        self.lines = self.lines.saturating_add(1);
        self.events = self.events.saturating_add(n as u64);
    }
}

#[cfg(test)]
#[path = "reference.rs"]
mod reference;
