//! Following a file as it grows (`tail -F`): poll-based with a bounded
//! sleep, reopening the file when it is rotated (the path names a new
//! file) or truncated (its size shrinks).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::reader::{LineSplitter, handle_line};
use super::{DEFAULT_MAX_LINE_BYTES, Event, ParseError, ParseStats};

/// Upper bound of the [`FollowFile`] poll interval (sleeps never exceed it).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Lower bound of the [`FollowFile`] poll interval.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Default [`FollowFile`] poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Bytes read from a followed file per [`FollowFile::poll`] call at most, so
/// one poll never stalls its caller on a huge backlog.
const MAX_READ_PER_POLL: usize = 8 * 1024 * 1024;

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
