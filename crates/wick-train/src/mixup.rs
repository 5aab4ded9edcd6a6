//! MixUp (Zhang et al. 2017, arXiv:1710.09412) and CutMix (Yun et al. 2019, arXiv:1905.04899) as
//! pure functions, following fastai `callback/mixup.py` (spec §7): drawing λ and the partner
//! permutation from a seeded RNG passed in, mixing a batch of images, and mixing per-sample losses.
//!
//! The callback that applies them to training batches only (and restores the plain loss for
//! validation) belongs to the Learner. Every random draw comes from the `rng` argument, in
//! fastai's order: MixUp draws the λs then the permutation; CutMix draws λ, the permutation, then
//! the box centre x and y.
//!
//! Shape legend: B batch, C channels, H height, W width, K classes. Images `(B,C,H,W)` (MixUp
//! accepts any rank with the batch first); logits `(B,K)`; labels `(B,)` u32.
//!
//! Mixing uses torch's `lerp` formula, which fastai calls: `lerp(a, b, w) = a + w·(b − a)` when
//! `w < 0.5`, else `b − (b − a)·(1 − w)`, with `a` the permuted partner and `b` the sample itself.

use candle::{Device, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution};

use crate::loss::Loss;

/// A MixUp/CutMix draw or mix that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// α must be finite and > 0 for Beta(α, α).
    #[error("mixup: alpha is {alpha}, must be finite and > 0")]
    InvalidAlpha {
        /// The offending α.
        alpha: f64,
    },
    /// A draw's length differs from the batch it is applied to.
    #[error("mixup: {what} has {actual} entries, batch has {batch_size}")]
    BatchSizeMismatch {
        /// What was mismatched (`"permutation"`, `"lambdas"`).
        what: &'static str,
        /// Its length.
        actual: usize,
        /// The batch size.
        batch_size: usize,
    },
    /// A CutMix box reaches outside the images it is pasted into.
    #[error("cutmix: box {cut_box:?} does not fit images of shape {shape:?}")]
    BoxOutsideImages {
        /// The box.
        cut_box: CutMixBox,
        /// The images' shape `(B,C,H,W)`.
        shape: candle::Shape,
    },
    /// A tensor operation failed.
    #[error("mixup: {0}")]
    Tensor(#[from] candle::Error),
}

/// One MixUp batch draw: sample i is mixed with sample `permutation[i]` with weight `lambdas[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MixUpDraw {
    /// λᵢ ∈ [0.5, 1], the weight of sample i itself.
    pub lambdas: Vec<f32>,
    /// The partner of each sample.
    pub permutation: Vec<u32>,
}

