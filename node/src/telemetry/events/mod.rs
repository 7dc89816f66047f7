//! Shared machinery for JSON-lines telemetry sources (Falco, Tetragon).
//!
//! - [`JsonLineReader`] reads lines from any [`BufRead`] (a file, stdin, a
//!   socket) and feeds them to a line parser such as
//!   [`super::falco::parse_falco_line`] or
//!   [`super::tetragon::parse_tetragon_line`].
//! - [`FollowFile`] follows a file as it grows (`tail -F`): poll-based with a
//!   bounded sleep, reopening the file when it is rotated (the path names a new
//!   file) or truncated (its size shrinks).
//!
//! Both keep a [`ParseStats`]: every line is either turned into events or
//! counted under a skip reason ([`ParseError::reason`]); nothing panics and no
//! line is buffered beyond the configured maximum line length (longer lines
//! are dropped while they stream past and counted as `line_too_long`).
//!
//! The module also holds the helpers both parsers share: container id
//! normalisation ([`normalize_container_id`]), CRI log prefix stripping
//! ([`strip_cri_prefix`]), RFC 3339 timestamps ([`parse_rfc3339_ms`]) and the
//! sensitive-file classification ([`classify_file_access`]).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::borrow::Cow;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{ContainerId, Event, KernelEventKind};

/// Default maximum length of one line (1 MiB); longer lines are skipped.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// Upper bound of the [`FollowFile`] poll interval (sleeps never exceed it).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Lower bound of the [`FollowFile`] poll interval.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Default [`FollowFile`] poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Bytes read from a followed file per [`FollowFile::poll`] call at most, so
/// one poll never stalls its caller on a huge backlog.
const MAX_READ_PER_POLL: usize = 8 * 1024 * 1024;

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

/// One item produced by the [`LineSplitter`].
enum LineItem<'a> {
    Line(&'a [u8]),
    TooLong,
}

/// Splits a byte stream into lines with a bounded buffer.
#[derive(Debug)]
struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(1),
            discarding: false,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(LineItem<'_>)) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let chunk = &data[..i];
                    data = &data[i + 1..];
                    if self.discarding {
                        self.discarding = false;
                        out(LineItem::TooLong);
                    } else if self.buf.len().saturating_add(chunk.len()) > self.max {
                        self.buf.clear();
                        out(LineItem::TooLong);
                    } else if self.buf.is_empty() {
                        out(LineItem::Line(chunk));
                    } else {
                        self.buf.extend_from_slice(chunk);
                        let line = std::mem::take(&mut self.buf);
                        out(LineItem::Line(&line));
                        self.buf = line;
                        self.buf.clear();
                    }
                }
                None => {
                    if !self.discarding {
                        if self.buf.len().saturating_add(data.len()) > self.max {
                            self.buf.clear();
                            self.discarding = true;
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                    }
                    data = &[];
                }
            }
        }
    }

    /// End of input: emits a final unterminated line, if any.
    fn finish(&mut self, out: &mut impl FnMut(LineItem<'_>)) {
        if self.discarding {
            out(LineItem::TooLong);
        } else if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            out(LineItem::Line(&line));
        }
        self.reset();
    }
}

/// Parses one raw line with `parser`, recording the outcome in `stats`.
fn handle_line<P>(
    item: LineItem<'_>,
    parser: &mut P,
    stats: &mut ParseStats,
    pending: &mut VecDeque<Event>,
) where
    P: FnMut(&str) -> Result<Vec<Event>, ParseError>,
{
    let res = match item {
        LineItem::TooLong => Err(ParseError::LineTooLong),
        LineItem::Line(bytes) => {
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            match std::str::from_utf8(bytes) {
                Ok(s) => parser(s),
                Err(_) => Err(ParseError::InvalidUtf8),
            }
        }
    };
    match res {
        Ok(evs) => {
            stats.record_events(evs.len());
            pending.extend(evs);
        }
        Err(e) => stats.record_skip(&e),
    }
}

