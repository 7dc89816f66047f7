//! Same seed, same numbers across engines: a small scenario run in-process
//! and over the real gRPC/mTLS mesh on loopback ends with bit-identical
//! global parameters — with full or partial participation (both engines
//! sample with the coordinator's round machine) and with secure
//! aggregation in buckets.
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

/// Attackers that collude (sign flip crafted from the honest updates),
/// random dropouts and stragglers, an offline node and local DP, all
/// through the real node code: still bit-identical to the in-process
/// engine, round by round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_and_dropouts_match_the_in_process_engine() {
    for (rule, attack) in [
        (
            "rule = \"median\"",
            "[attack]\nfraction = 0.34\nkind = \"sign_flip\"\nk = 4.0",
        ),
        (
            "rule = \"trimmed_mean\"\nf = 1",
            "[attack]\nfraction = 0.2\nkind = \"scaling\"\ngamma = 5.0",
        ),
        // Two attackers with two identities each (extra certificates),
        // crafting IPM from the honest updates.
        (
            "rule = \"median\"",
            "[attack]\nfraction = 0.34\nsybils = 2\nkind = \"ipm\"",
        ),
        // Bad shares without buckets: the sender loses its own update.
        (
            "rule = \"median\"",
            "[attack]\nfraction = 0.2\nkind = \"protocol\"\nbehaviour = \"bad_shares\"",
        ),
    ] {
        eprintln!("case: {rule} / {attack}");
        let s = Scenario::from_toml(&format!(
            r#"
name = "engines-under-attack"
seed = 33
rounds = 3
min_participants = 3
[fleet]
nodes = 6
containers_per_node = 2
windows = 16
mixes = [{{ web = 1, database = 1 }}, {{ batch = 1, ml = 1 }}]
[rule]
{rule}
[dp]
clip = 5.0
noise_multiplier = 0.01
[dropout]
rate = 0.15
stragglers = 0.1
always_offline = [5]
{attack}
[eval]
windows = 16
"#
        ))
        .unwrap();
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
        let want: Vec<usize> = local
            .rounds
            .iter()
            .filter(|r| r.aborted.is_none())
            .map(|r| r.participants)
            .collect();
        assert!(
            local.rounds.iter().any(|r| r.dropped + r.stragglers > 0),
            "{rule}: the scenario should drop someone"
        );
        if !attack.contains("bad_shares") {
            assert!(
                local.rounds.iter().any(|r| r.malicious > 0),
                "{rule}: an attacker should take part"
            );
        }
        assert!(net.buckets.is_empty());
        // The network run's own report, in the in-process format: the same
        // rounds, participants, versions and evaluation.
        let r = &net.report;
        assert_eq!(r.engine, "network");
        assert_eq!(r.rounds.len(), local.rounds.len());
        for (a, b) in r.rounds.iter().zip(&local.rounds) {
            // (An aborted round's submissions are not in the coordinator's
            // summaries; only committed rounds report participants.)
            let p = |m: &fedmesh_sim::engine::RoundMetrics| {
                m.aborted.is_none().then_some(m.participants)
            };
            assert_eq!(
                (a.round, p(a), a.version, a.aborted.is_some()),
                (b.round, p(b), b.version, b.aborted.is_some()),
                "{rule}"
            );
            if b.aborted.is_none() {
                assert_eq!(a.malicious, b.malicious, "{rule} round {}", a.round);
            }
            assert_eq!(a.stragglers, b.stragglers, "{rule} round {}", a.round);
            assert_eq!(a.auc, b.auc, "{rule}: same model, same evaluation");
            assert_eq!(a.auc_per_kind, b.auc_per_kind, "{rule}");
        }
        assert_eq!(r.final_params_sha256, local.final_params_sha256);
        assert_eq!(net.participants, want, "{rule}: participants per round");
        assert_eq!(net.final_version, local.final_version, "{rule}");
        assert_eq!(
            net.final_params_sha256, local.final_params_sha256,
            "{rule}: the engines disagree"
        );
    }
}

