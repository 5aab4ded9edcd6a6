//! Recipe files: the raw TOML schema of an experiment (what the `recipes/` folder holds), read
//! with `deny_unknown_fields` so a misspelt key is an error that names it, and the profile
//! mechanism: a recipe's `[profiles.<name>]` table is merged over the recipe before it is
//! read (tables key by key, `[[stage]]` arrays element by element).
//!
//! Every value is validated before anything is written: a wrong type names its key path
//! (`data.batch_size`, `stage[0].fit`), and a value out of range (epochs < 1, batch sizes < 1,
//! label smoothing eps outside [0, 1), wd < 0, widen <= 0, TTA beta outside [0, 1], NaN
//! anywhere) is refused naming the key and the allowed range. The seed is any u64: values above
//! `i64::MAX` (TOML's integer range) are written and read as a decimal string.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// One experiment, as written in a recipe file (after its profile is merged in).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recipe {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    /// Seeds the split, the initialisation, the shuffles and every augmentation.
    #[serde(default = "default_seed", deserialize_with = "deserialize_seed")]
    pub(crate) seed: u64,
    /// Required unless `from` is set.
    pub(crate) data: Option<DataSection>,
    /// Required unless `from` is set.
    pub(crate) model: Option<ModelSection>,
    #[serde(default)]
    pub(crate) train: TrainSection,
    /// The fits, in order (progressive resizing has two).
    #[serde(rename = "stage", default)]
    pub(crate) stages: Vec<Stage>,
    /// Test-time augmentation of the trained model (or of `from`'s model).
    pub(crate) tta: Option<TtaSection>,
    /// The book's number for this experiment, for the report.
    pub(crate) book: Option<BookSection>,
    /// Evaluate another experiment's model instead of training one.
    pub(crate) from: Option<String>,
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, toml::Value>,
}

fn default_seed() -> u64 {
    42
}

/// The seed as a TOML value: an integer when it fits TOML's i64, else a decimal string.
pub(crate) fn seed_value(seed: u64) -> toml::Value {
    match i64::try_from(seed) {
        Ok(value) => toml::Value::Integer(value),
        Err(_) => toml::Value::String(seed.to_string()),
    }
}

/// A seed written as a non-negative integer or as a decimal string (for values above i64::MAX).
fn deserialize_seed<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a seed from 0 to 18446744073709551615 (an integer, or a string)")
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value)
                .map_err(|_| E::custom(format!("seed = {value}: must be 0 or more")))
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<u64, E> {
            value.trim().parse().map_err(|_| {
                E::custom(format!("seed = {value:?}: not a number from 0 to {}", u64::MAX))
            })
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SplitKind {
    /// A seeded random `valid_pct` of all images (chapter 7: no splitter).
    Random,
    /// The `train/` and `val/` folders (Imagenette's official split).
    Folders,
}

/// `data.resampling`: wick's one composed resampling (default) or fastai's three.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResamplingName {
    #[default]
    OnePass,
    ThreePass,
}

/// `data.crop_draw`: the random crop drawn per image (default) or per batch (fastai).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CropDrawName {
    #[default]
    PerImage,
    PerBatch,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BadFiles {
    Fail,
    Skip,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataSection {
    pub(crate) split: SplitKind,
    #[serde(default = "default_valid_pct")]
    pub(crate) valid_pct: f64,
    /// `Resize(item_size)`, the presize canvas.
    pub(crate) item_size: u32,
    /// Output side in pixels (`aug_transforms(size=...)`).
    pub(crate) size: u32,
    pub(crate) batch_size: usize,
    #[serde(default)]
    pub(crate) normalize: bool,
    #[serde(default = "yes")]
    pub(crate) augment: bool,
    #[serde(default = "default_min_scale")]
    pub(crate) min_scale: f64,
    /// Keep this fraction of the images (seeded), for scaled-down profiles.
    pub(crate) subset: Option<f64>,
    /// Decode threads (default: all cores).
    pub(crate) threads: Option<usize>,
    #[serde(default = "default_bad_files")]
    pub(crate) bad_files: BadFiles,
    /// `one_pass` (default) or `three_pass` (fastai's order; `wick_data::Resampling`).
    #[serde(default)]
    pub(crate) resampling: ResamplingName,
    /// `per_image` (default) or `per_batch` (fastai's `RandomResizedCropGPU`;
    /// `wick_data::CropDraw`).
    #[serde(default)]
    pub(crate) crop_draw: CropDrawName,
}

fn default_valid_pct() -> f64 {
    0.2
}
fn yes() -> bool {
    true
}
fn default_min_scale() -> f64 {
    // Chapter 7's aug_transforms(min_scale=0.75), from the library (fastai's own default is 1).
    wick_data::AugTransforms::default().min_scale
}
fn default_bad_files() -> BadFiles {
    BadFiles::Fail
}

/// The head's size: the number of classes, or a fixed number (fastai's default 1000).
/// Written `n_out = "classes"` or `n_out = 1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NOut {
    Fixed(usize),
    Classes,
}