/// Reads JSON lines from a [`BufRead`] and parses each with a line parser.
///
/// Iterate it to get events (`Iterator<Item = io::Result<Event>>`; an I/O
/// error ends the iteration), or call [`JsonLineReader::read_all`]. Lines that
/// fail to parse are counted in [`JsonLineReader::stats`], never returned.
/// A final line without a trailing newline is parsed at end of input.
pub struct JsonLineReader<R, P> {
    reader: R,
    parser: P,
    splitter: LineSplitter,
    stats: ParseStats,
    pending: VecDeque<Event>,
    done: bool,
}

impl<R, P> std::fmt::Debug for JsonLineReader<R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLineReader")
            .field("stats", &self.stats)
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R, P> JsonLineReader<R, P>
where
    R: BufRead,
    P: FnMut(&str) -> Result<Vec<Event>, ParseError>,
{
    /// A reader with the [`DEFAULT_MAX_LINE_BYTES`] limit.
    pub fn new(reader: R, parser: P) -> Self {
        Self {
            reader,
            parser,
            splitter: LineSplitter::new(DEFAULT_MAX_LINE_BYTES),
            stats: ParseStats::default(),
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// Sets the maximum line length in bytes (at least 1).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.splitter = LineSplitter::new(max);
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Consumes the reader, returning its counters.
    pub fn into_stats(self) -> ParseStats {
        self.stats
    }

    /// Reads to the end of input and returns every event.
    pub fn read_all(&mut self) -> io::Result<Vec<Event>> {
        let mut out = Vec::new();
        for ev in self.by_ref() {
            out.push(ev?);
        }
        Ok(out)
    }

    /// Reads one buffer's worth of input.
    fn fill(&mut self) -> io::Result<()> {
        let Self {
            reader,
            parser,
            splitter,
            stats,
            pending,
            done,
        } = self;
        let buf = loop {
            match reader.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if buf.is_empty() {
            splitter.finish(&mut |item| handle_line(item, parser, stats, pending));
            *done = true;
            return Ok(());
        }
        let n = buf.len();
        splitter.feed(buf, &mut |item| handle_line(item, parser, stats, pending));
        reader.consume(n);
        Ok(())
    }
}

impl<R, P> Iterator for JsonLineReader<R, P>
where
    R: BufRead,
    P: FnMut(&str) -> Result<Vec<Event>, ParseError>,
{
    type Item = io::Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

/// Where [`FollowFile`] starts reading a file that exists when it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Read the whole existing content.
    Beginning,
    /// Skip the existing content; only read what is appended later.
    End,
}

/// Identity of an open file (device + inode on Unix), to detect rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    Some(FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> Option<FileIdentity> {
    None
}

/// Follows a growing file (`tail -F` semantics) and parses its lines.
///
/// [`FollowFile::poll`] never blocks on new data: it reads what was appended
/// since the last call. [`FollowFile::wait_events`] polls with a bounded sleep
/// ([`FollowFile::with_poll_interval`], clamped to
/// [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`]) until events arrive or a
/// timeout passes; it blocks the thread, so async callers run it in
/// `spawn_blocking`.
///
/// - A missing file is waited for (it may not exist yet).
/// - Truncation (size below the read position, e.g. `copytruncate`)
///   restarts at offset 0 and drops any partial line.
/// - Rotation (the path names a different file than the one open) drains the
///   old file, then reopens the path and reads the new file from the start.
/// - A trailing line without newline is kept until its newline arrives.
pub struct FollowFile<P> {
    path: PathBuf,
    file: Option<File>,
    ident: Option<FileIdentity>,
    pos: u64,
    first_open: Option<StartAt>,
    splitter: LineSplitter,
    parser: P,
    stats: ParseStats,
    pending: VecDeque<Event>,
    poll_interval: Duration,
    rotations: u64,
    truncations: u64,
}

impl<P> std::fmt::Debug for FollowFile<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowFile")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("stats", &self.stats)
            .field("rotations", &self.rotations)
            .field("truncations", &self.truncations)
            .finish_non_exhaustive()
    }
}

