//! The resolved plan of a run (as ripgrep separates its raw arguments from its resolved
//! config): a parsed [`Recipe`] and the command line's overrides become a [`Plan`] of validated
//! wick values — the data settings, the model (its `n_out` resolved once the vocab is known),
//! the loss, the optimizer, the precision, every stage's fit and data, TTA, the device and the
//! seed — with every default taken from the library's `fastai_defaults()` and `Default`s, here
//! and nowhere else. Every command builds its dataset, splits, loaders, model, optimizer and
//! Learner through the plan's one method each. Also here: what `--data` and `--device` name.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::Device;
use candle_nn::VarMap;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use wick_data::{
    AugTransforms, BadFilePolicy, CropDraw, DataLoader, ItemPipeline, Items, LoaderConfig,
    Normalize, Resampling, ResizeMethod, ScanConfig, ScanDepth, SplitRule, Splits,
};
use wick_eval::{Blend, TtaConfig};
use wick_models::{Activation, XResNet, XResNetConfig};
use wick_train::{
    Adam, AdamConfig, Autocast, BatchSource, FineTune, FlatCos, Learner, LearnerConfig, Loss,
    Metric, OneCycle, Optimizer, Precision, Sgd, SgdConfig, StageFit, optim_params,
    trainable_params,
};

use crate::data_report::DataReport;
use crate::recipe::{
    ActivationName, BadFiles, BookSection, CropDrawName, DataSection, Fit, LossName, ModelSection,
    NOut, OptimizerName, PrecisionName, Recipe, ResamplingName, SplitKind, Stage, TtaSection,
};

/// The dataset folder for `--data`: a folder as is, a `.tgz` extracted into the cache, the
/// `http://` or `https://` URL of an archive downloaded into the cache, or a catalogue name
/// (`imagenette2-160`, ...) downloaded into the cache from fastai's servers, or from the
/// mirror `$WICK_DATA_BASE_URL` (`<base>/<name>.tgz`, still md5-checked). The cache is
/// `$WICK_DATA`, else `$XDG_CACHE_HOME/wick`, else `~/.cache/wick`; `$WICK_DATA_READ_TIMEOUT`
/// (seconds, default 60) is how long a download may stall.
pub(crate) fn resolve_data(
    data: &str,
    progress: &mut dyn FnMut(wick_data::Progress),
) -> anyhow::Result<PathBuf> {
    let base_url = std::env::var("WICK_DATA_BASE_URL").ok().filter(|base| !base.is_empty());
    let source = data_source(data, base_url.as_deref())?;
    let config = acquire_config(std::env::var("WICK_DATA_READ_TIMEOUT").ok().as_deref())?;
    let cache = cache_dir();
    let hint = match source {
        wick_data::Source::Remote { .. } => {
            "; without network, pass --data with a local folder or .tgz"
        }
        _ => "",
    };
    let root = wick_data::untar_data(&source, &cache, &config, progress)
        .with_context(|| format!("getting the dataset {data} (cache {}){hint}", cache.display()))?;
    Ok(root)
}

/// What `--data` names (see [`resolve_data`]).
fn data_source(data: &str, base_url: Option<&str>) -> anyhow::Result<wick_data::Source> {
    if data.starts_with("http://") || data.starts_with("https://") {
        return Ok(wick_data::Source::url(data)?);
    }
    let path = Path::new(data);
    if path.exists() {
        Ok(wick_data::Source::local(path))
    } else if let Some(archive) = wick_data::archive_named(data) {
        Ok(match base_url {
            Some(base) => archive.source_at(base),
            None => wick_data::Source::from(archive),
        })
    } else {
        bail!(
            "--data {data}: no such file or folder, and not a dataset name ({}) or an http(s) URL.\n\
             Point --data at a local Imagenette folder (with train/ and val/) or a .tgz",
            wick_data::ARCHIVES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        );
    }
}

/// The acquisition settings, with `$WICK_DATA_READ_TIMEOUT` (seconds) if set.
fn acquire_config(read_timeout: Option<&str>) -> anyhow::Result<wick_data::AcquireConfig> {
    let mut config = wick_data::AcquireConfig::default();
    if let Some(text) = read_timeout {
        let seconds = text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
            .with_context(|| {
                format!("WICK_DATA_READ_TIMEOUT={text:?}: expected a number of seconds above 0")
            })?;
        config.download.read_timeout = std::time::Duration::from_secs_f64(seconds);
    }
    Ok(config)
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WICK_DATA") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("wick");
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/wick"))
        .unwrap_or_else(|| PathBuf::from(".wick-data"))
}

/// Parses `--device`: `cpu` or `cuda:N` (or `cuda`, meaning `cuda:0`).
pub(crate) fn device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        cuda if cuda.starts_with("cuda") => {
            let ordinal: usize = match cuda.strip_prefix("cuda:") {
                Some(n) => n.parse().with_context(|| format!("--device {spec}: bad GPU number"))?,
                None if cuda == "cuda" => 0,
                None => bail!("--device {spec}: expected cpu or cuda:N"),
            };
            if !candle::utils::cuda_is_available() {
                bail!(
                    "--device {spec}: this wick was built without CUDA (rebuild with --features cuda)"
                );
            }
            Device::new_cuda(ordinal).with_context(|| {
                format!(
                    "--device {spec}: cannot open GPU {ordinal} (is there an NVIDIA GPU with its \
                     driver, and are the CUDA 13 libraries on LD_LIBRARY_PATH? docs/cuda.md)"
                )
            })
        }
        other => bail!("--device {other}: expected cpu or cuda:N"),
    }
}

/// What the command line adds to a recipe: the device (from [`device`]), `--seed` and
/// `--threads`.
#[derive(Debug, Clone)]
pub(crate) struct PlanArgs {
    pub(crate) device: Device,
    /// Replaces the recipe's seed.
    pub(crate) seed: Option<u64>,
    /// Decode threads, over the recipe's `data.threads`.
    pub(crate) threads: Option<usize>,
}

