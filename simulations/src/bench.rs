//! `fedmesh-sim bench aggregate`: wall-clock cost of the aggregation rules.
//!
//! For every (N, P) cell: N random updates of P values (uniform in [−1, 1),
//! seeded ChaCha, generated once per cell), then a plain memory-bandwidth
//! pass over the same N×P f32 (the sum of every value, on all cores) as the
//! physical floor, then every rule through
//! [`fedmesh_coordinator::aggregate::RuleConfig::aggregate`]. Each time is
//! the best of `reps` runs. For N = 100, P = 10⁶ the table also gives the
//! speed-up against the Flower 1.42 timings the issue quotes (2-core
//! machine, same N and P). Every row also records the 1-minute load average
//! (`/proc/loadavg`, where readable) just before it was measured, since the
//! machine may be shared.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fedmesh_coordinator::aggregate::{Rule, RuleConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rule names accepted by `--rules` (besides `all`), in table order.
pub const RULES: [&str; 8] = [
    "fedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
];

/// Flower 1.42 timings (ms) for N = 100, P = 10⁶ on a 2-core machine.
const FLOWER_MS: [(&str, f64); 6] = [
    ("fedavg", 128.0),
    ("median", 2397.0),
    ("trimmed_mean", 1896.0),
    ("krum", 1048.0),
    ("multi_krum", 1054.0),
    ("bulyan", 6255.0),
];

/// Parameters of `bench aggregate`.
#[derive(Debug, Clone)]
pub struct AggregateBench {
    /// Batch sizes.
    pub n: Vec<usize>,
    /// Parameter counts.
    pub p: Vec<usize>,
    /// Runs per measurement; the best is kept.
    pub reps: usize,
    /// Rule names (see [`RULES`]).
    pub rules: Vec<String>,
    /// Seed of the random updates.
    pub seed: u64,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Rule name, or `bandwidth` for the reference pass.
    pub rule: String,
    /// Parameters the rule ran with (f, m, ...), empty for the pass.
    pub params: String,
    /// Batch size.
    pub n: usize,
    /// Parameters per update.
    pub p: usize,
    /// Best wall-clock time.
    pub best: Duration,
    /// `best` divided by the bandwidth pass of the same cell.
    pub ratio: f64,
    /// Flower 1.42 time for this cell, where quoted.
    pub flower_ms: Option<f64>,
    /// 1-minute load average just before the measurement, where readable.
    pub load: Option<f64>,
}

/// The 1-minute load average from `/proc/loadavg` (Linux), if readable.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Expands `all` and checks names.
pub fn parse_rules(names: &[String]) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in names {
        if name == "all" {
            out.extend(RULES);
            continue;
        }
        match RULES.iter().find(|r| **r == name.as_str()) {
            Some(r) => out.push(*r),
            None => bail!("unknown rule {name:?} (known: all, {})", RULES.join(", ")),
        }
    }
    out.dedup();
    Ok(out)
}

/// The configuration each rule is benchmarked with for a batch of `n`:
/// f = ⌊n/10⌋ (capped so that Bulyan's n ≥ 4f+3 holds), Multi-Krum keeps
/// m = min(n−2f, n−f−2), geometric median with its defaults (8 steps,
/// ν = 0.1), centered clipping with τ = 10 and 3 steps.
pub fn bench_rule(name: &str, n: usize) -> Result<Rule> {
    let f = (n / 10).min(n.saturating_sub(3) / 4);
    let rule = match name {
        "fedavg" => Rule::FedAvg,
        "median" => Rule::Median,
        "trimmed_mean" => Rule::TrimmedMean { f },
        "krum" => Rule::Krum { f },
        "multi_krum" => Rule::MultiKrum {
            f,
            m: (n.saturating_sub(2 * f)).min(n.saturating_sub(f + 2)),
        },
        "bulyan" => Rule::Bulyan { f },
        "geometric_median" => Rule::GeometricMedian {
            iterations: 8,
            nu: 0.1,
        },
        "centered_clipping" => Rule::CenteredClipping {
            tau: 10.0,
            iterations: 3,
        },
        other => bail!("unknown rule {other:?}"),
    };
    rule.check(n)
        .with_context(|| format!("{name} cannot run with n = {n}"))?;
    Ok(rule)
}

fn params(rule: &Rule) -> String {
    match rule {
        Rule::FedAvg | Rule::Median => String::new(),
        Rule::TrimmedMean { f } | Rule::Krum { f } | Rule::Bulyan { f } => format!("f={f}"),
        Rule::MultiKrum { f, m } => format!("f={f} m={m}"),
        Rule::GeometricMedian { iterations, nu } => format!("T={iterations} nu={nu}"),
        Rule::CenteredClipping { tau, iterations } => format!("tau={tau} L={iterations}"),
    }
}

