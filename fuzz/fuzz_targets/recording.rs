//! Arbitrary bytes -> a telemetry recording (`fedmesh-node replay`'s
//! input): the reader never panics, returns windows in non-decreasing end
//! time or a typed error, and ends.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use fedmesh_node::telemetry::recording::RecordingReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs get a valid header, so the fuzzer reaches the windows.
    let mut text = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 0) {
        text.extend_from_slice(b"{\"fedmesh_recording\":1,\"window_ms\":10000,\"started_unix_ms\":0}\n");
    }
    text.extend_from_slice(data);
    let Ok(reader) = RecordingReader::new(Cursor::new(text), Path::new("fuzz")) else {
        return;
    };
    let mut previous = 0;
    for w in reader.take(1 << 16).flatten() {
        assert!(w.end_ms >= previous);
        previous = w.end_ms;
    }
});