/// fastai `MixUp(alpha).before_batch`'s draws for a batch of `batch_size`: one λ per sample, then a
/// permutation (see [`sample_folded_lambdas`], [`random_permutation`]).
pub fn sample_mixup(
    batch_size: usize,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<MixUpDraw, MixError> {
    let lambdas = sample_folded_lambdas(batch_size, alpha, rng)?;
    let permutation = random_permutation(batch_size, rng);
    Ok(MixUpDraw { lambdas, permutation })
}

/// `batch_size` independent draws λ ~ Beta(α, α), each folded to `max(λ, 1 − λ)` ∈ [0.5, 1] so
/// the sample itself always dominates. Drawn in f64, folded in f32 as fastai does.
pub fn sample_folded_lambdas(
    batch_size: usize,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<Vec<f32>, MixError> {
    let beta = beta_distribution(alpha)?;
    Ok((0..batch_size)
        .map(|_| {
            let lambda = beta.sample(rng) as f32;
            lambda.max(1.0 - lambda)
        })
        .collect())
}

/// A uniformly random permutation of `0..batch_size`.
pub fn random_permutation(batch_size: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut permutation: Vec<u32> = (0..batch_size as u32).collect();
    permutation.shuffle(rng);
    permutation
}

/// MixUp's inputs: `x̃ᵢ = lerp(x_π(i), xᵢ, λᵢ)` = `λᵢ·xᵢ + (1 − λᵢ)·x_π(i)`.
/// Images `(B, …)`; returns the same shape.
pub fn mix_images(images: &Tensor, draw: &MixUpDraw) -> Result<Tensor, MixError> {
    check_draw_len(&draw.permutation, &draw.lambdas, images.dim(0)?)?;
    let partners = permute(images, &draw.permutation)?;
    lerp_per_sample(&partners, images, &draw.lambdas)
}

/// MixUp's loss per sample, `(B,)`: `ℓᵢ = lerp(L(ŷᵢ, y_π(i)), L(ŷᵢ, yᵢ), λᵢ)` =
/// `λᵢ·L(ŷᵢ, yᵢ) + (1 − λᵢ)·L(ŷᵢ, y_π(i))`, with L the per-sample form of `loss`.
/// Logits `(B,K)`, labels `(B,)`; `permutation` and `lambdas` have B entries.
pub fn mixed_loss_per_sample(
    loss: &Loss,
    logits: &Tensor,
    labels: &Tensor,
    permutation: &[u32],
    lambdas: &[f32],
) -> Result<Tensor, MixError> {
    check_draw_len(permutation, lambdas, labels.dim(0)?)?;
    let partner_labels = permute(labels, permutation)?;
    let own = loss.per_sample(logits, labels)?;
    let partner = loss.per_sample(logits, &partner_labels)?;
    lerp_per_sample(&partner, &own, lambdas)
}

/// The batch mean of [`mixed_loss_per_sample`], a scalar: what MixUp's training loss is (fastai
/// reduces with the wrapped loss's reduction, `'mean'` for every loss wick has).
pub fn mixed_loss(
    loss: &Loss,
    logits: &Tensor,
    labels: &Tensor,
    permutation: &[u32],
    lambdas: &[f32],
) -> Result<Tensor, MixError> {
    Ok(mixed_loss_per_sample(loss, logits, labels, permutation, lambdas)?.mean_all()?)
}

/// A CutMix box in pixels: rows `y1..y2`, columns `x1..x2` (end-exclusive). May be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutMixBox {
    /// First column.
    pub x1: usize,
    /// First row.
    pub y1: usize,
    /// One past the last column.
    pub x2: usize,
    /// One past the last row.
    pub y2: usize,
}

impl CutMixBox {
    /// Number of pixels in the box.
    pub fn area(&self) -> usize {
        (self.x2 - self.x1) * (self.y2 - self.y1)
    }
}

/// fastai `CutMix.rand_bbox(W, H, λ)` for a given centre: side fractions `√(1 − λ)`, sizes rounded
/// half-to-even in f32, then `[c − ⌊size/2⌋, c + ⌊size/2⌋)` clamped to the image. An odd size thus
/// gives a box one pixel smaller than the rounded size, as in fastai.
pub fn cutmix_box(
    height: usize,
    width: usize,
    lambda: f32,
    center_x: usize,
    center_y: usize,
) -> CutMixBox {
    let cut_ratio = (1.0f32 - lambda).sqrt();
    let cut_width = (width as f32 * cut_ratio).round_ties_even() as i64;
    let cut_height = (height as f32 * cut_ratio).round_ties_even() as i64;
    let clamp = |value: i64, limit: usize| value.clamp(0, limit as i64) as usize;
    let (cx, cy) = (center_x as i64, center_y as i64);
    CutMixBox {
        x1: clamp(cx - cut_width.div_euclid(2), width),
        y1: clamp(cy - cut_height.div_euclid(2), height),
        x2: clamp(cx + cut_width.div_euclid(2), width),
        y2: clamp(cy + cut_height.div_euclid(2), height),
    }
}

/// CutMix's λ after pasting: `1 − box_area/(W·H)`, in f32 as fastai computes it.
pub fn cutmix_lambda(height: usize, width: usize, cut_box: &CutMixBox) -> f32 {
    1.0 - cut_box.area() as f32 / (width * height) as f32
}

/// One CutMix batch draw.
#[derive(Debug, Clone, PartialEq)]
pub struct CutMixDraw {
    /// λ ~ Beta(α, α) as drawn (it sets the box size).
    pub lambda_drawn: f32,
    /// The partner of each sample.
    pub permutation: Vec<u32>,
    /// The region pasted from the partner, the same for the whole batch.
    pub cut_box: CutMixBox,
    /// The weight of each sample's own label: [`cutmix_lambda`] of the box.
    pub lambda: f32,
}

impl CutMixDraw {
    /// The batch's λ repeated per sample, for [`mixed_loss`].
    pub fn lambdas(&self) -> Vec<f32> {
        vec![self.lambda; self.permutation.len()]
    }
}

/// fastai `CutMix(alpha).before_batch`'s draws for a `batch_size × C × height × width` batch:
/// λ ~ Beta(α, α), a permutation, a uniform box centre (x then y); then the box and the λ it implies.
pub fn sample_cutmix(
    batch_size: usize,
    height: usize,
    width: usize,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<CutMixDraw, MixError> {
    let lambda_drawn = beta_distribution(alpha)?.sample(rng) as f32;
    let permutation = random_permutation(batch_size, rng);
    let center_x = rng.random_range(0..width.max(1));
    let center_y = rng.random_range(0..height.max(1));
    let cut_box = cutmix_box(height, width, lambda_drawn, center_x, center_y);
    Ok(CutMixDraw {
        lambda_drawn,
        permutation,
        cut_box,
        lambda: cutmix_lambda(height, width, &cut_box),
    })
}

/// CutMix's inputs: each image with the box region replaced by its partner's. Images `(B,C,H,W)`.
pub fn cut_mix_images(images: &Tensor, draw: &CutMixDraw) -> Result<Tensor, MixError> {
    let (batch_size, _, height, width) = images.dims4()?;
    check_len("permutation", draw.permutation.len(), batch_size)?;
    let b = draw.cut_box;
    if b.x2 > width || b.y2 > height {
        return Err(MixError::BoxOutsideImages { cut_box: b, shape: images.shape().clone() });
    }
    if b.area() == 0 {
        return Ok(images.clone());
    }
    let partners = permute(images, &draw.permutation)?;
    let mut mask = vec![0u8; height * width];
    for row in b.y1..b.y2 {
        mask[row * width + b.x1..row * width + b.x2].fill(1);
    }
    let mask = Tensor::from_vec(mask, (1, 1, height, width), images.device())?
        .broadcast_as(images.shape())?;
    Ok(mask.where_cond(&partners, images)?)
}

fn beta_distribution(alpha: f64) -> Result<Beta<f64>, MixError> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(MixError::InvalidAlpha { alpha });
    }
    Beta::new(alpha, alpha).map_err(|_| MixError::InvalidAlpha { alpha })
}

