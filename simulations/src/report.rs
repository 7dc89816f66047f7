//! Run outputs: `run.json` (deterministic), `timing.json`, `rounds.csv`,
//! SVG plots (AUC per attack kind vs round, loss vs round) and a one-page
//! `report.html` embedding them.
//!
//! **Attack success** (targeted attacks: data poisoning, scaling with
//! poisoned data) is the miss rate of the targeted attack kind's held-out
//! windows at the alert threshold calibrated on separate benign held-out
//! windows at the false-alarm budget `eval.false_alarm_rate` (default 1 %):
//! the fraction of those windows the global detector scores at or below the
//! threshold. It is reported next to `clean_miss_rate`, the same figure for
//! the clean twin's model (same scenario and seed, attackers disabled) in
//! the same round: an attack only succeeds by the difference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::engine::{RunReport, RunTiming};

/// Output failures.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File I/O.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// Serialization.
    #[error("serialize: {0}")]
    Serialize(String),
    /// Plotting.
    #[error("plot {path}: {message}")]
    Plot {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |e| ReportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Files written by [`write_all`].
#[derive(Debug, Clone)]
pub struct Written {
    /// `run.json`.
    pub json: PathBuf,
    /// `rounds.csv`.
    pub csv: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
}

/// The attack kinds present in any round, sorted.
fn kinds(r: &RunReport) -> Vec<String> {
    let set: BTreeSet<&String> = r
        .rounds
        .iter()
        .flat_map(|m| m.auc_per_kind.keys())
        .collect();
    set.into_iter().cloned().collect()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The per-round table as CSV text.
pub fn csv_text(r: &RunReport) -> Result<String, ReportError> {
    let ks = kinds(r);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head: Vec<String> = [
        "round",
        "sampled",
        "participants",
        "dropped",
        "stragglers",
        "malicious",
        "rule",
        "rule_inputs",
        "aborted",
        "version",
        "attack_param",
        "mean_train_loss",
        "global_loss",
        "auc",
        "attack_success",
        "clean_miss_rate",
        "buckets",
        "buckets_lost",
        "buckets_rejected",
        "rule_excluded",
        "rule_excluded_malicious",
        "shadow",
        "quarantined",
        "quarantined_malicious",
        "reputation_events",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(ks.iter().map(|k| format!("auc_{k}")));
    let ser = |e: csv::Error| ReportError::Serialize(e.to_string());
    w.write_record(&head).map_err(ser)?;
    for m in &r.rounds {
        let mut row = vec![
            m.round.to_string(),
            m.sampled.to_string(),
            m.participants.to_string(),
            m.dropped.to_string(),
            m.stragglers.to_string(),
            m.malicious.to_string(),
            m.rule.clone(),
            m.rule_inputs.to_string(),
            m.aborted.clone().unwrap_or_default(),
            m.version.to_string(),
            opt(m.attack_param),
            opt(m.mean_train_loss),
            opt(m.global_loss),
            opt(m.auc),
            opt(m.attack_success),
            opt(m.clean_miss_rate),
            m.buckets.to_string(),
            m.buckets_lost.len().to_string(),
            m.buckets_rejected.len().to_string(),
            m.rule_excluded.len().to_string(),
            m.rule_excluded_malicious.to_string(),
            m.shadow.to_string(),
            m.quarantined.join(" "),
            m.quarantined_malicious.to_string(),
            m.reputation_events.join("; "),
        ];
        row.extend(ks.iter().map(|k| opt(m.auc_per_kind.get(k))));
        w.write_record(&row).map_err(ser)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ReportError::Serialize(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ReportError::Serialize(e.to_string()))
}

fn plot_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> ReportError + '_ {
    move |e| ReportError::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A line plot of named series over rounds into an SVG file.
fn line_plot(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    y_range: Option<(f64, f64)>,
) -> Result<(), ReportError> {
    let e = plot_err(path);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let x_max = xs.fold(1.0f64, f64::max);
    let (y_lo, y_hi) = y_range.unwrap_or_else(|| {
        let ys: Vec<f64> = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .filter(|v| v.is_finite())
            .collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() && hi > lo {
            (lo.min(0.0), hi * 1.05)
        } else {
            (0.0, 1.0)
        }
    });
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5f64..x_max + 0.5, y_lo..y_hi)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc(y_label)
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Writes the AUC and loss plots; returns their paths.
pub fn plots(r: &RunReport, dir: &Path) -> Result<(PathBuf, PathBuf), ReportError> {
    let mut auc_series: Vec<(String, Vec<(f64, f64)>)> = kinds(r)
        .into_iter()
        .map(|k| {
            let pts = r
                .rounds
                .iter()
                .filter_map(|m| {
                    m.auc_per_kind
                        .get(&k)
                        .map(|v| (m.round as f64, f64::from(*v)))
                })
                .collect();
            (k, pts)
        })
        .collect();
    auc_series.push((
        "all".into(),
        r.rounds
            .iter()
            .filter_map(|m| m.auc.map(|v| (m.round as f64, f64::from(v))))
            .collect(),
    ));
    let auc = dir.join("auc.svg");
    line_plot(
        &auc,
        &format!("{}: detection AUC per attack kind", r.scenario),
        "ROC AUC (held-out)",
        &auc_series,
        Some((0.0, 1.02)),
    )?;
    let loss_series = vec![
        (
            "global (held-out benign)".to_string(),
            r.rounds
                .iter()
                .filter_map(|m| m.global_loss.map(|v| (m.round as f64, f64::from(v))))
                .collect(),
        ),
        (
            "mean local training".to_string(),
            r.rounds
                .iter()
                .filter_map(|m| m.mean_train_loss.map(|v| (m.round as f64, f64::from(v))))
                .collect(),
        ),
    ];
    let loss = dir.join("loss.svg");
    line_plot(
        &loss,
        &format!("{}: loss", r.scenario),
        "reconstruction MSE",
        &loss_series,
        None,
    )?;
    Ok((auc, loss))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f3(v: Option<f32>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// The one-page HTML report with the SVGs inlined.
pub fn html(r: &RunReport, t: &RunTiming, auc_svg: &str, loss_svg: &str) -> String {
    let worst = r
        .final_worst_auc()
        .map(|(k, v)| format!("{v:.3} ({})", esc(&k)))
        .unwrap_or_else(|| "–".into());
    let mut rows = String::new();
    for m in &r.rounds {
        let lost: Vec<String> = m
            .buckets_lost
            .iter()
            .map(|l| format!("bucket {} ({} members): {}", l.bucket, l.members, l.reason))
            .collect();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            m.round,
            m.participants,
            m.dropped,
            m.malicious,
            m.rule_inputs,
            esc(&lost.join("; ")),
            f3(m.global_loss),
            f3(m.auc),
            f3(m.attack_success),
            f3(m.clean_miss_rate),
            m.rule_excluded.len(),
            esc(&m.quarantined.join(" ")),
            m.quarantined_malicious,
            esc(m.aborted.as_deref().unwrap_or("")),
        ));
    }
    let twin = r
        .clean_twin
        .as_ref()
        .map(|c| {
            format!(
                "final-parameter distance ‖θ − θ_clean‖/‖θ_clean − θ_0‖ = {:.4}; clean twin mean AUC {}",
                c.distance,
                f3(c.final_mean_auc)
            )
        })
        .unwrap_or_else(|| "not run".into());
    let target = r.attack_target.as_deref().unwrap_or("–");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedmesh-sim: {name}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
.kv td:first-child{{text-align:left;font-weight:bold}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}</style></head>
<body><h1>{name}</h1>
<table class="kv">
<tr><td>engine</td><td>{engine}</td></tr><tr><td>seed</td><td>{seed}</td></tr>
<tr><td>nodes / attackers</td><td>{nodes} / {attackers}</td></tr>
<tr><td>rule / attack / k</td><td>{rule} / {attack} / {k}</td></tr>
<tr><td>final version</td><td>{version}</td></tr>
<tr><td>final mean AUC over attack kinds</td><td>{mean}</td></tr>
<tr><td>worst attack kind AUC</td><td>{worst}</td></tr>
<tr><td>aggregation</td><td>{aggregation}</td></tr>
<tr><td>attack success: miss rate of {target} windows at the threshold for {far} % false alarms (attacked / clean twin)</td><td>{asr} / {clean}</td></tr>
<tr><td>clean twin</td><td>{twin}</td></tr>
<tr><td>quarantined at the end (malicious / all)</td><td>{qm} / {qa}</td></tr>
<tr><td>final parameters SHA-256</td><td><code>{sha}</code></td></tr>
<tr><td>time (s): setup (certificates) / train / aggregate / eval / clean twin / total ({threads} threads)</td>
<td>{ts:.2} ({tc:.2}) / {tt:.2} / {ta:.2} / {te:.2} / {tw:.2} / {tot:.2}</td></tr>
</table>
<div class="plots">{auc_svg}{loss_svg}</div>
<h2>Rounds</h2>
<table><tr><th>round</th><th>participants</th><th>dropped</th><th>malicious</th><th>rule inputs</th><th>buckets lost</th><th>global loss</th><th>AUC</th><th>attack success</th><th>clean miss rate</th><th>rule excluded</th><th>quarantined</th><th>quarantined malicious</th><th>aborted</th></tr>
{rows}</table>
<p>Attack success = miss rate of the targeted kind's held-out windows at the alert threshold
calibrated on separate benign held-out windows at the false-alarm budget; the clean miss rate is
the same figure for the clean twin (same scenario and seed, attackers disabled). "Rule excluded"
counts the identities the rule left out in that round; "quarantined" lists the identities the
coordinator's reputation has quarantined (their updates are ignored).</p>
<p>Files: run.json (deterministic), timing.json, rounds.csv, auc.svg, loss.svg.</p>
</body></html>
"#,
        name = esc(&r.scenario),
        engine = esc(&r.engine),
        seed = r.seed,
        nodes = r.nodes,
        attackers = r.attackers.len(),
        rule = esc(&r.rule),
        attack = esc(&r.attack),
        k = r.bucket_size,
        version = r.final_version,
        mean = f3(r.final_mean_auc()),
        asr = f3(r.final_attack_success()),
        clean = f3(r.final_clean_miss_rate()),
        aggregation = esc(&r.aggregation),
        target = esc(target),
        far = r.false_alarm_rate * 100.0,
        twin = esc(&twin),
        qm = r.rounds.last().map_or(0, |m| m.quarantined_malicious),
        qa = r.final_quarantined().len(),
        sha = r.final_params_sha256,
        threads = t.threads,
        ts = t.setup_s,
        tc = t.certificates_s,
        tw = t.clean_twin_s,
        tt = t.train_s,
        ta = t.aggregate_s,
        te = t.eval_s,
        tot = t.total_s,
    )
}

/// Writes every output into `dir` (created if missing).
pub fn write_all(r: &RunReport, t: &RunTiming, dir: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join("run.json");
    let text = serde_json::to_vec_pretty(r).map_err(|e| ReportError::Serialize(e.to_string()))?;
    std::fs::write(&json, text).map_err(io(&json))?;
    let timing = dir.join("timing.json");
    let text = serde_json::to_vec_pretty(t).map_err(|e| ReportError::Serialize(e.to_string()))?;
    std::fs::write(&timing, text).map_err(io(&timing))?;
    let csv = dir.join("rounds.csv");
    std::fs::write(&csv, csv_text(r)?).map_err(io(&csv))?;
    let (auc, loss) = plots(r, dir)?;
    let auc_svg = std::fs::read_to_string(&auc).map_err(io(&auc))?;
    let loss_svg = std::fs::read_to_string(&loss).map_err(io(&loss))?;
    let page = dir.join("report.html");
    std::fs::write(&page, html(r, t, &auc_svg, &loss_svg)).map_err(io(&page))?;
    Ok(Written {
        json,
        csv,
        html: page,
    })
}