impl PlanArgs {
    /// No overrides: the recipe as written, on `device`.
    pub(crate) fn on(device: Device) -> Self {
        PlanArgs { device, seed: None, threads: None }
    }
}

/// A training recipe resolved into wick values: every default filled (from the library's
/// `fastai_defaults()` constructors and `Default`s, stated nowhere else), every stage's data
/// and fit worked out, the command line's overrides applied. Every command builds its data,
/// model, optimizer and Learner through this plan's one method each.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) name: String,
    /// Seeds the split, the initialisation, the shuffles and every augmentation.
    pub(crate) seed: u64,
    pub(crate) device: Device,
    pub(crate) data: DataPlan,
    pub(crate) model: ModelSpec,
    pub(crate) loss: Loss,
    pub(crate) optimizer: OptimizerPlan,
    pub(crate) precision: Precision,
    /// MixUp's alpha; `None`: no MixUp.
    pub(crate) mixup: Option<f64>,
    /// Save a checkpoint every this many batches (and at every epoch end).
    pub(crate) checkpoint_every: usize,
    /// The fits in order, each with its data; never empty.
    pub(crate) stages: Vec<StagePlan>,
    /// Test-time augmentation of the trained model.
    pub(crate) tta: TtaPlan,
    /// The book's number for this experiment, for the report.
    pub(crate) book: Option<BookSection>,
}

/// The data settings every stage shares (the split rules are each stage's).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataPlan {
    /// Keep this fraction of the images (seeded), for scaled-down profiles.
    pub(crate) subset: Option<f64>,
    /// fastai's `Normalize.from_stats(*imagenet_stats)` after the pipeline.
    pub(crate) normalize: bool,
    /// The training augmentation; `None`: none.
    pub(crate) augment: Option<AugTransforms>,
    /// What the pre-scan and the loaders do with a bad file.
    pub(crate) bad_files: BadFilePolicy,
    /// Decode threads (`--threads`, else the recipe's, else every core).
    pub(crate) threads: usize,
    /// One composed resampling, or fastai's three.
    pub(crate) resampling: Resampling,
}

/// The data settings in force for a stage (a stage overrides size and batch size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StageData {
    /// Output side in pixels.
    pub(crate) size: u32,
    /// `Resize(item_size)`, the presize canvas, in pixels.
    pub(crate) item_size: u32,
    pub(crate) batch_size: usize,
}

/// One stage of the plan: its fit (fastai's defaults filled in) and its data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StagePlan {
    pub(crate) fit: StageFit,
    pub(crate) data: StageData,
    /// The stage draws a new random split, as chapter 7's second `get_dls` does.
    pub(crate) new_split: bool,
    /// The stage whose split this stage trains on: the last `new_split` stage up to it, else 0
    /// (`wick train` and `wick show-batch` agree through it).
    pub(crate) split_stage: usize,
    /// The split rule of this stage: the recipe's, with the random seed moved by each
    /// `new_split` up to it.
    pub(crate) split: SplitRule,
    /// The seed of this stage's loaders (`wick_data::seed::stage_seed`).
    pub(crate) seed: u64,
}

/// The model a recipe names, before its head size is resolved against the vocab.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelSpec {
    /// `xresnet18` ... `xresnet152`.
    pub(crate) arch: String,
    pub(crate) n_out: NOut,
    /// The configuration with every setting but `n_out`.
    base: XResNetConfig,
}

/// A model ready to build: its configuration and the seed of its initialisation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelPlan {
    pub(crate) config: XResNetConfig,
    pub(crate) seed: u64,
}

/// The optimizer of a run, its hyper-parameters resolved (the learning rate and momentum are
/// set by the schedule at every batch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OptimizerPlan {
    Adam(AdamConfig),
    Sgd(SgdConfig),
}

/// Test-time augmentation settings, every one resolved (fastai's `tta(n=4, beta=0.25,
/// use_max=False)` from `TtaConfig::default()` where unset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TtaPlan {
    /// Augmented passes.
    pub(crate) n: usize,
    /// The plain pass's weight in the blend, in [0, 1].
    pub(crate) beta: f64,
    /// Element-wise max instead of the blend.
    pub(crate) use_max: bool,
}

impl Plan {
    /// Resolves a parsed (so already range-checked) training recipe with the command line's
    /// overrides.
    ///
    /// # Errors
    /// A recipe with `from` (it trains nothing and evaluates another experiment's model), a
    /// `--threads 0`, or a value the library refuses, each named.
    pub(crate) fn resolve(recipe: Recipe, args: PlanArgs) -> anyhow::Result<Plan> {
        if let Some(from) = &recipe.from {
            bail!(
                "`from = {from:?}`: this recipe trains nothing, it evaluates that experiment's \
                 model (run it with `wick tta --recipe`)"
            );
        }
        if args.threads == Some(0) {
            bail!("--threads 0: must be at least 1 (or absent: the recipe's, else all cores)");
        }
        let seed = args.seed.unwrap_or(recipe.seed);
        let (Some(data), Some(model)) = (&recipe.data, &recipe.model) else {
            bail!("a training recipe needs [data] and [model] sections");
        };
        let stages = stage_plans(data, &recipe.stages, seed);
        if stages.is_empty() {
            bail!("recipe {:?} has no [[stage]] to train", recipe.name);
        }
        let train = &recipe.train;
        Ok(Plan {
            name: recipe.name.clone(),
            seed,
            device: args.device,
            data: DataPlan {
                subset: data.subset,
                normalize: data.normalize,
                augment: data.augment.then_some(AugTransforms {
                    min_scale: data.min_scale,
                    crop_draw: match data.crop_draw {
                        CropDrawName::PerImage => CropDraw::PerImage,
                        CropDrawName::PerBatch => CropDraw::PerBatch,
                    },
                    ..AugTransforms::default()
                }),
                bad_files: match data.bad_files {
                    BadFiles::Fail => BadFilePolicy::Fail,
                    BadFiles::Skip => BadFilePolicy::Skip,
                },
                threads: args.threads.or(data.threads).unwrap_or_else(|| {
                    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
                }),
                resampling: match data.resampling {
                    ResamplingName::OnePass => Resampling::OnePass,
                    ResamplingName::ThreePass => Resampling::ThreePass,
                },
            },
            model: ModelSpec::resolve(model)?,
            loss: match train.loss {
                LossName::CrossEntropy => Loss::CrossEntropy,
                LossName::LabelSmoothing => match train.label_smoothing_eps {
                    Some(eps) => Loss::LabelSmoothingCrossEntropy { eps },
                    None => Loss::fastai_label_smoothing(),
                },
            },
            optimizer: OptimizerPlan::resolve(train.optimizer, train.wd),
            precision: train.precision.into(),
            mixup: train.mixup,
            checkpoint_every: train.checkpoint_every,
            stages,
            tta: TtaPlan::default().with(recipe.tta.as_ref()).context("tta.beta")?,
            book: recipe.book,
        })
    }

