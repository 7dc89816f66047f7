//! `fedmesh-sim bench replay`: does `fedmesh-sim aggregate` run at I/O
//! speed?
//!
//! One random `N × P` batch (the generator of `bench aggregate`) is written
//! to a `.npy` file, then, in the same run and with the file in the page
//! cache, each of these is timed (best of `reps`):
//!
//! - **read**: the file into memory with one `std::fs::read`, the floor
//!   for any reader;
//! - **decode (old path)**: `std::fs::read` and then
//!   [`npy::decode_matrix`], the reader before streaming (two full copies);
//! - **stream**: [`npy::read_matrix`], straight into the matrix's buffer;
//! - **rule**: the rule alone on the batch in memory;
//! - **replay**: the whole `fedmesh-sim aggregate` path in this process
//!   ([`replay::replay_files`]: read, rule, write).
//!
//! The goal is replay ≤ 1.5 × (read + rule). Peak memory is measured in
//! a child `fedmesh-sim aggregate` process (its `VmHWM`), against the
//! batch's size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fedmesh_coordinator::aggregate::RuleConfig;

use crate::bench::{bench_rule, best_of, load_average, random_batch};
use crate::npy::{self, Matrix};
use crate::replay;

/// Parameters of `bench replay`.
#[derive(Debug, Clone)]
pub struct ReplayBench {
    /// Updates.
    pub n: usize,
    /// Parameters per update.
    pub p: usize,
    /// Rule name (see [`crate::bench::RULES`]).
    pub rule: String,
    /// Runs per measurement; the best is kept.
    pub reps: usize,
    /// Seed of the random batch.
    pub seed: u64,
    /// Where the batch is written (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// The `fedmesh-sim` binary whose `aggregate` is run for peak memory;
    /// skipped when `None`.
    pub exe: Option<PathBuf>,
}

/// What `bench replay` measured.
#[derive(Debug, Clone)]
pub struct ReplayFigures {
    /// Updates.
    pub n: usize,
    /// Parameters per update.
    pub p: usize,
    /// Rule.
    pub rule: String,
    /// Size of the `.npy` file, bytes.
    pub file_bytes: u64,
    /// One `std::fs::read` of the file.
    pub read: Duration,
    /// `std::fs::read` + `decode_matrix` (the reader before streaming).
    pub decode_old: Duration,
    /// `npy::read_matrix` (streamed).
    pub stream: Duration,
    /// The rule on the batch in memory.
    pub rule_time: Duration,
    /// `replay_files`: read, rule, write.
    pub replay: Duration,
    /// Peak resident memory of a child `fedmesh-sim aggregate`, bytes.
    pub child_peak_rss: Option<u64>,
    /// 1-minute load average before the measurements.
    pub load: Option<f64>,
}

impl ReplayFigures {
    /// replay / (read + rule): the goal is ≤ 1.5.
    pub fn overhead(&self) -> f64 {
        self.replay.as_secs_f64() / (self.read + self.rule_time).as_secs_f64().max(1e-9)
    }
}

fn child_peak(exe: &Path, rule: &str, input: &Path, output: &Path) -> Result<u64> {
    let out = Command::new(exe)
        .args(["aggregate", "--json", "--rule", rule, "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} aggregate failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("aggregate's JSON report")?;
    v.get("peak_rss_bytes")
        .and_then(serde_json::Value::as_u64)
        .context("no peak_rss_bytes in aggregate's report")
}

/// Runs the benchmark.
pub fn run(opts: &ReplayBench) -> Result<ReplayFigures> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let input = dir.join("batch.npy");
    let output = dir.join("aggregate.npy");
    let rows = random_batch(opts.n, opts.p, opts.seed);
    let batch = Matrix {
        rows: opts.n,
        cols: opts.p,
        data: rows.concat(),
    };
    drop(rows);
    npy::write(&input, &npy::encode_matrix(&batch))?;
    let file_bytes = std::fs::metadata(&input)?.len();
    let cfg = RuleConfig::from(bench_rule(&opts.rule, opts.n)?);
    let load = load_average();
    let reps = opts.reps;
    let read = best_of(reps, || Ok(std::fs::read(&input)?.len()))?;
    let decode_old = best_of(reps, || {
        Ok(npy::decode_matrix(&std::fs::read(&input)?)?.rows)
    })?;
    let stream = best_of(reps, || Ok(npy::read_matrix(&input)?.rows))?;
    let rule_time = best_of(reps, || {
        Ok(replay::aggregate_batch(&batch, None, &cfg)?.0.value.len())
    })?;
    let replay = best_of(reps, || {
        Ok(replay::replay_files(&input, None, &output, &cfg)?.n)
    })?;
    drop(batch);
    let child_peak_rss = opts
        .exe
        .as_deref()
        .map(|exe| child_peak(exe, &opts.rule, &input, &output))
        .transpose()?;
    Ok(ReplayFigures {
        n: opts.n,
        p: opts.p,
        rule: opts.rule.clone(),
        file_bytes,
        read,
        decode_old,
        stream,
        rule_time,
        replay,
        child_peak_rss,
        load,
    })
}

/// The figures as a Markdown table.
pub fn table(f: &ReplayFigures) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mb = |b: u64| b as f64 / 1e6;
    let read = ms(f.read).max(1e-9);
    let mut out = format!(
        "N = {}, P = {}, rule {}, file {:.1} MB, load {}\n\n\
         | step | ms | × read |\n|---|---:|---:|\n",
        f.n,
        f.p,
        f.rule,
        mb(f.file_bytes),
        f.load.map_or_else(|| "?".into(), |l| format!("{l:.2}")),
    );
    for (name, d) in [
        ("read (std::fs::read)", f.read),
        ("read + decode (before streaming)", f.decode_old),
        ("streamed read (npy::read_matrix)", f.stream),
        ("rule alone", f.rule_time),
        ("whole replay (read, rule, write)", f.replay),
    ] {
        out.push_str(&format!(
            "| {name} | {:.2} | {:.2} |\n",
            ms(d),
            ms(d) / read
        ));
    }
    out.push_str(&format!(
        "\nreplay / (read + rule) = {:.2} (goal ≤ 1.5)\n",
        f.overhead()
    ));
    if let Some(peak) = f.child_peak_rss {
        out.push_str(&format!(
            "peak memory of `fedmesh-sim aggregate`: {:.1} MB = {:.2} × the batch\n",
            mb(peak),
            peak as f64 / f.file_bytes.max(1) as f64
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_run_measures_every_step_and_writes_the_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let f = run(&ReplayBench {
            n: 5,
            p: 300,
            rule: "median".into(),
            reps: 1,
            seed: 3,
            dir: Some(dir.path().to_path_buf()),
            exe: None,
        })
        .unwrap();
        // A header padded to a multiple of 64 bytes, then the data.
        assert_eq!((f.file_bytes - 5 * 300 * 4) % 64, 0);
        let written = npy::read_vector(&dir.path().join("aggregate.npy")).unwrap();
        assert_eq!(written.len(), 300);
        let t = table(&f);
        assert!(
            t.contains("whole replay") && t.contains("goal ≤ 1.5"),
            "{t}"
        );
        assert!(f.overhead().is_finite());
        let unknown = ReplayBench {
            n: 2,
            p: 2,
            rule: "nope".into(),
            reps: 1,
            seed: 0,
            dir: Some(dir.path().to_path_buf()),
            exe: None,
        };
        assert!(run(&unknown).is_err());
    }
}
