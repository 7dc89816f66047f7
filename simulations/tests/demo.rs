//! The demo runs end to end (small fleet) and shows what it claims: every
//! round committed by every node, every attacked container in one incident
//! and no benign one, and the
//! federated model better than local-only models on the same held-out set.

use fedmesh_sim::demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_demo_federates_and_beats_local_only() {
    let report = run(DemoOptions {
        nodes: 4,
        rounds: 4,
        warmup_windows: 160,
        attack_windows: 24,
        seed: 7,
        bucket_size: 2,
        quiet: true,
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.final_version, 4);
    assert_eq!(report.rounds.len(), 4);
    assert!(
        report.rounds.iter().all(|r| r.participants == 4),
        "{:?}",
        report.rounds
    );
    assert!(
        report
            .rounds
            .windows(2)
            .all(|w| w[1].version == w[0].version + 1)
    );
    // The attack is live in the last 16 of the 24 live windows. Every
    // attacked container opens exactly one incident, within three windows
    // of the attack's start; no benign container opens one.
    for inc in &report.incidents {
        eprintln!("{inc:?}");
    }
    let mut attacked = 0;
    for (node, container, kind, _) in &report.attacks {
        attacked += 1;
        let mine: Vec<_> = report
            .incidents
            .iter()
            .filter(|i| &i.node == node && &i.container == container)
            .collect();
        assert_eq!(mine.len(), 1, "{node}/{container} ({kind}): {mine:?}");
        let after = mine[0].windows_after_start.unwrap();
        assert!(
            after <= 2,
            "{node}/{container} ({kind}) opened {after} windows late"
        );
        assert!(!mine[0].top_features.is_empty() || !mine[0].rules.is_empty());
    }
    let benign: Vec<_> = report
        .incidents
        .iter()
        .filter(|i| i.truth.is_none())
        .collect();
    assert!(benign.is_empty(), "benign incidents: {benign:?}");
    assert!(attacked >= 2, "at least two attack kinds are injected");
    // Measured with this seed: federated 0.96-0.97, local-only 0.86-0.90.
    assert!(
        report.mean_federated_auc >= 0.90,
        "{}",
        report.mean_federated_auc
    );
    assert!(
        report.mean_federated_auc > report.mean_local_auc,
        "federated {} vs local {}",
        report.mean_federated_auc,
        report.mean_local_auc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_numbers() {
    let opts = DemoOptions {
        nodes: 3,
        rounds: 2,
        warmup_windows: 120,
        attack_windows: 12,
        seed: 11,
        bucket_size: 2,
        quiet: true,
        ..DemoOptions::default()
    };
    let a = run(opts.clone()).await.unwrap();
    let b = run(opts.clone()).await.unwrap();
    assert_eq!(a.final_params_sha256, b.final_params_sha256);
    let losses = |r: &fedmesh_sim::demo::DemoReport| {
        r.rounds
            .iter()
            .map(|x| (x.version, x.participants, x.mean_loss.to_bits(), x.bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(a.incidents, b.incidents);
    assert_eq!(
        a.mean_federated_auc.to_bits(),
        b.mean_federated_auc.to_bits()
    );
    assert_eq!(a.mean_local_auc.to_bits(), b.mean_local_auc.to_bits());
    let c = run(DemoOptions { seed: 12, ..opts }).await.unwrap();
    assert_ne!(
        a.final_params_sha256, c.final_params_sha256,
        "the seed matters"
    );
}