impl<'de> Deserialize<'de> for NOut {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NOut;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("n_out = \"classes\" or a positive integer")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<NOut, E> {
                usize::try_from(value)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(NOut::Fixed)
                    .ok_or_else(|| E::custom(format!("n_out = {value}: must be positive")))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<NOut, E> {
                match value {
                    "classes" => Ok(NOut::Classes),
                    other => Err(E::custom(format!(
                        "n_out = {other:?}: expected \"classes\" or a positive integer"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ActivationName {
    Relu,
    Mish,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSection {
    /// `xresnet18` ... `xresnet152`.
    pub(crate) arch: String,
    pub(crate) n_out: NOut,
    /// Multiplier of the stage widths (unset: fastai's 1, from `XResNetConfig`).
    pub(crate) widen: Option<f64>,
    /// Unset: fastai's ReLU.
    pub(crate) activation: Option<ActivationName>,
    /// Unset: none.
    pub(crate) self_attention: Option<bool>,
    /// Dropout before the head (unset: fastai's 0).
    pub(crate) dropout: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LossName {
    #[default]
    CrossEntropy,
    LabelSmoothing,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OptimizerName {
    #[default]
    Adam,
    Sgd,
}

/// The forward pass's precision: `f32`, or `bf16` mixed precision (fastai's `to_bf16()`:
/// bf16 activations, f32 weights, BatchNorm statistics, loss and optimizer state).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PrecisionName {
    #[default]
    F32,
    Bf16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainSection {
    #[serde(default)]
    pub(crate) loss: LossName,
    /// Label smoothing's epsilon (unset: fastai's, from `Loss::fastai_label_smoothing()`).
    pub(crate) label_smoothing_eps: Option<f64>,
    /// MixUp's alpha (fastai: 0.4); absent = no MixUp.
    pub(crate) mixup: Option<f64>,
    #[serde(default)]
    pub(crate) optimizer: OptimizerName,
    /// Decoupled weight decay; unset: the optimizer's fastai default (`Adam` 0.01, `SGD` 0),
    /// as fastai's `Learner(wd=None)` leaves it to the optimizer.
    pub(crate) wd: Option<f64>,
    /// Save a checkpoint every this many batches (and at every epoch end).
    #[serde(default = "default_checkpoint_every")]
    pub(crate) checkpoint_every: usize,
    /// `precision = "f32"` (default) or `"bf16"`.
    #[serde(default)]
    pub(crate) precision: PrecisionName,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            loss: LossName::CrossEntropy,
            label_smoothing_eps: None,
            mixup: None,
            optimizer: OptimizerName::Adam,
            wd: None,
            checkpoint_every: default_checkpoint_every(),
            precision: PrecisionName::F32,
        }
    }
}

fn default_checkpoint_every() -> usize {
    50
}

/// One fit, with optional data changes before it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stage {
    /// New output size for this stage (progressive resizing).
    pub(crate) size: Option<u32>,
    pub(crate) batch_size: Option<usize>,
    pub(crate) item_size: Option<u32>,
    /// Draw a new random split before this stage, as chapter 7's second `get_dls` call does.
    #[serde(default)]
    pub(crate) new_split: bool,
    pub(crate) fit: Fit,
}

/// fastai's fit methods.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Fit {
    /// `fit_one_cycle(epochs, lr_max, div=25, div_final=1e5, pct_start=0.25)`.
    OneCycle {
        epochs: usize,
        lr_max: f64,
        #[serde(default)]
        div: Option<f64>,
        #[serde(default)]
        div_final: Option<f64>,
        #[serde(default)]
        pct_start: Option<f64>,
    },
    /// `fine_tune(epochs, base_lr, freeze_epochs=1)`.
    FineTune {
        epochs: usize,
        base_lr: f64,
        #[serde(default)]
        freeze_epochs: Option<usize>,
    },
    /// `fit_flat_cos(epochs, lr, pct_start=0.75)`.
    FlatCos {
        epochs: usize,
        lr: f64,
        #[serde(default)]
        pct_start: Option<f64>,
    },
    /// `fit(epochs, lr)`: constant learning rate.
    Constant { epochs: usize, lr: f64 },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TtaSection {
    /// Augmented passes (unset: fastai's 4, from `wick_eval::TtaConfig::default()`).
    pub(crate) n: Option<usize>,
    /// The plain pass's weight (unset: fastai's 0.25).
    pub(crate) beta: Option<f64>,
    /// Element-wise max instead of the blend (unset: false).
    pub(crate) use_max: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BookSection {
    /// The book's final accuracy for this experiment (`None`: the chapter shows no result).
    pub(crate) accuracy: Option<f64>,
    /// Where the number comes from.
    pub(crate) source: String,
}

/// Reads `path`, merges profile `profile` (if not `full` and present) and parses the result.
pub(crate) fn load(path: &Path, profile: &str) -> anyhow::Result<(Recipe, toml::Table)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    parse(&text, profile).with_context(|| format!("recipe {}", path.display()))
}

/// Parses recipe text with profile `profile` merged in; also returns the resolved table
/// (what the run directory records).
pub(crate) fn parse(text: &str, profile: &str) -> anyhow::Result<(Recipe, toml::Table)> {
    let mut table: toml::Table = text.parse().context("not valid TOML")?;
    let profiles = table.remove("profiles");
    if let Some(overrides) = profiles.as_ref().and_then(|p| p.get(profile)) {
        let toml::Value::Table(overrides) = overrides else {
            bail!("profiles.{profile} must be a table")
        };
        merge(&mut table, overrides);
    } else if profile != "full" {
        let known: Vec<String> = profiles
            .and_then(|p| p.as_table().map(|t| t.keys().cloned().collect()))
            .unwrap_or_default();
        bail!(
            "no profile {profile:?} in this recipe (it has: full{})",
            known.iter().map(|k| format!(", {k}")).collect::<String>()
        );
    }
    let recipe: Recipe = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
        .map_err(|error| {
            let path = error.path().to_string();
            let message = error.inner().message().to_string();
            if path == "." || message.contains(&path) {
                anyhow::anyhow!("{message}")
            } else {
                anyhow::anyhow!("{path}: {message}")
            }
        })?;
    validate(&recipe)?;
    Ok((recipe, table))
}

/// Deep merge: tables key by key, arrays of tables element by element, anything else replaced.
fn merge(base: &mut toml::Table, overrides: &toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(override_table)) => {
                merge(base_table, override_table)
            }
            (Some(toml::Value::Array(base_array)), toml::Value::Array(override_array))
                if base_array.iter().chain(override_array).all(toml::Value::is_table) =>
            {
                for (index, item) in override_array.iter().enumerate() {
                    match (base_array.get_mut(index), item) {
                        (
                            Some(toml::Value::Table(base_item)),
                            toml::Value::Table(override_item),
                        ) => merge(base_item, override_item),
                        _ => base_array.push(item.clone()),
                    }
                }
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The sections of a training recipe, for the tests (commands read a recipe through
/// `plan::Plan`).
#[cfg(test)]
impl Recipe {
    fn data(&self) -> &DataSection {
        self.data.as_ref().expect("a training recipe has [data]")
    }

    fn model(&self) -> &ModelSection {
        self.model.as_ref().expect("a training recipe has [model]")
    }
}

fn validate(recipe: &Recipe) -> anyhow::Result<()> {
    if let Some(from) = &recipe.from {
        if !recipe.stages.is_empty() || recipe.data.is_some() || recipe.model.is_some() {
            bail!(
                "a recipe with `from = {from:?}` evaluates that experiment's model: it has no [data], [model] or [[stage]]"
            );
        }
        if recipe.tta.is_none() {
            bail!("a recipe with `from = {from:?}` needs a [tta] section (what to evaluate)");
        }
        return Ok(());
    }
    let (Some(data), Some(model)) = (&recipe.data, &recipe.model) else {
        bail!("a training recipe needs [data] and [model] sections");
    };
    if !(0.0..1.0).contains(&data.valid_pct) {
        bail!("data.valid_pct = {} is not in [0, 1)", data.valid_pct);
    }
    if data.batch_size == 0 {
        bail!("data.batch_size = 0: must be at least 1");
    }
    if data.size == 0 {
        bail!("data.size = 0: must be at least 1");
    }
    if data.item_size < 2 {
        bail!("data.item_size = {}: must be at least 2", data.item_size);
    }
    if data.threads == Some(0) {
        bail!("data.threads = 0: must be at least 1 (or absent: all cores)");
    }
    if let Some(subset) = data.subset
        && !(subset > 0.0 && subset <= 1.0)
    {
        bail!("data.subset = {subset} is not in (0, 1]");
    }
    if !(0.0..=1.0).contains(&data.min_scale) {
        bail!("data.min_scale = {} is not in [0, 1]", data.min_scale);
    }
    if wick_models::XResNetConfig::named(&model.arch, 10).is_none() {
        bail!(
            "model.arch = {:?} is not one of {}",
            model.arch,
            wick_models::XResNetConfig::names().join(", ")
        );
    }
    if recipe.stages.is_empty() {
        bail!(
            "a recipe needs at least one [[stage]] (or `from` to evaluate another experiment's model)"
        );
    }
    if let Some(alpha) = recipe.train.mixup
        && !(alpha > 0.0 && alpha.is_finite())
    {
        bail!("train.mixup = {alpha}: alpha must be a finite number > 0");
    }
    // Widths are 64·widen ... 512·widen channels: below 1/64 a stage would have none.
    if let Some(widen) = model.widen
        && !(widen.is_finite() && widen * 64.0 >= 1.0)
    {
        bail!("model.widen = {widen}: must be a finite number >= 1/64 (0.015625)");
    }
    if let Some(dropout) = model.dropout
        && !(0.0..1.0).contains(&dropout)
    {
        bail!("model.dropout = {dropout}: must be in [0, 1)");
    }
    let train = &recipe.train;
    if let Some(eps) = train.label_smoothing_eps
        && !(0.0..1.0).contains(&eps)
    {
        bail!("train.label_smoothing_eps = {eps}: must be in [0, 1)");
    }
    if let Some(wd) = train.wd
        && !(wd >= 0.0 && wd.is_finite())
    {
        bail!("train.wd = {wd}: weight decay must be a finite number >= 0");
    }
    for (index, stage) in recipe.stages.iter().enumerate() {
        validate_stage(index, stage)?;
    }
    if let Some(beta) = recipe.tta.as_ref().and_then(|tta| tta.beta) {
        check_beta(beta).context("tta.beta")?;
    }
    Ok(())
}

/// TTA's `beta` (the plain pass's weight): a finite number in [0, 1].
pub(crate) fn check_beta(beta: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&beta) {
        bail!("beta = {beta}: the plain pass's weight must be a number in [0, 1]");
    }
    Ok(())
}

fn validate_stage(index: usize, stage: &Stage) -> anyhow::Result<()> {
    let key = |name: &str| format!("stage[{index}].{name}");
    if stage.batch_size == Some(0) {
        bail!("{} = 0: must be at least 1", key("batch_size"));
    }
    if stage.size == Some(0) {
        bail!("{} = 0: must be at least 1", key("size"));
    }
    if let Some(item_size) = stage.item_size
        && item_size < 2
    {
        bail!("{} = {item_size}: must be at least 2", key("item_size"));
    }
    let positive = |name: &str, value: f64| -> anyhow::Result<()> {
        if !(value > 0.0 && value.is_finite()) {
            bail!("{} = {value}: must be a finite number > 0", key(&format!("fit.{name}")));
        }
        Ok(())
    };
    let fraction = |name: &str, value: Option<f64>| -> anyhow::Result<()> {
        if let Some(value) = value
            && !(0.0..=1.0).contains(&value)
        {
            bail!("{} = {value}: must be in [0, 1]", key(&format!("fit.{name}")));
        }
        Ok(())
    };
    let epochs = match &stage.fit {
        Fit::OneCycle { epochs, lr_max, div, div_final, pct_start } => {
            positive("lr_max", *lr_max)?;
            if let Some(div) = div {
                positive("div", *div)?;
            }
            if let Some(div_final) = div_final {
                positive("div_final", *div_final)?;
            }
            fraction("pct_start", *pct_start)?;
            *epochs
        }
        Fit::FineTune { epochs, base_lr, .. } => {
            positive("base_lr", *base_lr)?;
            *epochs
        }
        Fit::FlatCos { epochs, lr, pct_start } => {
            positive("lr", *lr)?;
            fraction("pct_start", *pct_start)?;
            *epochs
        }
        Fit::Constant { epochs, lr } => {
            positive("lr", *lr)?;
            *epochs
        }
    };
    if epochs == 0 {
        bail!("{} = 0: must be at least 1", key("fit.epochs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
[data]
split = "random"
item_size = 460
size = 224
batch_size = 64
[model]
arch = "xresnet50"
n_out = "classes"
[[stage]]
fit = { kind = "one_cycle", epochs = 5, lr_max = 3e-3 }
[[stage]]
size = 224
new_split = true
fit = { kind = "fine_tune", epochs = 5, base_lr = 1e-3 }
[profiles.smoke]
data = { size = 32, subset = 0.05 }
model = { arch = "xresnet18", widen = 0.25 }
stage = [{ fit = { kind = "one_cycle", epochs = 1, lr_max = 3e-3 } }, { size = 48 }]
"#;

    #[test]
    fn profiles_merge_over_the_recipe() {
        let (full, _) = parse(BASE, "full").unwrap();
        assert_eq!(full.data().size, 224);
        assert_eq!(full.model().n_out, NOut::Classes);
        assert_eq!(full.stages.len(), 2);
        let (smoke, resolved) = parse(BASE, "smoke").unwrap();
        assert_eq!(
            (smoke.data().size, smoke.data().item_size, smoke.data().subset),
            (32, 460, Some(0.05))
        );
        assert_eq!(smoke.model().arch, "xresnet18");
        assert_eq!(smoke.model().widen, Some(0.25));
        assert_eq!(
            smoke.stages[0].fit,
            Fit::OneCycle { epochs: 1, lr_max: 3e-3, div: None, div_final: None, pct_start: None }
        );
        assert_eq!(smoke.stages[1].size, Some(48));
        assert!(smoke.stages[1].new_split);
        assert!(!resolved.contains_key("profiles"));
    }

    #[test]
    fn resampling_defaults_to_one_pass_and_takes_fastais_three() {
        assert_eq!(parse(BASE, "full").unwrap().0.data().resampling, ResamplingName::OnePass);
        let three = BASE.replace("batch_size = 64", "batch_size = 64\nresampling = \"three_pass\"");
        assert_eq!(parse(&three, "full").unwrap().0.data().resampling, ResamplingName::ThreePass);
        let wrong = BASE.replace("batch_size = 64", "batch_size = 64\nresampling = \"two_pass\"");
        let error = format!("{:#}", parse(&wrong, "full").unwrap_err());
        assert!(error.contains("two_pass") && error.contains("three_pass"), "{error}");
    }

    #[test]
    fn crop_draw_defaults_to_per_image_and_takes_per_batch() {
        assert_eq!(parse(BASE, "full").unwrap().0.data().crop_draw, CropDrawName::PerImage);
        let batch = BASE.replace("batch_size = 64", "batch_size = 64\ncrop_draw = \"per_batch\"");
        assert_eq!(parse(&batch, "full").unwrap().0.data().crop_draw, CropDrawName::PerBatch);
        let wrong = BASE.replace("batch_size = 64", "batch_size = 64\ncrop_draw = \"per_epoch\"");
        let error = format!("{:#}", parse(&wrong, "full").unwrap_err());
        assert!(error.contains("per_epoch") && error.contains("per_batch"), "{error}");
    }

    #[test]
    fn mistakes_are_named() {
        let error = parse(&BASE.replace("batch_size = 64", "batch_sise = 64"), "full").unwrap_err();
        assert!(format!("{error:#}").contains("batch_sise"), "{error:#}");
        let error = parse(BASE, "quick").unwrap_err();
        assert!(
            format!("{error:#}").contains("quick") && format!("{error:#}").contains("smoke"),
            "{error:#}"
        );
        let error = parse(&BASE.replace("xresnet50", "resnet50"), "full").unwrap_err();
        assert!(format!("{error:#}").contains("resnet50"), "{error:#}");
        let error = parse(&BASE.replace("one_cycle", "one_cylce"), "full").unwrap_err();
        assert!(format!("{error:#}").contains("one_cylce"), "{error:#}");
        let error = parse("name = \"tta\"\nfrom = \"progressive\"\n[tta]\nn = 4\n[data]\nsplit = \"random\"\nitem_size = 1\nsize = 1\nbatch_size = 1\n", "full").unwrap_err();
        assert!(format!("{error:#}").contains("progressive"), "{error:#}");
        assert!(parse("name = \"tta\"\nfrom = \"progressive\"\n[tta]\nn = 4\n", "full").is_ok());
        let error =
            parse(&BASE.replace("n_out = \"classes\"", "n_out = \"many\""), "full").unwrap_err();
        assert!(
            format!("{error:#}").contains("n_out") || format!("{error:#}").contains("many"),
            "{error:#}"
        );
    }
}

#[cfg(test)]
mod validation {
    use super::*;

    const TINY: &str = r#"
name = "t"
seed = 7
[data]
split = "folders"
item_size = 64
size = 32
batch_size = 16
[model]
arch = "xresnet18"
n_out = "classes"
widen = 0.25
[train]
checkpoint_every = 2
[[stage]]
fit = { kind = "one_cycle", epochs = 2, lr_max = 3e-3 }
"#;

    fn error_of(text: &str) -> String {
        format!("{:#}", parse(text, "full").unwrap_err())
    }

    /// Values the run would crash on, train on silently, or record wrongly are refused with
    /// their key named (reliability case 09).
    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        assert!(parse(TINY, "full").is_ok());
        let cases = [
            ("epochs = 2", "epochs = 0", "stage[0].fit.epochs = 0"),
            ("lr_max = 3e-3", "lr_max = nan", "stage[0].fit.lr_max = NaN"),
            ("lr_max = 3e-3", "lr_max = -1.0", "stage[0].fit.lr_max = -1"),
            ("widen = 0.25", "widen = 0.0", "model.widen = 0"),
            ("widen = 0.25", "widen = -1.0", "model.widen = -1"),
            ("widen = 0.25", "widen = inf", "model.widen = inf"),
            ("batch_size = 16", "batch_size = 0", "data.batch_size = 0"),
            ("checkpoint_every = 2", "checkpoint_every = 2\nwd = -5.0", "train.wd = -5"),
            ("checkpoint_every = 2", "checkpoint_every = 2\nwd = nan", "train.wd = NaN"),
            (
                "checkpoint_every = 2",
                "checkpoint_every = 2\nloss = \"label_smoothing\"\nlabel_smoothing_eps = 5.0",
                "train.label_smoothing_eps = 5",
            ),
            (
                "checkpoint_every = 2",
                "checkpoint_every = 2\nlabel_smoothing_eps = 1.0",
                "train.label_smoothing_eps = 1",
            ),
            ("checkpoint_every = 2", "checkpoint_every = 2\nmixup = nan", "train.mixup = NaN"),
            ("[[stage]]", "[[stage]]\nbatch_size = 0", "stage[0].batch_size = 0"),
            ("[[stage]]", "[[stage]]\nsize = 0", "stage[0].size = 0"),
            ("[[stage]]\nfit", "[tta]\nbeta = nan\n[[stage]]\nfit", "beta = NaN"),
            ("[[stage]]\nfit", "[tta]\nbeta = 1.5\n[[stage]]\nfit", "beta = 1.5"),
        ];
        for (from, to, expected) in cases {
            assert!(TINY.contains(from), "{from}");
            let error = error_of(&TINY.replacen(from, to, 1));
            assert!(error.contains(expected), "{to}: {error}");
        }
    }

    #[test]
    fn a_wrong_type_names_its_key() {
        for (from, to, key) in [
            ("batch_size = 16", "batch_size = \"16\"", "data.batch_size"),
            ("widen = 0.25", "widen = \"wide\"", "model.widen"),
            ("checkpoint_every = 2", "checkpoint_every = 2.5", "train.checkpoint_every"),
            ("epochs = 2", "epochs = \"two\"", "stage[0].fit"),
        ] {
            let error = error_of(&TINY.replacen(from, to, 1));
            assert!(error.contains(key), "{to}: {error}");
        }
    }

    #[test]
    fn every_seed_round_trips() {
        for seed in [0, 7, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let (_, mut resolved) = parse(TINY, "full").unwrap();
            resolved.insert("seed".to_string(), seed_value(seed));
            let text = toml::to_string(&resolved).unwrap();
            let (recipe, again) = parse(&text, "full").unwrap();
            assert_eq!(recipe.seed, seed, "{text}");
            assert_eq!(again, resolved);
        }
        let error = error_of(&TINY.replace("seed = 7", "seed = -1"));
        assert!(error.contains("seed"), "{error}");
    }
}

#[cfg(test)]
mod committed_recipes {
    use super::*;
    use wick_data::{CropDraw, Resampling};

    /// Every profile a recipe declares (and `full`), each parsed, resolved when it trains and
    /// its stages' data pipelines validated (fastai's three-pass order refuses some settings:
    /// `ItemPipeline::validate`). Returns the training plans.
    fn resolve_every_profile(path: &Path) -> Vec<(String, crate::plan::Plan)> {
        let text = std::fs::read_to_string(path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let mut profiles = vec!["full".to_string()];
        if let Some(declared) = table.get("profiles").and_then(toml::Value::as_table) {
            profiles.extend(declared.keys().cloned());
        }
        let mut plans = Vec::new();
        for profile in profiles {
            let (recipe, _) = parse(&text, &profile)
                .unwrap_or_else(|error| panic!("{} profile {profile}: {error:#}", path.display()));
            if recipe.from.is_some() {
                continue;
            }
            let plan =
                crate::plan::Plan::resolve(recipe, crate::plan::PlanArgs::on(candle::Device::Cpu))
                    .unwrap_or_else(|error| {
                        panic!("{} profile {profile}: {error:#}", path.display())
                    });
            for stage in 0..plan.stages.len() {
                plan.pipeline(stage).validate().unwrap_or_else(|error| {
                    panic!("{} profile {profile} stage {stage}: {error}", path.display())
                });
            }
            plans.push((profile, plan));
        }
        plans
    }

    /// The `.toml` recipes of a folder of the repository (not `expected.toml`, the bands).
    fn recipes_in(folder: &str) -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(folder);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension().is_some_and(|ext| ext == "toml")
                    && path.file_name().is_none_or(|name| name != "expected.toml")
            })
            .collect();
        paths.sort();
        paths
    }

    /// Every committed recipe resolves in every profile, with data pipelines the library
    /// accepts; chapter 7's training recipes (and the reproducibility check's) run fastai's
    /// order — three resamplings, one crop per batch (decision 0001) — in every profile.
    #[test]
    fn every_committed_recipe_resolves_in_every_profile() {
        let mut checked = 0;
        for path in recipes_in("recipes/chapter7").into_iter().chain(recipes_in("recipes")) {
            for (profile, plan) in resolve_every_profile(&path) {
                let crop_draw = plan.data.augment.map(|augment| augment.crop_draw);
                assert_eq!(
                    (plan.data.resampling, crop_draw),
                    (Resampling::ThreePass, Some(CropDraw::PerBatch)),
                    "{} profile {profile}",
                    path.display()
                );
                checked += 1;
            }
        }
        // Five chapter-7 training recipes in full, notebook, quick and smoke (at least), and
        // the determinism recipe.
        assert!(checked >= 21, "only {checked} training recipe/profile pairs found");
    }

    /// The GPU check's recipe (scripts/gpu-check/) resolves in every profile, in both
    /// precisions.
    #[test]
    fn the_gpu_check_recipe_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gpu-check/baseline-128.toml");
        assert!(!resolve_every_profile(&path).is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        let (full, _) = parse(&text, "full").unwrap();
        assert_eq!((full.data().size, full.train.precision), (128, PrecisionName::F32));
        let (bf16, _) = parse(&text, "bf16").unwrap();
        assert_eq!(bf16.train.precision, PrecisionName::Bf16);
        let (smoke, _) = parse(&text, "ddp-smoke").unwrap();
        assert_eq!(smoke.data().subset, Some(0.1));
        let error =
            parse(&text.replace("precision = \"f32\"", "precision = \"fp8\""), "full").unwrap_err();
        assert!(format!("{error:#}").contains("fp8"), "{error:#}");
    }
}