impl<P> FollowFile<P>
where
    P: FnMut(&str) -> Result<Vec<Event>, ParseError>,
{
    /// Follows `path`. The file may not exist yet; `start` applies to the
    /// content present at the first successful open (files appearing after a
    /// rotation are always read from the beginning).
    pub fn new(path: impl Into<PathBuf>, start: StartAt, parser: P) -> Self {
        Self {
            path: path.into(),
            file: None,
            ident: None,
            pos: 0,
            first_open: Some(start),
            splitter: LineSplitter::new(DEFAULT_MAX_LINE_BYTES),
            parser,
            stats: ParseStats::default(),
            pending: VecDeque::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            rotations: 0,
            truncations: 0,
        }
    }

    /// Sets the sleep between polls in [`FollowFile::wait_events`]
    /// (clamped to [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`]).
    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
        self
    }

    /// Sets the maximum line length in bytes (at least 1).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.splitter = LineSplitter::new(max);
        self
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters so far.
    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// How many times the file was found rotated and reopened.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// How many times the file was found truncated.
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    /// Reads whatever was appended since the last call (bounded per call)
    /// and returns the parsed events. Never sleeps.
    pub fn poll(&mut self) -> io::Result<Vec<Event>> {
        let mut budget = MAX_READ_PER_POLL;
        // At most one rotation per poll: read the old tail, reopen, read the new file.
        for _ in 0..2 {
            if self.file.is_none() && !self.try_open()? {
                break;
            }
            self.read_available(&mut budget)?;
            if budget == 0 || !self.check_rotation()? {
                break;
            }
        }
        Ok(self.pending.drain(..).collect())
    }

    /// Polls until at least one event is available or `timeout` passed,
    /// sleeping the poll interval between polls (never longer than the time
    /// left). Blocks the calling thread.
    pub fn wait_events(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let evs = self.poll()?;
            if !evs.is_empty() {
                return Ok(evs);
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if d > now => d - now,
                Some(_) => return Ok(Vec::new()),
                None => self.poll_interval,
            };
            std::thread::sleep(self.poll_interval.min(left));
        }
    }

    /// Opens the path; `Ok(false)` if it does not exist (yet).
    fn try_open(&mut self) -> io::Result<bool> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        self.ident = identity(&meta);
        self.pos = 0;
        if self.first_open.take() == Some(StartAt::End) {
            self.pos = f.seek(SeekFrom::End(0))?;
        }
        self.splitter.reset();
        self.file = Some(f);
        Ok(true)
    }

    /// Reads from the open file up to EOF or until `budget` is used up.
    fn read_available(&mut self, budget: &mut usize) -> io::Result<()> {
        let Self {
            file,
            pos,
            splitter,
            parser,
            stats,
            pending,
            truncations,
            ..
        } = self;
        let Some(f) = file.as_mut() else {
            return Ok(());
        };
        let len = f.metadata()?.len();
        if len < *pos {
            *truncations = truncations.saturating_add(1);
            *pos = f.seek(SeekFrom::Start(0))?;
            splitter.reset();
        }
        let mut chunk = vec![0u8; 64 * 1024];
        while *budget > 0 {
            let want = chunk.len().min(*budget);
            let n = match f.read(&mut chunk[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            *pos = pos.saturating_add(n as u64);
            *budget = budget.saturating_sub(n);
            splitter.feed(&chunk[..n], &mut |item| {
                handle_line(item, parser, stats, pending)
            });
        }
        Ok(())
    }

    /// At EOF: if the path now names another file, finishes the old one and
    /// switches to the new one. Returns whether a switch happened.
    fn check_rotation(&mut self) -> io::Result<bool> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // Rotated away and not recreated yet: keep the old file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let new_ident = identity(&meta);
        if new_ident.is_none() || new_ident == self.ident {
            return Ok(false);
        }
        let Self {
            splitter,
            parser,
            stats,
            pending,
            ..
        } = self;
        splitter.finish(&mut |item| handle_line(item, parser, stats, pending));
        self.file = None;
        self.rotations = self.rotations.saturating_add(1);
        self.try_open()
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the JSON parsers.
// ---------------------------------------------------------------------------

/// Normalises a container id from any source to the [`SHORT_ID_LEN`]-hex
/// short id: strips a `<scheme>://` prefix (`containerd://`, `docker://`,
/// `cri-o://`), lowercases, and requires 12..=64 hex digits.
pub fn normalize_container_id(raw: &str) -> Option<ContainerId> {
    let s = raw.trim();
    // (Hand-rolled `find("://")`: `str::find` builds a substring searcher
    // per call, which costs more than the whole scan of an id.)
    let b = s.as_bytes();
    let s = match (0..b.len().saturating_sub(2))
        .find(|&i| b[i] == b':' && b[i + 1] == b'/' && b[i + 2] == b'/')
    {
        Some(i) => &s[i + 3..],
        None => s,
    };
    // (The hex check without short-circuit, so it vectorises; only on
    // strings of an id's length.)
    if !(SHORT_ID_LEN..=64).contains(&s.len())
        || !s.bytes().fold(true, |ok, b| ok & b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(ContainerId(s[..SHORT_ID_LEN].to_ascii_lowercase()))
}

/// Strips a CRI container-log prefix (`<RFC3339 time> <stdout|stderr> <F|P> `)
/// if present. A partial (`P`) line is a fragment of a longer record and is
/// refused with [`ParseError::CriPartial`]. Lines without the prefix are
/// returned unchanged.
pub fn strip_cri_prefix(line: &str) -> Result<&str, ParseError> {
    let t = line.trim_start();
    if t.starts_with('{') || t.is_empty() {
        return Ok(line);
    }
    let mut parts = t.splitn(4, ' ');
    let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(line);
    };
    if parse_rfc3339_ms(ts).is_none() || !(stream == "stdout" || stream == "stderr") {
        return Ok(line);
    }
    let rest = parts.next().unwrap_or("");
    match tag.split(':').next() {
        Some("F") => Ok(rest),
        Some("P") => Err(ParseError::CriPartial),
        _ => Ok(line),
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit()
            .then(|| acc * 10 + u32::from(c - b'0'))
            .filter(|_| acc < 100_000)
    })
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's algorithm (proleptic Gregorian), days since 1970-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 timestamp (`2025-02-26T22:39:47.261363951Z`, any
/// fraction length, `Z` or `±HH:MM`) to milliseconds since the Unix epoch
/// (fraction truncated). `None` if malformed or before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let min = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ms = 0u64;
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for i in 0..3 {
            frac_ms = frac_ms * 10
                + r.get(i)
                    .filter(|_| i < n)
                    .map_or(0, |c| u64::from(c - b'0'));
        }
        rest = &r[n..];
    }
    let offset_s: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2])?);
            let m = i64::from(digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec) - offset_s;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1000)?.checked_add(frac_ms)
}

