//! `cargo xtask`: the project's orchestrator (the cargo-xtask convention). It builds the release
//! `wick` binary and runs it, runs benchmarks side by side with the Python reference stack, and
//! checks code hygiene. It never trains a model in its own process and depends on no workspace
//! crate, so `cargo xtask ...` behaves exactly like running the binaries by hand.

// xtask is one of the two crates allowed to talk to the terminal (the other is wick-cli).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod cuda;
mod determinism;
mod report_html;
mod reproduce;
mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "wick's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check code hygiene (the same checks `cargo test -p xtask` runs).
    Tidy,
    /// cuda-setup, cuda-check, cuda-build, gpu-pack (docs/cuda.md).
    #[command(flatten)]
    Cuda(cuda::CudaTask),
    /// Replay a chapter's experiments with the release `wick` binary and write a report.
    Reproduce {
        /// The chapter: a folder of recipes/ (chapter7).
        chapter: String,
        /// full (the chapter exactly, GPU-scale), quick (about an hour on a 2-core CPU) or
        /// smoke (a few minutes, for CI).
        #[arg(long, default_value = "full")]
        profile: String,
        /// The dataset: a folder or a .tgz (default: download imagenette2 into the cache).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the runs and the report go.
        #[arg(long, default_value = "runs/chapter7")]
        out: PathBuf,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Build wick with CUDA (implied by --device cuda:N).
        #[arg(long)]
        cuda: bool,
        /// Override every recipe's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Only these experiments (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Train one recipe several times with the same seed and different thread counts and
    /// require byte-identical models (the reproducibility promise, README).
    Determinism {
        /// The dataset (a folder with train/ and val/, or a .tgz).
        #[arg(long, default_value = "../shared/data/imagenette2-224")]
        data: PathBuf,
        /// The recipe to train.
        #[arg(long, default_value = "recipes/determinism.toml")]
        recipe: PathBuf,
        /// Where the runs go.
        #[arg(long, default_value = "runs/determinism")]
        out: PathBuf,
        /// RAYON_NUM_THREADS of each run (0: the machine's default).
        #[arg(long, value_delimiter = ',', default_value = "0,0,1")]
        threads: Vec<usize>,
        /// Skip the run that is killed after its first checkpoint and resumed.
        #[arg(long)]
        no_kill: bool,
    },
    /// Benchmark a suite side by side with the Python reference stack and record the table
    /// in docs/performance.md.
    Bench {
        /// Which suite: `data`.
        suite: BenchSuite,
        /// Imagenette folder (with train/) for the data suite.
        #[arg(long, default_value = "../shared/data/imagenette2-224")]
        data: PathBuf,
        /// Python with torch, torchvision, fastai and Pillow (default: $WICK_PYTHON, then
        /// .venv-anchor/bin/python, then python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Skip the Python reference.
        #[arg(long)]
        no_python: bool,
        /// The reference script (wick's copy of ../shared/bench/anchor_bench.py).
        #[arg(long, default_value = "scripts/anchor_bench.py")]
        anchor: PathBuf,
        /// Images per source (data suite).
        #[arg(long, default_value_t = 300)]
        count: usize,
        /// Print only; leave docs/performance.md alone.
        #[arg(long)]
        no_write: bool,
        /// Fewer shapes (nn suite).
        #[arg(long)]
        quick: bool,
        /// Timed steps per process (models suite).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed warm-up steps per process (models suite).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Processes per (case, batch) on each side, wick and PyTorch alternating (models suite).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Cases, comma-separated (models suite): train<18|50>_<size>, infer<18|50>_<size>.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "train18_64,train18_128,train50_64,train50_128,train50_224,infer18_128,infer50_224"
        )]
        cases: Vec<String>,
        /// Batch sizes, comma-separated (models suite): the recipes train at 32, 64 and 128.
        #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
        batches: Vec<usize>,
        /// Skip (case, batch) pairs above this many batch × pixels (models suite; the default
        /// keeps xresnet50 at 224 px to batch 64 within 24 GiB).
        #[arg(long, default_value_t = 64 * 224 * 224)]
        max_batch_pixels: usize,
        /// Also profile this case by kernel, in a separate untimed run of `--steps` steps,
        /// and its convolutions shape by shape beside PyTorch's profiled step (models suite).
        #[arg(long)]
        profile: Option<String>,
        /// The batch size of the `--profile` run (models suite).
        #[arg(long, default_value_t = 32)]
        profile_batch: usize,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchSuite {
    /// The data pipeline (decode, resize, augment) against PIL/torchvision.
    Data,
    /// wick-nn's conv, pooling and BatchNorm kernels against candle and PyTorch.
    Nn,
    /// xresnet training steps and inference against PyTorch.
    Models,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Cuda(task) => cuda::run_task(&project_root(), task),
        Task::Tidy => {
            let violations = tidy::check_workspace(&project_root());
            for violation in &violations {
                eprintln!("{}: {}", violation.path.display(), violation.message);
            }
            anyhow::ensure!(violations.is_empty(), "{} tidy violation(s)", violations.len());
            println!("tidy: ok");
            Ok(())
        }
        Task::Reproduce { chapter, profile, data, out, device, cuda, seed, only } => {
            let cuda = cuda || device.starts_with("cuda");
            let options = reproduce::ReproduceOptions {
                chapter,
                profile,
                data,
                out,
                device,
                cuda,
                seed,
                only,
            };
            reproduce::reproduce(&project_root(), &options)
        }
        Task::Determinism { data, recipe, out, threads, no_kill } => {
            let options = determinism::DeterminismOptions {
                recipe,
                data,
                out,
                threads,
                kill_and_resume: !no_kill,
            };
            determinism::determinism(&project_root(), &options)
        }
        Task::Bench {
            suite,
            data,
            python,
            no_python,
            anchor,
            count,
            no_write,
            quick,
            steps,
            warmup,
            rounds,
            cases,
            batches,
            max_batch_pixels,
            profile,
            profile_batch,
        } => {
            let root = project_root();
            let python =
                if no_python { None } else { python.or_else(|| bench::find_python(&root)) };
            let command_line =
                format!("cargo xtask {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
            let options = bench::BenchOptions {
                python,
                anchor: root.join(anchor),
                data: root.join(data),
                count,
                write_docs: !no_write,
                command_line,
            };
            let (name, table) = match suite {
                BenchSuite::Data => ("data", bench::data(&root, &options)?),
                BenchSuite::Nn => ("nn", bench::nn(&root, &options, quick)?),
                BenchSuite::Models => {
                    let models = bench::ModelsOptions {
                        cases,
                        batches,
                        steps,
                        warmup,
                        rounds,
                        max_batch_pixels,
                        profile,
                        profile_batch,
                    };
                    ("models", bench::models(&root, &options, &models)?)
                }
            };
            let body = format!("{}{table}", bench::provenance(&options, options.python.is_some()));
            println!("{body}");
            if options.write_docs {
                bench::write_section(&root, name, &body)?;
                println!("wrote the {name} table into docs/performance.md");
            }
            Ok(())
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn project_root() -> PathBuf {
    // `cargo run` (the `cargo xtask` alias) sets CARGO_MANIFEST_DIR for the process: prefer it
    // to the compile-time value, which goes stale when checkouts at different paths share a
    // CARGO_TARGET_DIR and cargo reuses an xtask built in another checkout.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    // Invariant: xtask/ sits directly under the workspace root.
    manifest_dir.parent().expect("xtask lives one level below the workspace root").to_path_buf()
}
