//! Telemetry recordings: what the detection loop saw, window by window, so
//! that a live run can be replayed offline, bit for bit
//! (`fedmesh-node replay`).
//!
//! A recording is JSON lines: a header
//! `{"fedmesh_recording":1,"window_ms":10000,"started_unix_ms":…}`, then one
//! line per window, `{"end_ms":…,"events":[…]}` with the events exactly as
//! the sources delivered them (after id normalisation), in order. Windows
//! end in non-decreasing time. [`RecordingReader`] refuses anything else
//! with the line number: an unknown version, a line longer than
//! [`MAX_LINE`], a line that does not decode, or a window that ends before
//! the one before it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::telemetry::Event;

/// The format version written and read.
pub const VERSION: u32 = 1;

/// Longest line read (bytes, newline excluded): 8 MiB, e.g. some 40,000
/// events in one window.
pub const MAX_LINE: usize = 8 << 20;

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Format version ([`VERSION`]).
    pub fedmesh_recording: u32,
    /// The node's window length when it recorded.
    pub window_ms: u64,
    /// When recording started (Unix ms).
    pub started_unix_ms: u64,
}

/// One window as the detection loop saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRecord {
    /// Window end (ms, the source clock).
    pub end_ms: u64,
    /// The window's events, in arrival order.
    pub events: Vec<Event>,
}

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be opened, read or written.
    #[error("recording {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The first line is not a header of a known version.
    #[error("line 1: not a fedmesh recording header (version {VERSION}): {reason}")]
    Header {
        /// What was wrong.
        reason: String,
    },
    /// A line is longer than [`MAX_LINE`].
    #[error("line {line}: longer than {MAX_LINE} bytes")]
    TooLong {
        /// 1-based line number.
        line: u64,
    },
    /// A line does not decode as a window.
    #[error("line {line}: not a window record: {reason}")]
    Decode {
        /// 1-based line number.
        line: u64,
        /// The decoder's message.
        reason: String,
    },
    /// A window ends before the previous one.
    #[error("line {line}: window ends at {end_ms} ms, before the previous one ({previous_ms} ms)")]
    OutOfOrder {
        /// 1-based line number.
        line: u64,
        /// This window's end.
        end_ms: u64,
        /// The previous window's end.
        previous_ms: u64,
    },
}

/// Appends windows to a recording file, up to a size limit.
pub struct Recorder {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
    max_bytes: u64,
    full: bool,
}

impl Recorder {
    /// Creates (truncates) `path` and writes the header.
    pub fn create(
        path: &Path,
        window_ms: u64,
        started_unix_ms: u64,
        max_bytes: u64,
    ) -> Result<Self, RecordingError> {
        let io = |source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut r = Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
            written: 0,
            max_bytes,
            full: false,
        };
        let header = Header {
            fedmesh_recording: VERSION,
            window_ms,
            started_unix_ms,
        };
        r.line(&header)?;
        Ok(r)
    }

    /// Whether the size limit stopped the recording.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn line<T: Serialize>(&mut self, value: &T) -> Result<(), RecordingError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| RecordingError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        self.out
            .write_all(&bytes)
            .and_then(|()| self.out.flush())
            .map_err(|source| RecordingError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends one window. Returns `false` (and writes nothing) once the
    /// file has reached its size limit.
    pub fn write(&mut self, end_ms: u64, events: &[Event]) -> Result<bool, RecordingError> {
        if self.full {
            return Ok(false);
        }
        if self.written >= self.max_bytes {
            self.full = true;
            return Ok(false);
        }
        #[derive(Serialize)]
        struct Borrowed<'a> {
            end_ms: u64,
            events: &'a [Event],
        }
        self.line(&Borrowed { end_ms, events })?;
        Ok(true)
    }
}

/// Reads a recording: the header first ([`RecordingReader::open`]), then
/// the windows as an iterator.
pub struct RecordingReader<R> {
    input: R,
    header: Header,
    line: u64,
    previous_ms: u64,
    buf: Vec<u8>,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without the
/// newline). `Ok(None)` at the end; `Ok(Some(false))` for a longer line,
/// whose rest is skipped.
fn read_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = std::io::Read::take(&mut *input, MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if buf.len() <= MAX_LINE {
        // The last line, without a newline.
        return Ok(Some(true));
    }
    // Skip the rest of an overlong line, in bounded steps.
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            break;
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                break;
            }
            None => {
                let len = available.len();
                input.consume(len);
            }
        }
    }
    buf.clear();
    Ok(Some(false))
}

