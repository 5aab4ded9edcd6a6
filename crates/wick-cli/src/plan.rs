//! From a parsed recipe and the command line to the concrete objects of a run: the dataset on
//! disk, its splits and loaders for each stage, the model configuration, the loss, the
//! optimizer and the fit to run. Everything that turns recipe words into wick types is here.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use wick_data::{
    AugTransforms, BadFilePolicy, DataLoader, ItemPipeline, Items, LoaderConfig, Normalize,
    ResizeMethod, ScanConfig, ScanDepth, SplitRule, Splits,
};
use wick_models::{Activation, XResNetConfig};
use wick_train::{FineTune, FlatCos, Loss, OneCycle, Precision, StageFit};

use crate::data_report::DataReport;
use crate::recipe::{
    ActivationName, BadFiles, DataSection, Fit, LossName, NOut, OptimizerName, PrecisionName,
    Recipe, SplitKind, Stage,
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

/// The stage whose split a stage trains on: the last `new_split` stage up to it, else 0
/// (`wick train` and `wick show-batch` must agree).
pub(crate) fn split_stage(stages: &[Stage], stage: usize) -> usize {
    (1..=stage).rev().find(|&i| stages.get(i).is_some_and(|s| s.new_split)).unwrap_or(0)
}

/// The split rule of a stage: the recipe's, with the random seed moved for a `new_split` stage.
fn split_rule(data: &DataSection, seed: u64, stage_idx: usize, stages: &[Stage]) -> SplitRule {
    match data.split {
        SplitKind::Folders => SplitRule::official(),
        SplitKind::Random => {
            // Each `new_split` stage draws another split, as chapter 7's second `get_dls` does.
            let redraws =
                stages.iter().take(stage_idx + 1).skip(1).filter(|stage| stage.new_split).count()
                    as u64;
            SplitRule::Random {
                valid_pct: data.valid_pct,
                seed: seed.wrapping_add(1_000 * redraws),
            }
        }
    }
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

/// Decode threads: `--threads`, else the recipe's, else every core.
pub(crate) fn threads(data: &DataSection, threads: Option<usize>) -> usize {
    threads
        .or(data.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
}

/// The pre-scan's settings: a full strict decode of every file, with the pipeline's limits.
pub(crate) fn scan_config(n_threads: usize) -> ScanConfig {
    ScanConfig { depth: ScanDepth::Decode, decode: wick_data::DecodeConfig::default(), n_threads }
}

/// Lists `root` and checks every image file once (the pre-scan), before any epoch is built.
/// The bad files found are recorded in the report; [`check_bad_files`] applies the policy.
pub(crate) fn dataset(
    root: &Path,
    data: &DataSection,
    threads: Option<usize>,
) -> anyhow::Result<Dataset> {
    let listing = wick_data::list_images(root)
        .with_context(|| format!("reading the dataset {}", root.display()))?;
    let mut report = DataReport::new(root, data.bad_files, listing.files.len());
    report.add(listing.excluded);
    let (files, bad) =
        wick_data::scan_files(&listing.files, &scan_config(self::threads(data, threads)))?;
    report.add(bad);
    Ok(Dataset { root: root.to_path_buf(), files, report })
}

/// Under `bad_files = "fail"`, any bad file is an error naming the files (and `report_path`,
/// where they are all listed); under `"skip"` they are already out of the item lists.
pub(crate) fn check_bad_files(
    report: &DataReport,
    report_path: Option<&Path>,
) -> anyhow::Result<()> {
    if report.policy == BadFiles::Fail && !report.bad_files().is_empty() {
        bail!("{}", crate::data_report::fail_message(report, report_path));
    }
    Ok(())
}

/// The training and validation items of stage `stage_idx` (its split rule from
/// [`split_rule`]), with `data.subset` applied.
///
/// The subset is drawn once, from stage 0's split (a seeded fraction of its training and of
/// its validation items), and a later `new_split` stage re-splits those same images with its
/// own seed, as `scripts/fastai_reference.py` does (a seeded half of the items, then a new
/// `RandomSplitter` per `get_dls`): the second stage validates on images of which about 80%
/// were trained on in the first, as in chapter 7. (Drawing the subset after each new split
/// would give the second stage a different half of the images, and so a smaller leak than
/// fastai's.) Without a subset, a new split re-splits every image.
///
/// # Errors
/// No usable image, or an empty split.
pub(crate) fn splits(
    dataset: &mut Dataset,
    data: &DataSection,
    seed: u64,
    stage_idx: usize,
    stages: &[Stage],
) -> anyhow::Result<Splits> {
    let root = dataset.root.clone();
    if dataset.files.is_empty() && dataset.report.listed > 0 {
        bail!(
            "{}: none of its {} image files is usable (every one is a bad file)",
            root.display(),
            dataset.report.listed
        );
    }
    let first_rule = split_rule(data, seed, 0, stages);
    let rule = split_rule(data, seed, stage_idx, stages);
    let (mut splits, outside) =
        wick_data::label_and_split(&root, dataset.files.clone(), &first_rule)
            .with_context(|| format!("reading the dataset {}", root.display()))?;
    dataset.report.add(outside);
    if let Some(fraction) = data.subset {
        let (train, valid) = (splits.train.len(), splits.valid.len());
        splits.train = keep_fraction(&splits.train, fraction, seed);
        splits.valid = keep_fraction(&splits.valid, fraction, seed.wrapping_add(1));
        dataset.report.subset_left_out =
            Some((train - splits.train.len(), valid - splits.valid.len()));
    }
    if rule != first_rule {
        // A new split of the same images (all of them, or stage 0's subset).
        let mut files: Vec<PathBuf> = match data.subset {
            Some(_) => splits.train.paths.iter().chain(&splits.valid.paths).cloned().collect(),
            None => dataset.files.clone(),
        };
        files.sort();
        splits = wick_data::label_and_split(&root, files, &rule)
            .with_context(|| format!("reading the dataset {}", root.display()))?
            .0;
    }
    for (name, items) in [("training", &splits.train), ("validation", &splits.valid)] {
        if items.is_empty() {
            bail!("{}: the {name} split is empty", root.display());
        }
    }
    dataset.report.set_splits(&splits.vocab, &[("train", &splits.train), ("valid", &splits.valid)]);
    Ok(splits)
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

/// The data settings in force for stage `stage_idx` (a stage overrides size and batch size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StageData {
    pub(crate) size: u32,
    pub(crate) item_size: u32,
    pub(crate) batch_size: usize,
}

pub(crate) fn stage_data(recipe: &Recipe, stage_idx: usize) -> StageData {
    let mut current = StageData {
        size: recipe.data().size,
        item_size: recipe.data().item_size,
        batch_size: recipe.data().batch_size,
    };
    for stage in recipe.stages.iter().take(stage_idx + 1) {
        current.size = stage.size.unwrap_or(current.size);
        current.item_size = stage.item_size.unwrap_or(current.item_size);
        current.batch_size = stage.batch_size.unwrap_or(current.batch_size);
    }
    current
}

/// The training and validation loaders of a stage.
pub(crate) fn loaders(
    data: &DataSection,
    stage: StageData,
    splits: &Splits,
    seed: u64,
    threads: Option<usize>,
    device: &Device,
) -> anyhow::Result<(DataLoader, DataLoader)> {
    let pipeline = pipeline(data, stage);
    let bad_files = bad_file_policy(data.bad_files);
    let threads = self::threads(data, threads);
    let train_config = LoaderConfig {
        n_threads: threads,
        bad_files,
        ..LoaderConfig::train(stage.batch_size, seed)
    };
    let valid_config = LoaderConfig {
        n_threads: threads,
        bad_files,
        ..LoaderConfig::valid(stage.batch_size, seed)
    };
    let normalize = normalize(data, device)?;
    let train = DataLoader::new(splits.train.clone(), pipeline, train_config, device.clone())?
        .with_normalize(normalize.clone());
    let valid = DataLoader::new(splits.valid.clone(), pipeline, valid_config, device.clone())?
        .with_normalize(normalize);
    if train.is_empty() {
        bail!(
            "the training split has {} images, fewer than one batch of {}",
            splits.train.len(),
            stage.batch_size
        );
    }
    Ok((train, valid))
}

/// What happens to each image of a stage between its file and its tensor: `Resize(item_size)`
/// (fastai's presizing), then, in training mode, `aug_transforms(min_scale)` when the recipe
/// augments, to the stage's output size. The one place train, eval, tta and predict get it.
pub(crate) fn pipeline(data: &DataSection, stage: StageData) -> ItemPipeline {
    let augment = data
        .augment
        .then_some(AugTransforms { min_scale: data.min_scale, ..AugTransforms::default() });
    ItemPipeline {
        item_size: stage.item_size,
        method: ResizeMethod::Crop,
        output_size: stage.size,
        augment,
        decode: wick_data::DecodeConfig::default(),
    }
}

/// fastai's `Normalize.from_stats(*imagenet_stats)` when the recipe normalises.
pub(crate) fn normalize(data: &DataSection, device: &Device) -> anyhow::Result<Option<Normalize>> {
    Ok(if data.normalize { Some(Normalize::imagenet(device)?) } else { None })
}

/// The loader's policy for a recipe's `bad_files`.
pub(crate) fn bad_file_policy(bad_files: BadFiles) -> BadFilePolicy {
    match bad_files {
        BadFiles::Fail => BadFilePolicy::Fail,
        BadFiles::Skip => BadFilePolicy::Skip,
    }
}

/// The model's configuration for `n_classes` classes.
pub(crate) fn model_config(recipe: &Recipe, n_classes: usize) -> anyhow::Result<XResNetConfig> {
    let model = recipe.model();
    let n_out = match model.n_out {
        NOut::Fixed(n) => n,
        NOut::Classes => n_classes,
    };
    if n_out < n_classes {
        bail!("model.n_out = {n_out} is smaller than the {n_classes} classes of the dataset");
    }
    let base = XResNetConfig::named(&model.arch, n_out)
        .with_context(|| format!("model.arch = {}", model.arch))?;
    Ok(XResNetConfig {
        widen: model.widen,
        dropout: model.dropout,
        self_attention: model.self_attention,
        activation: match model.activation {
            ActivationName::Relu => Activation::Relu,
            ActivationName::Mish => Activation::Mish,
        },
        ..base
    })
}

/// A fresh xresnet of `config` on `device`, its weights initialised from `seed` (fastai's
/// init, drawn by wick-models' seeded generator), with the `VarMap` that holds them: the one
/// place every command builds its model.
pub(crate) fn model(
    config: &XResNetConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<(wick_models::XResNet, candle_nn::VarMap)> {
    let varmap = candle_nn::VarMap::new();
    let vb = wick_models::seeded_var_builder(&varmap, seed, candle::DType::F32, device);
    Ok((wick_models::xresnet(config, seed, vb)?, varmap))
}

/// The recipe's optimizer (`train.optimizer`, `train.wd`; fastai's defaults otherwise) over
/// the trainable parameters of `varmap`: what `train` and `lr-find` both use.
pub(crate) fn optimizer(
    recipe: &Recipe,
    varmap: &candle_nn::VarMap,
) -> anyhow::Result<Box<dyn wick_train::Optimizer>> {
    use wick_train::{Adam, AdamConfig, Sgd, SgdConfig, optim_params, trainable_params};
    let params = optim_params(trainable_params(varmap, wick_models::is_buffer));
    let wd = recipe.train.wd;
    Ok(match recipe.train.optimizer {
        OptimizerName::Adam => {
            let defaults = AdamConfig::fastai_defaults(1e-3);
            Box::new(Adam::new(params, AdamConfig { wd: wd.unwrap_or(defaults.wd), ..defaults })?)
        }
        OptimizerName::Sgd => {
            let defaults = SgdConfig::fastai_defaults(1e-3);
            Box::new(Sgd::new(params, SgdConfig { wd: wd.unwrap_or(defaults.wd), ..defaults })?)
        }
    })
}

/// The Learner's precision for a recipe's `train.precision` (or `--precision`).
pub(crate) fn precision(name: PrecisionName) -> Precision {
    match name {
        PrecisionName::F32 => Precision::F32,
        PrecisionName::Bf16 => Precision::Bf16,
    }
}

/// The recipe's loss.
pub(crate) fn loss(recipe: &Recipe) -> Loss {
    match recipe.train.loss {
        LossName::CrossEntropy => Loss::CrossEntropy,
        LossName::LabelSmoothing => {
            Loss::LabelSmoothingCrossEntropy { eps: recipe.train.label_smoothing_eps }
        }
    }
}

/// The recipe of a stage's fit, fastai's defaults filled in.
pub(crate) fn fit_plan(fit: &Fit) -> StageFit {
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
mod optimizer_tests {
    use super::optimizer;

    fn recipe(train: &str) -> crate::recipe::Recipe {
        let text = format!(
            "name = \"r\"\n[data]\nsplit = \"random\"\nitem_size = 8\nsize = 8\nbatch_size = 2\n\
             [model]\narch = \"xresnet18\"\nn_out = 2\n[train]\n{train}\n\
             [[stage]]\nfit = {{ kind = \"one_cycle\", epochs = 1, lr_max = 1e-3 }}\n"
        );
        crate::recipe::parse(&text, "full").unwrap().0
    }

    #[test]
    fn unset_weight_decay_is_the_optimizers_fastai_default() {
        // fastai: Learner(wd=None) leaves wd to the optimizer: Adam(wd=0.01), SGD(wd=0.).
        let varmap = candle_nn::VarMap::new();
        assert_eq!(optimizer(&recipe("optimizer = \"adam\""), &varmap).unwrap().wd(), 0.01);
        assert_eq!(optimizer(&recipe("optimizer = \"sgd\""), &varmap).unwrap().wd(), 0.0);
        let set = recipe("optimizer = \"sgd\"\nwd = 0.05");
        assert_eq!(optimizer(&set, &varmap).unwrap().wd(), 0.05);
    }
}

#[cfg(test)]
mod split_tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::{Dataset, splits};
    use crate::data_report::DataReport;

    /// A progressive recipe: stage 1 draws a new random split.
    fn recipe(subset: Option<f64>) -> crate::recipe::Recipe {
        let subset = subset.map(|f| format!("subset = {f}\n")).unwrap_or_default();
        let text = format!(
            "name = \"p\"\n[data]\nsplit = \"random\"\nitem_size = 8\nsize = 8\nbatch_size = 2\n\
             {subset}[model]\narch = \"xresnet18\"\nn_out = \"classes\"\n\
             [[stage]]\nfit = {{ kind = \"one_cycle\", epochs = 1, lr_max = 1e-3 }}\n\
             [[stage]]\nnew_split = true\nfit = {{ kind = \"fine_tune\", epochs = 1, base_lr = 1e-3 }}\n"
        );
        crate::recipe::parse(&text, "full").unwrap().0
    }

    fn dataset() -> Dataset {
        let root = PathBuf::from("/data");
        let files: Vec<PathBuf> = (0..200)
            .map(|i| root.join(if i % 2 == 0 { "cat" } else { "dog" }).join(format!("{i:03}.jpg")))
            .collect();
        let report = DataReport::new(&root, crate::recipe::BadFiles::Fail, files.len());
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
        let first = splits(&mut data, recipe.data(), 42, 0, &recipe.stages).unwrap();
        let second = splits(&mut data, recipe.data(), 42, 1, &recipe.stages).unwrap();
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
        let second = splits(&mut data, recipe.data(), 42, 1, &recipe.stages).unwrap();
        assert_eq!(all(&second).len(), 200);
    }

    fn recipe_all() -> crate::recipe::Recipe {
        recipe(None)
    }
}
