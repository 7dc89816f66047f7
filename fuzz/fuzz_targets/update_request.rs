//! Arbitrary bytes -> `v1::UpdateRequest` (what a node submits): decoding
//! and unpacking the delta never panic, and an accepted delta is finite and
//! as long as its bytes say.
#![no_main]

use fedmesh_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = v1::UpdateRequest::decode(data) else {
        return;
    };
    if let Some(delta) = &req.delta
        && let Ok(values) = fedmesh_proto::decode_f32(delta, 1 << 20)
    {
        assert_eq!(values.len() * 4, delta.data.len());
        assert!(values.iter().all(|v| v.is_finite()));
    }
    // What decodes re-encodes to a canonical form that is stable under
    // decode/encode (compared as bytes: `train_loss` may be NaN).
    let canonical = req.encode_to_vec();
    let again =
        v1::UpdateRequest::decode(canonical.as_slice()).expect("re-encoded request decodes");
    assert_eq!(again.encode_to_vec(), canonical);
});
