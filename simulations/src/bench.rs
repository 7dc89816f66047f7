//! `fedmesh-sim bench aggregate`: every aggregation rule against the
//! physical limit it is bound by, measured in the same run.
//!
//! For every (N, P) cell: N random updates of P values (uniform in [−1, 1),
//! seeded ChaCha, generated once per cell), then two limits of this
//! machine, then every rule through
//! [`fedmesh_coordinator::aggregate::RuleConfig::aggregate`]:
//!
//! - a **memory pass** over the same N×P f32 (the sum of every value, on
//!   all cores): the floor of the coordinate-wise rules (FedAvg, median,
//!   trimmed mean read every value once; geometric median and centered
//!   clipping once per iteration);
//! - the **sgemm rate** (`matrixmultiply`, the kernel Krum's Gram pass
//!   uses, on cache-resident blocks on every core): the floor of the
//!   Gram-based rules is their N²P/2 multiply-adds at that rate (Krum,
//!   Multi-Krum; Bulyan adds a memory pass for its coordinate-wise stage).
//!
//! Each time is the best of `reps` runs; "% of limit" is limit / time.
//! Every row records the 1-minute load average (`/proc/loadavg`, where
//! readable) just before it was measured, since the machine may be shared.
//! Flower is compared in the same run by `simulations/scripts/compare_flower.py`,
//! never against figures from another day.

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
    /// What bounds the rule and its time at that bound on this machine.
    pub limit: Option<Limit>,
    /// 1-minute load average just before the measurement, where readable.
    pub load: Option<f64>,
}

/// The physical bound of a rule and the time it implies.
#[derive(Debug, Clone)]
pub struct Limit {
    /// `memory pass`, `3 memory passes`, `sgemm`, `sgemm + memory pass`…
    pub bound: String,
    /// The bound's time for this cell.
    pub time: Duration,
}

impl Limit {
    /// limit / measured time, in percent.
    pub fn percent_of(&self, best: Duration) -> f64 {
        100.0 * self.time.as_secs_f64() / best.as_secs_f64().max(1e-12)
    }
}

/// The limit of `rule` for an `n × p` batch, given this run's memory pass
/// and sgemm rate (multiply-adds per second, all cores).
pub fn rule_limit(rule: &Rule, n: usize, p: usize, pass: Duration, fma_per_s: f64) -> Limit {
    let passes = |k: usize| Limit {
        bound: if k == 1 {
            "memory pass".into()
        } else {
            format!("{k} memory passes")
        },
        time: pass * u32::try_from(k).unwrap_or(u32::MAX),
    };
    // The Gram matrix's distinct products: N²P/2 multiply-adds.
    let gram = Duration::from_secs_f64((n * n) as f64 * p as f64 / 2.0 / fma_per_s.max(1.0));
    match rule {
        Rule::FedAvg | Rule::Median | Rule::TrimmedMean { .. } => passes(1),
        Rule::GeometricMedian { iterations, .. } => passes((*iterations).max(1)),
        Rule::CenteredClipping { iterations, .. } => passes((*iterations).max(1)),
        Rule::Krum { .. } | Rule::MultiKrum { .. } => Limit {
            bound: "sgemm".into(),
            time: gram,
        },
        Rule::Bulyan { .. } => Limit {
            bound: "sgemm + memory pass".into(),
            time: gram + pass,
        },
    }
}