fn check_len(what: &'static str, actual: usize, batch_size: usize) -> Result<(), MixError> {
    if actual == batch_size {
        Ok(())
    } else {
        Err(MixError::BatchSizeMismatch { what, actual, batch_size })
    }
}

/// Checks that a MixUp draw has one permutation entry and one λ per sample.
fn check_draw_len(permutation: &[u32], lambdas: &[f32], batch_size: usize) -> Result<(), MixError> {
    check_len("permutation", permutation.len(), batch_size)?;
    check_len("lambdas", lambdas.len(), batch_size)
}

/// `xs[permutation[i]]` along the batch dimension.
fn permute(xs: &Tensor, permutation: &[u32]) -> candle::Result<Tensor> {
    let index = Tensor::from_slice(permutation, permutation.len(), xs.device())?;
    xs.index_select(&index, 0)
}

/// torch `lerp(start, end, w)` with one weight per sample (dim 0), any trailing shape:
/// `start + w·(end − start)` for `w < 0.5`, else `end + (w − 1)·(end − start)` (which equals
/// torch's `end − (end − start)·(1 − w)` exactly, since `1 − w` is exact for w in [0.5, 1]).
fn lerp_per_sample(start: &Tensor, end: &Tensor, weights: &[f32]) -> Result<Tensor, MixError> {
    let batch_size = start.dim(0)?;
    check_len("lambdas", weights.len(), batch_size)?;
    let mut broadcast_shape = vec![1usize; start.rank()];
    broadcast_shape[0] = batch_size;
    let device: &Device = start.device();
    let small: Vec<u8> = weights.iter().map(|&w| u8::from(w.abs() < 0.5)).collect();
    let coefficients: Vec<f32> =
        weights.iter().map(|&w| if w.abs() < 0.5 { w } else { w - 1.0 }).collect();
    let small =
        Tensor::from_vec(small, broadcast_shape.as_slice(), device)?.broadcast_as(start.shape())?;
    let coefficients = Tensor::from_vec(coefficients, broadcast_shape.as_slice(), device)?
        .to_dtype(start.dtype())?;
    let base = small.where_cond(start, end)?;
    let difference = (end - start)?;
    Ok((base + coefficients.broadcast_mul(&difference)?)?)
}
