//! `wick`: train, evaluate and inspect image classifiers from the command line. Glue only:
//! it parses flags and recipe files, picks the device, wires wick-data, wick-models,
//! wick-train and wick-eval together, and owns the terminal (progress bars, tables, errors) and
//! the run directory. Everything it does, a user of the crates can do in their own code.

// The CLI is one of the two crates allowed to talk to the terminal (the other is xtask).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod eval;
mod plan;
mod progress;
mod recipe;
mod run_dir;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "Train image classifiers the fastai way, in Rust on candle"
)]
struct Cli {
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
        /// split), a .tgz, or a dataset name such as imagenette2-160 to download.
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
        /// Augmented passes.
        #[arg(long, default_value_t = 4)]
        n: usize,
        /// Weight of the plain pass.
        #[arg(long, default_value_t = 0.25)]
        beta: f64,
        /// Element-wise max instead of the blend.
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
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train { recipe, data, out, profile, device, seed, threads } => {
            let interrupt = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&interrupt);
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    // A second Ctrl-C does not wait for the checkpoint.
                    std::process::exit(130);
                }
                eprintln!(
                    "\ninterrupt: finishing the batch and saving a checkpoint (Ctrl-C again to quit now)"
                );
            })?;
            let args =
                train::TrainArgs { recipe_path: recipe, profile, data, out, device, seed, threads };
            match train::run(&args, interrupt)? {
                train::TrainOutcome::Finished => Ok(ExitCode::SUCCESS),
                train::TrainOutcome::Interrupted => Ok(ExitCode::from(130)),
            }
        }
        Command::Eval { run, data, device } => {
            eval::eval(&run, data.as_deref(), &device).map(|()| ExitCode::SUCCESS)
        }
        Command::Tta { run, out, data, device, n, beta, use_max } => {
            eval::run_tta(&eval::TtaArgs { run, out, data, device, n, beta, use_max })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::LrFind { recipe, data, out, profile, device } => {
            eval::lr_find(&recipe, &profile, &data, &out, &device).map(|()| ExitCode::SUCCESS)
        }
        Command::Predict { run, images, top_k, device } => {
            eval::predict(&run, &images, top_k, &device).map(|()| ExitCode::SUCCESS)
        }
        Command::Summary { arch, n_out, size } => {
            eval::summary(&arch, n_out, size).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// A download progress bar on stderr for `untar_data`.
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
        wick_data::Progress::Verify { path } => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            eprintln!("verifying {}", path.display());
        }
        wick_data::Progress::Extract { archive } => eprintln!("extracting {}", archive.display()),
    }
}