    /// The last stage (the one a finished run's model was last trained at).
    pub(crate) fn last_stage(&self) -> &StagePlan {
        // Invariant: `resolve` refuses a plan without stages.
        self.stages.last().expect("a plan has at least one stage")
    }

    /// The model for a dataset of `n_classes` classes: `n_out = "classes"` resolved, a fixed
    /// `n_out` checked to hold them all.
    ///
    /// # Errors
    /// A fixed `model.n_out` smaller than `n_classes`.
    pub(crate) fn model(&self, n_classes: usize) -> anyhow::Result<ModelPlan> {
        Ok(ModelPlan { config: self.model.config(n_classes)?, seed: self.seed })
    }

    /// A Learner over `model` with this plan's optimizer, precision (`Autocast`), loss,
    /// accuracy metric and seed (MixUp, checkpoints and progress are the caller's callbacks).
    ///
    /// # Errors
    /// The optimizer refuses the model's parameters.
    pub(crate) fn learner(
        &self,
        model: XResNet,
        varmap: VarMap,
        train: Box<dyn BatchSource>,
        valid: Box<dyn BatchSource>,
    ) -> anyhow::Result<Learner<Autocast<XResNet>>> {
        let optimizer = self.optimizer.build(&varmap)?;
        Ok(Learner::new(
            Autocast::new(model, self.precision),
            varmap,
            optimizer,
            train,
            valid,
            LearnerConfig { loss: self.loss, metrics: vec![Metric::Accuracy], seed: self.seed },
        ))
    }

    /// The pre-scan's settings: a full strict decode of every file, with the pipeline's limits.
    pub(crate) fn scan_config(&self) -> ScanConfig {
        ScanConfig {
            depth: ScanDepth::Decode,
            decode: wick_data::DecodeConfig::default(),
            n_threads: self.data.threads,
        }
    }

    /// Lists `root` and checks every image file once (the pre-scan), before any epoch is built.
    /// The bad files found are recorded in the report; [`check_bad_files`] applies the policy.
    ///
    /// # Errors
    /// `root` cannot be listed, or the pre-scan fails.
    pub(crate) fn dataset(&self, root: &Path) -> anyhow::Result<Dataset> {
        let listing = wick_data::list_images(root)
            .with_context(|| format!("reading the dataset {}", root.display()))?;
        let mut report = DataReport::new(root, self.data.bad_files, listing.files.len());
        report.add(listing.excluded);
        let (files, bad) = wick_data::scan_files(&listing.files, &self.scan_config())?;
        report.add(bad);
        Ok(Dataset { root: root.to_path_buf(), files, report })
    }

    /// The training and validation items of stage `stage_idx` (its [`StagePlan::split`]),
    /// with `data.subset` applied.
    ///
    /// The subset is drawn once, from stage 0's split (a seeded fraction of its training and of
    /// its validation items), and a later `new_split` stage re-splits those same images with
    /// its own seed, as `scripts/fastai_reference.py` does (a seeded half of the items, then a
    /// new `RandomSplitter` per `get_dls`): the second stage validates on images of which
    /// about 80% were trained on in the first, as in chapter 7. (Drawing the subset after each
    /// new split would give the second stage a different half of the images, and so a smaller
    /// leak than fastai's.) Without a subset, a new split re-splits every image.
    ///
    /// # Errors
    /// No usable image, or an empty split.
    pub(crate) fn splits(&self, dataset: &mut Dataset, stage_idx: usize) -> anyhow::Result<Splits> {
        let root = dataset.root.clone();
        if dataset.files.is_empty() && dataset.report.listed > 0 {
            bail!(
                "{}: none of its {} image files is usable (every one is a bad file)",
                root.display(),
                dataset.report.listed
            );
        }
        let first_rule = &self.stages[0].split;
        let rule = &self.stages[stage_idx].split;
        let (mut splits, outside) =
            wick_data::label_and_split(&root, dataset.files.clone(), first_rule)
                .with_context(|| format!("reading the dataset {}", root.display()))?;
        dataset.report.add(outside);
        if let Some(fraction) = self.data.subset {
            let (train, valid) = (splits.train.len(), splits.valid.len());
            splits.train = keep_fraction(&splits.train, fraction, self.seed);
            splits.valid = keep_fraction(&splits.valid, fraction, self.seed.wrapping_add(1));
            dataset.report.subset_left_out =
                Some((train - splits.train.len(), valid - splits.valid.len()));
        }
        if rule != first_rule {
            // A new split of the same images (all of them, or stage 0's subset).
            let mut files: Vec<PathBuf> = match self.data.subset {
                Some(_) => splits.train.paths.iter().chain(&splits.valid.paths).cloned().collect(),
                None => dataset.files.clone(),
            };
            files.sort();
            splits = wick_data::label_and_split(&root, files, rule)
                .with_context(|| format!("reading the dataset {}", root.display()))?
                .0;
        }
        for (name, items) in [("training", &splits.train), ("validation", &splits.valid)] {
            if items.is_empty() {
                bail!("{}: the {name} split is empty", root.display());
            }
        }
        dataset
            .report
            .set_splits(&splits.vocab, &[("train", &splits.train), ("valid", &splits.valid)]);
        Ok(splits)
    }

