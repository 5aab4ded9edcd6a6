//! `wick train`: one recipe into a run directory. One Learner trains the recipe's stages as one
//! plan (`Learner::fit_stages`): each stage's data is built when the stage runs, and one
//! checkpoint, `<out>/checkpoint.safetensors`, records where the run stands, so rerunning the
//! same command resumes inside any stage (and a finished run trains nothing). Each stage's
//! metrics and plots go to `stage-<i>/`.
//!
//! As one rank of a `--gpus N` run (`distributed.rs` starts the ranks) it joins the NCCL group,
//! takes rank 0's initial weights, trains on its shard of every batch with gradients averaged
//! over the ranks, and writes files and progress only if it is rank 0.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use candle::{Device, Var};
use candle_nn::VarMap;
use serde_json::json;
use wick_data::{LoaderConfig, Shard, SkipLog, Splits};
use wick_models::{XResNet, load_weights, save_weights, weights_identity};
use wick_train::{
    Checkpoint, CheckpointConfig, CheckpointExtras, CheckpointSaver, DataParallel, FitOutcome,
    InMemoryBatches, MixUp, Recorder, RunFiles, Stage, StageData, StageFit, TimeSplit,
    stage_fit_ranges,
};

use crate::data_report;
use crate::distributed::RankSpec;
use crate::plan::{self, Plan, PlanArgs};
use crate::progress::Progress;
use crate::run_dir::{RunDir, git_commit};

/// What `wick train` was asked to do.
pub(crate) struct TrainArgs {
    pub(crate) recipe_path: PathBuf,
    pub(crate) profile: String,
    pub(crate) data: String,
    pub(crate) out: PathBuf,
    pub(crate) device: String,
    pub(crate) seed: Option<u64>,
    pub(crate) threads: Option<usize>,
    /// Set when this process is one rank of a `--gpus` run.
    pub(crate) rank: Option<RankSpec>,
}

/// How a `wick train` ended.
pub(crate) enum TrainOutcome {
    Finished,
    Interrupted,
}

