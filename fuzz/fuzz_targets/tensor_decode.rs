//! Arbitrary bytes -> `v1::Tensor` -> `decode_f32`: decoding is total, and
//! whatever it accepts is exactly `data.len() / 4` finite values that
//! re-encode to the same bytes.
#![no_main]

use fedmesh_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = v1::Tensor::decode(data) else {
        return;
    };
    if let Ok(values) = fedmesh_proto::decode_f32(&t, MAX) {
        assert!(values.len() <= MAX);
        assert_eq!(values.len() * 4, t.data.len());
        assert!(values.iter().all(|v| v.is_finite()));
        let product = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        assert_eq!(product, Some(values.len() as u64));
        let again = fedmesh_proto::encode_f32(&values, &t.shape);
        assert_eq!(again.data, t.data);
        assert_eq!(again.dtype, t.dtype);
    }
});
