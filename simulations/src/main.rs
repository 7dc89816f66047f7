//! `fedmesh-sim`: the demo mesh and (later) research scenarios.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fedmesh_sim::bench::{self, AggregateBench};
use fedmesh_sim::demo::{self, DemoOptions};
use fedmesh_sim::quality::{self, QualityOptions};

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
    /// Detection quality per attack kind (AUC, recall at the calibrated
    /// threshold, false alarms per container-hour) of the federated model,
    /// local-only models and the linfa PCA baseline; prints a Markdown table.
    Quality {
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Edge nodes.
        #[arg(long, default_value_t = 6)]
        nodes: usize,
        /// Federated rounds.
        #[arg(long, default_value_t = 8)]
        rounds: u64,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
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
        Cmd::Quality {
            seed,
            nodes,
            rounds,
            json,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(quality::run(QualityOptions {
                seed,
                nodes,
                rounds,
                ..QualityOptions::default()
            }))?;
            print!("{}", quality::table(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                println!("report written to {}", path.display());
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