    /// What happens to each image of stage `stage_idx` between its file and its tensor:
    /// `Resize(item_size)` (fastai's presizing), then, in training mode, `aug_transforms` when
    /// the recipe augments, to the stage's output size. The one place train, eval, tta and
    /// predict get it.
    pub(crate) fn pipeline(&self, stage_idx: usize) -> ItemPipeline {
        let stage = self.stages[stage_idx].data;
        ItemPipeline {
            item_size: stage.item_size,
            method: ResizeMethod::Crop,
            output_size: stage.size,
            augment: self.data.augment,
            decode: wick_data::DecodeConfig::default(),
            resampling: self.data.resampling,
        }
    }

    /// fastai's `Normalize.from_stats(*imagenet_stats)` on the plan's device, when the recipe
    /// normalises.
    ///
    /// # Errors
    /// The statistics cannot be put on the device.
    pub(crate) fn normalize(&self) -> anyhow::Result<Option<Normalize>> {
        Ok(if self.data.normalize { Some(Normalize::imagenet(&self.device)?) } else { None })
    }

    /// The training and validation loaders of stage `stage_idx` over `splits`, seeded with the
    /// stage's seed, on the plan's device.
    ///
    /// # Errors
    /// The training split holds less than one batch, or the loader refuses its settings.
    pub(crate) fn loaders(
        &self,
        stage_idx: usize,
        splits: &Splits,
    ) -> anyhow::Result<(DataLoader, DataLoader)> {
        let stage = &self.stages[stage_idx];
        let pipeline = self.pipeline(stage_idx);
        let (batch_size, seed) = (stage.data.batch_size, stage.seed);
        let train_config = self.loader_config(LoaderConfig::train(batch_size, seed));
        let valid_config = self.loader_config(LoaderConfig::valid(batch_size, seed));
        let normalize = self.normalize()?;
        let train =
            DataLoader::new(splits.train.clone(), pipeline, train_config, self.device.clone())?
                .with_normalize(normalize.clone());
        let valid =
            DataLoader::new(splits.valid.clone(), pipeline, valid_config, self.device.clone())?
                .with_normalize(normalize);
        if train.is_empty() {
            bail!(
                "the training split has {} images, fewer than one batch of {}",
                splits.train.len(),
                batch_size
            );
        }
        Ok((train, valid))
    }

    /// The loader a finished run is evaluated with: `items` through the last stage's pipeline
    /// and batch size, seeded with the run's seed (TTA's augmented passes draw from it).
    ///
    /// # Errors
    /// The loader refuses its settings.
    pub(crate) fn eval_loader(&self, items: Items) -> anyhow::Result<DataLoader> {
        let last = self.stages.len() - 1;
        let config =
            self.loader_config(LoaderConfig::valid(self.stages[last].data.batch_size, self.seed));
        let loader = DataLoader::new(items, self.pipeline(last), config, self.device.clone())?;
        Ok(loader.with_normalize(self.normalize()?))
    }

    /// `config` with the plan's decode threads and bad-file policy.
    fn loader_config(&self, config: LoaderConfig) -> LoaderConfig {
        LoaderConfig { n_threads: self.data.threads, bad_files: self.data.bad_files, ..config }
    }
}

/// Every stage's plan: the data overrides carried forward, the split rule and seed of each.
fn stage_plans(data: &DataSection, stages: &[Stage], seed: u64) -> Vec<StagePlan> {
    let mut current =
        StageData { size: data.size, item_size: data.item_size, batch_size: data.batch_size };
    let (mut split_stage, mut redraws) = (0, 0u64);
    stages
        .iter()
        .enumerate()
        .map(|(stage_idx, stage)| {
            current = StageData {
                size: stage.size.unwrap_or(current.size),
                item_size: stage.item_size.unwrap_or(current.item_size),
                batch_size: stage.batch_size.unwrap_or(current.batch_size),
            };
            // Stage 0's split is the first one whatever its `new_split`.
            if stage_idx > 0 && stage.new_split {
                split_stage = stage_idx;
                redraws += 1;
            }
            let split = match data.split {
                SplitKind::Folders => SplitRule::official(),
                // Each `new_split` stage draws another split, as chapter 7's second `get_dls`
                // does.
                SplitKind::Random => SplitRule::Random {
                    valid_pct: data.valid_pct,
                    seed: seed.wrapping_add(1_000 * redraws),
                },
            };
            StagePlan {
                fit: fit_plan(&stage.fit),
                data: current,
                new_split: stage.new_split,
                split_stage,
                split,
                seed: wick_data::seed::stage_seed(seed, stage_idx),
            }
        })
        .collect()
}

/// A dataset folder after the listing and the pre-scan: the usable image files and the report
/// of everything else.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    pub(crate) root: PathBuf,
    /// Image files that passed the pre-scan, sorted.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) report: DataReport,
}

/// Under `bad_files = "fail"`, any bad file is an error naming the files (and `report_path`,
/// where they are all listed); under `"skip"` they are already out of the item lists.
pub(crate) fn check_bad_files(
    report: &DataReport,
    report_path: Option<&Path>,
) -> anyhow::Result<()> {
    if report.policy == BadFilePolicy::Fail && !report.bad_files().is_empty() {
        bail!("{}", crate::data_report::fail_message(report, report_path));
    }
    Ok(())
}

fn keep_fraction(items: &Items, fraction: f64, seed: u64) -> Items {
    let keep = ((items.len() as f64 * fraction).round() as usize).clamp(1, items.len().max(1));
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    Items {
        paths: kept.iter().map(|&i| items.paths[i].clone()).collect(),
        labels: kept.iter().map(|&i| items.labels[i]).collect(),
    }
}

