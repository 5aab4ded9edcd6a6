//! [`MixUp`] and [`CutMix`] as callbacks (fastai `MixUp`, `CutMix`, order 0): at `before_batch`
//! of training batches only, they mix the inputs and turn the batch's targets into
//! [`Targets::Mixed`], against which the Learner's loss is the mixed per-sample loss (fastai's
//! `MixHandler.lf`); validation batches are untouched and keep their plain labels.
//!
//! Their random draws come from [`batch_rng`]: a ChaCha stream seeded from the stage's seed
//! ([`FitState::stage_seed`](crate::FitState::stage_seed), the run's seed in stage 0), the
//! callback's stream id, the data epoch and the batch index (`wick_data::seed::stream_seed`), so
//! a run resumed mid-epoch draws exactly what the uninterrupted run drew. The draws and the mixing are `mixup.rs`.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use candle::Tensor;
use wick_data::seed::stream_seed;

use crate::callback::{BatchHooks, Callback, CallbackResult, FitState, Flow, Phase, order};
use crate::error::TrainError;
use crate::loss::{MixedLabels, Targets};
use crate::mixup::{MixError, cut_mix_images, mix_images, sample_cutmix, sample_mixup};

const MIXUP_STREAM: u64 = 0x6d69_7875_7000_0001;
const CUTMIX_STREAM: u64 = 0x6375_746d_6978_0002;

/// The random generator of one batch: a function of `(seed, stream, data_epoch, batch)` only.
pub fn batch_rng(seed: u64, stream: u64, data_epoch: u64, batch: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(stream_seed(seed, stream, data_epoch, batch as u64))
}

/// fastai `MixUp(alpha)`: per-sample λ ~ Beta(α, α) folded to ≥ 0.5, a permutation, mixed
/// inputs and mixed per-sample losses (spec §7.1).
#[derive(Debug, Clone)]
pub struct MixUp {
    alpha: f64,
}

impl MixUp {
    /// MixUp with Beta(α, α); α must be finite and > 0.
    pub fn new(alpha: f64) -> Result<Self, TrainError> {
        Ok(MixUp { alpha: checked_alpha(alpha)? })
    }

    /// fastai's default α = 0.4.
    pub fn fastai_default() -> Self {
        MixUp { alpha: 0.4 }
    }
}

impl Callback for MixUp {
    fn name(&self) -> &'static str {
        "mixup"
    }

    fn order(&self) -> i32 {
        order::MIX
    }

    fn before_batch(&mut self, hooks: &mut BatchHooks<'_>) -> CallbackResult {
        mix_training_batch(hooks, MIXUP_STREAM, |state, xs, rng| {
            let draw = sample_mixup(state.batch_size, self.alpha, rng)?;
            let mixed = mix_images(xs, &draw)?;
            Ok((mixed, MixedLabels { permutation: draw.permutation, lambdas: draw.lambdas }))
        })
    }
}

/// fastai `CutMix(alpha)`: one λ per batch, a box from the partner pasted into each image, and
/// the mixed loss with λ recomputed from the box area (spec §7.2).
#[derive(Debug, Clone)]
pub struct CutMix {
    alpha: f64,
}

impl CutMix {
    /// CutMix with Beta(α, α); α must be finite and > 0.
    pub fn new(alpha: f64) -> Result<Self, TrainError> {
        Ok(CutMix { alpha: checked_alpha(alpha)? })
    }

    /// fastai's default α = 1.
    pub fn fastai_default() -> Self {
        CutMix { alpha: 1.0 }
    }
}

impl Callback for CutMix {
    fn name(&self) -> &'static str {
        "cutmix"
    }

    fn order(&self) -> i32 {
        order::MIX
    }

    fn before_batch(&mut self, hooks: &mut BatchHooks<'_>) -> CallbackResult {
        mix_training_batch(hooks, CUTMIX_STREAM, |state, xs, rng| {
            let (batch_size, _, height, width) = xs.dims4().map_err(|e| {
                TrainError::tensor(
                    format!("{}: cutmix needs (B,C,H,W) images", state.describe()),
                    e,
                )
            })?;
            let draw = sample_cutmix(batch_size, height, width, self.alpha, rng)?;
            let mixed = cut_mix_images(xs, &draw)?;
            let lambdas = draw.lambdas();
            Ok((mixed, MixedLabels { permutation: draw.permutation, lambdas }))
        })
    }
}

/// α for Beta(α, α), checked to be finite and > 0.
fn checked_alpha(alpha: f64) -> Result<f64, TrainError> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(alpha)
    } else {
        Err(MixError::InvalidAlpha { alpha }.into())
    }
}

/// What MixUp and CutMix do around their own draw: only on training batches, `mix(state, xs,
/// rng)` with this batch's generator of `stream` returns the mixed inputs and the pairing, which
/// replace the batch's inputs and targets (the batch's own labels kept).
fn mix_training_batch(
    hooks: &mut BatchHooks<'_>,
    stream: u64,
    mix: impl FnOnce(&FitState, &Tensor, &mut ChaCha8Rng) -> Result<(Tensor, MixedLabels), TrainError>,
) -> CallbackResult {
    let state = hooks.state;
    if state.phase != Phase::Train {
        return Ok(Flow::Continue);
    }
    let mut rng = batch_rng(state.stage_seed(), stream, state.data_epoch, state.iter);
    let (xs, mixed) = mix(state, &hooks.batch.xs, &mut rng)?;
    hooks.batch.xs = xs;
    hooks.batch.ys = Targets::Mixed { labels: hooks.batch.ys.labels().clone(), mixed };
    Ok(Flow::Continue)
}