/// Files whose *reads* are security-relevant (credential access).
const READ_SENSITIVE_EXACT: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/master.passwd",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/kubelet/kubeconfig",
];
const READ_SENSITIVE_PREFIX: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount/",
    "/run/secrets/kubernetes.io/serviceaccount/",
    "/var/run/secrets/eks.amazonaws.com/",
    "/etc/sudoers.d/",
    "/etc/kubernetes/pki/",
    "/etc/ssh/ssh_host_",
    "/root/.ssh/",
];
const READ_SENSITIVE_CONTAINS: &[&str] = &[
    "/.ssh/id_",
    "/.aws/credentials",
    "/.kube/config",
    "/.docker/config.json",
];
/// Files whose *writes* are security-relevant but reads are not
/// (container-escape and persistence targets).
const WRITE_ONLY_SUFFIX: &[&str] = &[
    "/release_agent",
    "/notify_on_release",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe",
    "/proc/sysrq-trigger",
    "/sys/kernel/uevent_helper",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.preload",
    "/etc/crontab",
    "/.ssh/authorized_keys",
];
const WRITE_ONLY_PREFIX: &[&str] = &["/etc/cron.d/", "/var/spool/cron/"];

fn is_read_sensitive(path: &str) -> bool {
    READ_SENSITIVE_EXACT.contains(&path)
        || READ_SENSITIVE_PREFIX.iter().any(|p| path.starts_with(p))
        || READ_SENSITIVE_CONTAINS.iter().any(|p| path.contains(p))
        || (path.starts_with("/proc/") && path.ends_with("/environ"))
}

