//! The canonical byte encoding of secure-aggregation messages.
//!
//! Hand-written rather than serde/bincode so that the encoding is fixed by
//! this file alone (signatures are computed over it) and the decoder checks
//! every length against a limit and against the bytes actually present
//! before allocating. Layout: integers little-endian; a name is a `u8`
//! length and UTF-8 (validated as a fedmesh name); a byte string is a `u32`
//! length and the bytes; a word vector is a `u32` count and `4·count`
//! bytes. Every message
//! starts with [`VERSION`] and a type tag and must be consumed exactly:
//! trailing bytes are an error, so each value has exactly one encoding.

use crate::identity::{NodeId, TenantId};

use super::SecAggError;

/// Encoding version byte.
pub const VERSION: u8 = 1;
/// Largest accepted encoded message (covers `MAX_DIM` words plus headers).
pub const MAX_MESSAGE_BYTES: usize = 4 * MAX_DIM + (1 << 20);
/// Largest accepted update dimension.
pub const MAX_DIM: usize = 1 << 26;
/// Largest accepted certificate (DER).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Largest accepted bucket.
pub const MAX_MEMBERS: usize = 255;

#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_header(tag: u8, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 2);
        buf.push(VERSION);
        buf.push(tag);
        Self { buf }
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn name(&mut self, s: &str) {
        // Names are validated to at most 63 bytes.
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn fixed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn words(&mut self, w: &[u32]) {
        self.u32(w.len() as u32);
        self.buf.reserve(w.len() * 4);
        for x in w {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub(crate) fn names(&mut self, ids: &[NodeId]) {
        self.u32(ids.len() as u32);
        for id in ids {
            self.name(id.as_str());
        }
    }
}

pub(crate) struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, bytes: &'a [u8], tag: u8) -> Result<Self, SecAggError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(SecAggError::Decode {
                what,
                reason: format!(
                    "{} bytes exceeds the limit {MAX_MESSAGE_BYTES}",
                    bytes.len()
                ),
            });
        }
        let mut r = Self { what, rest: bytes };
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.err(format!("unsupported version {version}")));
        }
        let got = r.u8()?;
        if got != tag {
            return Err(r.err(format!("message type {got}, expected {tag}")));
        }
        Ok(r)
    }
    pub(crate) fn err(&self, reason: String) -> SecAggError {
        SecAggError::Decode {
            what: self.what,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SecAggError> {
        if self.rest.len() < n {
            return Err(self.err(format!(
                "truncated: need {n} bytes, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, SecAggError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, SecAggError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, SecAggError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], SecAggError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn string(&mut self) -> Result<&'a str, SecAggError> {
        let len = usize::from(self.u8()?);
        let b = self.take(len)?;
        std::str::from_utf8(b).map_err(|_| self.err("name is not UTF-8".into()))
    }
    pub(crate) fn node(&mut self) -> Result<NodeId, SecAggError> {
        let s = self.string()?;
        s.parse().map_err(|e| self.err(format!("node id: {e}")))
    }
    pub(crate) fn tenant(&mut self) -> Result<TenantId, SecAggError> {
        let s = self.string()?;
        s.parse().map_err(|e| self.err(format!("tenant id: {e}")))
    }
    pub(crate) fn bytes(&mut self, max: usize) -> Result<Vec<u8>, SecAggError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.err(format!("byte string of {len} exceeds the limit {max}")));
        }
        Ok(self.take(len)?.to_vec())
    }
    pub(crate) fn words(&mut self) -> Result<Vec<u32>, SecAggError> {
        let count = self.u32()? as usize;
        if count > MAX_DIM {
            return Err(self.err(format!("{count} words exceed the limit {MAX_DIM}")));
        }
        let bytes = self.take(count.saturating_mul(4))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    /// A list of distinct node ids in strictly increasing order.
    pub(crate) fn sorted_nodes(&mut self) -> Result<Vec<NodeId>, SecAggError> {
        let count = self.u32()? as usize;
        if count > MAX_MEMBERS {
            return Err(self.err(format!("{count} node ids exceed the limit {MAX_MEMBERS}")));
        }
        let mut out: Vec<NodeId> = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.node()?;
            if out.last().is_some_and(|last| *last >= id) {
                return Err(self.err("node ids not strictly increasing".into()));
            }
            out.push(id);
        }
        Ok(out)
    }
    pub(crate) fn count(&mut self, max: usize) -> Result<usize, SecAggError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(self.err(format!("{count} entries exceed the limit {max}")));
        }
        Ok(count)
    }
    pub(crate) fn finish(self) -> Result<(), SecAggError> {
        if !self.rest.is_empty() {
            return Err(self.err(format!("{} trailing bytes", self.rest.len())));
        }
        Ok(())
    }
}