pub(crate) fn run(args: &TrainArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<TrainOutcome> {
    let (recipe, mut resolved) = crate::recipe::load(&args.recipe_path, &args.profile)?;
    let device = plan::device(&args.device)?;
    let plan_args = PlanArgs { device, seed: args.seed, threads: args.threads };
    let plan = Plan::resolve(recipe, plan_args)
        .with_context(|| format!("recipe {}", args.recipe_path.display()))?;
    resolved.insert("seed".to_string(), crate::recipe::seed_value(plan.seed));
    // Rank 0 (or the only process) writes the run directory; other ranks only read it.
    let root = args.rank.is_none_or(|spec| spec.rank == 0);
    let data_root = plan::resolve_data(&args.data, &mut crate::download_progress())?;
    crate::run_dir::check_out_outside_data(&args.out, &data_root)?;
    // Every file accounted for before the first epoch: listed, pre-scanned and split, and
    // checked before anything is written in the run directory (a bad-file refusal writes only
    // data_report.json, which names every file).
    let mut dataset = plan.dataset(&data_root)?;
    let first_splits = plan.splits(&mut dataset, 0);
    if let Ok(splits) = &first_splits
        && splits.vocab.len() < 2
    {
        bail!(
            "{} has {} class ({}): a classifier needs at least 2 classes (one folder per class)",
            data_root.display(),
            splits.vocab.len(),
            splits.vocab.classes().join(", ")
        );
    }
    let run_dir = RunDir::create(&args.out)?;
    // One writer per run: held until this function returns.
    let _lock = if root { Some(run_dir.lock("train")?) } else { None };
    if root {
        run_dir.remove_stale_temporaries()?;
    }
    check_no_stage_checkpoints(&run_dir, &run_dir.path(CHECKPOINT_FILE))?;
    let report_path = run_dir.path(data_report::REPORT_FILE);
    if root {
        dataset.report.write(&run_dir)?;
        println!("{}", dataset.report.summary(5));
    }
    plan::check_bad_files(&dataset.report, Some(&report_path))?;
    let splits = first_splits?;
    check_same_recipe(&run_dir, &resolved)?;
    if root {
        let recipe_text = toml::to_string(&resolved)?;
        run_dir.check_or_record_data(
            &crate::run_dir::DataFingerprint::of(
                &data_root,
                &splits.vocab,
                &[("train", &splits.train), ("valid", &splits.valid)],
            ),
            &recipe_text,
        )?;
        run_dir.write("recipe.resolved.toml", &recipe_text)?;
    }
    let info = json!({
        "recipe": args.recipe_path.display().to_string(),
        "profile": args.profile,
        "seed": plan.seed,
        "device": args.device,
        "data": data_root.display().to_string(),
        "git_commit": git_commit(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "ranks": args.rank.map_or(1, |spec| spec.world_size),
        "precision": format!("{:?}", plan.precision).to_lowercase(),
    });
    if root {
        run_dir.write("run.json", &serde_json::to_string_pretty(&info)?)?;
    }

    if root {
        run_dir.write_vocab(&splits.vocab)?;
    }
    let (model, varmap) = plan.model(splits.vocab.len())?.build(&plan.device)?;
    let data_parallel = match args.rank {
        Some(spec) => {
            let data_parallel = crate::distributed::join(spec, &plan.device, &args.out)?;
            // Every rank starts from rank 0's weights and BatchNorm buffers.
            data_parallel.broadcast_vars(&sorted_vars(&varmap))?;
            Some(data_parallel)
        }
        None => None,
    };
    if root {
        println!(
            "{}: {} ({} parameters), {} classes, {} training / {} validation images, device {}",
            plan.name,
            plan.model.arch,
            wick_models::count_params(&varmap, ""),
            splits.vocab.len(),
            splits.train.len(),
            splits.valid.len(),
            args.device
        );
    }

    let identity = weights_identity(model.config());
    // Every stage brings its own data (built by its factory below, only if the stage runs), so
    // the Learner starts with none.
    let mut learner = plan.learner(
        model,
        varmap,
        Box::new(InMemoryBatches::new(Vec::new())),
        Box::new(InMemoryBatches::new(Vec::new())),
    )?;
    if let Some(dp) = &data_parallel {
        learner.add_gradient_hook(Box::new(dp.clone()));
    }
    if let Some(alpha) = plan.mixup {
        learner.add_callback(Box::new(MixUp::new(alpha)?));
    }
    let fits: Vec<StageFit> = plan.stages.iter().map(|stage| stage.fit).collect();
    let ranges = stage_fit_ranges(&fits);
    // The stage a flattened fit index belongs to (`ranges.len()` past the last fit).
    let stage_of = |fit_index: usize| {
        ranges.iter().position(|range| range.contains(&fit_index)).unwrap_or(ranges.len())
    };
    let checkpoint_path = run_dir.path(CHECKPOINT_FILE);
    if root {
        learner.add_callback(Box::new(
            CheckpointSaver::new(CheckpointConfig {
                path: checkpoint_path.clone(),
                every_n_batches: plan.checkpoint_every,
            })
            .with_extras(CheckpointExtras { identity: identity.clone() }),
        ));
        learner.add_callback(Box::new(RunFiles::per_stage(&run_dir.root)));
        let titles = plan
            .stages
            .iter()
            .enumerate()
            .map(|(stage_idx, stage)| {
                format!(
                    "stage {stage_idx}: {} epochs at {} px, batch size {}{}{}",
                    stage.fit.n_epoch(),
                    stage.data.size,
                    stage.data.batch_size,
                    if stage.new_split { ", new random split" } else { "" },
                    match &data_parallel {
                        Some(dp) => format!(" over {} GPUs", dp.world_size()),
                        None => String::new(),
                    }
                )
            })
            .collect();
        learner.add_callback(Box::new(Progress::stages(titles)));
    }
    learner.set_interrupt_flag(Arc::clone(&interrupt));
    if checkpoint_path.is_file() {
        let checkpoint = Checkpoint::load(&checkpoint_path)
            .context("the run cannot resume (delete its checkpoint to start it over)")?;
        checkpoint
            .check_identity(&identity)
            .and_then(|()| learner.resume(&checkpoint))
            .with_context(|| format!("resuming from {}", checkpoint_path.display()))?;
        if root {
            let at = checkpoint.position();
            match ranges.get(stage_of(at.fit_index)) {
                Some(range) => println!(
                    "resuming from {}: stage {}, fit {}, epoch {}, batch {}",
                    checkpoint_path.display(),
                    stage_of(at.fit_index),
                    at.fit_index - range.start,
                    at.epoch,
                    at.batch
                ),
                None => println!(
                    "every stage finished earlier: the weights come from {}",
                    checkpoint_path.display()
                ),
            }
        }
    }

    let inputs =
        RefCell::new(StageInputs { dataset, splits, split_stage: 0, skip_logs: Vec::new() });
    let context = StageContext {
        plan: &plan,
        run_dir: &run_dir,
        data_parallel: data_parallel.as_ref(),
        root,
    };
    let stages = fits
        .iter()
        .enumerate()
        .map(|(stage_idx, fit)| {
            let (inputs, context) = (&inputs, &context);
            // Each stage starts from a fresh optimizer state, as a new optimizer would.
            Stage::new(*fit).with_optimizer_reset().with_data(move || {
                stage_data(&mut inputs.borrow_mut(), context, stage_idx).map_err(Into::into)
            })
        })
        .collect();
    let outcome = learner.fit_stages(stages);
    let StageInputs { mut dataset, mut splits, split_stage, skip_logs } = inputs.into_inner();
    // Files that passed the pre-scan but failed in a batch (replaced or left out).
    for (stage_idx, logs) in &skip_logs {
        let failed = dataset.report.add_batch_failures(logs);
        if root && !failed.is_empty() {
            dataset.report.write(&run_dir)?;
            println!(
                "stage {stage_idx}: {} file(s) failed while their batch was built (bad_files = \"skip\"): {}; see {}",
                failed.len(),
                failed
                    .iter()
                    .take(5)
                    .map(|e| format!("{} ({})", e.path.display(), e.reason))
                    .collect::<Vec<_>>()
                    .join(", "),
                report_path.display()
            );
        }
    }
    match outcome? {
        FitOutcome::Completed => {}
        FitOutcome::Interrupted { .. } if !root => return Ok(TrainOutcome::Interrupted),
        FitOutcome::Interrupted { at } => {
            let stage_idx = stage_of(at.fit_index);
            println!(
                "interrupted at stage {stage_idx}, fit {}, epoch {} batch {}; checkpoint {} saved: rerun the same command to resume",
                at.fit_index - ranges.get(stage_idx).map_or(0, |range| range.start),
                at.epoch,
                at.batch,
                checkpoint_path.display()
            );
            return Ok(TrainOutcome::Interrupted);
        }
        FitOutcome::Stopped { at } => {
            bail!(
                "stage {} stopped early at epoch {} batch {}",
                stage_of(at.fit_index),
                at.epoch,
                at.batch
            )
        }
    }
    if !root {
        return Ok(TrainOutcome::Finished);
    }
    // The validation images of the last stage (its split, if no stage had to build it here).
    let last_split = plan.last_stage().split_stage;
    if last_split != split_stage {
        splits = plan.splits(&mut dataset, last_split)?;
    }
    save_weights(learner.model().inner(), learner.varmap(), &run_dir.path("model.safetensors"))?;
    run_dir.write_items("valid.txt", &splits.valid, &data_root)?;
    run_dir.record_valid(&crate::run_dir::DataFingerprint::of(
        &data_root,
        &splits.vocab,
        &[("valid", &splits.valid)],
    ))?;
    dataset.report.write(&run_dir)?;
    let recorder = learner.recorder();
    let mut elapsed = 0.0;
    let stage_results: Vec<serde_json::Value> = ranges
        .iter()
        .zip(&plan.stages)
        .enumerate()
        .map(|(stage_idx, (range, stage))| {
            // A finished plan's history holds every fit; clamp all the same rather than panic.
            let n_fits = recorder.fits().len();
            let history = recorder.slice(range.start.min(n_fits)..range.end.min(n_fits));
            elapsed += stage_seconds(&history);
            stage_result(stage_idx, stage.data, &history, elapsed)
        })
        .collect();
    let last = stage_results.last().context("the recipe has no stage")?;
    let seconds = stage_seconds(recorder);
    let split = stage_split(recorder);
    let result = json!({
        "name": plan.name,
        "profile": args.profile,
        "seed": plan.seed,
        "accuracy": last["accuracy"],
        "valid_loss": last["valid_loss"],
        "seconds": seconds,
        "time_split": split_json(split.as_ref(), seconds),
        "stages": stage_results,
        "book": plan.book.as_ref().map(|b| json!({"accuracy": b.accuracy, "source": b.source})),
        "data": dataset.report.result_summary(),
    });
    run_dir.write("result.json", &serde_json::to_string_pretty(&result)?)?;
    println!("{}: final accuracy {:.4}", plan.name, last["accuracy"].as_f64().unwrap_or(f64::NAN));
    println!("{}", split_line(split.as_ref(), seconds));
    Ok(TrainOutcome::Finished)
}

/// The run's one checkpoint, in the run directory.
const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// What the stages' data factories change: the dataset (a new split re-reads it into its
/// report), the splits in force, and each built stage's loaders' logs of files that failed in a
/// batch.
struct StageInputs {
    dataset: plan::Dataset,
    splits: Splits,
    /// The stage whose split rule `splits` follows ([`plan::StagePlan::split_stage`]).
    split_stage: usize,
    skip_logs: Vec<(usize, [SkipLog; 2])>,
}

/// What the stages' data factories read.
struct StageContext<'a> {
    plan: &'a Plan,
    run_dir: &'a RunDir,
    data_parallel: Option<&'a DataParallel>,
    root: bool,
}

/// Stage `stage_idx`'s loaders, built when the stage runs: its split (a new one for a
/// `new_split` stage), its size and batch size, its seed; its `show_batch.png` (rank 0), and on
/// a `--gpus` rank only that rank's share of every batch.
fn stage_data(
    inputs: &mut StageInputs,
    context: &StageContext<'_>,
    stage_idx: usize,
) -> anyhow::Result<StageData> {
    let plan = context.plan;
    let split_stage = plan.stages[stage_idx].split_stage;
    if split_stage != inputs.split_stage {
        inputs.splits = plan.splits(&mut inputs.dataset, split_stage)?;
        inputs.split_stage = split_stage;
    }
    let splits = &inputs.splits;
    let stage_dir = context.run_dir.stage(stage_idx)?;
    let (train, valid) = plan.loaders(stage_idx, splits)?;
    if context.root {
        // fastai's show_batch of what this stage trains on, to check the augmentation.
        let picture = stage_dir.join("show_batch.png");
        crate::show_batch::draw_first_batch(&train, &splits.vocab, plan.data.normalize, &picture)?;
    }
    // Each rank builds only its share of every global batch: the same images, bit for bit, as
    // that share of a single-process run.
    let train = match context.data_parallel {
        Some(dp) => {
            let shard = Shard { rank: dp.rank(), world: dp.world_size() };
            train.with(*train.pipeline(), LoaderConfig { shard, ..*train.config() }).with_context(
                || format!("sharding the training data over {} GPUs", dp.world_size()),
            )?
        }
        None => train,
    };
    inputs.skip_logs.push((stage_idx, [train.skip_log(), valid.skip_log()]));
    Ok((Box::new(train), Box::new(valid)))
}

/// A run folder written by a wick that kept a checkpoint per stage
/// (`stage-<i>/checkpoint.safetensors`, `stage-<i>/done.json`) and has no run checkpoint is
/// refused, naming the file, rather than trained again from the start.
fn check_no_stage_checkpoints(run_dir: &RunDir, checkpoint: &Path) -> anyhow::Result<()> {
    if checkpoint.is_file() {
        return Ok(());
    }
    let mut stage_dirs: Vec<PathBuf> = std::fs::read_dir(&run_dir.root)
        .with_context(|| format!("listing {}", run_dir.root.display()))?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("stage-"))
        .map(|entry| entry.path())
        .collect();
    stage_dirs.sort();
    for stage_dir in stage_dirs {
        for old in ["checkpoint.safetensors", "done.json"] {
            let path = stage_dir.join(old);
            if path.is_file() {
                bail!(
                    "{} was written by an older wick, which kept a checkpoint per stage; this wick \
                     keeps one, {}: finish the run with the older wick, or delete the folder to \
                     start over",
                    path.display(),
                    checkpoint.display()
                );
            }
        }
    }
    Ok(())
}