fn is_write_target(path: &str) -> bool {
    WRITE_ONLY_SUFFIX.iter().any(|p| path.ends_with(p))
        || WRITE_ONLY_PREFIX.iter().any(|p| path.starts_with(p))
}

/// Classifies an access to `path` as a sensitive read or write, or `None`
/// if the access is not security-relevant.
///
/// `write` is whether the access writes (`None` when unknown). Reads count
/// for credential files (`/etc/shadow`, service-account tokens, SSH keys,
/// `/proc/*/environ`, ...); writes count for those and for escape or
/// persistence targets (`release_agent`, `core_pattern`, `/etc/passwd`,
/// `authorized_keys`, ...). An unknown direction is a write for the
/// write-only targets and a read otherwise.
pub fn classify_file_access(path: &str, write: Option<bool>) -> Option<KernelEventKind> {
    let read_s = is_read_sensitive(path);
    let write_s = is_write_target(path);
    match write {
        Some(true) if read_s || write_s => Some(KernelEventKind::SensitiveFileWrite),
        Some(false) if read_s => Some(KernelEventKind::SensitiveFileRead),
        None if write_s => Some(KernelEventKind::SensitiveFileWrite),
        None if read_s => Some(KernelEventKind::SensitiveFileRead),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Typed, borrowed JSON reading shared by the parsers.
//
// A parser declares, with `json_fields!`, a struct per JSON object it looks
// into, with one slot per key it reads; every other key is validated and
// skipped. Strings borrow from the line unless they contain escapes. The
// slots keep what the former `serde_json::Value` lookups could observe:
// absent vs `null` vs a value, the last of duplicate keys, whether a number
// is a `u64`, and the type of a value that is not looked into. Every value
// goes through `deserialize_any`, so the JSON accepted and the errors given
// are those of `serde_json::from_str::<Value>` (nesting limit, numbers out of
// range, bad escapes).
// ---------------------------------------------------------------------------

/// One JSON value as the parsers see it; arrays and objects in a
/// [`Lit`] slot are validated and skipped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lit<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer that fits a `u64` (`Value::as_u64`).
    U64(u64),
    /// Any other number: negative, fractional or beyond `u64`.
    OtherNumber,
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Lit<'_> {
    /// The string, if this is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Lit::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer from a JSON number or a decimal string
    /// (protojson encodes 64-bit integers as strings; Falco sometimes does
    /// too).
    pub(crate) fn lenient_u64(&self) -> Option<u64> {
        match self {
            Lit::U64(n) => Some(*n),
            Lit::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean from `true`/`false` or the strings `"true"`/`"false"`.
    pub(crate) fn lenient_bool(&self) -> Option<bool> {
        match self {
            Lit::Bool(b) => Some(*b),
            Lit::Str(s) => match s.trim() {
                "true" | "TRUE" | "True" | "1" => Some(true),
                "false" | "FALSE" | "False" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A TCP/UDP port (0..=65535) from a number or a decimal string.
    pub(crate) fn port(&self) -> Option<u16> {
        self.lenient_u64().and_then(|p| u16::try_from(p).ok())
    }
}

/// Whether a slot holds JSON `null`.
pub(crate) trait JsonNull {
    fn is_null(&self) -> bool;
}

impl JsonNull for Lit<'_> {
    fn is_null(&self) -> bool {
        matches!(self, Lit::Null)
    }
}

impl<T> JsonNull for Nested<T> {
    fn is_null(&self) -> bool {
        matches!(self, Nested::Null)
    }
}

impl<T> JsonNull for Array<T> {
    fn is_null(&self) -> bool {
        matches!(self, Array::Null)
    }
}

/// A slot's value unless it is absent or `null`.
pub(crate) fn get<T: JsonNull>(slot: &Option<T>) -> Option<&T> {
    slot.as_ref().filter(|v| !v.is_null())
}

/// A `snake_case` slot's value, else its `camelCase` twin's (`null` counts
/// as absent, and a present snake_case key hides the camelCase one, even
/// when it is `null`).
pub(crate) fn pick<'s, T: JsonNull>(snake: &'s Option<T>, camel: &'s Option<T>) -> Option<&'s T> {
    match snake {
        Some(v) => (!v.is_null()).then_some(v),
        None => get(camel),
    }
}

/// A string slot (`null` or another type = `None`).
pub(crate) fn str_of<'s>(slot: &'s Option<Lit<'_>>) -> Option<&'s str> {
    slot.as_ref().and_then(Lit::as_str)
}

impl<'de> Deserialize<'de> for Lit<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lit<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Lit<'de>, E> {
                Ok(Lit::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Lit<'de>, E> {
                Ok(Lit::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Lit<'de>, E> {
                Ok(Lit::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Lit<'de>, E> {
                Ok(u64::try_from(n).map_or(Lit::OtherNumber, Lit::U64))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lit<'de>, E> {
                Ok(Lit::OtherNumber)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lit<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Lit::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lit<'de>, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Lit::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, validated exactly as `serde_json::Value` would be
/// (through `deserialize_any`, so nesting depth and number range are
/// checked) and dropped.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The slots of one JSON object (declared with `json_fields!`).
pub(crate) trait Fields<'de>: Default {
    /// Reads the value of `key` into its slot (the last duplicate wins), or
    /// validates and skips it.
    fn read_field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// A slot whose value is looked into if it is an object.
#[derive(Debug)]
pub(crate) enum Nested<T> {
    Null,
    Object(T),
    /// Neither `null` nor an object.
    Other,
}

impl<T> Nested<T> {
    /// The object's slots, if this is an object.
    pub(crate) fn object(&self) -> Option<&T> {
        match self {
            Nested::Object(t) => Some(t),
            _ => None,
        }
    }
}

/// A value type of a `json_fields!` slot: read into the slot in place (the
/// slot structs are large; this avoids copying them through return values).
pub(crate) trait Slot<'de>: Sized {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error>;
}

impl<'de> Slot<'de> for Lit<'de> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        *slot = Some(Lit::deserialize(d)?);
        Ok(())
    }
}

impl<'de> Slot<'de> for Skip {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        *slot = Some(Skip::deserialize(d)?);
        Ok(())
    }
}

/// Reads one value into a slot (a [`serde::de::DeserializeSeed`]).
pub(crate) struct SlotSeed<'s, T>(pub(crate) &'s mut Option<T>);

impl<'de, T: Slot<'de>> serde::de::DeserializeSeed<'de> for SlotSeed<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        T::read(self.0, d)
    }
}

/// The scalar `visit_*` methods of a container slot's visitor: a boolean,
/// number or string where an object or array was looked for is `$other`.
macro_rules! scalar_is_other {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
    };
}

