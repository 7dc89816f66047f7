//! `fedmesh-sim quality`: detection quality per attack kind on the synthetic
//! fleet, for three detectors of every node:
//!
//! - **federated**: the demo's final global model (real coordinator, real
//!   mTLS rounds: [`crate::demo::run_with_models`]) with the node's own
//!   calibrated threshold;
//! - **local**: the autoencoder the node trains alone on the same windows
//!   (same architecture and epochs);
//! - **pca**: the linfa PCA reconstruction-error baseline
//!   ([`crate::baseline::PcaDetector`]) fitted on the same windows.
//!
//! Evaluation data (fresh seeds, every workload of the fleet, two
//! containers each): a benign set of `benign_windows` windows per container
//! for false alarms, and per attack kind a set where every container runs
//! that attack in the second half. Per kind: ROC AUC of the attacked windows
//! against the benign set, recall at the node's calibrated threshold.
//!
//! By incident (what an operator is paged for): every detector's scores go
//! through the node's own [`IncidentTracker`] (default `[incidents]`), one
//! tracker per node and set, container by container in window order. Per
//! kind: the fraction of attacked containers with an incident opened while
//! the attack runs, and the median time from the attack's start to the end
//! of the window that opened it; on the benign set: incidents opened per
//! container-day. Figures are means over nodes (medians pooled over nodes
//! and containers). The **node** column is the node as it runs: the
//! federated model's scores and the rule layer's hits on the same windows'
//! events (default `[rules]`) through one tracker. A sweep of
//! `open_bound` shows the alert budget each bound buys on this fleet.

use std::collections::BTreeMap;

use crate::baseline::{PcaConfig, PcaDetector};
use anyhow::{Context, Result, bail};
use fedmesh_node::agent::settled_flags;
use fedmesh_node::detection::detector::Detector;
use fedmesh_node::detection::features::FeatureWindow;
use fedmesh_node::detection::incident::{
    IncidentConfig, IncidentState, IncidentTracker, WindowVerdict,
};
use fedmesh_node::detection::rules::{RuleEngine, RuleHit, RulesConfig};
use fedmesh_node::sim::metrics::roc_auc;
use fedmesh_node::sim::synthetic::{AttackKind, HitsByWindow, Profile, labelled_windows_and_hits};
use serde::Serialize;

use crate::demo::{self, DemoOptions, WINDOW_MS};

/// Parameters of the quality report.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    /// Edge nodes of the federation (at least 3).
    pub nodes: usize,
    /// Federated rounds.
    pub rounds: u64,
    /// Warm-up windows per node (training data).
    pub warmup_windows: u64,
    /// Benign evaluation windows per container (360 = one hour of 10 s
    /// windows; 8640 = one day).
    pub benign_windows: u64,
    /// `[incidents]` the trackers use.
    pub incidents: IncidentConfig,
    /// Windows per container of each attack set (the attack runs in the second half).
    pub attack_set_windows: u64,
    /// Seed for everything.
    pub seed: u64,
}

impl Default for QualityOptions {
    fn default() -> Self {
        Self {
            nodes: 6,
            rounds: 8,
            warmup_windows: 240,
            benign_windows: 8640,
            incidents: IncidentConfig::default(),
            attack_set_windows: 60,
            seed: 42,
        }
    }
}

/// Figures of one detector kind for one attack kind, means over nodes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindFigures {
    /// ROC AUC of the attacked windows against the benign set.
    pub auc: f32,
    /// Fraction of attacked windows above the node's threshold.
    pub recall: f32,
    /// Fraction of attacked containers with an incident opened during the
    /// attack.
    pub incident_recall: f32,
    /// Median windows from the attack's start to the end of the window that
    /// opened the first incident (1: the first attacked window), over the
    /// detected containers of every node.
    pub median_windows_to_incident: Option<f32>,
}

