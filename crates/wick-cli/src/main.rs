//! `wick`: train, evaluate and inspect image classifiers from the command line. Glue only:
//! it parses flags and recipe files, picks the device, wires wick-data, wick-models,
//! wick-train and wick-eval together, and owns the terminal (progress bars, tables, errors) and
//! the run directory. Everything it does, a user of the crates can do in their own code.

// The CLI is one of the two crates allowed to talk to the terminal (the other is xtask).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench_step;
mod data_report;
mod device_check;
mod distributed;
mod eval;
mod export;
mod plan;
mod progress;
mod recipe;
mod run_dir;
mod show_batch;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// A second interrupt sooner than this after the first is the same one delivered twice (to the
/// process and to its process group), not a request to quit without the checkpoint.
const INTERRUPT_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "Train image classifiers the fastai way, in Rust on candle"
)]
struct Cli {
    /// On an error, also print where it came from (candle and Rust backtraces).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a recipe into a run directory (rerun the same command to resume).
    Train {
        /// The recipe file (TOML), e.g. recipes/chapter7/baseline.toml.
        #[arg(long)]
        recipe: PathBuf,
        /// Dataset: a folder (train/<class>/, val/<class>/ or just <class>/ with a random
        /// split), a .tgz, a dataset name such as imagenette2-160 to download, or the
        /// http(s) URL of a .tgz.
        #[arg(long)]
        data: String,
        /// The run directory.
        #[arg(long)]
        out: PathBuf,
        /// The recipe profile: full (as written), or one of the recipe's [profiles.*].
        #[arg(long, default_value = "full")]
        profile: String,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Override the recipe's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Decode threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Data-parallel training over NCCL on cuda:0 ... cuda:N-1, one process per GPU, the
        /// recipe's batch size split across them (needs a build with --features nccl;
        /// --device is then ignored).
        #[arg(long)]
        gpus: Option<usize>,
        /// This process's rank in a --gpus run (set by the --gpus launcher).
        #[arg(long, hide = true, requires = "world_size")]
        rank: Option<usize>,
        /// The number of ranks of a --gpus run (set by the --gpus launcher).
        #[arg(long, hide = true, requires = "rank")]
        world_size: Option<usize>,
    },
    /// Accuracy, per-class accuracy, confusion matrix and top losses of a finished run.
    Eval {
        #[arg(long)]
        run: PathBuf,
        /// Dataset folder, if it moved since training.
        #[arg(long)]
        data: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Test-time augmentation (fastai's learn.tta) on a finished run's validation images.
    Tta {
        #[arg(long)]
        run: PathBuf,
        /// Write result.json here (default: tta.json in the run).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        data: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// A TTA recipe (e.g. recipes/chapter7/tta.toml): its [tta] section sets n, beta and
        /// use_max; the flags below override it; unset values are fastai's (n 4, beta 0.25).
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// Augmented passes [default: the recipe's, else 4].
        #[arg(long)]
        n: Option<usize>,
        /// Weight of the plain pass [default: the recipe's, else 0.25].
        #[arg(long)]
        beta: Option<f64>,
        /// Element-wise max instead of the blend [default: the recipe's, else off].
        #[arg(long)]
        use_max: bool,
    },
    /// fastai's lr_find on a recipe's first stage; writes lr_find.png.
    LrFind {
        #[arg(long)]
        recipe: PathBuf,
        #[arg(long)]
        data: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "full")]
        profile: String,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The top classes of images, from a finished run's model.
    Predict {
        #[arg(long)]
        run: PathBuf,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// fastai's show_batch: the first batch a recipe's stage trains (or validates) on, augmented
    /// as the loader makes it, as a captioned PNG grid.
    ShowBatch {
        #[arg(long)]
        recipe: PathBuf,
        #[arg(long)]
        data: String,
        #[arg(long, default_value = "full")]
        profile: String,
        /// The stage whose data to show (progressive resizing has two: 0 and 1).
        #[arg(long, default_value_t = 0)]
        stage: usize,
        /// The validation batch instead of the training batch.
        #[arg(long)]
        valid: bool,
        /// The PNG to write (default: show_batch-<recipe>-stage<N>-<train|valid>.png).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export a finished run's model: a standard ONNX model (opset 17, preprocessing inside,
    /// checked against wick's logits with an ONNX runtime before it is written), or PyTorch
    /// state-dict names in safetensors with a JSON sidecar.
    Export {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "onnx")]
        format: export::ExportFormat,
        /// The file (onnx) or folder (safetensors) to write; default: in the run.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare every op and one xresnet50 training step on a device with the CPU reference
    /// (f32, f32 with TF32 convolutions, bf16); exits with status 1 if an op disagrees.
    DeviceCheck {
        #[arg(long, default_value = "cuda:0")]
        device: String,
        /// Also write every figure to this JSON file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side of the training-step comparison.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Batch size of the training-step comparison.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
    },
    /// Time xresnet training steps on a device (random inputs; forward, loss, backward, Adam)
    /// and print one JSON line, as scripts/anchor_bench.py does for PyTorch.
    BenchStep {
        #[arg(long, default_value = "xresnet50")]
        arch: String,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, value_enum, default_value = "f32")]
        precision: recipe::PrecisionName,
        #[arg(long, default_value = "cuda:0")]
        device: String,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first (cuDNN algorithm choice, kernel loading).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
    },
    /// Per-module output shapes and parameter counts of an architecture.
    Summary {
        #[arg(long, default_value = "xresnet50")]
        arch: String,
        #[arg(long, default_value_t = 1000)]
        n_out: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Keep the memory each training step frees for the next one (wick_nn::allocator).
    let _ = wick_nn::allocator::retain_freed_memory();
    // Library errors (candle's, anyhow's) capture a backtrace when RUST_BACKTRACE is set, and
    // candle prints it inside the message: a user sees one clear paragraph unless --debug asks
    // for the trace. RUST_LIB_BACKTRACE governs error backtraces only (panics keep
    // RUST_BACKTRACE).
    // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", if cli.debug { "1" } else { "0" }) };
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            if cli.debug {
                eprintln!("error: {error:?}");
            } else {
                eprintln!("error: {}", one_paragraph(&error));
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one paragraph: `outer: cause: root cause`, with any line breaks
/// inside a message folded into spaces and a cause already quoted by its parent not repeated.
pub(crate) fn one_paragraph(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train {
            recipe,
            data,
            out,
            profile,
            device,
            seed,
            threads,
            gpus,
            rank,
            world_size,
        } => {
            let interrupt = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&interrupt);
            let first = std::sync::Mutex::new(None::<std::time::Instant>);
            ctrlc::set_handler(move || {
                // Ctrl-C (SIGINT) and SIGTERM alike (ctrlc's `termination` feature).
                let mut first = first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match *first {
                    // A second signal does not wait for the checkpoint...
                    Some(at) if at.elapsed() >= INTERRUPT_DEBOUNCE => std::process::exit(130),
                    // ...unless it is the same interrupt delivered twice: `timeout -s INT` and a
                    // terminal signal the process and its group, a few microseconds apart.
                    Some(_) => {}
                    None => {
                        *first = Some(std::time::Instant::now());
                        flag.store(true, Ordering::SeqCst);
                        eprintln!(
                            "\ninterrupt: finishing the batch and saving a checkpoint (Ctrl-C again to quit now)"
                        );
                    }
                }
            })?;
            let rank = rank
                .zip(world_size)
                .map(|(rank, world_size)| distributed::RankSpec { rank, world_size });
            let args = train::TrainArgs {
                recipe_path: recipe,
                profile,
                data,
                out,
                device,
                seed,
                threads,
                rank,
            };
            let outcome = match gpus {
                Some(gpus) if rank.is_none() => distributed::launch(gpus, &args)?,
                _ => train::run(&args, interrupt)?,
            };
            match outcome {
                train::TrainOutcome::Finished => Ok(ExitCode::SUCCESS),
                train::TrainOutcome::Interrupted => Ok(ExitCode::from(130)),
            }
        }
        Command::Eval { run, data, device } => {
            eval::eval(&run, data.as_deref(), &device).map(|()| ExitCode::SUCCESS)
        }
        Command::Tta { run, out, data, device, recipe, n, beta, use_max } => {
            eval::run_tta(&eval::TtaArgs { run, out, data, device, recipe, n, beta, use_max })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::LrFind { recipe, data, out, profile, device } => {
            eval::lr_find(&recipe, &profile, &data, &out, &device).map(|()| ExitCode::SUCCESS)
        }
        Command::Predict { run, images, top_k, device } => {
            let failed = eval::predict(&run, &images, top_k, &device)?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::ShowBatch { recipe, data, profile, stage, valid, out } => {
            let args = show_batch::ShowBatchArgs { recipe, profile, data, stage, valid, out };
            show_batch::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Export { run, format, out } => {
            export::export(&run, format, out.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::DeviceCheck { device, json, seed, size, batch_size } => {
            let args = device_check::DeviceCheckArgs { device, json, seed, size, batch_size };
            let passed = device_check::run(&args)?;
            Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::BenchStep { arch, size, batch_size, precision, device, steps, warmup } => {
            let precision = precision.into();
            let args = bench_step::BenchStepArgs {
                arch,
                size,
                batch_size,
                precision,
                device,
                steps,
                warmup,
            };
            bench_step::run(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Summary { arch, n_out, size } => {
            eval::summary(&arch, n_out, size).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// A download progress bar on stderr for `untar_data`; its other events as lines.
pub(crate) fn download_progress() -> impl FnMut(wick_data::Progress) {
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |event| match event {
        wick_data::Progress::Download { done, total } => {
            let bar = bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "download [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            });
            bar.set_position(done);
        }
        // Every other event is a line for the user (wick-data words it).
        other => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            eprintln!("{other}");
        }
    }
}
