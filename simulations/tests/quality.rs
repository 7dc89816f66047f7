//! The quality report on a small fleet: every attack kind gets a finite AUC
//! for every detector, and the federated model beats local-only models.

use fedmesh_sim::quality::{QualityOptions, run, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_quality_report() {
    let report = run(QualityOptions {
        nodes: 4,
        rounds: 4,
        warmup_windows: 160,
        benign_windows: 120,
        attack_set_windows: 40,
        seed: 7,
    })
    .await
    .unwrap();
    println!("{}", table(&report));
    for figs in [&report.federated, &report.local, &report.pca] {
        assert_eq!(figs.per_kind.len(), 7, "{:?}", figs.per_kind);
        for (kind, f) in &figs.per_kind {
            assert!(
                f.auc.is_finite() && (0.0..=1.0).contains(&f.auc),
                "{kind}: {f:?}"
            );
            assert!((0.0..=1.0).contains(&f.recall), "{kind}: {f:?}");
        }
        assert!(figs.false_alarms_per_container_hour.is_finite());
        assert!(figs.false_alarms_per_container_hour >= 0.0);
    }
    assert_eq!(report.benign_windows, 8 * 120);
    assert!(
        report.federated.mean_auc > report.local.mean_auc,
        "federated {} vs local-only {}",
        report.federated.mean_auc,
        report.local.mean_auc
    );
}
