#![no_main]
//! Scenario TOML of `fedmesh-sim run` on arbitrary text: parsing and
//! validation never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fedmesh_sim::scenario::Scenario::from_toml(text);
    }
});