/// k > 1 over the wire: real secure aggregation in buckets of 2, with a
/// node dropping out and one not answering the unmask request; the same
/// seed gives the same model twice, and the in-process engine (the same
/// round machine, each member's protocol randomness from the same seed)
/// ends with it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_over_the_wire_replay_bit_for_bit() {
    let mut s = scenario("rule = \"median\"");
    s.bucket_size = 2;
    s.rounds = 2;
    s.fleet.nodes = 6;
    s.dropout.after_masked = 0.2;
    s.dropout.rate = 0.1;
    s.min_participants = 2;
    let mut hashes = Vec::new();
    let mut participants = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let net = network::run(&s, dir.path()).await.unwrap();
        assert_eq!(net.final_version, 2);
        assert!(
            net.participants.iter().all(|&p| (2..=6).contains(&p)),
            "{:?}",
            net.participants
        );
        hashes.push(net.final_params_sha256);
        participants = net.participants;
    }
    assert_eq!(hashes[0], hashes[1], "same seed, different models");
    let (local, _) = inprocess::run(
        &s,
        &RunOptions {
            quiet: true,
            record: None,
        },
    )
    .unwrap();
    assert!(
        local.rounds.iter().any(|r| r.dropped > 0),
        "the scenario should drop someone: {:?}",
        local.rounds
    );
    assert_eq!(local.final_version, 2);
    assert_eq!(
        local.final_params_sha256, hashes[0],
        "k = 2: the engines disagree (network participants {participants:?})"
    );
}

/// Partial participation is the coordinator's own sampling, in both
/// engines: the in-process engine samples with the same round machine over
/// the same connected identities (an offline node never connects), so the
/// two select the same participants every round and end with the same
/// model; colluding attackers craft from the honest updates of the nodes
/// the coordinator selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_participation_samples_the_same_nodes_in_both_engines() {
    let s = Scenario::from_toml(
        r#"
name = "sampled"
seed = 9
rounds = 3
[fleet]
nodes = 9
participation = 0.5
containers_per_node = 2
windows = 16
mixes = [{ web = 1, database = 1 }, { batch = 1, ml = 1 }]
[rule]
rule = "median"
[dropout]
always_offline = [8]
[attack]
fraction = 0.25
kind = "ipm"
[eval]
windows = 16
"#,
    )
    .unwrap();
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
    // ⌈0.5 · 9⌉ = 5 of the 8 connected nodes, every round.
    assert_eq!(net.participants, vec![5; 3]);
    assert!(net.report.rounds.iter().all(|r| r.sampled == 5));
    assert!(net.report.rounds.last().unwrap().auc.is_some());
    // The offline node never connects, so it is never sampled (nobody is
    // dropped); the same nodes, attackers among them, take part in both.
    assert!(
        local
            .rounds
            .iter()
            .all(|r| r.sampled == 5 && r.dropped == 0)
    );
    for (a, b) in net.report.rounds.iter().zip(&local.rounds) {
        assert_eq!(
            (a.participants, a.malicious, a.version, a.auc),
            (b.participants, b.malicious, b.version, b.auc),
            "round {}: the engines selected different nodes",
            a.round
        );
    }
    assert_eq!(net.final_params_sha256, local.final_params_sha256);
}

/// Spoiled Shamir shares over the wire: the attacker's peers cannot decrypt
/// them and abandon the round, so the coordinator drops that bucket while
/// the other buckets commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoiled_shares_lose_the_senders_bucket_only() {
    let mut s = scenario("rule = \"median\"");
    s.bucket_size = 2;
    s.rounds = 2;
    s.fleet.nodes = 8;
    s.min_participants = 2;
    s.attack = Some(
        toml::from_str("fraction = 0.125\nkind = \"protocol\"\nbehaviour = \"bad_shares\"")
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let net = network::run(&s, dir.path()).await.unwrap();
    assert_eq!(net.final_version, 2, "{net:?}");
    assert_eq!(net.buckets, vec![4, 4]);
    assert_eq!(net.buckets_dropped, vec![1, 1], "{net:?}");
    // The three other buckets of two committed.
    assert_eq!(net.participants, vec![6, 6]);
}