/// This machine's sgemm rate on every core, multiply-adds per second:
/// each thread multiplies cache-resident 128 × 1024 by 1024 × 128 blocks
/// with ndarray's `general_mat_mul` (→ `matrixmultiply`, Krum's kernel);
/// the best of `reps`.
pub fn sgemm_rate(reps: usize) -> f64 {
    use ndarray::Array2;
    use ndarray::linalg::general_mat_mul;
    const M: usize = 128;
    const K: usize = 1024;
    const CALLS: usize = 16;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let a = Array2::from_shape_fn((M, K), |(i, j)| ((i + j) % 7) as f32 * 0.25 - 0.5);
    let at = a.t().to_owned();
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (a, at) = (&a, &at);
                s.spawn(move || {
                    let mut c = Array2::<f32>::zeros((M, M));
                    for _ in 0..CALLS {
                        general_mat_mul(1.0, a, at, 0.0, &mut c);
                    }
                    black_box(c[(0, 0)])
                });
            }
        });
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (threads * CALLS * M * M * K) as f64 / best.max(1e-12)
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
/// every (N, P) cell. `fma_per_s` is this run's [`sgemm_rate`].
pub fn run_aggregate(opts: &AggregateBench, fma_per_s: f64) -> Result<Vec<BenchRow>> {
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
            limit: None,
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
            let limit = rule_limit(&rule, n, p, floor, fma_per_s);
            rows.push(BenchRow {
                rule: (*name).to_string(),
                params: params(&rule),
                n,
                p,
                best,
                ratio: best.as_secs_f64() / floor_s,
                limit: Some(limit),
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
        "| rule | params | N | P | time ms | × memory pass | bound by | limit ms | % of limit | load |\n\
         |---|---|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        let ms = r.best.as_secs_f64() * 1e3;
        let (bound, limit, pct) = match &r.limit {
            Some(l) => (
                l.bound.clone(),
                format!("{:.2}", l.time.as_secs_f64() * 1e3),
                format!("{:.0} %", l.percent_of(r.best)),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let load = r.load.map_or_else(String::new, |l| format!("{l:.2}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            r.rule, r.params, r.n, r.p, ms, r.ratio, bound, limit, pct, load
        ));
    }
    out
}

/// The machine's sgemm rate line printed above the table.
pub fn sgemm_line(fma_per_s: f64) -> String {
    format!(
        "sgemm rate (all cores): {:.1} GFLOP/s ({:.1} G multiply-adds/s)\n",
        2.0 * fma_per_s / 1e9,
        fma_per_s / 1e9
    )
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
        let rows = run_aggregate(&opts, sgemm_rate(1)).unwrap();
        assert_eq!(rows.len(), 2 * (RULES.len() + 1));
        let t = table(&rows);
        assert!(t.contains("| bulyan | f=1 | 10 | 100 |"));
        assert!(t.contains("sgemm + memory pass"), "{t}");
        for r in &rows {
            let bound = r.limit.as_ref().map(|l| l.bound.as_str());
            match r.rule.as_str() {
                "bandwidth" => assert!(bound.is_none()),
                "krum" | "multi_krum" => assert_eq!(bound, Some("sgemm")),
                "geometric_median" => assert_eq!(bound, Some("8 memory passes")),
                _ => assert!(bound.is_some()),
            }
        }
        assert!(parse_rules(&["krum2".into()]).is_err());
        assert_eq!(parse_rules(&["krum".into()]).unwrap(), vec!["krum"]);
    }

    #[test]
    fn limits_follow_the_work_each_rule_must_do() {
        let pass = Duration::from_millis(10);
        // 10⁹ multiply-adds per second: 100²·10⁶/2 = 5·10⁹ → 5 s.
        let krum = rule_limit(&Rule::Krum { f: 10 }, 100, 1_000_000, pass, 1e9);
        assert_eq!(krum.time, Duration::from_secs(5));
        let bulyan = rule_limit(&Rule::Bulyan { f: 10 }, 100, 1_000_000, pass, 1e9);
        assert_eq!(bulyan.time, Duration::from_secs(5) + pass);
        let cc = Rule::CenteredClipping {
            tau: 1.0,
            iterations: 3,
        };
        assert_eq!(rule_limit(&cc, 100, 10, pass, 1e9).time, pass * 3);
        assert_eq!(rule_limit(&Rule::Median, 100, 10, pass, 1e9).time, pass);
        assert!((krum.percent_of(Duration::from_secs(10)) - 50.0).abs() < 1e-9);
        assert!(sgemm_rate(1) > 0.0);
    }

    #[test]
    fn bandwidth_pass_sums_everything() {
        let rows = [vec![1f32; 37], vec![2f32; 37], vec![0.5f32; 37]];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        assert_eq!(bandwidth_pass(&refs), 3.5 * 37.0);
    }
}
