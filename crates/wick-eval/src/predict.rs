//! Predictions over a batch source (wick-data's `BatchSource`), in item order, and fastai's `Learner.tta` (spec §6): `n`
//! passes over the validation items with the full training augmentation (random `Resize`
//! crop, flip, rotate, zoom, warp, random crop, lighting), the element-wise mean (or max) of
//! their softmax probabilities, blended with one plain pass:
//! `(1 - beta) * augmented + beta * plain`.

use candle::{D, Device, ModuleT, Tensor};
use wick_data::{BatchSource, DataLoader, LoaderConfig, Mode};

use crate::error::{EvalError, Result};

/// Softmax probabilities of a model over a loader's items.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// `(N, K)` f32 on the CPU, rows in the order of `item_indices`.
    pub probs: Tensor,
    /// The true class of each row.
    pub targets: Vec<u32>,
    /// The loader item behind each row (all items in order unless some were skipped).
    pub item_indices: Vec<usize>,
}

/// Runs `model` in eval mode over every batch of `source`'s epoch `epoch` (the epoch only
/// matters for a training-mode loader, whose augmentation it seeds) and returns the softmax
/// probabilities sorted into item order (fastai `Learner.get_preds`).
///
/// # Errors
/// [`EvalError::NonFinite`] naming the first file whose probabilities hold a NaN or an infinity
/// (a broken model never yields a number); data and tensor errors.
pub fn get_preds(model: &dyn ModuleT, source: &dyn BatchSource, epoch: u64) -> Result<Predictions> {
    let mut rows: Vec<(usize, Tensor, u32)> = Vec::new();
    for batch in source.batches(epoch, 0) {
        let batch = batch?;
        let logits = model.forward_t(&batch.xs.detach(), false)?.detach();
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_device(&Device::Cpu)?;
        let targets: Vec<u32> = batch.ys.to_device(&Device::Cpu)?.to_vec1()?;
        if probs.dims().len() != 2 || probs.dim(0)? != targets.len() {
            return Err(EvalError::Mismatch(format!(
                "model output {:?} does not match a batch of {} labels",
                probs.dims(),
                targets.len()
            )));
        }
        let values: Vec<Vec<f32>> = probs.to_vec2()?;
        for (row, (&item, &target)) in batch.item_indices.iter().zip(&targets).enumerate() {
            if values[row].iter().any(|p| !p.is_finite()) {
                return Err(EvalError::NonFinite {
                    item: source
                        .item_path(item)
                        .map_or_else(|| format!("item {item}"), |path| path.display().to_string()),
                });
            }
            rows.push((item, probs.get(row)?, target));
        }
    }
    rows.sort_by_key(|(item, ..)| *item);
    if rows.is_empty() {
        return Err(EvalError::Mismatch("the source produced no items".to_string()));
    }
    let item_indices = rows.iter().map(|(item, ..)| *item).collect();
    let targets = rows.iter().map(|(.., target)| *target).collect();
    let probs = Tensor::stack(&rows.iter().map(|(_, p, _)| p.clone()).collect::<Vec<_>>(), 0)?;
    Ok(Predictions { probs, targets, item_indices })
}

/// How the augmented passes combine with the plain one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// `(1 - beta) * mean(augmented) + beta * plain` (fastai's default, beta 0.25).
    Lerp {
        /// The plain pass's weight, in `[0, 1]`.
        beta: f64,
    },
    /// The element-wise max over the augmented passes and the plain one (`use_max=True`).
    Max,
}

/// fastai's `tta(n=4, beta=0.25, use_max=False)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TtaConfig {
    /// Augmented passes.
    pub n: usize,
    /// How the augmented passes combine with the plain one.
    pub blend: Blend,
    /// Seeds the augmentation of the passes (pass `i` uses epoch `seed_epoch + i`).
    pub seed_epoch: u64,
}

impl Default for TtaConfig {
    fn default() -> Self {
        TtaConfig { n: 4, blend: Blend::Lerp { beta: 0.25 }, seed_epoch: 1_000_000 }
    }
}

/// Test-time augmentation over `valid`'s items: `config.n` passes with the training
/// transforms (in item order, nothing dropped), one plain pass with `valid` itself, blended.
/// Returns the blended predictions and the plain ones.
///
/// # Errors
/// [`EvalError::Mismatch`] if `beta` is not a finite number in `[0, 1]`; whatever
/// [`get_preds`] returns.
pub fn tta(
    model: &dyn ModuleT,
    valid: &DataLoader,
    config: &TtaConfig,
) -> Result<(Predictions, Predictions)> {
    if let Blend::Lerp { beta } = config.blend
        && !(0.0..=1.0).contains(&beta)
    {
        return Err(EvalError::Mismatch(format!(
            "tta beta is {beta}: the plain pass's weight must be a number in [0, 1]"
        )));
    }
    let plain = get_preds(model, valid, 0)?;
    if config.n == 0 {
        return Ok((plain.clone(), plain));
    }
    let augmented_config =
        LoaderConfig { mode: Mode::Train, shuffle: false, drop_last: false, ..*valid.config() };
    let augmented_loader = valid.with(*valid.pipeline(), augmented_config)?;
    let mut passes = Vec::with_capacity(config.n);
    for pass in 0..config.n {
        let preds = get_preds(model, &augmented_loader, config.seed_epoch + pass as u64)?;
        if preds.item_indices != plain.item_indices {
            return Err(EvalError::Mismatch(
                "an augmented pass skipped different files than the plain pass".to_string(),
            ));
        }
        passes.push(preds.probs);
    }
    let stacked = Tensor::stack(&passes, 0)?;
    let probs = match config.blend {
        Blend::Lerp { beta } => {
            let augmented = stacked.mean(0)?;
            ((augmented * (1.0 - beta))? + (&plain.probs * beta)?)?
        }
        Blend::Max => stacked.max(0)?.maximum(&plain.probs)?,
    };
    let blended = Predictions {
        probs,
        targets: plain.targets.clone(),
        item_indices: plain.item_indices.clone(),
    };
    Ok((blended, plain))
}

/// The predicted class of each row: argmax over `K`.
pub(crate) fn argmax(probs: &Tensor) -> Result<Vec<u32>> {
    Ok(probs.argmax(D::Minus1)?.to_vec1()?)
}