/// One detector kind over all attack kinds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectorFigures {
    /// Per attack kind.
    pub per_kind: BTreeMap<String, KindFigures>,
    /// Mean AUC over attack kinds.
    pub mean_auc: f32,
    /// Mean recall over attack kinds.
    pub mean_recall: f32,
    /// Benign windows above the threshold per container-hour.
    pub false_alarms_per_container_hour: f32,
    /// Incidents opened on the benign set per container-day.
    pub false_incidents_per_container_day: f32,
    /// Mean incident recall over attack kinds.
    pub mean_incident_recall: f32,
}

/// One `open_bound` of the sweep (federated model).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BoundFigures {
    /// `[incidents] open_bound`.
    pub open_bound: f32,
    /// False incidents per container-day.
    pub false_incidents_per_container_day: f32,
    /// Mean incident recall over attack kinds.
    pub mean_incident_recall: f32,
    /// Median windows to the first incident over every kind.
    pub median_windows_to_incident: Option<f32>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// Nodes.
    pub nodes: usize,
    /// Rounds.
    pub rounds: u64,
    /// Seed.
    pub seed: u64,
    /// Benign evaluation windows (all containers).
    pub benign_windows: usize,
    /// Benign container-hours evaluated.
    pub benign_container_hours: f32,
    /// Attacked windows per attack kind.
    pub attack_windows_per_kind: usize,
    /// Mean number of principal components the PCA baselines keep.
    pub pca_components: f32,
    /// Federated global model, node thresholds.
    pub federated: DetectorFigures,
    /// The node as it runs: the federated model and the rule layer
    /// (default `[rules]`) on the same windows' events, through one
    /// incident tracker (AUC and window recall are the model's).
    pub node: DetectorFigures,
    /// Local-only autoencoders.
    pub local: DetectorFigures,
    /// linfa PCA baseline (local data).
    pub pca: DetectorFigures,
    /// Benign container-days evaluated by incident (all nodes' trackers
    /// see the same set; figures are per node).
    pub benign_container_days: f32,
    /// `open_bound` sweep of the federated model.
    pub bounds: Vec<BoundFigures>,
    /// Wall time, seconds.
    pub seconds: f32,
}

/// Evaluation containers: two of every workload.
fn eval_containers() -> Vec<(String, Profile)> {
    let mut v = Vec::new();
    for p in Profile::ALL {
        for i in 0..2 {
            v.push((format!("q-{p}-{i}"), p));
        }
    }
    v
}

/// The evaluation data: benign windows and attacked windows per kind.
struct EvalSets {
    benign: Vec<FeatureWindow>,
    /// Per kind: the attacked windows only.
    attacks: Vec<(AttackKind, Vec<FeatureWindow>)>,
    /// Per kind: every window of the set (benign first half, then the
    /// attack), with its label, in the order the node would see them.
    episodes: Vec<Vec<(FeatureWindow, bool)>>,
    /// What the node's rule layer (default `[rules]`) finds in the benign
    /// set's events, by window end.
    benign_hits: HitsByWindow,
    /// The same for each kind's set.
    episode_hits: Vec<HitsByWindow>,
}

fn eval_sets(opts: &QualityOptions) -> Result<EvalSets> {
    let containers = eval_containers();
    let rules = RuleEngine::new(&RulesConfig::default());
    let (benign, benign_hits) = labelled_windows_and_hits(
        opts.seed ^ 0xB0_0B,
        &containers,
        opts.benign_windows + 1,
        WINDOW_MS,
        &[],
        &rules,
    )?;
    let benign: Vec<FeatureWindow> = benign.into_iter().map(|(w, _)| w).collect();
    let mut episode_hits = Vec::new();
    let start = opts.attack_set_windows / 2;
    let mut attacks = Vec::new();
    let mut episodes = Vec::new();
    for (i, kind) in AttackKind::ALL.iter().enumerate() {
        let injected: Vec<(String, AttackKind, u64, u64)> = containers
            .iter()
            .map(|(id, _)| (id.clone(), *kind, start, opts.attack_set_windows - start))
            .collect();
        let (set, hits) = labelled_windows_and_hits(
            opts.seed ^ (0xA7_7A + i as u64),
            &containers,
            opts.attack_set_windows,
            WINDOW_MS,
            &injected,
            &rules,
        )?;
        episode_hits.push(hits);
        let attacked: Vec<FeatureWindow> = set
            .iter()
            .filter(|(_, l)| *l == Some(*kind))
            .map(|(w, _)| w.clone())
            .collect();
        episodes.push(
            set.into_iter()
                .map(|(w, l)| (w, l == Some(*kind)))
                .collect(),
        );
        if attacked.is_empty() {
            bail!("no attacked windows for {kind}");
        }
        attacks.push((*kind, attacked));
    }
    Ok(EvalSets {
        benign,
        attacks,
        episodes,
        benign_hits,
        episode_hits,
    })
}