/// N updates of P values, uniform in [−1, 1).
pub(crate) fn random_batch(n: usize, p: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..p).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

/// Sum of a slice over 16 f32 lanes (vectorizable), in f64 at the end.
fn sum_row(row: &[f32]) -> f64 {
    let (chunks, rest) = row.as_chunks::<16>();
    let mut acc = [0f32; 16];
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().map(|&x| f64::from(x)).sum::<f64>() + rest.iter().map(|&x| f64::from(x)).sum::<f64>()
}

/// Reads every value once on all cores: the memory-bandwidth floor.
fn bandwidth_pass(rows: &[&[f32]]) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|r| sum_row(r)).sum::<f64>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .sum()
    })
}

pub(crate) fn best_of<T>(reps: usize, mut run: impl FnMut() -> Result<T>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        black_box(run()?);
        best = best.min(t0.elapsed());
    }
    Ok(best)
}

/// Runs the benchmark; one row for the bandwidth pass and one per rule for
/// every (N, P) cell.
pub fn run_aggregate(opts: &AggregateBench) -> Result<Vec<BenchRow>> {
    let names = parse_rules(&opts.rules)?;
    let cells: Vec<(usize, usize)> = opts
        .n
        .iter()
        .flat_map(|&n| opts.p.iter().map(move |&p| (n, p)))
        .collect();
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((cells.len() * (names.len() + 2)) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for (ci, &(n, p)) in cells.iter().enumerate() {
        bar.set_message(format!("N={n} P={p}: generating"));
        let batch = random_batch(n, p, opts.seed.wrapping_add(ci as u64));
        let refs: Vec<&[f32]> = batch.iter().map(|r| r.as_slice()).collect();
        let weights = vec![1.0f64; n];
        bar.inc(1);
        bar.set_message(format!("N={n} P={p}: bandwidth"));
        let load = load_average();
        let floor = best_of(opts.reps, || Ok(bandwidth_pass(&refs)))?;
        let floor_s = floor.as_secs_f64().max(1e-9);
        rows.push(BenchRow {
            rule: "bandwidth".into(),
            params: "sum of all values".into(),
            n,
            p,
            best: floor,
            ratio: 1.0,
            flower_ms: None,
            load,
        });
        bar.inc(1);
        for name in &names {
            bar.set_message(format!("N={n} P={p}: {name}"));
            let rule = bench_rule(name, n)?;
            let cfg = RuleConfig::from(rule.clone());
            let load = load_average();
            let best = best_of(opts.reps, || {
                cfg.aggregate(&refs, &weights)
                    .with_context(|| format!("{name} on N={n} P={p}"))
            })?;
            let flower_ms = (n == 100 && p == 1_000_000)
                .then(|| FLOWER_MS.iter().find(|(r, _)| r == name).map(|(_, ms)| *ms))
                .flatten();
            rows.push(BenchRow {
                rule: (*name).to_string(),
                params: params(&rule),
                n,
                p,
                best,
                ratio: best.as_secs_f64() / floor_s,
                flower_ms,
                load,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| rule | params | N | P | time ms | × bandwidth | Flower 1.42 ms | speed-up | load |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ms = r.best.as_secs_f64() * 1e3;
        let (flower, speedup) = match r.flower_ms {
            Some(f) => (format!("{f:.0}"), format!("{:.1}×", f / ms.max(1e-9))),
            None => (String::new(), String::new()),
        };
        let load = r.load.map_or_else(String::new, |l| format!("{l:.2}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} |\n",
            r.rule, r.params, r.n, r.p, ms, r.ratio, flower, speedup, load
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_run_produces_a_row_per_rule_and_cell() {
        let opts = AggregateBench {
            n: vec![7, 10],
            p: vec![100],
            reps: 1,
            rules: vec!["all".into()],
            seed: 1,
            quiet: true,
        };
        let rows = run_aggregate(&opts).unwrap();
        assert_eq!(rows.len(), 2 * (RULES.len() + 1));
        let t = table(&rows);
        assert!(t.contains("| bulyan | f=1 | 10 | 100 |"));
        assert!(parse_rules(&["krum2".into()]).is_err());
        assert_eq!(parse_rules(&["krum".into()]).unwrap(), vec!["krum"]);
    }

    #[test]
    fn bandwidth_pass_sums_everything() {
        let rows = [vec![1f32; 37], vec![2f32; 37], vec![0.5f32; 37]];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        assert_eq!(bandwidth_pass(&refs), 3.5 * 37.0);
    }
}
