//! A small checked reader and writer for NumPy `.npy` files: C-order
//! little-endian `float32` matrices (updates, `N × P`) and `float32` /
//! `float64` vectors (weights).
//!
//! The reader accepts format versions 1.0, 2.0 and 3.0, parses the header
//! dictionary strictly (exactly the keys `descr`, `fortran_order`, `shape`)
//! and refuses, with a message saying what it found: another dtype, Fortran
//! order, another rank, a data section longer or shorter than the shape
//! says, and non-finite values. It never panics on any input (fuzzed).

use std::path::Path;

/// Why a `.npy` file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NpyError {
    /// Not a `.npy` file.
    #[error("not a .npy file (bad magic string)")]
    Magic,
    /// Unknown format version.
    #[error("unsupported .npy format version {0}.{1}")]
    Version(u8, u8),
    /// The file ends early.
    #[error("file truncated: {0}")]
    Truncated(&'static str),
    /// The header dictionary could not be parsed.
    #[error("malformed header: {0}")]
    Header(String),
    /// The dtype is not the one required.
    #[error("dtype {found:?} not supported: expected {expected}")]
    Dtype {
        /// `descr` of the file.
        found: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Fortran-ordered arrays are refused.
    #[error("fortran_order is True: save the array in C order (np.ascontiguousarray)")]
    FortranOrder,
    /// Wrong number of dimensions.
    #[error("array has shape {found:?}: expected {expected}")]
    Shape {
        /// Shape of the file.
        found: Vec<usize>,
        /// What is accepted.
        expected: &'static str,
    },
    /// The data section does not match the shape.
    #[error("data section has {actual} bytes, shape {shape:?} needs {expected}")]
    DataLength {
        /// Shape.
        shape: Vec<usize>,
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A value is NaN or infinite.
    #[error("value at flat index {index} is not finite ({value})")]
    NonFinite {
        /// Flat index (row-major).
        index: usize,
        /// The value.
        value: f64,
    },
    /// The data does not fit in memory.
    #[error("cannot allocate {bytes} bytes for the data section")]
    TooLarge {
        /// Bytes the shape needs.
        bytes: usize,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: String,
        /// OS error text.
        message: String,
    },
}

/// A row-major `rows × cols` f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows (N updates).
    pub rows: usize,
    /// Columns (P parameters).
    pub cols: usize,
    /// `rows · cols` values, row-major.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let start = i.saturating_mul(self.cols).min(self.data.len());
        let end = start.saturating_add(self.cols).min(self.data.len());
        &self.data[start..end]
    }

    /// All rows as slices.
    pub fn row_slices(&self) -> Vec<&[f32]> {
        if self.cols == 0 {
            return vec![&[]; self.rows];
        }
        self.data.chunks_exact(self.cols).collect()
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// Magic (6), version (2) and the longest header length field (4).
const PREAMBLE_MAX: usize = 12;
/// Data is read and converted in pieces of this many bytes (a multiple of 4).
const READ_CHUNK: usize = 1 << 20;

/// The parsed header.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> Result<(), NpyError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(NpyError::Header(format!(
                "expected '{}' at byte {}",
                c as char, self.i
            )))
        }
    }
    fn string(&mut self) -> Result<String, NpyError> {
        let q = self
            .peek()
            .filter(|c| *c == b'\'' || *c == b'"')
            .ok_or_else(|| NpyError::Header(format!("expected a string at byte {}", self.i)))?;
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            if self.s[self.i] == b'\\' {
                return Err(NpyError::Header(
                    "escapes in strings are not supported".into(),
                ));
            }
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err(NpyError::Header("unterminated string".into()));
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }
    fn word(&mut self) -> &'a [u8] {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_alphanumeric() {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    fn value(&mut self) -> Result<Value, NpyError> {
        match self.peek() {
            Some(b'\'') | Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.i += 1;
                        break;
                    }
                    let w = self.word();
                    let w = w.strip_suffix(b"L").unwrap_or(w);
                    let text = std::str::from_utf8(w).unwrap_or("");
                    let d: usize = text.parse().map_err(|_| {
                        NpyError::Header(format!("bad dimension {text:?} in shape"))
                    })?;
                    dims.push(d);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b')') => {}
                        _ => return Err(NpyError::Header("bad shape tuple".into())),
                    }
                }
                Ok(Value::Tuple(dims))
            }
            _ => match self.word() {
                b"True" => Ok(Value::Bool(true)),
                b"False" => Ok(Value::Bool(false)),
                w => Err(NpyError::Header(format!(
                    "unexpected value {:?}",
                    String::from_utf8_lossy(w)
                ))),
            },
        }
    }
}