/// Scores of one node's detector on the evaluation data.
struct Scored {
    threshold: f32,
    benign: Vec<f32>,
    attacks: Vec<Vec<f32>>,
    /// Scores of every window of each episode.
    episodes: Vec<Vec<f32>>,
}

fn score_ae(det: &Detector, sets: &EvalSets) -> Result<Scored> {
    let s = |w: &[FeatureWindow]| -> Result<Vec<f32>> {
        Ok(det.score_windows(w)?.into_iter().map(|s| s.value).collect())
    };
    Ok(Scored {
        threshold: det.threshold,
        benign: s(&sets.benign)?,
        attacks: sets
            .attacks
            .iter()
            .map(|(_, w)| s(w))
            .collect::<Result<_>>()?,
        episodes: sets
            .episodes
            .iter()
            .map(|e| s(&e.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>()))
            .collect::<Result<_>>()?,
    })
}

fn score_pca(det: &PcaDetector, sets: &EvalSets) -> Result<Scored> {
    Ok(Scored {
        threshold: det.threshold,
        benign: det.score_windows(&sets.benign)?,
        attacks: sets
            .attacks
            .iter()
            .map(|(_, w)| det.score_windows(w))
            .collect::<Result<_, _>>()?,
        episodes: sets
            .episodes
            .iter()
            .map(|e| det.score_windows(&e.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?,
    })
}

/// Runs one tracker over `windows` (with their `scores`) tick by tick, in
/// window-end order. Returns, per container, the ticks (window ends) of the
/// incidents it opened.
fn incidents_opened(
    cfg: &IncidentConfig,
    windows: &[FeatureWindow],
    scores: &[f32],
    threshold: f32,
    hits: Option<&HitsByWindow>,
) -> BTreeMap<String, Vec<u64>> {
    let mut ticks: BTreeMap<u64, (Vec<WindowVerdict>, &[RuleHit])> = BTreeMap::new();
    for (w, s) in windows.iter().zip(scores) {
        ticks.entry(w.end_ms).or_default().0.push(WindowVerdict {
            container: w.container.0.clone(),
            score: Some((*s, threshold)),
            top_features: Vec::new(),
            features: Some(w.features),
            restarted: w.restarted,
        });
    }
    for (end, h) in hits.into_iter().flatten() {
        ticks.entry(*end).or_default().1 = h;
    }
    let mut tracker = IncidentTracker::new(cfg.clone());
    let mut opened: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (end, (verdicts, hits)) in ticks {
        for e in tracker.step(end, &verdicts, hits) {
            if e.state == IncidentState::Open {
                opened.entry(e.incident.container).or_default().push(end);
            }
        }
    }
    opened
}

fn median(v: &mut [f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Incident figures of one node on one set: (false incidents on the benign
/// set, per kind: (detected containers, attacked containers, windows to the
/// first incident of each detected one)).
struct NodeIncidents {
    false_incidents: usize,
    per_kind: Vec<(usize, usize, Vec<f32>)>,
}

fn node_incidents(
    cfg: &IncidentConfig,
    s: &Scored,
    sets: &EvalSets,
    with_rules: bool,
) -> NodeIncidents {
    let rules = |h| with_rules.then_some(h);
    let benign = incidents_opened(
        cfg,
        &sets.benign,
        &s.benign,
        s.threshold,
        rules(&sets.benign_hits),
    );
    let false_incidents = benign.values().map(Vec::len).sum();
    let mut per_kind = Vec::new();
    for ((episode, scores), hits) in sets
        .episodes
        .iter()
        .zip(&s.episodes)
        .zip(&sets.episode_hits)
    {
        let windows: Vec<FeatureWindow> = episode.iter().map(|(w, _)| w.clone()).collect();
        let opened = incidents_opened(cfg, &windows, scores, s.threshold, rules(hits));
        // Each container's attack span: first and last attacked window end.
        let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (w, attacked) in episode {
            if *attacked {
                let e = spans
                    .entry(w.container.0.as_str())
                    .or_insert((w.end_ms, w.end_ms));
                e.0 = e.0.min(w.end_ms);
                e.1 = e.1.max(w.end_ms);
            }
        }
        let mut detected = 0;
        let mut delays = Vec::new();
        for (c, (first, last)) in &spans {
            let hit = opened
                .get(*c)
                .and_then(|ends| ends.iter().find(|e| (*first..=*last).contains(*e)));
            if let Some(end) = hit {
                detected += 1;
                delays.push(((end - first) / WINDOW_MS + 1) as f32);
            }
        }
        per_kind.push((detected, spans.len(), delays));
    }
    NodeIncidents {
        false_incidents,
        per_kind,
    }
}

fn figures(
    per_node: &[Scored],
    sets: &EvalSets,
    container_hours: f32,
    cfg: &IncidentConfig,
    with_rules: bool,
) -> Result<DetectorFigures> {
    if per_node.is_empty() {
        bail!("no nodes to evaluate");
    }
    let n = per_node.len() as f32;
    let incidents: Vec<NodeIncidents> = per_node
        .iter()
        .map(|s| node_incidents(cfg, s, sets, with_rules))
        .collect();
    let mut per_kind = BTreeMap::new();
    for (k, (kind, _)) in sets.attacks.iter().enumerate() {
        let mut delays: Vec<f32> = incidents
            .iter()
            .flat_map(|i| i.per_kind[k].2.iter().copied())
            .collect();
        let incident_recall = incidents
            .iter()
            .map(|i| i.per_kind[k].0 as f32 / i.per_kind[k].1.max(1) as f32)
            .sum::<f32>()
            / n;
        let (mut auc, mut recall) = (0.0f32, 0.0f32);
        for s in per_node {
            let att = &s.attacks[k];
            let scores: Vec<f32> = s.benign.iter().chain(att).copied().collect();
            let labels: Vec<bool> = std::iter::repeat_n(false, s.benign.len())
                .chain(std::iter::repeat_n(true, att.len()))
                .collect();
            auc += roc_auc(&scores, &labels).with_context(|| format!("AUC of {kind}"))?;
            recall += att.iter().filter(|v| **v > s.threshold).count() as f32 / att.len() as f32;
        }
        per_kind.insert(
            kind.to_string(),
            KindFigures {
                auc: auc / n,
                recall: recall / n,
                incident_recall,
                median_windows_to_incident: median(&mut delays),
            },
        );
    }
    let kinds = per_kind.len().max(1) as f32;
    let false_alarms: f32 = per_node
        .iter()
        .map(|s| s.benign.iter().filter(|v| **v > s.threshold).count() as f32)
        .sum::<f32>()
        / n;
    let false_incidents = incidents
        .iter()
        .map(|i| i.false_incidents as f32)
        .sum::<f32>()
        / n;
    Ok(DetectorFigures {
        mean_auc: per_kind.values().map(|f| f.auc).sum::<f32>() / kinds,
        mean_recall: per_kind.values().map(|f| f.recall).sum::<f32>() / kinds,
        mean_incident_recall: per_kind.values().map(|f| f.incident_recall).sum::<f32>() / kinds,
        per_kind,
        false_alarms_per_container_hour: false_alarms / container_hours,
        false_incidents_per_container_day: false_incidents / (container_hours / 24.0),
    })
}

/// Runs the federation (the demo's code path, quietly), fits the PCA
/// baselines and evaluates all three detector kinds.
pub async fn run(opts: QualityOptions) -> Result<QualityReport> {
    if opts.nodes < 3 {
        bail!("the quality report needs at least 3 nodes");
    }
    if opts.benign_windows < 1 || opts.attack_set_windows < 4 {
        bail!("need at least 1 benign window and 4 attack-set windows per container");
    }
    let started = std::time::Instant::now();
    let (_, models) = demo::run_with_models(DemoOptions {
        nodes: opts.nodes,
        rounds: opts.rounds,
        warmup_windows: opts.warmup_windows,
        attack_windows: 12,
        seed: opts.seed,
        bucket_size: DemoOptions::default()
            .bucket_size
            .min(opts.nodes.saturating_sub(1).max(1)),
        quiet: true,
        ..DemoOptions::default()
    })
    .await?;
    let sets = eval_sets(&opts)?;
    let (mut fed, mut local, mut pca) = (Vec::new(), Vec::new(), Vec::new());
    let mut components = 0usize;
    for m in &models {
        fed.push(score_ae(&m.federated, &sets)?);
        local.push(score_ae(&m.local, &sets)?);
        let mut p = PcaDetector::fit(&m.warmup, &PcaConfig::default())
            .with_context(|| format!("PCA baseline of {}", m.node))?;
        // Calibrated like the node's models: without each container's
        // start-up windows, which the incident tracker never judges.
        let settled: Vec<FeatureWindow> = m
            .warmup
            .iter()
            .zip(settled_flags(&m.warmup, opts.incidents.warmup_windows))
            .filter(|(_, settled)| *settled)
            .map(|(w, _)| w.clone())
            .collect();
        if settled.len() >= 10 {
            p.calibrate(&settled, PcaConfig::default().false_alarm_rate)
                .with_context(|| format!("PCA threshold of {}", m.node))?;
        }
        components += p.components();
        pca.push(score_pca(&p, &sets)?);
    }
    let container_hours = sets.benign.len() as f32 * WINDOW_MS as f32 / 3_600_000.0;
    let cfg = &opts.incidents;
    let mut bounds = Vec::new();
    for open_bound in [1.5f32, 2.0, 2.5, 3.0, 3.5, 4.0] {
        let c = IncidentConfig {
            open_bound,
            ..cfg.clone()
        };
        let f = figures(&fed, &sets, container_hours, &c, false)?;
        let mut delays: Vec<f32> = fed
            .iter()
            .flat_map(|s| node_incidents(&c, s, &sets, false).per_kind)
            .flat_map(|(_, _, d)| d)
            .collect();
        bounds.push(BoundFigures {
            open_bound,
            false_incidents_per_container_day: f.false_incidents_per_container_day,
            mean_incident_recall: f.mean_incident_recall,
            median_windows_to_incident: median(&mut delays),
        });
    }
    Ok(QualityReport {
        nodes: opts.nodes,
        rounds: opts.rounds,
        seed: opts.seed,
        benign_windows: sets.benign.len(),
        benign_container_hours: container_hours,
        attack_windows_per_kind: sets.attacks.first().map_or(0, |(_, w)| w.len()),
        pca_components: components as f32 / models.len().max(1) as f32,
        federated: figures(&fed, &sets, container_hours, cfg, false)?,
        node: figures(&fed, &sets, container_hours, cfg, true)?,
        local: figures(&local, &sets, container_hours, cfg, false)?,
        pca: figures(&pca, &sets, container_hours, cfg, false)?,
        benign_container_days: container_hours / 24.0,
        bounds,
        seconds: started.elapsed().as_secs_f32(),
    })
}

/// The report as a Markdown table.
pub fn table(r: &QualityReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Detection quality, {} nodes, {} rounds, seed {}: means over nodes; {} attacked windows per kind, \
         {} benign windows ({:.1} container-hours)\n\n",
        r.nodes, r.rounds, r.seed, r.attack_windows_per_kind, r.benign_windows, r.benign_container_hours
    ));
    out.push_str("| attack kind | AUC federated | AUC local-only | AUC PCA (linfa) | recall federated | recall local-only | recall PCA |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (kind, f) in &r.federated.per_kind {
        let l = r.local.per_kind.get(kind);
        let p = r.pca.per_kind.get(kind);
        let g = |x: Option<&KindFigures>, auc: bool| {
            x.map_or("-".to_string(), |v| {
                format!("{:.3}", if auc { v.auc } else { v.recall })
            })
        };
        out.push_str(&format!(
            "| {kind} | {:.3} | {} | {} | {:.3} | {} | {} |\n",
            f.auc,
            g(l, true),
            g(p, true),
            f.recall,
            g(l, false),
            g(p, false)
        ));
    }
    out.push_str(&format!(
        "| **mean** | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** |\n",
        r.federated.mean_auc,
        r.local.mean_auc,
        r.pca.mean_auc,
        r.federated.mean_recall,
        r.local.mean_recall,
        r.pca.mean_recall
    ));
    out.push_str(&format!(
        "\nFalse alarms per container-hour (benign windows above the node's threshold): \
         federated {:.2}, local-only {:.2}, PCA {:.2}. PCA keeps {:.1} components on average. {:.1} s.\n",
        r.federated.false_alarms_per_container_hour,
        r.local.false_alarms_per_container_hour,
        r.pca.false_alarms_per_container_hour,
        r.pca_components,
        r.seconds
    ));
    out.push_str(&format!(
        "\nBy incident (the node's incident tracker, default [incidents]): recall = attacked containers \
         with an incident opened during the attack; time = median from the attack's start to the end of \
         the window that opened it (10 s windows); false incidents over {:.1} benign container-days per node.\n\n",
        r.benign_container_days
    ));
    out.push_str("| attack kind | incident recall federated | local-only | PCA | node (federated + rules) | time to incident federated | local-only | PCA | node |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let time = |x: Option<&KindFigures>| {
        x.and_then(|v| v.median_windows_to_incident)
            .map_or("-".to_string(), |w| {
                format!("{w:.1} w ({:.0} s)", w * WINDOW_MS as f32 / 1000.0)
            })
    };
    let rec = |x: Option<&KindFigures>| {
        x.map_or("-".to_string(), |v| format!("{:.3}", v.incident_recall))
    };
    for (kind, f) in &r.federated.per_kind {
        let l = r.local.per_kind.get(kind);
        let p = r.pca.per_kind.get(kind);
        let nd = r.node.per_kind.get(kind);
        out.push_str(&format!(
            "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            rec(Some(f)),
            rec(l),
            rec(p),
            rec(nd),
            time(Some(f)),
            time(l),
            time(p),
            time(nd)
        ));
    }
    out.push_str(&format!(
        "| **mean** | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** | | | | |\n",
        r.federated.mean_incident_recall,
        r.local.mean_incident_recall,
        r.pca.mean_incident_recall,
        r.node.mean_incident_recall
    ));
    out.push_str(&format!(
        "\nFalse incidents per container-day: federated {:.2}, local-only {:.2}, PCA {:.2}, \
         node (federated + rules) {:.2}.\n",
        r.federated.false_incidents_per_container_day,
        r.local.false_incidents_per_container_day,
        r.pca.false_incidents_per_container_day,
        r.node.false_incidents_per_container_day
    ));
    out.push_str("\nAlert budget by `open_bound` (federated model, other [incidents] keys at their defaults):\n\n");
    out.push_str("| open_bound | false incidents per container-day | mean incident recall | median time to incident |\n");
    out.push_str("|---:|---:|---:|---:|\n");
    for b in &r.bounds {
        out.push_str(&format!(
            "| {:.1} | {:.2} | {:.3} | {} |\n",
            b.open_bound,
            b.false_incidents_per_container_day,
            b.mean_incident_recall,
            b.median_windows_to_incident
                .map_or("-".to_string(), |w| format!(
                    "{w:.1} w ({:.0} s)",
                    w * WINDOW_MS as f32 / 1000.0
                ))
        ));
    }
    out
}