/// Every variable of `varmap` (parameters and buffers), sorted by name: the same list on every
/// rank.
fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut vars: Vec<(String, Var)> =
        data.iter().map(|(name, var)| (name.clone(), var.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Seconds of every epoch of a history.
fn stage_seconds(history: &Recorder) -> f64 {
    history.fits().iter().flat_map(|fit| fit.epochs.iter()).map(|row| row.seconds).sum()
}

/// Where the seconds of every epoch of a history went, or `None` if an epoch has no split (it
/// was restored from an older wick's checkpoint).
fn stage_split(history: &Recorder) -> Option<TimeSplit> {
    let mut epochs = history.fits().iter().flat_map(|fit| fit.epochs.iter());
    epochs.try_fold(TimeSplit::default(), |sum, row| Some(sum.add(&row.split?)))
}

/// A [`TimeSplit`] of `total` seconds as JSON, with the rest as `other`.
fn split_json(split: Option<&TimeSplit>, total: f64) -> serde_json::Value {
    split.map_or(serde_json::Value::Null, |split| {
        json!({
            "data_wait": split.data_wait,
            "train_batches": split.train_batches,
            "valid_batches": split.valid_batches,
            "other": split.other(total),
        })
    })
}

/// `time: 128.4 s (training batches 101.2 s, validation batches 9.0 s, waiting for data 2.1 s,
/// other 16.1 s)` for the console.
fn split_line(split: Option<&TimeSplit>, total: f64) -> String {
    match split {
        Some(split) => format!(
            "time: {total:.1} s (training batches {:.1} s, validation batches {:.1} s, waiting for data {:.1} s, other {:.1} s)",
            split.train_batches,
            split.valid_batches,
            split.data_wait,
            split.other(total)
        ),
        None => format!("time: {total:.1} s (not split: resumed from an older wick's checkpoint)"),
    }
}

/// A stage's epoch tables and final numbers, as JSON, from its own history; `elapsed` is the
/// seconds of its epochs and of every earlier stage's.
fn stage_result(
    stage_idx: usize,
    data: plan::StageData,
    recorder: &Recorder,
    elapsed: f64,
) -> serde_json::Value {
    let fits: Vec<serde_json::Value> = recorder
        .fits()
        .iter()
        .map(|fit| {
            let rows: Vec<serde_json::Value> = fit
                .epochs
                .iter()
                .map(|row| {
                    json!({
                        "epoch": row.epoch,
                        "train_loss": row.train_loss,
                        "valid_loss": row.valid.as_ref().map(|v| v.loss),
                        "accuracy": row.valid.as_ref().and_then(|v| v.metrics.first().copied()),
                        "seconds": row.seconds,
                        "time_split": split_json(row.split.as_ref(), row.seconds),
                    })
                })
                .collect();
            json!({ "epochs": rows })
        })
        .collect();
    let last =
        recorder.fits().last().and_then(|fit| fit.epochs.last()).and_then(|row| row.valid.as_ref());
    let seconds = stage_seconds(recorder);
    let split = stage_split(recorder);
    json!({
        "stage": stage_idx,
        "size": data.size,
        "batch_size": data.batch_size,
        "fits": fits,
        "tables": (0..recorder.fits().len()).filter_map(|i| recorder.epoch_table(i)).collect::<Vec<_>>(),
        "accuracy": last.and_then(|v| v.metrics.first().copied()),
        "valid_loss": last.map(|v| v.loss),
        "seconds": seconds,
        "time_split": split_json(split.as_ref(), seconds),
        "elapsed_since_start": elapsed,
    })
}

/// A rerun into an existing run directory must be the same experiment.
fn check_same_recipe(run_dir: &RunDir, resolved: &toml::Table) -> anyhow::Result<()> {
    let path = run_dir.path("recipe.resolved.toml");
    if !path.is_file() {
        return Ok(());
    }
    let previous: toml::Table = run_dir.read("recipe.resolved.toml")?.parse()?;
    if &previous != resolved {
        bail!(
            "{} holds a run of a different recipe or profile ({}); use another --out, or delete \
             the folder to start over",
            run_dir.root.display(),
            crate::run_dir::recipe_changes(&previous, resolved).join("; ")
        );
    }
    Ok(())
}

/// Reads a run's recipe as its plan on `device` and rebuilds its model with the saved weights
/// (for eval, tta, predict, export).
pub(crate) fn load_run(
    run_dir: &RunDir,
    device: Device,
) -> anyhow::Result<(Plan, XResNet, VarMap)> {
    let (recipe, _) = crate::recipe::parse(&run_dir.read("recipe.resolved.toml")?, "full")?;
    let plan = Plan::resolve(recipe, PlanArgs::on(device))?;
    let vocab = run_dir.read_vocab()?;
    let (model, varmap) = plan.model(vocab.len())?.build(&plan.device)?;
    load_weights(&model, &varmap, &run_dir.path("model.safetensors"))?;
    Ok((plan, model, varmap))
}

/// The data root recorded in a run's `run.json`, unless `--data` overrides it.
pub(crate) fn run_data_root(run_dir: &RunDir, data: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(data) = data {
        return plan::resolve_data(data, &mut crate::download_progress());
    }
    let info: serde_json::Value = serde_json::from_str(&run_dir.read("run.json")?)?;
    let root = info["data"].as_str().context("run.json has no data folder; pass --data")?;
    let root = Path::new(root);
    if !root.is_dir() {
        bail!("the run's data folder {} is gone; pass --data", root.display());
    }
    Ok(root.to_path_buf())
}