impl ModelSpec {
    /// The recipe's `[model]`, its architecture looked up.
    fn resolve(model: &ModelSection) -> anyhow::Result<ModelSpec> {
        let n_out = match model.n_out {
            NOut::Fixed(n) => n,
            // Set when the vocab is known (`config`).
            NOut::Classes => 1,
        };
        let named = XResNetConfig::named(&model.arch, n_out).with_context(|| {
            format!(
                "model.arch = {:?} is not one of {}",
                model.arch,
                XResNetConfig::names().join(", ")
            )
        })?;
        let base = XResNetConfig {
            widen: model.widen.unwrap_or(named.widen),
            dropout: model.dropout.unwrap_or(named.dropout),
            self_attention: model.self_attention.unwrap_or(named.self_attention),
            activation: match model.activation {
                Some(ActivationName::Relu) => Activation::Relu,
                Some(ActivationName::Mish) => Activation::Mish,
                None => named.activation,
            },
            ..named
        };
        Ok(ModelSpec { arch: model.arch.clone(), n_out: model.n_out, base })
    }

    /// The configuration for `n_classes` classes.
    ///
    /// # Errors
    /// A fixed `n_out` smaller than `n_classes`.
    fn config(&self, n_classes: usize) -> anyhow::Result<XResNetConfig> {
        let n_out = match self.n_out {
            NOut::Fixed(n) => n,
            NOut::Classes => n_classes,
        };
        if n_out < n_classes {
            bail!("model.n_out = {n_out} is smaller than the {n_classes} classes of the dataset");
        }
        Ok(XResNetConfig { n_out, ..self.base.clone() })
    }
}

impl ModelPlan {
    /// A fresh xresnet on `device`, its weights initialised from the seed (fastai's init,
    /// drawn by wick-models' seeded generator), with the `VarMap` that holds them: the one
    /// place every command builds its model.
    ///
    /// # Errors
    /// The configuration cannot be built (candle's error).
    pub(crate) fn build(&self, device: &Device) -> anyhow::Result<(XResNet, VarMap)> {
        let varmap = VarMap::new();
        let vb = wick_models::seeded_var_builder(&varmap, self.seed, candle::DType::F32, device);
        Ok((wick_models::xresnet(&self.config, self.seed, vb)?, varmap))
    }
}

impl OptimizerPlan {
    /// fastai's `Adam` with its defaults (what `wick device-check` and `wick bench-step`
    /// time and compare).
    pub(crate) fn fastai_adam() -> Self {
        OptimizerPlan::Adam(AdamConfig::fastai_defaults(SCHEDULED_LR))
    }

    /// `train.optimizer` with fastai's defaults, and `train.wd` when set (fastai's
    /// `Learner(wd=None)` leaves weight decay to the optimizer: `Adam` 0.01, `SGD` 0).
    fn resolve(name: OptimizerName, wd: Option<f64>) -> Self {
        match name {
            OptimizerName::Adam => {
                let defaults = AdamConfig::fastai_defaults(SCHEDULED_LR);
                OptimizerPlan::Adam(AdamConfig { wd: wd.unwrap_or(defaults.wd), ..defaults })
            }
            OptimizerName::Sgd => {
                let defaults = SgdConfig::fastai_defaults(SCHEDULED_LR);
                OptimizerPlan::Sgd(SgdConfig { wd: wd.unwrap_or(defaults.wd), ..defaults })
            }
        }
    }

    /// Decoupled weight decay.
    #[cfg(test)]
    fn wd(&self) -> f64 {
        match self {
            OptimizerPlan::Adam(config) => config.wd,
            OptimizerPlan::Sgd(config) => config.wd,
        }
    }

    /// The optimizer over the trainable parameters of `varmap` (its buffers left out): the one
    /// place every command builds its optimizer.
    ///
    /// # Errors
    /// The optimizer refuses the parameters.
    pub(crate) fn build(&self, varmap: &VarMap) -> anyhow::Result<Box<dyn Optimizer>> {
        let params = optim_params(trainable_params(varmap, wick_models::is_buffer));
        Ok(match *self {
            OptimizerPlan::Adam(config) => Box::new(Adam::new(params, config)?),
            OptimizerPlan::Sgd(config) => Box::new(Sgd::new(params, config)?),
        })
    }
}

/// The learning rate an optimizer is built with; every fit's schedule sets its own before the
/// first step.
const SCHEDULED_LR: f64 = 1e-3;

impl Default for TtaPlan {
    /// fastai's `tta()`: `TtaConfig::default()`.
    fn default() -> Self {
        let defaults = TtaConfig::default();
        match defaults.blend {
            Blend::Lerp { beta } => TtaPlan { n: defaults.n, beta, use_max: false },
            // fastai's default blend is the lerp at beta 0.25.
            Blend::Max => TtaPlan { n: defaults.n, beta: 0.25, use_max: true },
        }
    }
}

impl TtaPlan {
    /// These settings with those `section` sets in their place.
    ///
    /// # Errors
    /// A `beta` outside [0, 1].
    pub(crate) fn with(self, section: Option<&TtaSection>) -> anyhow::Result<TtaPlan> {
        let Some(section) = section else { return Ok(self) };
        let tta = TtaPlan {
            n: section.n.unwrap_or(self.n),
            beta: section.beta.unwrap_or(self.beta),
            use_max: section.use_max.unwrap_or(self.use_max),
        };
        crate::recipe::check_beta(tta.beta)?;
        Ok(tta)
    }

    /// wick-eval's settings.
    pub(crate) fn config(&self) -> TtaConfig {
        let blend = if self.use_max { Blend::Max } else { Blend::Lerp { beta: self.beta } };
        TtaConfig { n: self.n, blend, ..TtaConfig::default() }
    }
}

impl From<PrecisionName> for Precision {
    /// `precision = "f32"` or `"bf16"` (or `--precision`).
    fn from(name: PrecisionName) -> Precision {
        match name {
            PrecisionName::F32 => Precision::F32,
            PrecisionName::Bf16 => Precision::Bf16,
        }
    }
}

