//! `fedmesh-sim matrix`: one base scenario run over a grid of rules ×
//! attacks × bucket sizes, summarised in a table a paper could print
//! (Markdown and CSV).
//!
//! Rule parameters are derived per cell from the rule inputs per round
//! (`n`, submissions divided into buckets of k) and the malicious
//! identities `f`: each rule tolerates `min(f, n, its own maximum)` —
//! trimmed mean `(n−1)/2`, Krum and Multi-Krum `(n−3)/2` (Multi-Krum
//! averages `m = n−f−2`), Bulyan `(n−3)/4`; centered clipping uses τ = 1
//! and 3 iterations, the geometric median 8 Weiszfeld steps with ν = 0.1.
//! Cells with k > 1 run the real secure-aggregation protocol; cells with a
//! targeted attack also run their clean twin (the "clean miss" column).

use fedmesh_coordinator::aggregate::{Rule, RuleConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::engine::inprocess::{self, RunOptions};
use crate::scenario::{AttackKindSpec, AttackSpec, Scenario, ScenarioError};

/// One cell of the grid.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cell {
    /// Rule with its derived parameters, e.g. `krum(f=4)`.
    pub rule: String,
    /// Attack name.
    pub attack: String,
    /// Bucket size.
    pub k: usize,
    /// Mean over attack kinds of the final AUC.
    pub mean_auc: Option<f32>,
    /// Worst attack kind and its final AUC.
    pub worst: Option<(String, f32)>,
    /// Attack success (data poisoning, scaling with poison): miss rate of
    /// the targeted kind at the calibrated threshold.
    pub asr: Option<f32>,
    /// The same miss rate under the clean twin (attackers disabled).
    pub clean_miss: Option<f32>,
    /// Rounds aborted.
    pub aborted: usize,
    /// Share of malicious submissions the rule excluded (all rounds).
    pub malicious_excluded: Option<f32>,
    /// Malicious identities quarantined at the end of the run.
    pub quarantined_malicious: usize,
    /// Honest identities quarantined at the end of the run.
    pub quarantined_honest: usize,
    /// Why the cell could not run, if it could not.
    pub error: Option<String>,
}

/// The rule `name` with parameters for `n` inputs and `f` malicious ones.
pub fn rule_for(name: &str, n: usize, f: usize) -> Result<RuleConfig, ScenarioError> {
    let f = f.min(n);
    let rule = match name {
        "fedavg" => Rule::FedAvg,
        "median" => Rule::Median,
        "trimmed_mean" => Rule::TrimmedMean {
            f: f.min(n.saturating_sub(1) / 2),
        },
        "krum" => Rule::Krum {
            f: f.min(n.saturating_sub(3) / 2),
        },
        "multi_krum" => {
            let f = f.min(n.saturating_sub(3) / 2);
            Rule::MultiKrum {
                f,
                m: n.saturating_sub(f + 2).max(1),
            }
        }
        "bulyan" => Rule::Bulyan {
            f: f.min(n.saturating_sub(3) / 4),
        },
        "geometric_median" => Rule::GeometricMedian {
            iterations: 8,
            nu: 0.1,
        },
        "centered_clipping" => Rule::CenteredClipping {
            tau: 1.0,
            iterations: 3,
        },
        other => {
            return Err(ScenarioError::Invalid(format!("unknown rule {other:?}")));
        }
    };
    Ok(RuleConfig::from(rule))
}

fn label(cfg: &RuleConfig) -> String {
    match &cfg.rule {
        Rule::TrimmedMean { f } | Rule::Krum { f } | Rule::Bulyan { f } => {
            format!("{}(f={f})", cfg.rule.name())
        }
        Rule::MultiKrum { f, m } => format!("multi_krum(f={f},m={m})"),
        r => r.name().to_string(),
    }
}