struct NestedVisitor<'s, T>(&'s mut Option<Nested<T>>);

impl<'de, T: Fields<'de>> Visitor<'de> for NestedVisitor<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        *self.0 = Some(Nested::Null);
        Ok(())
    }
    scalar_is_other!(Nested::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        *self.0 = Some(Nested::Other);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A duplicate key's later object replaces the earlier one whole.
        *self.0 = Some(Nested::Object(T::default()));
        let Some(Nested::Object(t)) = self.0 else {
            return Ok(());
        };
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            t.read_field(&k, &mut map)?;
        }
        Ok(())
    }
}

impl<'de, T: Fields<'de>> Slot<'de> for Nested<T> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NestedVisitor(slot))
    }
}

/// A slot whose value is looked into if it is an array (of `T`).
#[derive(Debug)]
pub(crate) enum Array<T> {
    Null,
    /// The elements, each read in place (so each is `Some`); the first is
    /// kept inline, so a one-element array allocates nothing.
    Items {
        first: Option<T>,
        rest: Vec<Option<T>>,
    },
    /// Neither `null` nor an array.
    Other,
}

impl<T> Array<T> {
    /// The elements (none unless this is an array).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let (first, rest) = match self {
            Array::Items { first, rest } => (first.as_ref(), &rest[..]),
            _ => (None, &[][..]),
        };
        first.into_iter().chain(rest.iter().flatten())
    }
}

