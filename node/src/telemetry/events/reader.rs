//! Reading JSON lines from any [`BufRead`] (a file, stdin, a socket):
//! a bounded line splitter (longer lines are dropped while they stream past
//! and counted as `line_too_long`) and [`JsonLineReader`].

use std::collections::VecDeque;
use std::io::{self, BufRead};

use super::{DEFAULT_MAX_LINE_BYTES, Event, ParseError, ParseStats};

/// One item produced by the [`LineSplitter`].
pub(super) enum LineItem<'a> {
    Line(&'a [u8]),
    TooLong,
}

/// Splits a byte stream into lines with a bounded buffer.
#[derive(Debug)]
pub(super) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    pub(super) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(1),
            discarding: false,
        }
    }

    pub(super) fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(LineItem<'_>)) {
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
    pub(super) fn finish(&mut self, out: &mut impl FnMut(LineItem<'_>)) {
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
pub(super) fn handle_line<P>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
