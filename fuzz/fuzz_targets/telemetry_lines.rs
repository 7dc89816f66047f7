//! Arbitrary text -> Falco and Tetragon line parsers and the cgroup file
//! parsers: never panic; every event a parser returns belongs to a
//! container with a non-empty id.
#![no_main]

use libfuzzer_sys::fuzz_target;

use fedmesh_node::telemetry::cgroup::{parse_blkio_service_bytes, parse_flat_keyed, parse_io_stat, parse_single_u64};
use fedmesh_node::telemetry::falco::parse_falco_line;
use fedmesh_node::telemetry::proc::parse_net_dev;
use fedmesh_node::telemetry::tetragon::parse_tetragon_line;

fuzz_target!(|text: &str| {
    for parsed in [parse_falco_line(text), parse_tetragon_line(text)] {
        if let Ok(events) = parsed {
            for e in events {
                assert!(!e.container().0.is_empty());
            }
        }
    }
    let _ = parse_flat_keyed(text, &["usage_usec", "nr_periods", "nr_throttled"]);
    let _ = parse_single_u64(text);
    let _ = parse_io_stat(text);
    let _ = parse_blkio_service_bytes(text);
    let _ = parse_net_dev(text);
});