impl<'de, T: Slot<'de>> Slot<'de> for Array<T> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        struct V<'s, T>(&'s mut Option<Array<T>>);
        impl<'de, T: Slot<'de>> Visitor<'de> for V<'_, T> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                *self.0 = Some(Array::Null);
                Ok(())
            }
            scalar_is_other!(Array::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                *self.0 = Some(Array::Items {
                    first: None,
                    rest: Vec::new(),
                });
                let Some(Array::Items { first, rest }) = self.0 else {
                    return Ok(());
                };
                if seq.next_element_seed(SlotSeed(first))?.is_none() {
                    return Ok(());
                }
                // Each further element is read in place at the end.
                loop {
                    rest.push(None);
                    let last = rest.len() - 1;
                    if seq.next_element_seed(SlotSeed(&mut rest[last]))?.is_none() {
                        rest.pop();
                        return Ok(());
                    }
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                *self.0 = Some(Array::Other);
                Ok(())
            }
        }
        d.deserialize_any(V(slot))
    }
}

/// Declares the slots of one JSON object: `field: Type = "key"`, each an
/// `Option<Type>` (`None` = key absent); other keys are skipped.
macro_rules! json_fields {
    (
        $(#[$meta:meta])*
        struct $name:ident<$lt:lifetime> {
            $( $field:ident : $ty:ty = $key:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        struct $name<$lt> {
            $( $field: Option<$ty>, )*
        }

        impl<$lt> $crate::telemetry::events::Fields<$lt> for $name<$lt> {
            fn read_field<A: serde::de::MapAccess<$lt>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match key {
                    $( $key => map.next_value_seed($crate::telemetry::events::SlotSeed(&mut self.$field))?, )*
                    _ => {
                        map.next_value::<$crate::telemetry::events::Skip>()?;
                    }
                }
                Ok(())
            }
        }
    };
}
pub(crate) use json_fields;

/// Parses a JSON line into the slots of its top-level object (the shared
/// first step of the parsers): strips a CRI prefix, a trailing comma
/// (Falco stats files), whitespace.
pub(crate) fn parse_top<'a, 's, T: Fields<'a>>(
    line: &'a str,
    slot: &'s mut Option<Nested<T>>,
) -> Result<&'s T, ParseError> {
    let line = strip_cri_prefix(line)?.trim();
    let line = line.strip_suffix(',').unwrap_or(line).trim_end();
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    // `serde_json::from_str`, reading into `slot` in place.
    let mut de = serde_json::Deserializer::from_str(line);
    let res =
        serde::de::DeserializeSeed::deserialize(SlotSeed(slot), &mut de).and_then(|()| de.end());
    match (res, slot) {
        (Err(e), _) => Err(ParseError::InvalidJson(e.to_string())),
        (Ok(()), Some(Nested::Object(t))) => Ok(t),
        (Ok(()), _) => Err(ParseError::NotAnObject),
    }
}

