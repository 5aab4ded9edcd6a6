//! `wick train`: one recipe, stage by stage, into a run directory. Each stage is its own
//! Learner over the same model (its weights carry over); a stage that finished is skipped on a
//! rerun, and an interrupted one resumes from its checkpoint, so rerunning the same command
//! continues where it stopped.
//!
//! As one rank of a `--gpus N` run (`distributed.rs` starts the ranks) it joins the NCCL group,
//! takes rank 0's initial weights, trains on its shard of every batch with gradients averaged
//! over the ranks, and writes files and progress only if it is rank 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use candle::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarMap;
use serde_json::json;
use wick_data::{LoaderConfig, Shard};
use wick_models::{XResNet, load_weights, save_weights, weights_identity};
use wick_train::{
    Autocast, Checkpoint, CheckpointConfig, CheckpointExtras, CheckpointSaver, FitOutcome, Learner,
    LearnerConfig, Metric, MixUp, ModelState, RunFiles,
};

use crate::data_report;
use crate::distributed::RankSpec;
use crate::plan::{self, FitPlan};
use crate::progress::Progress;
use crate::recipe::Recipe;
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

/// The model shared by every stage's Learner.
struct SharedModel(Arc<XResNet>);

impl ModuleT for SharedModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.0.forward_t(xs, train)
    }
}

/// The model's BatchNorm step counter (PyTorch's `num_batches_tracked`), kept outside its
/// `VarMap`: checkpointed so that a resumed run saves the same model, bit for bit.
struct BatchNormCounter(Arc<XResNet>);

impl ModelState for BatchNormCounter {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        let count = Tensor::new(self.0.num_batches_tracked() as i64, &Device::Cpu)?;
        Ok(HashMap::from([("num_batches_tracked".to_string(), count)]))
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        let count = tensors
            .get("num_batches_tracked")
            .ok_or_else(|| candle::Error::Msg("num_batches_tracked is missing".to_string()))?
            .to_dtype(DType::I64)?
            .to_scalar::<i64>()?;
        self.0.set_num_batches_tracked(u64::try_from(count).unwrap_or(0));
        Ok(())
    }
}

/// How a `wick train` ended.
pub(crate) enum TrainOutcome {
    Finished,
    Interrupted,
}

