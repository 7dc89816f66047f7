//! `fedmesh-sim`: the demo mesh, research scenarios (`run`, `matrix`),
//! offline replay of recorded updates (`aggregate`) and benchmarks.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fedmesh_sim::bench::{self, AggregateBench};
use fedmesh_sim::demo::{self, DemoOptions};
use fedmesh_sim::engine::inprocess::{self, RunOptions};
use fedmesh_sim::engine::network;
use fedmesh_sim::quality::{self, QualityOptions};
use fedmesh_sim::scenario::Scenario;
use fedmesh_sim::{matrix, replay, report};

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
        /// Secure-aggregation bucket size k (1 = no masking, TLS only).
        #[arg(long, default_value_t = 3)]
        bucket_size: usize,
        /// Aggregation rule of the coordinator (over bucket means when k > 1).
        #[arg(long, default_value = "fedavg")]
        rule: String,
        /// Number of poisoning nodes (the last ones).
        #[arg(long, default_value_t = 0)]
        attackers: usize,
        /// How they poison: `scale:F` (model replacement) or `sign-flip:F`.
        #[arg(long, default_value = "scale:10", value_parser = parse_tamper)]
        attack: fedmesh_node::sim::hook::Tamper,
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
    /// Aggregates a recorded batch of updates (`N × P` float32 `.npy`)
    /// offline with any coordinator rule and writes the result as `.npy`.
    Aggregate(AggregateCmd),
    /// Runs a research scenario (TOML) with the in-process engine and
    /// writes run.json, timing.json, rounds.csv, SVG plots and report.html.
    Run {
        /// Scenario file.
        scenario: std::path::PathBuf,
        /// Output directory.
        #[arg(long, default_value = "sim-out")]
        out: std::path::PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the scenario's rounds.
        #[arg(long)]
        rounds: Option<u64>,
        /// Override the number of nodes.
        #[arg(long)]
        nodes: Option<usize>,
        /// Override the bucket size k (k > 1 runs the real secure
        /// aggregation protocol in every bucket).
        #[arg(long)]
        bucket_size: Option<usize>,
        /// Also write every round's submissions as DIR/round_NNNN.npy.
        #[arg(long)]
        record: Option<std::path::PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Engine: `in-process` or `network` (the real gRPC mesh over mTLS
        /// on loopback; the same reports, without the clean twin, plus the
        /// final model digest for comparison with the in-process engine).
        #[arg(long, default_value = "in-process")]
        engine: String,
    },
    /// Runs a base scenario over a grid of rules × attacks × bucket sizes
    /// and writes matrix.md and matrix.csv.
    Matrix {
        /// Base scenario (fleet, rounds, training, attacker fraction).
        #[arg(long)]
        scenario: std::path::PathBuf,
        /// Rules (comma-separated); parameters are derived per cell.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "fedavg,median,trimmed_mean,krum,geometric_median,centered_clipping"
        )]
        rules: Vec<String>,
        /// Attacks (comma-separated): none, sign_flip, scaling, gaussian,
        /// alie, ipm, min_max, min_sum, mimic, data_poison, bad_shares,
        /// forced_dropout.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "none,alie,ipm,min_max,data_poison"
        )]
        attacks: Vec<String>,
        /// Bucket sizes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        k: Vec<usize>,
        /// Attacker fraction when the base scenario has no [attack].
        #[arg(long, default_value_t = 0.2)]
        fraction: f64,
        /// Override the scenario's rounds.
        #[arg(long)]
        rounds: Option<u64>,
        /// Output directory.
        #[arg(long, default_value = "sim-matrix")]
        out: std::path::PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Long run of the real coordinator over gRPC + mTLS with hand-driven
    /// clients; prints the resident memory and store size over time and
    /// the memory growth after the warm-up.
    Soak {
        /// Clients.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Committed rounds.
        #[arg(long, default_value_t = 10_000)]
        rounds: u64,
        /// Model bodies the store keeps (`[store] retain_versions`, 0 = all).
        #[arg(long, default_value_t = 100)]
        retain: u64,
        /// Secure-aggregation bucket size (1 = plaintext updates).
        #[arg(long, default_value_t = 1)]
        bucket_size: usize,
        /// Approximate model size in parameters.
        #[arg(long, default_value_t = 2_000)]
        params: usize,
        /// A sample every this many rounds.
        #[arg(long, default_value_t = 500)]
        sample_every: u64,
        /// Warm-up rounds (memory growth is measured from there).
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// The coordinator binary to start as a child process (default:
        /// `fedmesh-coordinator` beside this executable).
        #[arg(long, conflicts_with = "in_process")]
        coordinator_bin: Option<std::path::PathBuf>,
        /// Run the coordinator in this process, beside the clients (the
        /// resident memory is then theirs together).
        #[arg(long)]
        in_process: bool,
    },
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
    /// Times every aggregation rule on random batches against the limit it
    /// is bound by on this machine, measured in the same run (a memory pass
    /// over the same data, or the sgemm rate for the Gram-based rules);
    /// prints a Markdown table.
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
    /// Whether `fedmesh-sim aggregate` runs at I/O speed: a random batch
    /// written as `.npy`, then reading it, the rule alone and the whole
    /// replay timed in the same run, and the peak memory of a child
    /// `aggregate`; prints a Markdown table.
    Replay {
        /// Updates.
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// Parameters per update.
        #[arg(long, default_value_t = 1_000_000)]
        p: usize,
        /// Rule (see `bench aggregate --rules`).
        #[arg(long, default_value = "fedavg")]
        rule: String,
        /// Runs per measurement; the best is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seed of the random batch.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Latency of a legitimate node's connection (TCP, mTLS, HTTP/2 up to
    /// the server's SETTINGS) to the real coordinator while 127.0.0.1
    /// holds `stalled` connections that never send a ClientHello; prints
    /// a Markdown table.
    Handshake {
        /// Stalled connections.
        #[arg(long, default_value_t = 300)]
        stalled: usize,
        /// Legitimate connections timed, one after the other.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// `[limits] max_handshakes_per_address`.
        #[arg(long, default_value_t = 16)]
        per_address: usize,
        /// `[limits] handshake_timeout_ms`.
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
        /// `[limits] max_handshakes`.
        #[arg(long, default_value_t = 256)]
        max_handshakes: usize,
        /// Also measure the accept loop without a per-address cap and with
        /// a 10 s handshake timeout (the limits before `[limits]` existed).
        #[arg(long)]
        baseline: bool,
    },
    /// Times whole rounds on the real coordinator over gRPC + mTLS with
    /// hand-driven clients: plaintext (k = 1) against secure aggregation in
    /// buckets, in the same run; prints a Markdown table.
    Round {
        /// Clients.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Approximate model size in parameters.
        #[arg(long, default_value_t = 100_000)]
        params: usize,
        /// Bucket sizes (comma-separated; 1 = plaintext).
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        k: Vec<usize>,
        /// Rounds per bucket size (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The coordinator binary to start as a child process (default:
        /// `fedmesh-coordinator` beside this executable).
        #[arg(long)]
        coordinator_bin: Option<std::path::PathBuf>,
        /// Run the coordinator in this process (its memory is then counted
        /// with the clients').
        #[arg(long)]
        in_process: bool,
        /// Longest wait, in seconds, for the clients to connect and for
        /// each round.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
        /// Also write the rows as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
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
            bucket_size,
            rule,
            attackers,
            attack,
            json,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(demo::run(DemoOptions {
                nodes,
                rounds,
                seed,
                bucket_size,
                rule,
                attackers,
                attack,
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
        Cmd::Run {
            scenario,
            out,
            seed,
            rounds,
            nodes,
            bucket_size,
            record,
            quiet,
            engine,
        } => {
            let mut s = Scenario::load(&scenario)?;
            if let Some(seed) = seed {
                s.seed = seed;
            }
            if let Some(r) = rounds {
                s.rounds = r;
            }
            if let Some(n) = nodes {
                s.fleet.nodes = n;
            }
            if let Some(k) = bucket_size {
                s.bucket_size = k;
            }
            if engine == "network" {
                let dir = tempfile::tempdir()?;
                let rt = tokio::runtime::Runtime::new()?;
                let t = std::time::Instant::now();
                let r = rt.block_on(network::run(&s, dir.path()))?;
                println!(
                    "{} (network engine): version {}, participants per round {:?}, buckets per \
                     round {:?}, final parameters sha256 {}; {:.2} s",
                    s.name,
                    r.final_version,
                    r.participants,
                    r.buckets,
                    r.final_params_sha256,
                    t.elapsed().as_secs_f64()
                );
                let timing = fedmesh_sim::engine::RunTiming {
                    total_s: t.elapsed().as_secs_f64(),
                    ..Default::default()
                };
                let w = report::write_all(&r.report, &timing, &out)?;
                let f3 = |v: Option<f32>| v.map_or("–".into(), |v| format!("{v:.3}"));
                println!(
                    "mean AUC {}, ASR {}, quarantined {}; report: {}",
                    f3(r.report.final_mean_auc()),
                    f3(r.report.final_attack_success()),
                    r.report.final_quarantined().len(),
                    w.html.display()
                );
                return Ok(());
            }
            if engine != "in-process" {
                anyhow::bail!("unknown engine {engine:?} (in-process or network)");
            }
            if let Some(dir) = &record {
                std::fs::create_dir_all(dir)?;
            }
            let (report, timing) = inprocess::run(&s, &RunOptions { quiet, record })?;
            let w = report::write_all(&report, &timing, &out)?;
            let f3 = |v: Option<f32>| v.map_or("–".into(), |v| format!("{v:.3}"));
            println!(
                "{}: {} rounds ({}), final version {}, mean AUC {}, worst kind {}, ASR {} \
                 (clean twin {}), quarantined {} of them malicious {}; {:.2} s (setup {:.2} s of which \
                 certificates {:.2} s, train {:.2} s, aggregate {:.2} s, eval {:.2} s, clean twin \
                 {:.2} s, {} threads)",
                report.scenario,
                report.rounds.len(),
                report.aggregation,
                report.final_version,
                f3(report.final_mean_auc()),
                report
                    .final_worst_auc()
                    .map_or("–".into(), |(k, v)| format!("{v:.3} ({k})")),
                f3(report.final_attack_success()),
                f3(report.final_clean_miss_rate()),
                report.final_quarantined().len(),
                report.rounds.last().map_or(0, |m| m.quarantined_malicious),
                timing.total_s,
                timing.setup_s,
                timing.certificates_s,
                timing.train_s,
                timing.aggregate_s,
                timing.eval_s,
                timing.clean_twin_s,
                timing.threads,
            );
            println!("final parameters sha256 {}", report.final_params_sha256);
            println!("report: {}", w.html.display());
            Ok(())
        }
        Cmd::Matrix {
            scenario,
            rules,
            attacks,
            k,
            fraction,
            rounds,
            out,
            quiet,
        } => {
            let mut s = Scenario::load(&scenario)?;
            if let Some(r) = rounds {
                s.rounds = r;
            }
            let cells = matrix::run(&s, &rules, &attacks, &k, fraction, quiet)?;
            std::fs::create_dir_all(&out)?;
            let md = matrix::markdown(&cells);
            std::fs::write(out.join("matrix.md"), &md)?;
            std::fs::write(out.join("matrix.csv"), matrix::csv_text(&cells)?)?;
            std::fs::write(out.join("matrix.json"), serde_json::to_vec_pretty(&cells)?)?;
            print!("{md}");
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
                    "{}: {} updates × {} parameters in {:.3} ms (read {:.1} ms, write {:.1} ms); selected {:?}; written to {}",
                    r.rule,
                    r.n,
                    r.p,
                    r.ms,
                    r.read_ms,
                    r.write_ms,
                    r.selected,
                    a.output.display()
                );
            }
            Ok(())
        }
        Cmd::Soak {
            nodes,
            rounds,
            retain,
            bucket_size,
            params,
            sample_every,
            warmup,
            seed,
            json,
            quiet,
            coordinator_bin,
            in_process,
        } => {
            use fedmesh_sim::soak::CoordinatorProcess;
            let coordinator = match (in_process, coordinator_bin) {
                (true, _) => CoordinatorProcess::InProcess,
                (false, Some(bin)) => CoordinatorProcess::Binary(bin),
                (false, None) => CoordinatorProcess::beside_current_exe()?,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(fedmesh_sim::soak::run_soak(
                &fedmesh_sim::soak::SoakOptions {
                    nodes,
                    rounds,
                    retain,
                    bucket_size,
                    params,
                    sample_every,
                    warmup,
                    seed,
                    progress: !quiet,
                    coordinator,
                },
                |s| {
                    if quiet {
                        println!(
                            "round {} at {:.0} s: coordinator RSS {:.1} MiB, clients RSS {:.1} MiB, \
                             store {:.2} MiB (audit log {:.2} MiB), {} model bodies",
                            s.round,
                            s.elapsed_s,
                            s.rss_kib as f64 / 1024.0,
                            s.clients_rss_kib as f64 / 1024.0,
                            s.store_bytes as f64 / 1048576.0,
                            s.audit_log_bytes as f64 / 1048576.0,
                            s.model_bodies
                        );
                    }
                },
            ))?;
            print!("{}", fedmesh_sim::soak::markdown(&r));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&r)?)?;
                println!("report written to {}", path.display());
            }
            Ok(())
        }
        Cmd::Bench {
            what:
                BenchCmd::Handshake {
                    stalled,
                    samples,
                    per_address,
                    timeout_ms,
                    max_handshakes,
                    baseline,
                },
        } => {
            use fedmesh_sim::bench_handshake::{self as hb, HandshakeLimits};
            let mut limits = vec![HandshakeLimits {
                max_handshakes,
                per_address,
                timeout_ms,
            }];
            if baseline {
                limits.push(HandshakeLimits {
                    max_handshakes: 256,
                    per_address: 256,
                    timeout_ms: 10_000,
                });
            }
            let rt = tokio::runtime::Runtime::new()?;
            let rows = rt.block_on(hb::run_handshake_bench(&hb::HandshakeBench {
                stalled,
                samples,
                limits,
            }))?;
            print!("{}", hb::markdown(&rows));
            Ok(())
        }
        Cmd::Bench {
            what:
                BenchCmd::Round {
                    nodes,
                    params,
                    k,
                    rounds,
                    seed,
                    coordinator_bin,
                    in_process,
                    timeout_s,
                    quiet,
                    json,
                },
        } => {
            use fedmesh_sim::soak::CoordinatorProcess;
            let coordinator = match (in_process, coordinator_bin) {
                (true, _) => CoordinatorProcess::InProcess,
                (false, Some(bin)) => CoordinatorProcess::Binary(bin),
                (false, None) => CoordinatorProcess::beside_current_exe()?,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let rows = rt.block_on(fedmesh_sim::bench_round::run_round_bench(
                &fedmesh_sim::bench_round::RoundBench {
                    nodes,
                    params,
                    bucket_sizes: k,
                    rounds,
                    seed,
                    coordinator,
                    progress: !quiet,
                    timeout: std::time::Duration::from_secs(timeout_s),
                },
            ))?;
            print!("{}", fedmesh_sim::bench_round::markdown(&rows));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
            }
            Ok(())
        }
        Cmd::Bench {
            what:
                BenchCmd::Replay {
                    n,
                    p,
                    rule,
                    reps,
                    seed,
                },
        } => {
            let f = fedmesh_sim::bench_replay::run(&fedmesh_sim::bench_replay::ReplayBench {
                n,
                p,
                rule,
                reps,
                seed,
                dir: None,
                exe: std::env::current_exe().ok(),
            })?;
            print!("{}", fedmesh_sim::bench_replay::table(&f));
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
            let fma_per_s = bench::sgemm_rate(reps);
            print!("{}", bench::sgemm_line(fma_per_s));
            let rows = bench::run_aggregate(
                &AggregateBench {
                    n,
                    p,
                    reps,
                    rules,
                    seed,
                    quiet: false,
                },
                fma_per_s,
            )?;
            print!("{}", bench::table(&rows));
            Ok(())
        }
    }
}

/// Parses `scale:F` or `sign-flip:F`.
fn parse_tamper(s: &str) -> Result<fedmesh_node::sim::hook::Tamper, String> {
    use fedmesh_node::sim::hook::Tamper;
    let (kind, factor) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected scale:F or sign-flip:F"))?;
    let f: f32 = factor
        .parse()
        .map_err(|_| format!("{factor:?} is not a number"))?;
    if !(f.is_finite() && f > 0.0) {
        return Err(format!("factor {f} must be positive"));
    }
    match kind {
        "scale" => Ok(Tamper::Scale(f)),
        "sign-flip" => Ok(Tamper::SignFlip(f)),
        _ => Err(format!("{kind:?}: expected scale or sign-flip")),
    }
}
