#![no_main]
//! The `.npy` reader of `fedmesh-sim aggregate` on arbitrary bytes: never
//! panics; the streaming reader (what `aggregate` runs on a file) accepts
//! and refuses exactly what the in-memory decoder does, with the same
//! errors; what they accept re-encodes to a file read back identically.
use fedmesh_sim::npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = npy::decode_matrix(data);
    let streamed = npy::read_matrix_from(&mut std::io::Cursor::new(data), Some(data.len() as u64));
    assert_eq!(streamed, decoded);
    let unsized_ = npy::read_matrix_from(&mut std::io::Cursor::new(data), None);
    assert_eq!(unsized_, decoded);
    if let Ok(m) = decoded {
        let again = npy::decode_matrix(&npy::encode_matrix(&m));
        assert_eq!(again.ok(), Some(m));
    }
    let _ = npy::decode_vector(data);
});