/// Runs the grid. `fraction` is the attacker fraction used when the base
/// scenario has no `[attack]`.
pub fn run(
    base: &Scenario,
    rules: &[String],
    attacks: &[String],
    ks: &[usize],
    fraction: f64,
    quiet: bool,
) -> Result<Vec<Cell>, ScenarioError> {
    let total = (rules.len() * attacks.len() * ks.len()) as u64;
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>8.bold} [{bar:30}] {pos}/{len} cells {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix("matrix");
        pb
    };
    let mut cells = Vec::new();
    for attack in attacks {
        let kind = AttackKindSpec::by_name(attack)?;
        for &k in ks {
            for rule in rules {
                let mut s = base.clone();
                s.bucket_size = k.max(1);
                s.attack = kind.clone().map(|kind| AttackSpec {
                    fraction: base.attack.as_ref().map_or(fraction, |a| a.fraction),
                    sybils: base.attack.as_ref().map_or(1, |a| a.sybils),
                    start_round: base.attack.as_ref().map_or(1, |a| a.start_round),
                    kind,
                });
                let f = s.attacker_count() * s.attack.as_ref().map_or(1, |a| a.sybils);
                s.rule = rule_for(rule, s.nominal_rule_inputs(), f)?;
                s.name = format!("{}/{}/{}/k{}", base.name, label(&s.rule), attack, k);
                pb.set_message(s.name.clone());
                let mut cell = Cell {
                    rule: label(&s.rule),
                    attack: attack.clone(),
                    k,
                    mean_auc: None,
                    worst: None,
                    asr: None,
                    clean_miss: None,
                    aborted: 0,
                    malicious_excluded: None,
                    quarantined_malicious: 0,
                    quarantined_honest: 0,
                    error: None,
                };
                match inprocess::run(
                    &s,
                    &RunOptions {
                        quiet: true,
                        record: None,
                    },
                ) {
                    Ok((r, _)) => {
                        cell.mean_auc = r.final_mean_auc();
                        cell.worst = r.final_worst_auc();
                        cell.asr = r.final_attack_success();
                        cell.clean_miss = r.final_clean_miss_rate();
                        cell.aborted = r.rounds.iter().filter(|m| m.aborted.is_some()).count();
                        if let Some(last) = r.rounds.last() {
                            cell.quarantined_malicious = last.quarantined_malicious;
                            cell.quarantined_honest =
                                last.quarantined.len() - last.quarantined_malicious;
                        }
                        let mal: usize = r.rounds.iter().map(|m| m.malicious).sum();
                        let exc: usize = r.rounds.iter().map(|m| m.rule_excluded_malicious).sum();
                        cell.malicious_excluded = (mal > 0).then(|| exc as f32 / mal as f32);
                    }
                    Err(e) => cell.error = Some(e.to_string()),
                }
                cells.push(cell);
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    Ok(cells)
}

fn f3(v: Option<f32>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

/// The grid as a Markdown table.
pub fn markdown(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| rule | attack | k | mean AUC | worst kind AUC | ASR | clean miss | malicious excluded | quarantined (mal./honest) | aborted rounds |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let worst = c
            .worst
            .as_ref()
            .map(|(k, v)| format!("{v:.3} ({k})"))
            .unwrap_or_else(|| "–".into());
        let (mean, worst) = match &c.error {
            Some(e) => (format!("error: {e}"), "–".into()),
            None => (f3(c.mean_auc), worst),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            c.rule,
            c.attack,
            c.k,
            mean,
            worst,
            f3(c.asr),
            f3(c.clean_miss),
            c.malicious_excluded
                .map(|x| format!("{:.0} %", x * 100.0))
                .unwrap_or_else(|| "–".into()),
            c.quarantined_malicious,
            c.quarantined_honest,
            c.aborted
        ));
    }
    out
}

/// The grid as CSV.
pub fn csv_text(cells: &[Cell]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "rule",
        "attack",
        "k",
        "mean_auc",
        "worst_kind",
        "worst_auc",
        "asr",
        "clean_miss",
        "malicious_excluded",
        "quarantined_malicious",
        "quarantined_honest",
        "aborted_rounds",
        "error",
    ])?;
    let o = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_default();
    for c in cells {
        w.write_record([
            c.rule.clone(),
            c.attack.clone(),
            c.k.to_string(),
            o(c.mean_auc),
            c.worst.as_ref().map(|x| x.0.clone()).unwrap_or_default(),
            o(c.worst.as_ref().map(|x| x.1)),
            o(c.asr),
            o(c.clean_miss),
            o(c.malicious_excluded),
            c.quarantined_malicious.to_string(),
            c.quarantined_honest.to_string(),
            c.aborted.to_string(),
            c.error.clone().unwrap_or_default(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_rule_parameters_respect_each_rules_bound() {
        assert_eq!(rule_for("krum", 10, 4).unwrap().rule, Rule::Krum { f: 3 });
        assert_eq!(rule_for("krum", 20, 4).unwrap().rule, Rule::Krum { f: 4 });
        assert_eq!(
            rule_for("bulyan", 20, 6).unwrap().rule,
            Rule::Bulyan { f: 4 }
        );
        assert_eq!(
            rule_for("multi_krum", 20, 4).unwrap().rule,
            Rule::MultiKrum { f: 4, m: 14 }
        );
        assert_eq!(
            rule_for("trimmed_mean", 5, 4).unwrap().rule,
            Rule::TrimmedMean { f: 2 }
        );
        for name in [
            "fedavg",
            "median",
            "trimmed_mean",
            "krum",
            "multi_krum",
            "bulyan",
            "geometric_median",
            "centered_clipping",
        ] {
            for n in [3, 7, 20] {
                let cfg = rule_for(name, n, n / 3).unwrap();
                assert!(cfg.check(n).is_ok(), "{name} n={n}: {:?}", cfg.check(n));
            }
        }
        assert!(rule_for("nope", 3, 0).is_err());
    }
}