fn parse_header(text: &[u8]) -> Result<Header, NpyError> {
    let mut lx = Lexer { s: text, i: 0 };
    lx.eat(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if lx.peek() == Some(b'}') {
            lx.i += 1;
            break;
        }
        let key = lx.string()?;
        lx.eat(b':')?;
        let v = lx.value()?;
        let dup = || NpyError::Header(format!("duplicate key {key:?}"));
        match (key.as_str(), v) {
            ("descr", Value::Str(s)) => {
                if descr.replace(s).is_some() {
                    return Err(dup());
                }
            }
            ("fortran_order", Value::Bool(b)) => {
                if fortran.replace(b).is_some() {
                    return Err(dup());
                }
            }
            ("shape", Value::Tuple(t)) => {
                if shape.replace(t).is_some() {
                    return Err(dup());
                }
            }
            (k, v) => {
                return Err(NpyError::Header(format!(
                    "unexpected key {k:?} or value {v:?}"
                )));
            }
        }
        match lx.peek() {
            Some(b',') => lx.i += 1,
            Some(b'}') => {}
            _ => return Err(NpyError::Header("expected ',' or '}'".into())),
        }
    }
    lx.ws();
    if lx.i != text.len() {
        return Err(NpyError::Header(
            "trailing bytes after the dictionary".into(),
        ));
    }
    Ok(Header {
        descr: descr.ok_or_else(|| NpyError::Header("missing 'descr'".into()))?,
        fortran_order: fortran.ok_or_else(|| NpyError::Header("missing 'fortran_order'".into()))?,
        shape: shape.ok_or_else(|| NpyError::Header("missing 'shape'".into()))?,
    })
}

/// The preamble of a `.npy` file (its first 12 bytes at most): where the
/// header text starts and how long it is.
fn preamble(bytes: &[u8]) -> Result<(usize, usize), NpyError> {
    if bytes.len() < 8 {
        return Err(NpyError::Truncated("shorter than the preamble"));
    }
    if &bytes[..6] != MAGIC {
        return Err(NpyError::Magic);
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len, start): (usize, usize) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or(NpyError::Truncated("no header length"))?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or(NpyError::Truncated("no header length"))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(NpyError::Version(major, minor)),
    };
    if minor != 0 {
        return Err(NpyError::Version(major, minor));
    }
    Ok((start, len))
}

/// Splits a `.npy` file into its header and data section.
fn split(bytes: &[u8]) -> Result<(Header, &[u8]), NpyError> {
    let (start, len) = preamble(&bytes[..bytes.len().min(PREAMBLE_MAX)])?;
    let end = start
        .checked_add(len)
        .ok_or(NpyError::Truncated("header length overflows"))?;
    let text = bytes
        .get(start..end)
        .ok_or(NpyError::Truncated("header shorter than announced"))?;
    let header = parse_header(text)?;
    Ok((header, &bytes[end..]))
}

fn check_len(shape: &[usize], width: usize, data: &[u8]) -> Result<usize, NpyError> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| NpyError::Header(format!("shape {shape:?} overflows")))?;
    let expected = count
        .checked_mul(width)
        .ok_or_else(|| NpyError::Header(format!("shape {shape:?} overflows")))?;
    if data.len() != expected {
        return Err(NpyError::DataLength {
            shape: shape.to_vec(),
            expected,
            actual: data.len(),
        });
    }
    Ok(count)
}

