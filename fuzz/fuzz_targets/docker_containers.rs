//! Docker Engine API `GET /containers/json` bodies: decoding never panics,
//! and every decoded container can be looked up by its id afterwards.
#![no_main]

use fedmesh_node::ops::docker::{IdentityCache, parse_container_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse_container_list(data) {
        let ids: Vec<String> = list.iter().map(|c| c.id.clone()).collect();
        let cache = IdentityCache::new();
        cache.replace(list);
        for id in ids {
            assert!(cache.get(&id).is_some());
        }
    }
});
