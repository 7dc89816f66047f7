//! Arbitrary bytes -> `v1::SecureRound` (the secure part of a round event
//! a node receives): decoding and rebuilding the committed participant
//! list, whole or as a change to the list the node holds, never panic, and
//! a rebuilt list is sorted, without duplicates.
#![no_main]

use fedmesh_crypto::NodeId;
use fedmesh_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(sr) = v1::SecureRound::decode(data) else {
        return;
    };
    let held: Vec<NodeId> = ["a", "b", "node-7"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    for known in [Vec::new(), vec![held.clone()]] {
        if let Ok(list) = fedmesh_node::federation::secure::committed_list(&sr, &known)
            && sr.participants_delta.is_some()
        {
            assert!(list.windows(2).all(|w| w[0] < w[1]));
        }
    }
});