fn f32s(data: &[u8]) -> Result<Vec<f32>, NpyError> {
    let mut out = Vec::with_capacity(data.len() / 4);
    match push_f32s(data, &mut out) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Appends the little-endian f32s of `data` (a multiple of 4 bytes) to
/// `out`; the first non-finite one, by its flat index, if any.
fn push_f32s(data: &[u8], out: &mut Vec<f32>) -> Option<NpyError> {
    let start = out.len();
    // Two tight loops (each vectorises) over a piece still in cache: the
    // conversion, then the check.
    out.extend(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    let at = out[start..].iter().position(|v| !v.is_finite())?;
    Some(NpyError::NonFinite {
        index: start + at,
        value: f64::from(out[start + at]),
    })
}

fn f64s(data: &[u8]) -> Result<Vec<f64>, NpyError> {
    data.chunks_exact(8)
        .enumerate()
        .map(|(index, c)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            let v = f64::from_le_bytes(b);
            if v.is_finite() {
                Ok(v)
            } else {
                Err(NpyError::NonFinite { index, value: v })
            }
        })
        .collect()
}

fn not_fortran(h: &Header) -> Result<(), NpyError> {
    if h.fortran_order {
        Err(NpyError::FortranOrder)
    } else {
        Ok(())
    }
}

/// The `(rows, cols)` of a matrix header, or why it is not an `N × P`
/// little-endian float32 C-order matrix.
fn matrix_shape(h: Header) -> Result<(usize, usize), NpyError> {
    if h.descr != "<f4" {
        return Err(NpyError::Dtype {
            found: h.descr,
            expected: "'<f4' (little-endian float32)",
        });
    }
    not_fortran(&h)?;
    match h.shape[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(NpyError::Shape {
            found: h.shape,
            expected: "two dimensions (N updates × P parameters)",
        }),
    }
}

/// Decodes an `N × P` little-endian float32 C-order matrix.
pub fn decode_matrix(bytes: &[u8]) -> Result<Matrix, NpyError> {
    let (h, data) = split(bytes)?;
    let (rows, cols) = matrix_shape(h)?;
    check_len(&[rows, cols], 4, data)?;
    Ok(Matrix {
        rows,
        cols,
        data: f32s(data)?,
    })
}

/// Reads from `r` until `buf` is full or the input ends; the bytes read.
fn fill(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads an `N × P` float32 matrix from a stream, straight into its one
/// buffer: the data section is converted in [`READ_CHUNK`] pieces, so peak
/// memory is one copy of the matrix (plus a piece), not the file and the
/// matrix. Accepts and refuses exactly what [`decode_matrix`] does, with
/// the same errors; `Err(Ok(e))` is a refusal, `Err(Err(io))` an I/O error.
/// `total` is the stream's length when known (a regular file's size): the
/// data length is then checked before the buffer is allocated, so a header
/// announcing more than the file holds allocates nothing.
fn stream_matrix(
    r: &mut impl std::io::Read,
    total: Option<u64>,
) -> Result<Matrix, Result<NpyError, std::io::Error>> {
    use std::io::Read;
    let mut head = vec![0u8; PREAMBLE_MAX];
    let got = fill(r, &mut head).map_err(Err)?;
    head.truncate(got);
    let (start, len) = preamble(&head).map_err(Ok)?;
    let end = start
        .checked_add(len)
        .ok_or(Ok(NpyError::Truncated("header length overflows")))?;
    if head.len() < end {
        let want = (end - head.len()) as u64;
        r.take(want).read_to_end(&mut head).map_err(Err)?;
    }
    let text = head
        .get(start..end)
        .ok_or(Ok(NpyError::Truncated("header shorter than announced")))?;
    let (rows, cols) = matrix_shape(parse_header(text).map_err(Ok)?).map_err(Ok)?;
    let shape = [rows, cols];
    let overflow = || Ok(NpyError::Header(format!("shape {shape:?} overflows")));
    let count = rows.checked_mul(cols).ok_or_else(overflow)?;
    let expected = count.checked_mul(4).ok_or_else(overflow)?;
    // Bytes of the data section already read with the header (a tiny
    // version 1.0 header), then the rest in pieces.
    let mut pending = head.split_off(end);
    let length_error = |actual: usize| {
        Ok(NpyError::DataLength {
            shape: shape.to_vec(),
            expected,
            actual,
        })
    };
    let mut data: Vec<f32> = Vec::new();
    match total {
        Some(t) => {
            let actual = t.saturating_sub(end as u64);
            if actual != expected as u64 {
                return Err(length_error(usize::try_from(actual).unwrap_or(usize::MAX)));
            }
            data.try_reserve_exact(count)
                .map_err(|_| Ok(NpyError::TooLarge { bytes: expected }))?;
        }
        // Unknown length: grow as the data arrives.
        None => data.reserve(count.min(READ_CHUNK / 4)),
    }
    let mut buf = vec![0u8; READ_CHUNK.min(expected.max(4))];
    let mut consumed = 0usize;
    let mut bad = None;
    while consumed < expected {
        let want = (expected - consumed).min(buf.len());
        let from_pending = pending.len().min(want);
        buf[..from_pending].copy_from_slice(&pending[..from_pending]);
        pending.drain(..from_pending);
        let got = from_pending + fill(r, &mut buf[from_pending..want]).map_err(Err)?;
        // Whole values only; a trailing partial value is a length error.
        let whole = got - got % 4;
        let e = push_f32s(&buf[..whole], &mut data);
        bad = bad.or(e);
        consumed += got;
        if got < want {
            break;
        }
    }
    // Anything after the announced data makes the section too long.
    let extra = pending.len() as u64 + std::io::copy(r, &mut std::io::sink()).map_err(Err)?;
    if consumed != expected || extra > 0 {
        return Err(length_error(
            consumed.saturating_add(usize::try_from(extra).unwrap_or(usize::MAX)),
        ));
    }
    match bad {
        Some(e) => Err(Ok(e)),
        None => Ok(Matrix { rows, cols, data }),
    }
}

/// Decodes a one-dimensional little-endian float32 or float64 vector.
pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f64>, NpyError> {
    let (h, data) = split(bytes)?;
    not_fortran(&h)?;
    if h.shape.len() != 1 {
        return Err(NpyError::Shape {
            found: h.shape,
            expected: "one dimension",
        });
    }
    match h.descr.as_str() {
        "<f4" => {
            check_len(&h.shape, 4, data)?;
            Ok(f32s(data)?.into_iter().map(f64::from).collect())
        }
        "<f8" => {
            check_len(&h.shape, 8, data)?;
            f64s(data)
        }
        _ => Err(NpyError::Dtype {
            found: h.descr,
            expected: "'<f4' or '<f8'",
        }),
    }
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}").into_bytes();
    // Magic (6) + version (2) + length (2) + dict + padding + '\n' ≡ 0 mod 64.
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    dict.extend(std::iter::repeat_n(b' ', pad));
    dict.push(b'\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The dict is short (a few dozen bytes plus < 64 padding).
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(&dict);
    out
}

/// Encodes a row-major f32 matrix as `.npy` (version 1.0, `<f4`, C order).
pub fn encode_matrix(m: &Matrix) -> Vec<u8> {
    let mut out = header_bytes("<f4", &[m.rows, m.cols]);
    out.reserve(m.data.len() * 4);
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes an f32 vector as `.npy` (version 1.0, `<f4`).
pub fn encode_vector(v: &[f32]) -> Vec<u8> {
    let mut out = header_bytes("<f4", &[v.len()]);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn io(path: &Path, e: std::io::Error) -> NpyError {
    NpyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads an `N × P` float32 matrix from a file, streamed into one buffer
/// (peak memory about one copy of the matrix).
pub fn read_matrix(path: &Path) -> Result<Matrix, NpyError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let total = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    stream_matrix(&mut f, total).map_err(|e| e.unwrap_or_else(|e| io(path, e)))
}

/// [`read_matrix`] over any reader whose length, if known, is `total`.
pub fn read_matrix_from(
    r: &mut impl std::io::Read,
    total: Option<u64>,
) -> Result<Matrix, NpyError> {
    stream_matrix(r, total).map_err(|e| {
        e.unwrap_or_else(|e| NpyError::Io {
            path: "<stream>".into(),
            message: e.to_string(),
        })
    })
}

/// Reads a float32/float64 vector from a file.
pub fn read_vector(path: &Path) -> Result<Vec<f64>, NpyError> {
    decode_vector(&std::fs::read(path).map_err(|e| io(path, e))?)
}

/// Writes bytes to a file.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), NpyError> {
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_what_numpy_writes() {
        // np.save of np.arange(6, dtype='<f4').reshape(2, 3), header as numpy 1.x/2.x writes it.
        let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let m = decode_matrix(&file(&h, &data)).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.row(1), &[3.0, 4.0, 5.0]);
        // Our writer produces the same bytes.
        assert_eq!(encode_matrix(&m), file(&h, &data));
        assert_eq!(encode_matrix(&m).len() % 64, 24);
    }

    #[test]
    fn refusals_say_why() {
        let data = [0u8; 8];
        let e = |h: &str, d: &[u8]| decode_matrix(&file(h, d)).unwrap_err().to_string();
        assert_eq!(
            e(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }",
                &data
            ),
            "dtype \"<f8\" not supported: expected '<f4' (little-endian float32)"
        );
        assert_eq!(
            e(
                "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }",
                &data
            ),
            "fortran_order is True: save the array in C order (np.ascontiguousarray)"
        );
        assert_eq!(
            e(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &data
            ),
            "array has shape [2]: expected two dimensions (N updates × P parameters)"
        );
        assert_eq!(
            e(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }",
                &data
            ),
            "data section has 8 bytes, shape [1, 3] needs 12"
        );
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            e(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
                &nan
            ),
            "value at flat index 1 is not finite (NaN)"
        );
        assert!(e("{'descr': '<f4', 'shape': (1, 2), }", &data).contains("missing"));
        assert!(e("{'descr': '<f4', 'descr': '<f4'}", &data).contains("duplicate"));
        assert_eq!(decode_matrix(b"PK\x03\x04zzzz"), Err(NpyError::Magic));
        assert_eq!(
            decode_matrix(b"\x93NUMPY\x04\x00\x00\x00"),
            Err(NpyError::Version(4, 0))
        );
        // Shapes whose byte count overflows are refused, not allocated.
        assert!(
            e(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }",
                &data
            )
            .contains("overflows")
        );
    }

    #[test]
    fn weights_in_f4_or_f8() {
        let v = decode_vector(&encode_vector(&[1.0, 2.5])).unwrap();
        assert_eq!(v, vec![1.0, 2.5]);
        let d: Vec<u8> = [3.0f64, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let v = decode_vector(&file(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &d,
        ))
        .unwrap();
        assert_eq!(v, vec![3.0, 4.0]);
        assert!(
            decode_vector(&file(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
                &d[..8]
            ))
            .is_err()
        );
    }

    /// A reader handing out at most `step` bytes per call.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// The streaming reader against the in-memory decoder: same matrix or
    /// same refusal, with the length known or not, in any read sizes.
    fn stream_agrees(bytes: &[u8], step: usize) -> Result<(), TestCaseError> {
        let want = decode_matrix(bytes);
        let total = Some(bytes.len() as u64);
        let mut r = std::io::Cursor::new(bytes);
        prop_assert_eq!(&read_matrix_from(&mut r, total), &want);
        let mut r = Trickle { bytes, step };
        prop_assert_eq!(&read_matrix_from(&mut r, None), &want);
        Ok(())
    }

    #[test]
    fn files_stream_into_one_buffer_across_read_chunks() {
        // More than one READ_CHUNK of data, a NaN in the second piece.
        let cols = READ_CHUNK / 4 + 3;
        let mut m = Matrix {
            rows: 2,
            cols,
            data: (0..2 * cols).map(|i| i as f32).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        write(&path, &encode_matrix(&m)).unwrap();
        assert_eq!(read_matrix(&path).unwrap(), m);
        m.data[cols + 1] = f32::NAN;
        write(&path, &encode_matrix(&m)).unwrap();
        assert_eq!(
            read_matrix(&path).unwrap_err().to_string(),
            format!("value at flat index {} is not finite (NaN)", cols + 1)
        );
        // A header announcing far more than the file holds allocates
        // nothing and says how much is there.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }";
        std::fs::write(&path, file(h, &[0u8; 8])).unwrap();
        assert_eq!(
            read_matrix(&path).unwrap_err(),
            NpyError::DataLength {
                shape: vec![1_000_000, 1_000_000],
                expected: 4_000_000_000_000,
                actual: 8
            }
        );
        assert!(matches!(
            read_matrix(&dir.path().join("absent.npy")),
            Err(NpyError::Io { .. })
        ));
    }

    proptest! {
        #[test]
        fn streaming_reads_agree_with_decoding(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            step in 1usize..40,
        ) {
            stream_agrees(&bytes, step)?;
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            stream_agrees(&with_magic, step)?;
        }

        #[test]
        fn streaming_agrees_on_mutated_and_cut_files(
            rows in 0usize..4,
            cols in 0usize..5,
            pos in 0usize..200,
            byte in any::<u8>(),
            cut in 0usize..200,
            step in 1usize..40,
        ) {
            let m = Matrix { rows, cols, data: (0..rows * cols).map(|i| i as f32).collect() };
            let mut bytes = encode_matrix(&m);
            stream_agrees(&bytes, step)?;
            let p = pos % bytes.len();
            bytes[p] = byte;
            stream_agrees(&bytes, step)?;
            bytes.truncate(cut.min(bytes.len()));
            stream_agrees(&bytes, step)?;
            bytes.extend_from_slice(&[0, 0, 0]);
            stream_agrees(&bytes, step)?;
        }

        #[test]
        fn round_trip(rows in 0usize..5, cols in 0usize..7, seed in any::<u32>()) {
            let data: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 * 1e-6)
                .collect();
            let m = Matrix { rows, cols, data };
            let bytes = encode_matrix(&m);
            prop_assert_eq!(decode_matrix(&bytes).unwrap(), m);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_matrix(&bytes);
            let _ = decode_vector(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_matrix(&with_magic);
        }

        #[test]
        fn header_mutations_never_panic(
            pos in 0usize..80,
            byte in any::<u8>(),
        ) {
            let m = Matrix { rows: 2, cols: 2, data: vec![1.0, 2.0, 3.0, 4.0] };
            let mut bytes = encode_matrix(&m);
            let p = pos.min(bytes.len() - 1);
            bytes[p] = byte;
            let _ = decode_matrix(&bytes);
        }
    }
}