impl<R: BufRead> RecordingReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R, path: &Path) -> Result<Self, RecordingError> {
        let mut buf = Vec::new();
        let header = match read_line(&mut input, &mut buf).map_err(|source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        })? {
            None => {
                return Err(RecordingError::Header {
                    reason: "the file is empty".into(),
                });
            }
            Some(false) => {
                return Err(RecordingError::Header {
                    reason: format!("longer than {MAX_LINE} bytes"),
                });
            }
            Some(true) => {
                serde_json::from_slice::<Header>(&buf).map_err(|e| RecordingError::Header {
                    reason: e.to_string(),
                })?
            }
        };
        if header.fedmesh_recording != VERSION {
            return Err(RecordingError::Header {
                reason: format!("version {}", header.fedmesh_recording),
            });
        }
        Ok(Self {
            input,
            header,
            line: 1,
            previous_ms: 0,
            buf,
        })
    }

    /// The recording's header.
    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl RecordingReader<std::io::BufReader<std::fs::File>> {
    /// Opens the recording at `path`.
    pub fn open(path: &Path) -> Result<Self, RecordingError> {
        let f = std::fs::File::open(path).map_err(|source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(std::io::BufReader::new(f), path)
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    type Item = Result<WindowRecord, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let read = read_line(&mut self.input, &mut self.buf);
            self.line += 1;
            let line = self.line;
            return match read {
                Err(source) => Some(Err(RecordingError::Io {
                    path: PathBuf::new(),
                    source,
                })),
                Ok(None) => None,
                Ok(Some(false)) => Some(Err(RecordingError::TooLong { line })),
                Ok(Some(true)) if self.buf.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(true)) => Some(
                    serde_json::from_slice::<WindowRecord>(&self.buf)
                        .map_err(|e| RecordingError::Decode {
                            line,
                            reason: e.to_string(),
                        })
                        .and_then(|w| {
                            if w.end_ms < self.previous_ms {
                                return Err(RecordingError::OutOfOrder {
                                    line,
                                    end_ms: w.end_ms,
                                    previous_ms: self.previous_ms,
                                });
                            }
                            self.previous_ms = w.end_ms;
                            Ok(w)
                        }),
                ),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{ContainerId, KernelDetail, KernelEventKind, ResourceCounters};
    use proptest::prelude::*;

    fn events(n: u64) -> Vec<Event> {
        vec![
            Event::Sample {
                container: ContainerId("28c0c7a20575".into()),
                ts_ms: n,
                counters: ResourceCounters {
                    cpu_usage_usec: n * 1_000,
                    pids: 3,
                    ..ResourceCounters::default()
                },
            },
            Event::Kernel {
                container: ContainerId("28c0c7a20575".into()),
                ts_ms: n + 1,
                kind: KernelEventKind::Setuid,
                detail: KernelDetail {
                    uid: Some(33),
                    target_uid: Some(0),
                    ..KernelDetail::default()
                }
                .boxed(),
            },
            Event::Connect {
                container: ContainerId("abc".into()),
                ts_ms: n + 2,
                dst_ip: "10.0.0.1".parse().unwrap(),
                dst_port: 3333,
            },
            Event::Net {
                container: ContainerId("abc".into()),
                ts_ms: n + 3,
                net: Box::new(crate::telemetry::NetActivity {
                    interval_ms: 10_000,
                    active_opens: n,
                    attempt_fails: n / 2,
                    listening: 1,
                    new_remotes: vec!["[2001:db8::1]:443".parse().unwrap()],
                    new_remotes_total: 1,
                    ..Default::default()
                }),
            },
        ]
    }

    #[test]
    fn a_recording_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let mut r = Recorder::create(&path, 10_000, 5, u64::MAX).unwrap();
        for w in 1..=3u64 {
            assert!(r.write(w * 10_000, &events(w * 10_000 - 5)).unwrap());
        }
        assert!(r.write(30_000, &[]).unwrap(), "equal end times are allowed");
        drop(r);
        let reader = RecordingReader::open(&path).unwrap();
        assert_eq!(reader.header().window_ms, 10_000);
        let got: Vec<WindowRecord> = reader.map(Result::unwrap).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].end_ms, 20_000);
        assert_eq!(got[1].events, events(19_995));
        assert!(got[3].events.is_empty());
    }

    #[test]
    fn the_size_limit_stops_recording_without_breaking_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let mut r = Recorder::create(&path, 10_000, 5, 600).unwrap();
        let mut kept = 0;
        for w in 1..=20u64 {
            if r.write(w * 10_000, &events(w)).unwrap() {
                kept += 1;
            }
        }
        assert!(r.is_full());
        assert!((1..20).contains(&kept), "{kept}");
        let n = RecordingReader::open(&path)
            .unwrap()
            .map(Result::unwrap)
            .count();
        assert_eq!(n, kept);
    }

    #[test]
    fn bad_recordings_are_refused_with_the_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let header = "{\"fedmesh_recording\":1,\"window_ms\":10000,\"started_unix_ms\":0}\n";
        let cases: [(&str, &str); 5] = [
            ("", "empty"),
            (
                "{\"fedmesh_recording\":2,\"window_ms\":1,\"started_unix_ms\":0}\n",
                "version 2",
            ),
            ("not json\n", "header"),
            (
                &format!(
                    "{header}{{\"end_ms\":5,\"events\":[]}}\n{{\"end_ms\":4,\"events\":[]}}\n"
                ),
                "line 3: window ends at 4",
            ),
            (
                &format!("{header}\n{{\"end_ms\":5,\"events\":[{{\"Nope\":{{}}}}]}}\n"),
                "line 3: not a window record",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let msg = match RecordingReader::open(&p) {
                Err(e) => e.to_string(),
                Ok(r) => r
                    .filter_map(Result::err)
                    .map(|e| e.to_string())
                    .next()
                    .unwrap_or_default(),
            };
            assert!(msg.contains(want), "{want:?} not in {msg:?}");
        }
    }

    #[test]
    fn an_overlong_line_is_refused_and_skipped() {
        let header = "{\"fedmesh_recording\":1,\"window_ms\":10000,\"started_unix_ms\":0}\n";
        let mut text = header.as_bytes().to_vec();
        text.extend(std::iter::repeat_n(b' ', MAX_LINE + 10));
        text.extend(b"\n{\"end_ms\":5,\"events\":[]}\n");
        let r = RecordingReader::new(std::io::Cursor::new(text), Path::new("mem")).unwrap();
        let got: Vec<_> = r.collect();
        assert!(matches!(got[0], Err(RecordingError::TooLong { line: 2 })));
        assert_eq!(got[1].as_ref().unwrap().end_ms, 5);
        assert_eq!(got.len(), 2);
    }

    proptest! {
        #[test]
        fn any_bytes_after_a_header_give_windows_or_errors_never_a_panic(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut text = b"{\"fedmesh_recording\":1,\"window_ms\":10000,\"started_unix_ms\":0}\n".to_vec();
            text.extend(body);
            let r = RecordingReader::new(std::io::Cursor::new(text), Path::new("mem")).unwrap();
            let mut previous = 0;
            for w in r.take(4096).flatten() {
                prop_assert!(w.end_ms >= previous);
                previous = w.end_ms;
            }
        }

        #[test]
        fn written_windows_read_back_equal(
            ends in proptest::collection::vec(0u64..1_000_000, 0..20),
        ) {
            let mut ends = ends;
            ends.sort_unstable();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rec.jsonl");
            let mut r = Recorder::create(&path, 1_000, 0, u64::MAX).unwrap();
            for e in &ends {
                r.write(*e, &events(*e)).unwrap();
            }
            drop(r);
            let got: Vec<u64> = RecordingReader::open(&path).unwrap().map(|w| w.unwrap().end_ms).collect();
            prop_assert_eq!(got, ends);
        }
    }
}
