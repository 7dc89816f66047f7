//! Packed little-endian tensors.
//!
//! A [`v1::Tensor`](crate::v1::Tensor) carries `product(shape)` values of its
//! dtype, packed little-endian, row-major. Decoding is total: any byte string
//! either decodes to exactly the values it claims or yields a [`TensorError`].

use crate::v1::{Dtype, Tensor};

/// Why a tensor could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The dtype is not one this version understands.
    #[error("unsupported tensor dtype {0}")]
    UnsupportedDtype(i32),
    /// The shape's element count overflows or exceeds the caller's bound.
    #[error(
        "tensor shape {} holds more than {max} elements",
        ShapeSummary::of(shape)
    )]
    TooLarge {
        /// The offending shape.
        shape: Vec<u64>,
        /// The caller's bound.
        max: usize,
    },
    /// The byte length does not match the shape.
    #[error(
        "tensor data is {actual} bytes, shape {} needs {expected}",
        ShapeSummary::of(shape)
    )]
    LengthMismatch {
        /// The declared shape.
        shape: Vec<u64>,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A value is NaN or infinite.
    #[error("tensor value at index {index} is not finite")]
    NonFinite {
        /// Flat index of the first bad value.
        index: usize,
    },
}

/// A bounded description of a tensor shape for messages: at most
/// [`ShapeSummary::HEAD`] leading dimensions and the number of dimensions,
/// e.g. `[3, 4]` or `[1, 1, 1, 1, … (1000000 dims)]`, so a refusal never
/// grows with the shape a client sent (at most ~110 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeSummary {
    head: Vec<u64>,
    dims: usize,
}

impl ShapeSummary {
    /// Leading dimensions kept.
    pub const HEAD: usize = 4;

    /// The summary of `shape`.
    pub fn of(shape: &[u64]) -> Self {
        Self {
            head: shape.iter().take(Self::HEAD).copied().collect(),
            dims: shape.len(),
        }
    }

    /// Dimensions of the shape.
    pub fn dims(&self) -> usize {
        self.dims
    }
}

impl std::fmt::Display for ShapeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.head.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.dims > self.head.len() {
            write!(f, ", … ({} dims)", self.dims)?;
        }
        f.write_str("]")
    }
}

/// Packs `values` as an f32 little-endian tensor of the given shape.
///
/// The caller is responsible for `shape` matching `values.len()`; use
/// `&[values.len() as u64]` for a flat vector.
pub fn encode_f32(values: &[f32], shape: &[u64]) -> Tensor {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Tensor {
        dtype: Dtype::F32Le as i32,
        shape: shape.to_vec(),
        data,
    }
}

/// Unpacks an f32 tensor, checking dtype, size bound, length and finiteness.
///
/// `max_elements` bounds the work done for hostile input before any
/// allocation happens.
pub fn decode_f32(t: &Tensor, max_elements: usize) -> Result<Vec<f32>, TensorError> {
    if t.dtype != Dtype::F32Le as i32 {
        return Err(TensorError::UnsupportedDtype(t.dtype));
    }
    let too_large = || TensorError::TooLarge {
        shape: t.shape.clone(),
        max: max_elements,
    };
    let mut count: usize = 1;
    for &d in &t.shape {
        let d = usize::try_from(d).map_err(|_| too_large())?;
        count = count.checked_mul(d).ok_or_else(too_large)?;
    }
    if count > max_elements {
        return Err(too_large());
    }
    let expected = count.checked_mul(4).ok_or_else(too_large)?;
    if t.data.len() != expected {
        return Err(TensorError::LengthMismatch {
            shape: t.shape.clone(),
            expected,
            actual: t.data.len(),
        });
    }
    let mut out = Vec::with_capacity(count);
    for (index, chunk) in t.data.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if !v.is_finite() {
            return Err(TensorError::NonFinite { index });
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shape_messages_are_bounded() {
        assert_eq!(ShapeSummary::of(&[3, 4]).to_string(), "[3, 4]");
        assert_eq!(ShapeSummary::of(&[]).to_string(), "[]");
        let huge = vec![1u64; 1_000_000];
        assert_eq!(
            ShapeSummary::of(&huge).to_string(),
            "[1, 1, 1, 1, … (1000000 dims)]"
        );
        let t = Tensor {
            dtype: Dtype::F32Le as i32,
            shape: vec![u64::MAX; 1_000_000],
            data: vec![],
        };
        let e = decode_f32(&t, 10).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        let t = Tensor {
            dtype: Dtype::F32Le as i32,
            shape: vec![1; 1_000_000],
            data: vec![0; 3],
        };
        let e = decode_f32(&t, 10).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn round_trips_and_checks_length() {
        let t = encode_f32(&[1.0, -2.5, 3.25], &[3]);
        assert_eq!(decode_f32(&t, 10).unwrap(), vec![1.0, -2.5, 3.25]);
        let mut short = t.clone();
        short.data.pop();
        assert!(matches!(
            decode_f32(&short, 10),
            Err(TensorError::LengthMismatch {
                expected: 12,
                actual: 11,
                ..
            })
        ));
        assert!(matches!(
            decode_f32(&t, 2),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_nan_and_inf() {
        let t = encode_f32(&[0.0, f32::NAN], &[2]);
        assert_eq!(decode_f32(&t, 10), Err(TensorError::NonFinite { index: 1 }));
        let t = encode_f32(&[f32::NEG_INFINITY], &[1]);
        assert_eq!(decode_f32(&t, 10), Err(TensorError::NonFinite { index: 0 }));
    }

    #[test]
    fn refuses_overflowing_shapes_and_unknown_dtype() {
        let t = Tensor {
            dtype: Dtype::F32Le as i32,
            shape: vec![u64::MAX, 4],
            data: vec![],
        };
        assert!(matches!(
            decode_f32(&t, usize::MAX),
            Err(TensorError::TooLarge { .. })
        ));
        let t = Tensor {
            dtype: 7,
            shape: vec![1],
            data: vec![0; 4],
        };
        assert_eq!(decode_f32(&t, 10), Err(TensorError::UnsupportedDtype(7)));
    }

    proptest! {
        #[test]
        fn finite_values_round_trip(values in proptest::collection::vec(-1e30f32..1e30, 0..256)) {
            let t = encode_f32(&values, &[values.len() as u64]);
            prop_assert_eq!(decode_f32(&t, 1024).unwrap(), values);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            dtype in -2i32..4,
            shape in proptest::collection::vec(0u64..64, 0..4),
            data in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let t = Tensor { dtype, shape, data };
            if let Ok(v) = decode_f32(&t, 4096) {
                prop_assert_eq!(v.len() * 4, t.data.len());
                prop_assert!(v.iter().all(|x| x.is_finite()));
            }
        }
    }
}