/// An IP address, accepting the bracketed IPv6 form (`[::1]`).
pub(crate) fn ip(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

#[cfg(test)]
#[path = "reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339_ms("2023-10-06T22:03:57.700326678Z"),
            Some(1_696_629_837_700)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00.5+01:00"), Some(500));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(parse_rfc3339_ms("2023-10-06T22:03:57."), None);
        assert_eq!(parse_rfc3339_ms("2023-10-06T22:03:57Zjunk"), None);
        assert_eq!(parse_rfc3339_ms("２０２３-10-06T22:03:57Z"), None);
    }

    #[test]
    fn container_ids() {
        let full = "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3";
        assert_eq!(
            normalize_container_id(&format!("containerd://{full}")),
            Some(ContainerId("551e161c47d8".into()))
        );
        assert_eq!(
            normalize_container_id("28C0C7A20575"),
            Some(ContainerId("28c0c7a20575".into()))
        );
        assert_eq!(normalize_container_id("containerd://abc"), None);
        assert_eq!(normalize_container_id("host"), None);
        assert_eq!(normalize_container_id(&"a".repeat(65)), None);
    }

    #[test]
    fn cri_prefix() {
        assert_eq!(
            strip_cri_prefix("2026-03-15T00:06:32.475152409Z stdout F {\"a\":1}"),
            Ok("{\"a\":1}")
        );
        assert_eq!(
            strip_cri_prefix("2026-03-15T00:06:32.475152409Z stderr P {\"a\""),
            Err(ParseError::CriPartial)
        );
        assert_eq!(
            strip_cri_prefix("garbage line here"),
            Ok("garbage line here")
        );
        assert_eq!(strip_cri_prefix("{\"x\":2}"), Ok("{\"x\":2}"));
    }

    #[test]
    fn sensitive_files() {
        use KernelEventKind::*;
        assert_eq!(
            classify_file_access("/etc/shadow", Some(false)),
            Some(SensitiveFileRead)
        );
        assert_eq!(
            classify_file_access("/etc/shadow", Some(true)),
            Some(SensitiveFileWrite)
        );
        assert_eq!(classify_file_access("/etc/passwd", Some(false)), None);
        assert_eq!(
            classify_file_access("/etc/passwd", Some(true)),
            Some(SensitiveFileWrite)
        );
        assert_eq!(
            classify_file_access("/sys/fs/cgroup/rdma/release_agent", None),
            Some(SensitiveFileWrite)
        );
        assert_eq!(
            classify_file_access("/var/run/secrets/kubernetes.io/serviceaccount/token", None),
            Some(SensitiveFileRead)
        );
        assert_eq!(
            classify_file_access("/proc/1/environ", None),
            Some(SensitiveFileRead)
        );
        assert_eq!(classify_file_access("/tmp/x", Some(true)), None);
    }

    #[test]
    fn splitter_bounds_lines() {
        let mut s = LineSplitter::new(4);
        let mut got = Vec::new();
        let mut out = |i: LineItem<'_>| {
            got.push(match i {
                LineItem::Line(l) => String::from_utf8_lossy(l).into_owned(),
                LineItem::TooLong => "<long>".into(),
            })
        };
        s.feed(b"ab", &mut out);
        s.feed(b"cd\nabcdefgh", &mut out);
        s.feed(b"ijk\nxy\n12345\nz", &mut out);
        s.finish(&mut out);
        assert_eq!(got, vec!["abcd", "<long>", "xy", "<long>", "z"]);
        assert!(s.buf.capacity() <= 16);
    }
}
