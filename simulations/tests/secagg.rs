//! The in-process engine with k > 1 runs the real secure aggregation and the
//! coordinator's reputation: masked buckets keep 20 % scaling attackers
//! close to the clean run where plaintext FedAvg does not; a persistent
//! attacker is quarantined through bucket evidence and then ignored; a
//! bucket that loses too many members is dropped, not the round.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fedmesh_sim::engine::inprocess::{RunOptions, run, run_full};
use fedmesh_sim::scenario::Scenario;

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        record: None,
    }
}

fn scenario(top: &str, rest: &str) -> Scenario {
    Scenario::from_toml(&format!(
        r#"
name = "secagg"
seed = 5
{top}
[fleet]
nodes = 10
containers_per_node = 2
windows = 16
mixes = [{{ web = 1, database = 1 }}, {{ batch = 1, ml = 1 }}]
[eval]
windows = 16
clean_twin = true
{rest}
"#
    ))
    .unwrap()
}

/// Margin on the final parameters' distance from the clean run, relative to
/// how far the clean run moved from genesis: `‖θ − θ_clean‖ / ‖θ_clean − θ_0‖`.
const MARGIN: f64 = 0.5;

#[test]
fn masked_buckets_keep_scaling_attackers_near_the_clean_run_and_fedavg_does_not() {
    // 2 of 10 nodes train honestly and scale their delta by γ = n/η = 10
    // (model replacement). Reputation is off in both runs so that only the
    // aggregation is compared. Measured (seed 5): FedAvg k = 1 ends 2.19 of
    // the clean run's progress away from it, the median over masked buckets
    // of 2 (C = 0.5, honest update norms ≈ 0.13) 0.37.
    let attack = "[reputation]\nenabled = false\n[attack]\nfraction = 0.2\nkind = \"scaling\"";
    let plain = run_full(
        &scenario(
            "rounds = 5",
            &format!("[rule]\nrule = \"fedavg\"\n{attack}"),
        ),
        &quiet(),
    )
    .unwrap();
    let masked = run_full(
        &scenario(
            "rounds = 5\nbucket_size = 2",
            &format!("[rule]\nrule = \"median\"\n[secagg]\nclip_norm = 0.5\n{attack}"),
        ),
        &quiet(),
    )
    .unwrap();
    let d_plain = plain.report.clean_twin.as_ref().unwrap().distance;
    let d_masked = masked.report.clean_twin.as_ref().unwrap().distance;
    eprintln!(
        "distance to the clean run: fedavg k=1 {d_plain:.4}, median k=2 masked {d_masked:.4}"
    );
    assert_eq!(masked.report.aggregation, "secagg (masked buckets)");
    assert!(masked.report.rounds.iter().all(|m| m.buckets == 5));
    assert!(
        masked
            .report
            .rounds
            .iter()
            .all(|m| m.malicious == 2 && m.buckets_lost.is_empty())
    );
    assert!(d_masked < MARGIN, "masked: {d_masked}");
    assert!(d_plain > 2.0 * MARGIN, "fedavg: {d_plain}");
}

#[test]
fn persistent_attacker_is_quarantined_through_bucket_evidence_and_then_ignored() {
    // One sign flipper (−10·mean, clipped to C inside the protocol) among
    // 10 nodes, buckets of 2 reshuffled every round, median over bucket
    // means, the coordinator's default reputation settings.
    let s = scenario(
        "rounds = 12\nbucket_size = 2",
        "[rule]\nrule = \"median\"\n[secagg]\nclip_norm = 0.5\n\
         [attack]\nfraction = 0.1\nkind = \"sign_flip\"\nk = 10.0",
    );
    let (r, _) = run(&s, &quiet()).unwrap();
    assert_eq!(r.attackers.len(), 1);
    let attacker = format!("node-{:05}", r.attackers[0]);
    let at = r
        .rounds
        .iter()
        .position(|m| m.quarantined.contains(&attacker))
        .unwrap_or_else(|| panic!("never quarantined: {:#?}", r.rounds.last()));
    let rounds_needed = at + 1;
    eprintln!("attacker quarantined after round {rounds_needed}");
    assert!(rounds_needed <= 8, "took {rounds_needed} rounds");
    assert!(
        r.rounds[at]
            .reputation_events
            .contains(&format!("{attacker} quarantined"))
    );
    // While it is quarantined it is not in the participant list: no
    // malicious update is aggregated, and it is counted as shadow.
    let mut ignored = 0;
    for w in r.rounds.windows(2) {
        if w[0].quarantined.contains(&attacker) {
            assert_eq!(w[1].malicious, 0, "{:?}", w[1]);
            assert_eq!(w[1].shadow, 1, "{:?}", w[1]);
            ignored += 1;
        }
    }
    assert!(ignored >= 3, "ignored in {ignored} rounds");
    // No honest node is ever quarantined.
    for m in &r.rounds {
        assert!(m.quarantined.iter().all(|q| *q == attacker), "{m:?}");
    }
}

#[test]
fn buckets_that_lose_too_many_members_are_dropped_not_the_round() {
    // One forced dropout before advertising: its bucket of 2 has one
    // survivor (threshold 2) and is lost every round; the others commit.
    let s = scenario(
        "rounds = 2\nbucket_size = 2",
        "[rule]\nrule = \"median\"\n[attack]\nfraction = 0.1\nkind = \"protocol\"\n\
         behaviour = \"forced_dropout\"\nphase = \"before_advert\"\n[reputation]\nenabled = false",
    );
    let (r, _) = run(&s, &quiet()).unwrap();
    assert_eq!(r.final_version, 2);
    for m in &r.rounds {
        assert_eq!(m.buckets, 5, "{m:?}");
        assert_eq!(m.buckets_lost.len(), 1, "{m:?}");
        assert_eq!(m.participants, 8, "{m:?}");
        assert_eq!(m.dropped, 2, "{m:?}");
        assert!(m.aborted.is_none());
    }
    // After sharing its keys, in buckets of 3 (threshold 2): the survivors
    // remove its masks and the bucket counts with one member fewer.
    let s = scenario(
        "rounds = 2\nbucket_size = 3",
        "[rule]\nrule = \"median\"\n[attack]\nfraction = 0.1\nkind = \"protocol\"\n\
         behaviour = \"forced_dropout\"\nphase = \"after_shares\"\n[reputation]\nenabled = false",
    );
    let (r, _) = run(&s, &quiet()).unwrap();
    for m in &r.rounds {
        assert_eq!(m.buckets, 3, "{m:?}");
        assert!(m.buckets_lost.is_empty(), "{m:?}");
        assert_eq!(m.participants, 9, "{m:?}");
        assert_eq!(m.dropped, 1, "{m:?}");
    }
    // Nine in ten members drop before advertising: every bucket is lost
    // (threshold 4 of 5), and only then is the round aborted, with the reason.
    let s = scenario(
        "rounds = 1\nbucket_size = 5",
        "[rule]\nrule = \"fedavg\"\n[dropout]\nrate = 0.9",
    );
    let (r, _) = run(&s, &quiet()).unwrap();
    let m = &r.rounds[0];
    assert_eq!(r.final_version, 0);
    assert_eq!(m.buckets_lost.len(), m.buckets, "{m:?}");
    assert!(
        m.aborted
            .as_deref()
            .unwrap_or("")
            .contains("unmasked buckets")
    );
}
