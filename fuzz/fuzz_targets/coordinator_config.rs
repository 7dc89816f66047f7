//! Arbitrary UTF-8 -> `CoordinatorConfig::from_toml` -> `validate`: never
//! panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(cfg) = fedmesh_coordinator::CoordinatorConfig::from_toml(text, Path::new("fuzz.toml"))
    {
        let _ = cfg.validate();
    }
});