/// The recipe of a stage's fit, fastai's defaults filled in.
fn fit_plan(fit: &Fit) -> StageFit {
    match *fit {
        Fit::OneCycle { epochs, lr_max, div, div_final, pct_start } => {
            let defaults = OneCycle::fastai_defaults(lr_max);
            let cycle = OneCycle {
                div: div.unwrap_or(defaults.div),
                div_final: div_final.unwrap_or(defaults.div_final),
                pct_start: pct_start.unwrap_or(defaults.pct_start),
                ..defaults
            };
            StageFit::OneCycle { n_epoch: epochs, cycle }
        }
        Fit::FineTune { epochs, base_lr, freeze_epochs } => {
            let defaults = FineTune::fastai_defaults(epochs, base_lr);
            StageFit::FineTune(FineTune {
                freeze_epochs: freeze_epochs.unwrap_or(defaults.freeze_epochs),
                ..defaults
            })
        }
        Fit::FlatCos { epochs, lr, pct_start } => {
            let defaults = FlatCos::fastai_defaults(lr);
            StageFit::FlatCos {
                n_epoch: epochs,
                flat_cos: FlatCos {
                    pct_start: pct_start.unwrap_or(defaults.pct_start),
                    ..defaults
                },
            }
        }
        Fit::Constant { epochs, lr } => StageFit::Constant { n_epoch: epochs, lr },
    }
}

#[cfg(test)]
mod data_tests {
    use super::{acquire_config, data_source};
    use wick_data::Source;

    #[test]
    fn data_names_urls_and_mirrors() {
        let Source::Remote { url, md5, .. } = data_source("imagenette2-160", None).unwrap() else {
            panic!("a catalogue name is downloaded")
        };
        assert_eq!(url, wick_data::IMAGENETTE_160.url);
        assert_eq!(md5.as_deref(), Some(wick_data::IMAGENETTE_160.md5));
        let Source::Remote { url, md5, .. } =
            data_source("imagenette2-160", Some("http://127.0.0.1:8000/fastai")).unwrap()
        else {
            panic!("a catalogue name is downloaded")
        };
        assert_eq!(url, "http://127.0.0.1:8000/fastai/imagenette2-160.tgz");
        assert_eq!(
            md5.as_deref(),
            Some(wick_data::IMAGENETTE_160.md5),
            "a mirror is still checked"
        );
        let Source::Remote { name, url, md5, .. } =
            data_source("https://example.org/sets/pets.tgz", None).unwrap()
        else {
            panic!("a URL is downloaded")
        };
        assert_eq!(
            (name.as_str(), url.as_str(), md5),
            ("pets", "https://example.org/sets/pets.tgz", None)
        );
        let error = data_source("no-such-dataset", None).unwrap_err().to_string();
        assert!(error.contains("no-such-dataset") && error.contains("imagenette2-160"), "{error}");
        assert!(data_source("http://", None).is_err());
    }

    #[test]
    fn the_read_timeout_is_seconds_above_zero() {
        assert_eq!(acquire_config(None).unwrap(), wick_data::AcquireConfig::default());
        assert_eq!(
            acquire_config(Some("0.25")).unwrap().download.read_timeout,
            std::time::Duration::from_millis(250)
        );
        for bad in ["0", "-1", "soon", "NaN", "inf"] {
            let error = acquire_config(Some(bad)).unwrap_err().to_string();
            assert!(error.contains("WICK_DATA_READ_TIMEOUT"), "{bad}: {error}");
        }
    }
}

#[cfg(test)]
mod split_tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::{Dataset, Plan, PlanArgs};
    use crate::data_report::DataReport;

    /// A progressive recipe: stage 1 draws a new random split.
    fn recipe(subset: Option<f64>) -> Plan {
        let subset = subset.map(|f| format!("subset = {f}\n")).unwrap_or_default();
        let text = format!(
            "name = \"p\"\n[data]\nsplit = \"random\"\nitem_size = 8\nsize = 8\nbatch_size = 2\n\
             {subset}[model]\narch = \"xresnet18\"\nn_out = \"classes\"\n\
             [[stage]]\nfit = {{ kind = \"one_cycle\", epochs = 1, lr_max = 1e-3 }}\n\
             [[stage]]\nnew_split = true\nfit = {{ kind = \"fine_tune\", epochs = 1, base_lr = 1e-3 }}\n"
        );
        let recipe = crate::recipe::parse(&text, "full").unwrap().0;
        Plan::resolve(recipe, PlanArgs::on(candle::Device::Cpu)).unwrap()
    }

    fn dataset() -> Dataset {
        let root = PathBuf::from("/data");
        let files: Vec<PathBuf> = (0..200)
            .map(|i| root.join(if i % 2 == 0 { "cat" } else { "dog" }).join(format!("{i:03}.jpg")))
            .collect();
        let report = DataReport::new(&root, wick_data::BadFilePolicy::Fail, files.len());
        Dataset { report, root, files }
    }

    fn all(split: &wick_data::Splits) -> BTreeSet<PathBuf> {
        split.train.paths.iter().chain(&split.valid.paths).cloned().collect()
    }

    #[test]
    fn a_new_split_keeps_the_subset_and_redraws_validation_as_fastai_get_dls() {
        // scripts/fastai_reference.py: the same seeded half of the items, then a new
        // RandomSplitter(0.2) per get_dls, so ~80% of the new validation set was trained on.
        let recipe = recipe(Some(0.5));
        let mut data = dataset();
        let first = recipe.splits(&mut data, 0).unwrap();
        let second = recipe.splits(&mut data, 1).unwrap();
        assert_eq!(all(&first), all(&second), "the same half of the images in both stages");
        assert_eq!((first.train.len(), first.valid.len()), (80, 20));
        assert_eq!((second.train.len(), second.valid.len()), (80, 20));
        let trained_before: BTreeSet<&PathBuf> = first.train.paths.iter().collect();
        let leaked = second.valid.paths.iter().filter(|p| trained_before.contains(p)).count();
        assert!((10..=20).contains(&leaked), "{leaked} of 20 new validation images trained on");
        assert_ne!(first.valid.paths, second.valid.paths);
        // Without a subset the new split covers every image.
        let recipe = recipe_all();
        let mut data = dataset();
        let second = recipe.splits(&mut data, 1).unwrap();
        assert_eq!(all(&second).len(), 200);
    }

    fn recipe_all() -> Plan {
        recipe(None)
    }
}

