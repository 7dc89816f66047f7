#![no_main]
//! The `.npy` reader of `fedmesh-sim aggregate` on arbitrary bytes: never
//! panics; what it accepts re-encodes to a file it reads back identically.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = fedmesh_sim::npy::decode_matrix(data) {
        let again = fedmesh_sim::npy::decode_matrix(&fedmesh_sim::npy::encode_matrix(&m));
        assert_eq!(again.ok(), Some(m));
    }
    let _ = fedmesh_sim::npy::decode_vector(data);
});
