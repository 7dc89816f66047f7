//! Same seed, same numbers across engines: a small scenario run in-process
//! and over the real gRPC/mTLS mesh on loopback ends with bit-identical
//! global parameters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fedmesh_sim::engine::inprocess::{self, RunOptions};
use fedmesh_sim::engine::network;
use fedmesh_sim::scenario::Scenario;

fn scenario(rule: &str) -> Scenario {
    Scenario::from_toml(&format!(
        r#"
name = "engines"
seed = 21
rounds = 3
[fleet]
nodes = 5
containers_per_node = 2
windows = 16
mixes = [{{ web = 1, database = 1 }}, {{ batch = 1, ml = 1 }}]
[server]
momentum = 0.5
[rule]
{rule}
[eval]
windows = 16
"#
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_give_identical_global_models() {
    for rule in [
        "rule = \"fedavg\"",
        "rule = \"centered_clipping\"\ntau = 0.5\niterations = 2",
    ] {
        let s = scenario(rule);
        let (local, _) = inprocess::run(
            &s,
            &RunOptions {
                quiet: true,
                record: None,
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let net = network::run(&s, dir.path()).await.unwrap();
        assert_eq!(net.final_version, local.final_version, "{rule}");
        assert_eq!(net.participants, vec![5; 3], "{rule}");
        assert_eq!(
            net.final_params_sha256, local.final_params_sha256,
            "{rule}: the engines disagree"
        );
    }
}

#[tokio::test]
async fn network_engine_refuses_what_it_cannot_simulate() {
    let mut s = scenario("rule = \"median\"");
    s.bucket_size = 2;
    let dir = tempfile::tempdir().unwrap();
    let e = network::run(&s, dir.path()).await.unwrap_err();
    assert!(e.to_string().contains("buckets"), "{e}");
}
