//! `fedmesh-sim`: the demo mesh and (later) research scenarios.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fedmesh_sim::bench::{self, AggregateBench};
use fedmesh_sim::demo::{self, DemoOptions};
use fedmesh_sim::replay;

#[derive(Parser)]
#[command(name = "fedmesh-sim", version, about = "fedmesh simulation harness")]
struct Cli {
    /// Log filter for internal logs (tracing EnvFilter syntax).
    #[arg(long, env = "FEDMESH_LOG", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a coordinator and edge nodes over mTLS on loopback, federates,
    /// injects attacks and compares federated against local-only detection.
    Demo {
        /// Edge nodes.
        #[arg(long, default_value_t = 6)]
        nodes: usize,
        /// Federated rounds.
        #[arg(long, default_value_t = 8)]
        rounds: u64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Aggregates a recorded batch of updates (`N × P` float32 `.npy`)
    /// offline with any coordinator rule and writes the result as `.npy`.
    Aggregate(AggregateCmd),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(clap::Args)]
struct AggregateCmd {
    /// Rule: fedavg, median, trimmed_mean, krum, multi_krum, bulyan,
    /// geometric_median, centered_clipping.
    #[arg(long)]
    rule: String,
    /// Byzantine clients tolerated (krum, multi_krum, bulyan).
    #[arg(long)]
    f: Option<usize>,
    /// Values trimmed at each end of every coordinate (trimmed_mean).
    #[arg(long)]
    trim: Option<usize>,
    /// Updates averaged (multi_krum).
    #[arg(long)]
    m: Option<usize>,
    /// Clipping radius (centered_clipping).
    #[arg(long)]
    tau: Option<f64>,
    /// Iterations (geometric_median, centered_clipping).
    #[arg(long)]
    iters: Option<usize>,
    /// Weiszfeld smoothing (geometric_median).
    #[arg(long)]
    nu: Option<f64>,
    /// Scale every update to at most this L2 norm first.
    #[arg(long)]
    max_norm: Option<f32>,
    /// Updates, `N × P` little-endian float32, C order.
    #[arg(long)]
    input: std::path::PathBuf,
    /// Where to write the aggregate (`P` float32).
    #[arg(long)]
    output: std::path::PathBuf,
    /// Optional weights (`N` float32 or float64), e.g. sample counts.
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// Print the report as one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Times every aggregation rule on random batches against a plain
    /// memory-bandwidth pass over the same data; prints a Markdown table.
    Aggregate {
        /// Batch sizes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        n: Vec<usize>,
        /// Parameters per update (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        p: Vec<usize>,
        /// Runs per measurement; the best is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Rules (comma-separated) or `all`.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        rules: Vec<String>,
        /// Seed of the random updates.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Demo {
            nodes,
            rounds,
            seed,
            json,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(demo::run(DemoOptions {
                nodes,
                rounds,
                seed,
                ..DemoOptions::default()
            }))?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                println!("report written to {}", path.display());
            }
            Ok(())
        }
        Cmd::Aggregate(a) => {
            let cfg = replay::RuleArgs {
                rule: a.rule,
                f: a.f,
                trim: a.trim,
                m: a.m,
                tau: a.tau,
                iters: a.iters,
                nu: a.nu,
                max_norm: a.max_norm,
            }
            .to_config()?;
            let r = replay::replay_files(&a.input, a.weights.as_deref(), &a.output, &cfg)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} updates × {} parameters in {:.3} ms; selected {:?}; written to {}",
                    r.rule,
                    r.n,
                    r.p,
                    r.ms,
                    r.selected,
                    a.output.display()
                );
            }
            Ok(())
        }
        Cmd::Bench {
            what:
                BenchCmd::Aggregate {
                    n,
                    p,
                    reps,
                    rules,
                    seed,
                },
        } => {
            let rows = bench::run_aggregate(&AggregateBench {
                n,
                p,
                reps,
                rules,
                seed,
                quiet: false,
            })?;
            print!("{}", bench::table(&rows));
            Ok(())
        }
    }
}