#[cfg(test)]
mod resolve_tests {
    use candle::Device;
    use wick_data::{AugTransforms, BadFilePolicy, SplitRule};
    use wick_eval::{Blend, TtaConfig};
    use wick_models::{Activation, XResNetConfig};
    use wick_train::{
        AdamConfig, FineTune, FlatCos, Loss, OneCycle, Precision, SgdConfig, StageFit,
    };

    use super::{OptimizerPlan, Plan, PlanArgs, StageData, TtaPlan};

    /// A recipe with `extra` lines added to its `[train]` table and `stages` as its stages.
    fn text(train: &str, stages: &str) -> String {
        format!(
            "name = \"r\"\nseed = 7\n[data]\nsplit = \"random\"\nitem_size = 64\nsize = 24\n\
             batch_size = 32\n[model]\narch = \"xresnet18\"\nn_out = \"classes\"\nwiden = 0.25\n\
             [train]\n{train}\n{stages}"
        )
    }

    const ONE_STAGE: &str =
        "[[stage]]\nfit = { kind = \"one_cycle\", epochs = 2, lr_max = 3e-3 }\n";

    fn resolve(text: &str) -> anyhow::Result<Plan> {
        let (recipe, _) = crate::recipe::parse(text, "full")?;
        Plan::resolve(recipe, PlanArgs::on(Device::Cpu))
    }

    #[test]
    fn unset_values_are_the_librarys_fastai_defaults() {
        let plan = resolve(&text("", ONE_STAGE)).unwrap();
        assert_eq!(plan.optimizer, OptimizerPlan::fastai_adam());
        assert_eq!(plan.optimizer, OptimizerPlan::Adam(AdamConfig::fastai_defaults(1e-3)));
        assert_eq!(plan.loss, Loss::CrossEntropy);
        assert_eq!(plan.precision, Precision::F32);
        assert_eq!((plan.seed, plan.mixup, plan.checkpoint_every), (7, None, 50));
        assert_eq!(
            plan.stages[0].fit,
            StageFit::OneCycle { n_epoch: 2, cycle: OneCycle::fastai_defaults(3e-3) }
        );
        assert_eq!(plan.data.augment, Some(AugTransforms::default()));
        assert_eq!(plan.data.bad_files, BadFilePolicy::Fail);
        assert_eq!(plan.tta.config(), TtaConfig::default());
        // Label smoothing's eps, SGD's weight decay, fine_tune's and flat_cos's defaults.
        let stages = "[[stage]]\nfit = { kind = \"fine_tune\", epochs = 3, base_lr = 1e-3 }\n\
                      [[stage]]\nfit = { kind = \"flat_cos\", epochs = 1, lr = 2e-3 }\n";
        let plan =
            resolve(&text("loss = \"label_smoothing\"\noptimizer = \"sgd\"", stages)).unwrap();
        assert_eq!(plan.loss, Loss::fastai_label_smoothing());
        assert_eq!(plan.optimizer, OptimizerPlan::Sgd(SgdConfig::fastai_defaults(1e-3)));
        assert_eq!(plan.optimizer.wd(), 0.0);
        assert_eq!(plan.stages[0].fit, StageFit::FineTune(FineTune::fastai_defaults(3, 1e-3)));
        assert_eq!(
            plan.stages[1].fit,
            StageFit::FlatCos { n_epoch: 1, flat_cos: FlatCos::fastai_defaults(2e-3) }
        );
        // Set values win.
        let train = "loss = \"label_smoothing\"\nlabel_smoothing_eps = 0.2\nwd = 0.05\n\
                     precision = \"bf16\"\nmixup = 0.4";
        let plan = resolve(&text(train, ONE_STAGE)).unwrap();
        assert_eq!(plan.loss, Loss::LabelSmoothingCrossEntropy { eps: 0.2 });
        assert_eq!(plan.optimizer.wd(), 0.05);
        assert_eq!((plan.precision, plan.mixup), (Precision::Bf16, Some(0.4)));
        let stages = "[[stage]]\nfit = { kind = \"one_cycle\", epochs = 1, lr_max = 1e-2, \
                      div = 10.0, pct_start = 0.5 }\n";
        let StageFit::OneCycle { cycle, .. } = resolve(&text("", stages)).unwrap().stages[0].fit
        else {
            panic!("a one-cycle stage")
        };
        assert_eq!(
            cycle,
            OneCycle { div: 10.0, pct_start: 0.5, ..OneCycle::fastai_defaults(1e-2) }
        );
    }

