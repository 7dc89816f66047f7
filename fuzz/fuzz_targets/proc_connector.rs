//! Arbitrary bytes -> the proc connector datagram decoder: never panics,
//! never reads past the buffer, returns events or a typed error.
#![no_main]

use fedmesh_node::telemetry::process::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = decode(data) {
        // At most one event per 36-byte message (headers included).
        assert!(events.len() <= data.len() / 36 + 1);
    }
});
