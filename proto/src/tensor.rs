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
    #[error("tensor shape {shape:?} holds more than {max} elements")]
    TooLarge {
        /// The offending shape.
        shape: Vec<u64>,
        /// The caller's bound.
        max: usize,
    },
    /// The byte length does not match the shape.
    #[error("tensor data is {actual} bytes, shape {shape:?} needs {expected}")]
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