    #[test]
    fn the_optimizer_is_built_with_its_resolved_weight_decay() {
        // fastai: Learner(wd=None) leaves wd to the optimizer: Adam(wd=0.01), SGD(wd=0.).
        let varmap = candle_nn::VarMap::new();
        for (train, wd) in [
            ("optimizer = \"adam\"", 0.01),
            ("optimizer = \"sgd\"", 0.0),
            ("optimizer = \"sgd\"\nwd = 0.05", 0.05),
        ] {
            let plan = resolve(&text(train, ONE_STAGE)).unwrap();
            assert_eq!(plan.optimizer.build(&varmap).unwrap().wd(), wd, "{train}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let error = |result: anyhow::Result<Plan>| format!("{:#}", result.unwrap_err());
        let from = "name = \"tta\"\nfrom = \"progressive\"\n[tta]\nn = 4\n";
        let message = error(resolve(from));
        assert!(message.contains("from = \"progressive\""), "{message}");
        let (recipe, _) = crate::recipe::parse(&text("", ONE_STAGE), "full").unwrap();
        let args = PlanArgs { threads: Some(0), ..PlanArgs::on(Device::Cpu) };
        let message = error(Plan::resolve(recipe, args));
        assert!(message.contains("--threads 0"), "{message}");
        let fixed = text("", ONE_STAGE).replace("n_out = \"classes\"", "n_out = 2");
        let message = format!("{:#}", resolve(&fixed).unwrap().model(3).unwrap_err());
        assert!(message.contains("model.n_out = 2") && message.contains("3 classes"), "{message}");
        let message = format!(
            "{:#}",
            TtaPlan::default()
                .with(Some(&crate::recipe::TtaSection { n: None, beta: Some(1.5), use_max: None }))
                .unwrap_err()
        );
        assert!(message.contains("beta = 1.5"), "{message}");
    }

    #[test]
    fn n_out_classes_is_resolved_against_the_vocab() {
        let plan = resolve(&text("", ONE_STAGE)).unwrap();
        let model = plan.model(10).unwrap();
        let expected =
            XResNetConfig { widen: 0.25, ..XResNetConfig::named("xresnet18", 10).unwrap() };
        assert_eq!((model.config, model.seed), (expected, 7));
        assert_eq!(plan.model(3).unwrap().config.n_out, 3);
        let fixed = text("", ONE_STAGE).replace("n_out = \"classes\"", "n_out = 1000");
        assert_eq!(resolve(&fixed).unwrap().model(10).unwrap().config.n_out, 1000);
    }

    #[test]
    fn unset_model_settings_are_fastais_xresnet_defaults() {
        let unset = text("", ONE_STAGE).replace("widen = 0.25\n", "");
        let config = resolve(&unset).unwrap().model(10).unwrap().config;
        assert_eq!(config, XResNetConfig::named("xresnet18", 10).unwrap());
        assert_eq!(
            (config.widen, config.dropout, config.activation, config.self_attention),
            (1.0, 0.0, Activation::Relu, false)
        );
        let set = text("", ONE_STAGE).replace(
            "widen = 0.25\n",
            "widen = 0.5\nactivation = \"mish\"\nself_attention = true\ndropout = 0.1\n",
        );
        let config = resolve(&set).unwrap().model(10).unwrap().config;
        assert_eq!(
            (config.widen, config.dropout, config.activation, config.self_attention),
            (0.5, 0.1, Activation::Mish, true)
        );
    }

    #[test]
    fn tta_settings_fill_unset_fields_from_fastais_defaults() {
        let with_tta = |tta: &str| resolve(&format!("{}{tta}", text("", ONE_STAGE))).unwrap().tta;
        assert_eq!(with_tta(""), TtaPlan { n: 4, beta: 0.25, use_max: false });
        let tta = with_tta("[tta]\nn = 8\n");
        assert_eq!((tta.n, tta.config().blend), (8, Blend::Lerp { beta: 0.25 }));
        let tta = with_tta("[tta]\nbeta = 0.5\nuse_max = true\n");
        assert_eq!((tta.n, tta.beta, tta.config().blend), (4, 0.5, Blend::Max));
        assert_eq!(tta.config().seed_epoch, TtaConfig::default().seed_epoch);
        // A later section overrides only what it sets.
        let section = crate::recipe::TtaSection { n: Some(2), beta: None, use_max: Some(false) };
        let tta = tta.with(Some(&section)).unwrap();
        assert_eq!(tta, TtaPlan { n: 2, beta: 0.5, use_max: false });
        assert_eq!(tta.with(None).unwrap(), tta);
    }

    #[test]
    fn each_stage_carries_its_data_split_and_seed() {
        let stages = "[[stage]]\nfit = { kind = \"one_cycle\", epochs = 1, lr_max = 3e-3 }\n\
                      [[stage]]\nsize = 32\nnew_split = true\n\
                      fit = { kind = \"fine_tune\", epochs = 1, base_lr = 1e-3 }\n\
                      [[stage]]\nbatch_size = 8\nitem_size = 96\n\
                      fit = { kind = \"constant\", epochs = 1, lr = 1e-4 }\n";
        let plan = resolve(&text("", stages)).unwrap();
        let data: Vec<StageData> = plan.stages.iter().map(|stage| stage.data).collect();
        assert_eq!(
            data,
            [
                StageData { size: 24, item_size: 64, batch_size: 32 },
                StageData { size: 32, item_size: 64, batch_size: 32 },
                StageData { size: 32, item_size: 96, batch_size: 8 },
            ]
        );
        let split_stages: Vec<usize> = plan.stages.iter().map(|stage| stage.split_stage).collect();
        assert_eq!(split_stages, [0, 1, 1]);
        let random = |seed| SplitRule::Random { valid_pct: 0.2, seed };
        let rules: Vec<&SplitRule> = plan.stages.iter().map(|stage| &stage.split).collect();
        assert_eq!(rules, [&random(7), &random(1_007), &random(1_007)]);
        let seeds: Vec<u64> = plan.stages.iter().map(|stage| stage.seed).collect();
        assert_eq!(seeds, [7, 8, 9]);
        assert_eq!(plan.stages[2].fit, StageFit::Constant { n_epoch: 1, lr: 1e-4 });
        assert_eq!(plan.last_stage().data.batch_size, 8);
        assert_eq!(plan.pipeline(1).output_size, 32);
        assert_eq!(plan.pipeline(2).item_size, 96);
        // --seed moves every seed; folders ignore it.
        let (recipe, _) = crate::recipe::parse(
            &text("", stages).replace("split = \"random\"", "split = \"folders\""),
            "full",
        )
        .unwrap();
        let args = PlanArgs { seed: Some(100), threads: Some(3), ..PlanArgs::on(Device::Cpu) };
        let plan = Plan::resolve(recipe, args).unwrap();
        assert_eq!(plan.stages[2].split, SplitRule::official());
        assert_eq!((plan.seed, plan.stages[1].seed, plan.data.threads), (100, 101, 3));
        assert_eq!(plan.model(2).unwrap().seed, 100);
    }
}