pub(crate) fn run(args: &TrainArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<TrainOutcome> {
    let (mut recipe, mut resolved) = crate::recipe::load(&args.recipe_path, &args.profile)?;
    if recipe.from.is_some() {
        bail!(
            "{} evaluates another experiment's model (`from`): run it with `wick tta`",
            args.recipe_path.display()
        );
    }
    if let Some(seed) = args.seed {
        recipe.seed = seed;
    }
    resolved.insert("seed".to_string(), crate::recipe::seed_value(recipe.seed));
    let device = plan::device(&args.device)?;
    // Rank 0 (or the only process) writes the run directory; other ranks only read it.
    let root = args.rank.is_none_or(|spec| spec.rank == 0);
    let data_root = plan::resolve_data(&args.data, &mut crate::download_progress())?;
    crate::run_dir::check_out_outside_data(&args.out, &data_root)?;
    // Every file accounted for before the first epoch: listed, pre-scanned and split, and
    // checked before anything is written in the run directory (a bad-file refusal writes only
    // data_report.json, which names every file).
    let mut dataset = plan::dataset(&data_root, recipe.data(), args.threads)?;
    let first_splits = plan::splits(&mut dataset, recipe.data(), recipe.seed, 0, &recipe.stages);
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
    let report_path = run_dir.path(data_report::REPORT_FILE);
    if root {
        dataset.report.write(&run_dir)?;
        println!("{}", dataset.report.summary(5));
    }
    plan::check_bad_files(&dataset.report, Some(&report_path))?;
    let mut splits = first_splits?;
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
        "seed": recipe.seed,
        "device": args.device,
        "data": data_root.display().to_string(),
        "git_commit": git_commit(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "ranks": args.rank.map_or(1, |spec| spec.world_size),
        "precision": format!("{:?}", recipe.train.precision).to_lowercase(),
    });
    if root {
        run_dir.write("run.json", &serde_json::to_string_pretty(&info)?)?;
    }

    if root {
        run_dir.write_vocab(&splits.vocab)?;
    }
    let config = plan::model_config(&recipe, splits.vocab.len())?;
    let (model, varmap) = plan::model(&config, recipe.seed, &device)?;
    let model = Arc::new(model);
    let data_parallel = match args.rank {
        Some(spec) => {
            let data_parallel = crate::distributed::join(spec, &device, &args.out)?;
            // Every rank starts from rank 0's weights and BatchNorm buffers.
            data_parallel.broadcast_vars(&sorted_vars(&varmap))?;
            Some(data_parallel)
        }
        None => None,
    };
    let precision = plan::precision(recipe.train.precision);
    if root {
        println!(
            "{}: {} ({} parameters), {} classes, {} training / {} validation images, device {}",
            recipe.name,
            recipe.model().arch,
            wick_models::count_params(&varmap, ""),
            splits.vocab.len(),
            splits.train.len(),
            splits.valid.len(),
            args.device
        );
    }

    let started = std::time::Instant::now();
    let mut stage_results = Vec::new();
    for (stage_idx, stage) in recipe.stages.iter().enumerate() {
        let stage_dir = run_dir.stage(stage_idx)?;
        if stage_idx > 0 && stage.new_split {
            splits =
                plan::splits(&mut dataset, recipe.data(), recipe.seed, stage_idx, &recipe.stages)?;
        }
        let done = stage_dir.join("done.json");
        if done.is_file() {
            load_weights(&model, &varmap, &stage_dir.join("model.safetensors"))
                .with_context(|| format!("stage {stage_idx} finished earlier"))?;
            if root {
                println!(
                    "stage {stage_idx}: finished earlier, weights loaded from {}",
                    stage_dir.display()
                );
            }
            stage_results
                .push(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&done)?)?);
            continue;
        }
        let stage_data = plan::stage_data(&recipe, stage_idx);
        let stage_seed = plan::stage_seed(recipe.seed, stage_idx);
        let (train, valid) =
            plan::loaders(recipe.data(), stage_data, &splits, stage_seed, args.threads, &device)?;
        if root {
            // fastai's show_batch of what this stage trains on, to check the augmentation.
            let picture = stage_dir.join("show_batch.png");
            crate::show_batch::draw_first_batch(
                &train,
                &splits.vocab,
                recipe.data().normalize,
                &picture,
            )?;
        }
        // Each rank builds only its share of every global batch: the same images, bit for bit,
        // as that share of a single-process run.
        let train = match &data_parallel {
            Some(dp) => {
                let shard = Shard { rank: dp.rank(), world: dp.world_size() };
                train
                    .with(*train.pipeline(), LoaderConfig { shard, ..*train.config() })
                    .with_context(|| {
                        format!("sharding the training data over {} GPUs", dp.world_size())
                    })?
            }
            None => train,
        };
        let skip_logs = [train.skip_log(), valid.skip_log()];
        let fit = plan::fit_plan(&stage.fit);
        let mut learner = Learner::new(
            Box::new(Autocast::new(SharedModel(Arc::clone(&model)), precision)),
            varmap.clone(),
            plan::optimizer(&recipe, &varmap)?,
            Box::new(train),
            Box::new(valid),
            LearnerConfig {
                loss: plan::loss(&recipe),
                metrics: vec![Metric::Accuracy],
                seed: stage_seed,
            },
        );
        if let Some(dp) = &data_parallel {
            learner.add_gradient_hook(Box::new(dp.clone()));
        }
        if let Some(alpha) = recipe.train.mixup {
            learner.add_callback(Box::new(MixUp::new(alpha)?));
        }
        let checkpoint_path = stage_dir.join("checkpoint.safetensors");
        let extras = CheckpointExtras {
            identity: weights_identity(model.config()),
            model_state: Some(Arc::new(BatchNormCounter(Arc::clone(&model)))),
        };
        if root {
            learner.add_callback(Box::new(
                CheckpointSaver::new(CheckpointConfig {
                    path: checkpoint_path.clone(),
                    every_n_batches: recipe.train.checkpoint_every,
                })
                .with_extras(extras.clone()),
            ));
            learner.add_callback(Box::new(RunFiles::new(&stage_dir)));
            let title = format!(
                "stage {stage_idx}: {} epochs at {} px, batch size {}{}{}",
                fit.epochs(),
                stage_data.size,
                stage_data.batch_size,
                if stage.new_split { ", new random split" } else { "" },
                match &data_parallel {
                    Some(dp) => format!(" over {} GPUs", dp.world_size()),
                    None => String::new(),
                }
            );
            learner.add_callback(Box::new(Progress::new(title)));
        }
        learner.set_interrupt_flag(Arc::clone(&interrupt));
        if checkpoint_path.is_file() {
            let checkpoint = Checkpoint::load(&checkpoint_path).with_context(|| {
                format!("stage {stage_idx} cannot resume (delete its checkpoint to restart it)")
            })?;
            checkpoint
                .check_identity(&extras.identity)
                .and_then(|()| learner.resume(&checkpoint))
                .and_then(|()| {
                    checkpoint.restore_model_state(&BatchNormCounter(Arc::clone(&model)))
                })
                .with_context(|| format!("resuming from {}", checkpoint_path.display()))?;
            if root {
                println!("stage {stage_idx}: resuming from {}", checkpoint_path.display());
            }
        }
        let outcome = match fit {
            FitPlan::OneCycle { epochs, schedule } => learner.fit_one_cycle(epochs, schedule),
            FitPlan::FineTune(fine_tune) => learner.fine_tune(fine_tune),
            FitPlan::FlatCos { epochs, schedule } => learner.fit_flat_cos(epochs, schedule),
            FitPlan::Constant { epochs, lr } => learner.fit(epochs, lr),
        };
        // Files that passed the pre-scan but failed in a batch (replaced or left out).
        let failed = dataset.report.add_batch_failures(&skip_logs);
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
        let outcome = outcome?;
        match outcome {
            FitOutcome::Completed => {}
            FitOutcome::Interrupted { .. } if !root => return Ok(TrainOutcome::Interrupted),
            FitOutcome::Interrupted { at } => {
                println!(
                    "interrupted at epoch {} batch {}; checkpoint {} saved: rerun the same command to resume",
                    at.epoch,
                    at.batch,
                    checkpoint_path.display()
                );
                return Ok(TrainOutcome::Interrupted);
            }
            FitOutcome::Stopped { at } => {
                bail!("stage {stage_idx} stopped early at epoch {} batch {}", at.epoch, at.batch)
            }
        }
        let result = stage_result(stage_idx, stage_data, &learner, started.elapsed().as_secs_f64());
        if root {
            save_weights(&model, &varmap, &stage_dir.join("model.safetensors"))?;
            wick_io::write_durably(&done, serde_json::to_string_pretty(&result)?.as_bytes())
                .with_context(|| format!("writing {}", done.display()))?;
            // The stage's weights are saved and marked done: its checkpoint has served its purpose.
            let _ = std::fs::remove_file(&checkpoint_path);
        }
        stage_results.push(result);
    }
    if !root {
        return Ok(TrainOutcome::Finished);
    }
    save_weights(&model, &varmap, &run_dir.path("model.safetensors"))?;
    run_dir.write_items("valid.txt", &splits.valid, &data_root)?;
    run_dir.record_valid(&crate::run_dir::DataFingerprint::of(
        &data_root,
        &splits.vocab,
        &[("valid", &splits.valid)],
    ))?;
    dataset.report.write(&run_dir)?;
    let last = stage_results.last().context("the recipe has no stage")?;
    let result = json!({
        "name": recipe.name,
        "profile": args.profile,
        "seed": recipe.seed,
        "accuracy": last["accuracy"],
        "valid_loss": last["valid_loss"],
        "seconds": stage_results.iter().filter_map(|s| s["seconds"].as_f64()).sum::<f64>(),
        "stages": stage_results,
        "book": recipe.book.as_ref().map(|b| json!({"accuracy": b.accuracy, "source": b.source})),
        "data": dataset.report.result_summary(),
    });
    run_dir.write("result.json", &serde_json::to_string_pretty(&result)?)?;
    println!(
        "{}: final accuracy {:.4}",
        recipe.name,
        last["accuracy"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(TrainOutcome::Finished)
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

/// A stage's epoch tables and final numbers, as JSON.
fn stage_result(
    stage_idx: usize,
    data: plan::StageData,
    learner: &Learner,
    elapsed: f64,
) -> serde_json::Value {
    let recorder = learner.recorder();
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
                    })
                })
                .collect();
            json!({ "epochs": rows })
        })
        .collect();
    let last =
        recorder.fits().last().and_then(|fit| fit.epochs.last()).and_then(|row| row.valid.as_ref());
    let seconds: f64 =
        recorder.fits().iter().flat_map(|fit| fit.epochs.iter()).map(|row| row.seconds).sum();
    json!({
        "stage": stage_idx,
        "size": data.size,
        "batch_size": data.batch_size,
        "fits": fits,
        "tables": (0..recorder.fits().len()).filter_map(|i| recorder.epoch_table(i)).collect::<Vec<_>>(),
        "accuracy": last.and_then(|v| v.metrics.first().copied()),
        "valid_loss": last.map(|v| v.loss),
        "seconds": seconds,
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

/// Reads a run's recipe and rebuilds its model with the saved weights (for eval, tta, predict).
pub(crate) fn load_run(
    run_dir: &RunDir,
    device: &Device,
) -> anyhow::Result<(Recipe, XResNet, VarMap)> {
    let (recipe, _) = crate::recipe::parse(&run_dir.read("recipe.resolved.toml")?, "full")?;
    let vocab = run_dir.read_vocab()?;
    let config = plan::model_config(&recipe, vocab.len())?;
    let (model, varmap) = plan::model(&config, recipe.seed, device)?;
    load_weights(&model, &varmap, &run_dir.path("model.safetensors"))?;
    Ok((recipe, model, varmap))
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
