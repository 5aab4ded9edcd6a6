//! Fused train-mode batch normalisation of `(B, C, H, W)` over (B, H, W), optionally followed
//! by a ReLU, with a fused backward; the same followed by a residual block's sum and ReLU
//! ([`batch_norm_add_relu_train`]); and the eval-mode forward with running statistics, also
//! written in place over its input ([`batch_norm_eval_in_place`]).
//!
//! candle-nn's `BatchNorm::forward_train` is built from about a dozen tensor ops (transpose,
//! contiguous copy, two means, broadcast sub/div/mul/add), and autograd runs the backward of
//! each; on a `(32, 256, 32, 32)` tensor that is more than a second on two cores. Here the
//! forward is two passes over `x` (statistics, then normalise) and the backward two passes
//! (per-channel gradient sums, then the input gradient):
//!
//! - forward:  `x̂ = (x - μ) / sqrt(σ² + eps)`, `y = γ·x̂ + β`, optionally `y = max(y, 0)`,
//!   with μ and the biased σ² of the batch;
//! - backward: `g = dy` masked where the ReLU output is 0; `dβ = Σ g`, `dγ = Σ g·x̂`,
//!   `dx = γ / sqrt(σ² + eps) · (g - dβ/n - x̂·dγ/n)` with n = B·H·W. Both passes read only
//!   `x` and `dy`: the ReLU mask is recomputed from `x` with the forward's exact arithmetic
//!   (after a residual sum, the mask comes from the op's output, as `add_relu`'s does).
//!
//! The batch statistics are returned so that the layer can update its running averages.
//! These kernels are CPU f32; bf16/f16 activations on the CPU (mixed precision, with f32
//! parameters) run them in f32 and round the output once. With the `cuda` feature, CUDA
//! tensors run the same arithmetic with the statistics kept on the device
//! (`cuda/batch_norm.rs`); [`batch_norm_train`] composes candle ops anywhere else.

use super::activation::{ReluBackward, relu_passes, relu_value};
use super::storage::{f32_row_major, par_output, write_values};
use candle::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, InplaceOp2, Layout, Shape,
    Tensor,
};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

/// What follows the normalisation inside the fused op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNormActivation {
    /// Nothing: the normalised, affine-transformed value.
    #[default]
    Identity,
    /// `max(0, ·)` after the affine transform (BatchNorm + ReLU fused).
    Relu,
}

/// The parameters of [`batch_norm_train`] and [`batch_norm_eval`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormOpConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Applied after the affine transform.
    pub activation: BatchNormActivation,
}

impl Default for BatchNormOpConfig {
    fn default() -> Self {
        Self { eps: 1e-5, activation: BatchNormActivation::Identity }
    }
}

/// The statistics of one batch, per channel: mean and biased variance, both `(C,)`.
#[derive(Debug, Clone)]
pub struct BatchStatistics {
    /// Per-channel mean over (B, H, W), `(C,)`.
    pub mean: Tensor,
    /// Per-channel biased variance over (B, H, W), `(C,)`.
    pub variance: Tensor,
    /// Elements per channel (B·H·W), for the unbiased variance `variance · n / (n - 1)`.
    pub count: usize,
}

/// Normalises `xs (B, C, H, W)` with its own batch statistics, scales by `weight (C)`, shifts
/// by `bias (C)`, optionally applies a ReLU; differentiable in all three. Returns the output
/// and the batch statistics.
pub fn batch_norm_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    config: BatchNormOpConfig,
) -> candle::Result<(Tensor, BatchStatistics)> {
    let count = train_count(xs, weight, bias, config.eps, "batch_norm_train")?;
    #[cfg(feature = "cuda")]
    if super::on_cuda(xs) {
        return super::cuda::batch_norm::batch_norm_train(xs, weight, bias, config, count);
    }
    let f32_parameters = weight.dtype() == DType::F32 && bias.dtype() == DType::F32;
    if xs.device().is_cpu() && matches!(xs.dtype(), DType::BF16 | DType::F16) && f32_parameters {
        let (ys, statistics) = batch_norm_train(&xs.to_dtype(DType::F32)?, weight, bias, config)?;
        return Ok((ys.to_dtype(xs.dtype())?, statistics));
    }
    let fused = xs.device().is_cpu() && xs.dtype() == DType::F32 && f32_parameters;
    if !fused {
        return composed_batch_norm_train(xs, weight, bias, config, count);
    }
    let (statistics, mean, inverse_std) = fused_statistics(xs, config.eps, count)?;
    let op = BatchNormOp { activation: config.activation, mean, inverse_std };
    Ok((xs.apply_op3(weight, bias, op)?, statistics))
}

/// `relu(batch_norm(xs) + shortcut)` in training mode, for the end of a residual block:
/// `xs (B, C, H, W)` normalised with its own batch statistics, scaled by `weight (C)`, shifted
/// by `bias (C)` (no activation of its own), plus `shortcut (B, C, H, W)`, then the ReLU;
/// differentiable in all four, with PyTorch's gradient rule (nothing passes where the output
/// is 0). Returns the output and the batch statistics.
///
/// The same values, bit for bit, as [`batch_norm_train`] (identity) followed by
/// [`super::add_relu`], but on the CPU in f32 one op, so the graph holds no tensor for the
/// normalised branch: like PyTorch, which frees it once the sum is taken (fastai's `ResBlock`:
/// `act(convpath(x) + idpath(x))`), a training step keeps one activation fewer per block.
/// Anywhere else it composes those two ops.
///
/// # Errors
/// When `xs` is not `(B, C, H, W)`, `weight` or `bias` not `(C)`, B·H·W is below 2 or `eps`
/// negative (as [`batch_norm_train`]), and when `shortcut`'s shape differs from `xs`'s.
pub fn batch_norm_add_relu_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    shortcut: &Tensor,
    eps: f64,
) -> candle::Result<(Tensor, BatchStatistics)> {
    let op_name = "batch_norm_add_relu_train";
    let count = train_count(xs, weight, bias, eps, op_name)?;
    if shortcut.dims() != xs.dims() {
        candle::bail!("{op_name}: shortcut {:?} and input {:?} differ", shortcut.dims(), xs.dims());
    }
    let fused = xs.device().is_cpu()
        && [xs, weight, bias, shortcut].iter().all(|t| t.dtype() == DType::F32);
    if !fused {
        let config = BatchNormOpConfig { eps, activation: BatchNormActivation::Identity };
        let (branch, statistics) = batch_norm_train(xs, weight, bias, config)?;
        return Ok((super::add_relu(&branch, shortcut)?, statistics));
    }
    let (statistics, mean, inverse_std) = fused_statistics(xs, eps, count)?;
    // One (2, C) operand, rows (β, γ), the order of the backward's gradient sums.
    let affine = Tensor::stack(&[bias, weight], 0)?;
    let op = BatchNormAddReluOp { mean, inverse_std };
    Ok((xs.apply_op3(&affine, shortcut, op)?, statistics))
}

/// [`batch_norm_eval`] written over `xs`'s own storage, and with `residual`, followed by
/// `+ residual` and the ReLU (`config.activation` must then be the identity): the values of
/// `batch_norm_eval` (then [`super::add_relu`]), bit for bit, without a new tensor of `xs`'s
/// size, so an evaluation forward holds one activation fewer at a time. On the CPU in f32 with
/// `xs` contiguous; anywhere else it runs the out-of-place ops.
///
/// `xs` is taken by value and must be the only tensor that reads its storage (an op's fresh
/// output): a view of it held elsewhere would see the new values (candle refuses a residual
/// that shares `xs`'s storage). The result is detached, as `batch_norm_eval`'s.
///
/// # Errors
/// As [`batch_norm_eval`]; when `residual`'s shape differs from `xs`'s, or a residual is given
/// to a batch norm with an activation of its own.
pub fn batch_norm_eval_in_place(
    xs: Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    config: BatchNormOpConfig,
    residual: Option<&Tensor>,
) -> candle::Result<Tensor> {
    let op_name = "batch_norm_eval_in_place";
    if let Some(residual) = residual {
        if config.activation != BatchNormActivation::Identity {
            candle::bail!("{op_name}: a residual needs a batch norm without its own activation");
        }
        if residual.dims() != xs.dims() {
            candle::bail!(
                "{op_name}: residual {:?} and input {:?} differ",
                residual.dims(),
                xs.dims()
            );
        }
    }
    let parameters = [weight, bias, running_mean, running_var];
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let in_place = eval_in_place_supported(&xs)
        && parameters.iter().all(|t| cpu_f32(t))
        && residual.is_none_or(cpu_f32);
    if !in_place {
        let ys = batch_norm_eval(&xs, weight, bias, running_mean, running_var, config)?;
        drop(xs);
        return match residual {
            Some(residual) => super::add_relu(&ys, residual),
            None => Ok(ys),
        };
    }
    // The checks (shapes, eps) and the statistics of `batch_norm_eval`'s CPU kernel.
    let channels = match xs.dims() {
        &[_, c, _, _] => c,
        dims => candle::bail!("{op_name}: input must be (B, C, H, W), got shape {dims:?}"),
    };
    for t in parameters {
        if t.dims() != [channels] {
            candle::bail!("{op_name}: parameters must be ({channels}), got {:?}", t.dims());
        }
    }
    if config.eps < 0.0 {
        candle::bail!("{op_name}: eps must be non-negative, got {}", config.eps);
    }
    let (weight, bias) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let mean = running_mean.to_vec1::<f32>()?;
    let inverse_std = inverse_std(&running_var.to_vec1::<f32>()?, config.eps);
    let (scale, shift) =
        (0..channels).map(|c| scale_shift(weight[c], bias[c], mean[c], inverse_std[c])).unzip();
    let op =
        BatchNormEvalInPlace { scale, shift, relu: config.activation == BatchNormActivation::Relu };
    match residual {
        Some(residual) => xs.inplace_op2(residual, &op)?,
        None => xs.inplace_op1(&op)?,
    }
    // No gradient flows through the evaluation forward (as `batch_norm_eval`'s no-backward op).
    Ok(xs.detach())
}

/// Whether [`batch_norm_eval_in_place`] writes over `xs` (a non-empty contiguous CPU f32
/// tensor, with CPU f32 parameters) rather than running the out-of-place ops: models choose
/// their evaluation order by it without naming devices.
pub fn eval_in_place_supported(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && xs.is_contiguous() && xs.elem_count() > 0
}

/// `y = x·scale + shift` per channel written over `x`, then the ReLU (`relu`), or with a second
/// operand `relu(y + r)`: the arithmetic of `BatchNormOp`'s and `add_relu`'s forwards.
struct BatchNormEvalInPlace {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl BatchNormEvalInPlace {
    fn run(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle::Result<()> {
        let op = "batch_norm_eval_in_place";
        let planes = Planes::of(layout, op)?;
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle::bail!("{op}: expected a contiguous f32 tensor");
        };
        let x = &mut data[start..end];
        x.par_chunks_mut(planes.plane).enumerate().for_each(|(index, plane)| {
            let c = index % planes.channels;
            let (scale, shift) = (self.scale[c], self.shift[c]);
            match residual {
                Some(residual) => {
                    let residual = &residual[index * planes.plane..][..plane.len()];
                    for (v, r) in plane.iter_mut().zip(residual) {
                        *v = relu_value((*v * scale + shift) + r);
                    }
                }
                None if self.relu => {
                    plane.iter_mut().for_each(|v| *v = relu_value(*v * scale + shift))
                }
                None => plane.iter_mut().for_each(|v| *v = *v * scale + shift),
            }
        });
        Ok(())
    }
}

impl InplaceOp1 for BatchNormEvalInPlace {
    fn name(&self) -> &'static str {
        "wick-batch-norm-eval-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle::Result<()> {
        let _timer = crate::profile::Timer::start(InplaceOp1::name(self));
        self.run(storage, layout, None)
    }
}

impl InplaceOp2 for BatchNormEvalInPlace {
    fn name(&self) -> &'static str {
        "wick-batch-norm-add-relu-eval-in-place"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual_storage: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle::Result<()> {
        let _timer = crate::profile::Timer::start(InplaceOp2::name(self));
        let op = "batch_norm_eval_in_place";
        if residual_layout.dims() != layout.dims() {
            candle::bail!(
                "{op}: residual {:?} and input {:?} differ",
                residual_layout.dims(),
                layout.dims()
            );
        }
        let residual = f32_row_major(residual_storage, residual_layout, op)?;
        self.run(storage, layout, Some(&residual))
    }
}

/// The element count per channel (B·H·W) of a training-mode batch norm of `xs`, after
/// checking the shapes of `xs (B, C, H, W)`, `weight (C)` and `bias (C)` and `eps`.
fn train_count(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    op: &str,
) -> candle::Result<usize> {
    let (batch, channels, height, width) = match xs.dims() {
        &[b, c, h, w] => (b, c, h, w),
        dims => candle::bail!("{op}: input must be (B, C, H, W), got shape {dims:?}"),
    };
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [channels] {
            candle::bail!(
                "{op}: {name} must have shape [{channels}] for input {:?}, got {:?}",
                xs.dims(),
                t.dims()
            );
        }
    }
    let count = batch * height * width;
    if count < 2 {
        candle::bail!("{op}: need at least 2 values per channel, input {:?}", xs.dims());
    }
    if eps < 0.0 {
        candle::bail!("{op}: eps must be non-negative, got {eps}");
    }
    Ok(count)
}

/// Per-channel values a fused op holds for its backward, `(C)`.
type PerChannel = Arc<Vec<f32>>;

/// A channel's affine map `y = x·scale + shift` from γ, β, μ and `1 / sqrt(σ² + eps)`: the one
/// definition the forward ops and the backward's recomputed ReLU mask share, so that they
/// round alike.
#[inline(always)]
fn scale_shift(weight: f32, bias: f32, mean: f32, inverse_std: f32) -> (f32, f32) {
    let scale = weight * inverse_std;
    (scale, bias - mean * scale)
}

/// Each channel's `1 / sqrt(σ² + eps)` from its variance `(C)`, rounded once from f64: the one
/// definition of the training statistics' and the running statistics' normalisers.
fn inverse_std(variance: &[f32], eps: f64) -> Vec<f32> {
    variance.iter().map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32).collect()
}

/// The CPU f32 batch statistics of `xs`, and the per-channel mean and `1 / sqrt(σ² + eps)`
/// the fused ops hold.
fn fused_statistics(
    xs: &Tensor,
    eps: f64,
    count: usize,
) -> candle::Result<(BatchStatistics, PerChannel, PerChannel)> {
    let statistics = xs.apply_op1_no_bwd(&BatchStatisticsOp)?;
    let values = statistics.to_vec2::<f32>()?;
    let (mean, variance) = (values[0].clone(), values[1].clone());
    let inverse_std = inverse_std(&variance, eps);
    let statistics =
        BatchStatistics { mean: statistics.get(0)?, variance: statistics.get(1)?, count };
    Ok((statistics, Arc::new(mean), Arc::new(inverse_std)))
}

/// Normalises `xs (B, C, H, W)` with given per-channel statistics `running_mean (C)` and
/// `running_var (C)` (PyTorch's eval mode: `(x - mean) / sqrt(var + eps) · weight + bias`),
/// optionally followed by a ReLU. For inference: no gradient flows through it. On the CPU in
/// f32 (bf16/f16 activations via f32) it is one multi-threaded pass over `xs`, the train
/// forward's kernel with the running statistics in place of the batch's; anywhere else it
/// composes candle ops.
pub fn batch_norm_eval(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    config: BatchNormOpConfig,
) -> candle::Result<Tensor> {
    let channels = match xs.dims() {
        &[_, c, _, _] => c,
        dims => candle::bail!("batch_norm_eval: input must be (B, C, H, W), got shape {dims:?}"),
    };
    let parameters = [
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ];
    for (name, t) in parameters {
        if t.dims() != [channels] {
            candle::bail!(
                "batch_norm_eval: {name} must have shape [{channels}] for input {:?}, got {:?}",
                xs.dims(),
                t.dims()
            );
        }
    }
    if config.eps < 0.0 {
        candle::bail!("batch_norm_eval: eps must be non-negative, got {}", config.eps);
    }
    let f32_parameters = parameters.iter().all(|(_, t)| t.dtype() == DType::F32);
    let on_cpu = xs.device().is_cpu();
    if on_cpu && matches!(xs.dtype(), DType::BF16 | DType::F16) && f32_parameters {
        let ys = batch_norm_eval(
            &xs.to_dtype(DType::F32)?,
            weight,
            bias,
            running_mean,
            running_var,
            config,
        )?;
        return ys.to_dtype(xs.dtype());
    }
    if !(on_cpu && xs.dtype() == DType::F32 && f32_parameters) {
        // Composed from candle ops (any device and dtype): y = x·scale + shift.
        let scale = weight.detach().broadcast_div(&(running_var.detach() + config.eps)?.sqrt()?)?;
        let shift = bias.detach().sub(&(running_mean.detach() * &scale)?)?;
        return channel_affine(xs, &scale, &shift, config.activation);
    }
    let mean = running_mean.to_vec1::<f32>()?;
    let inverse_std = inverse_std(&running_var.to_vec1::<f32>()?, config.eps);
    let op = BatchNormOp {
        activation: config.activation,
        mean: Arc::new(mean),
        inverse_std: Arc::new(inverse_std),
    };
    xs.apply_op3_no_bwd(weight, bias, &op)
}

/// `xs (B, C, H, W) · scale (C) + shift (C)` per channel, then the activation, from candle
/// ops in `xs`'s dtype: the tail of both composed paths.
fn channel_affine(
    xs: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    activation: BatchNormActivation,
) -> candle::Result<Tensor> {
    let shape = (1, xs.dim(1)?, 1, 1);
    let ys = xs
        .broadcast_mul(&scale.reshape(shape)?.to_dtype(xs.dtype())?)?
        .broadcast_add(&shift.reshape(shape)?.to_dtype(xs.dtype())?)?;
    match activation {
        BatchNormActivation::Identity => Ok(ys),
        BatchNormActivation::Relu => super::activation::relu(&ys),
    }
}

/// The same computation from candle ops (any device and dtype), as candle-nn does it.
fn composed_batch_norm_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    config: BatchNormOpConfig,
    count: usize,
) -> candle::Result<(Tensor, BatchStatistics)> {
    let internal = match xs.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        dtype => dtype,
    };
    let x = xs.to_dtype(internal)?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centered = x.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim((0, 2, 3))?;
    let normalized = centered.broadcast_div(&(&variance + config.eps)?.sqrt()?)?;
    let y = channel_affine(&normalized, weight, bias, config.activation)?;
    let statistics = BatchStatistics {
        mean: mean.flatten_all()?.detach(),
        variance: variance.flatten_all()?.detach(),
        count,
    };
    Ok((y.to_dtype(xs.dtype())?, statistics))
}

/// Geometry of a `(B, C, H, W)` input as seen by the batch-norm kernels (CPU here, CUDA in
/// `cuda/batch_norm.rs`, which adds its launch geometry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Planes {
    pub(crate) batch: usize,
    pub(crate) channels: usize,
    /// H·W.
    pub(crate) plane: usize,
}

impl Planes {
    pub(crate) fn of(layout: &Layout, op: &str) -> candle::Result<Self> {
        match layout.dims() {
            &[batch, channels, h, w] => Ok(Self { batch, channels, plane: h * w }),
            dims => candle::bail!("{op}: input must be (B, C, H, W), got shape {dims:?}"),
        }
    }

    /// Elements per channel: B·H·W.
    pub(crate) fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// Plane `(b, c)` of a row-major `(B, C, H, W)` buffer.
    fn plane_of<'a>(&self, data: &'a [f32], b: usize, c: usize) -> &'a [f32] {
        let start = (b * self.channels + c) * self.plane;
        &data[start..start + self.plane]
    }
}

/// Per-channel sums over a channel's B planes, in f64. The per-plane values are computed in
/// parallel in memory order (plane `(b, c)` after `(b, c - 1)`), then each channel's B values
/// are added in order `b = 0, 1, ...`: the same sums, in the same order, as a loop over the
/// channels would form, so the result does not depend on the thread count. (Walking channel
/// by channel instead jumps `C·H·W` floats between planes: on the late stages' 4×4 and 8×8
/// planes every plane is on its own page, and the gradient sums ran 5x slower than the
/// memory-order input-gradient pass over the same tensors.) `per_plane` gets a working state
/// made by `init` once per rayon task and lent to each of its planes.
fn channel_sums<const N: usize, S>(
    planes: Planes,
    init: impl Fn() -> S + Sync + Send,
    per_plane: impl Fn(&mut S, usize, usize) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    sum_per_channel(&plane_values(planes, init, per_plane), planes.channels)
}

/// Each channel's values of `per_plane` (index `b·C + c`, as [`plane_values`] returns them)
/// added in order `b = 0, 1, ...`.
fn sum_per_channel<const N: usize>(per_plane: &[[f64; N]], channels: usize) -> Vec<[f64; N]> {
    let mut totals = vec![[0.0f64; N]; channels];
    for item in per_plane.chunks(channels) {
        for (total, plane) in totals.iter_mut().zip(item) {
            for (t, v) in total.iter_mut().zip(plane) {
                *t += v;
            }
        }
    }
    totals
}

/// `per_plane(state, b, c)` of every plane, computed in parallel in memory order and
/// returned in that order (index `b·C + c`); `state` as in [`channel_sums`].
fn plane_values<const N: usize, S>(
    planes: Planes,
    init: impl Fn() -> S + Sync + Send,
    per_plane: impl Fn(&mut S, usize, usize) -> [f64; N] + Sync,
) -> Vec<[f64; N]> {
    // Runs of planes of about 16K elements a rayon task (to amortise it on small planes),
    // each walked in order without a division per plane: on the last stage's 2×2 planes the
    // division and the per-plane iterator step cost as much as the plane's sums.
    let per_task = (16 * 1024 / planes.plane.max(1)).max(1);
    let mut values = vec![[0.0f64; N]; planes.batch * planes.channels];
    values.par_chunks_mut(per_task).enumerate().for_each_init(init, |state, (task, out)| {
        let first = task * per_task;
        let (mut b, mut c) = (first / planes.channels, first % planes.channels);
        for value in out {
            *value = per_plane(state, b, c);
            c += 1;
            if c == planes.channels {
                (b, c) = (b + 1, 0);
            }
        }
    });
    values
}

/// Mean and biased variance per channel: `(B, C, H, W) -> (2, C)`.
#[derive(Debug, Clone, Copy)]
struct BatchStatisticsOp;

impl CustomOp1 for BatchStatisticsOp {
    fn name(&self) -> &'static str {
        "wick-batch-norm-statistics"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let planes = Planes::of(layout, "batch_norm_train")?;
        let x = f32_row_major(storage, layout, "batch_norm_train")?;
        let n = planes.count() as f64;
        // One pass over `x` from memory and two over each plane (its sum, then the squared
        // deviations from its own mean while it is in cache), joined per channel as Chan,
        // Golub & LeVeque do: `M2 = Σ_p [M2_p + n_p·(mean_p - mean)²]`, planes in order
        // b = 0, 1, .... As accurate as two passes over the whole tensor, which read it from
        // memory twice.
        let plane_n = planes.plane as f64;
        let plane_mean = |sum: f64| if planes.plane > 0 { sum / plane_n } else { 0.0 };
        let vector = has_avx();
        let per_plane = plane_values(
            planes,
            || (),
            |_, b, c| {
                let values = planes.plane_of(&x, b, c);
                if vector && values.len() >= 8 {
                    // SAFETY: AVX is available (`has_avx`).
                    #[cfg(target_arch = "x86_64")]
                    return unsafe {
                        let sum = sum_f64_avx(values);
                        [sum, squared_deviation_f64_avx(values, plane_mean(sum))]
                    };
                }
                let sum = sum_f64(values);
                [sum, squared_deviation_f64(values, plane_mean(sum))]
            },
        );
        // The mean's sums are the same, in the same order, as a pass of its own would form.
        let totals = sum_per_channel(&per_plane, planes.channels);
        let means: Vec<f64> = totals.iter().map(|[sum, _]| sum / n).collect();
        // Σ_p n_p·(mean_p - mean)², per channel, planes in order b = 0, 1, ....
        let mut shifts = vec![0.0f64; planes.channels];
        for item in per_plane.chunks(planes.channels) {
            for ((total, [sum, _]), mean) in shifts.iter_mut().zip(item).zip(&means) {
                let shift = plane_mean(*sum) - mean;
                *total += plane_n * shift * shift;
            }
        }
        let mut out: Vec<f32> = means.iter().map(|m| *m as f32).collect();
        out.extend(totals.iter().zip(&shifts).map(|([_, m2], shift)| ((m2 + shift) / n) as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, planes.channels))))
    }
}

/// Adds `values` to eight f32 lanes: lane `l` gets values `l, l + 8, ...` in order, a tail
/// of under 8 goes to lane 0.
#[inline(always)]
fn add_to_lanes(lanes: &mut [f32; 8], values: &[f32]) {
    let (chunks, tail) = values.as_chunks::<8>();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    for v in tail {
        lanes[0] += v;
    }
}

/// Sum in f64 through eight f32 lanes of partial sums per block (vectorisable, and exact
/// enough: each block of 8·64 values is summed in f32 before joining the f64 total).
fn sum_f64(values: &[f32]) -> f64 {
    if values.len() < 8 {
        // A 2×2 plane: what the lanes compute for fewer than 8 values (lanes of zeros, which
        // add to +0.0, hence the `0.0 +` that turns a -0.0 sum into +0.0, and the values
        // through the tail) without their set-up and chain of dependent additions.
        return 0.0 + values.iter().map(|v| *v as f64).sum::<f64>();
    }
    sum_f64_by_lanes(values)
}

/// [`sum_f64`] through the lanes, for any length.
fn sum_f64_by_lanes(values: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in values.chunks(512) {
        let mut lanes = [0.0f32; 8];
        let (chunks, tail) = block.as_chunks::<8>();
        for chunk in chunks {
            for (l, v) in lanes.iter_mut().zip(chunk) {
                *l += v;
            }
        }
        total += lanes.iter().map(|l| *l as f64).sum::<f64>()
            + tail.iter().map(|v| *v as f64).sum::<f64>();
    }
    total
}

/// `Σ (v - mean)²` of a plane with `mean` rounded to f32, summed as [`sum_f64`] sums.
fn squared_deviation_f64(values: &[f32], mean: f64) -> f64 {
    if values.len() < 8 {
        // As in `sum_f64`: the lanes' result for fewer than 8 values.
        let mean = mean as f32;
        return 0.0 + values.iter().map(|v| ((v - mean) * (v - mean)) as f64).sum::<f64>();
    }
    squared_deviation_f64_by_lanes(values, mean)
}

/// [`squared_deviation_f64`] through the lanes, for any length.
fn squared_deviation_f64_by_lanes(values: &[f32], mean: f64) -> f64 {
    let mean = mean as f32;
    let mut total = 0.0f64;
    for block in values.chunks(512) {
        let mut lanes = [0.0f32; 8];
        let (chunks, tail) = block.as_chunks::<8>();
        for chunk in chunks {
            for (l, v) in lanes.iter_mut().zip(chunk) {
                let d = v - mean;
                *l += d * d;
            }
        }
        total += lanes.iter().map(|l| *l as f64).sum::<f64>()
            + tail.iter().map(|v| ((v - mean) * (v - mean)) as f64).sum::<f64>();
    }
    total
}

/// [`sum_f64_by_lanes`] with the eight lanes in one AVX register: the same additions per
/// lane in the same order, the tail and the joins as there, so the same bits.
///
/// # Safety
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn sum_f64_avx(values: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    let mut total = 0.0f64;
    for block in values.chunks(512) {
        let (chunks, tail) = block.as_chunks::<8>();
        let mut lanes = [0.0f32; 8];
        // SAFETY: each load reads one whole chunk of 8; AVX is available (the caller's
        // contract).
        unsafe {
            let mut sum = _mm256_setzero_ps();
            for chunk in chunks {
                sum = _mm256_add_ps(sum, _mm256_loadu_ps(chunk.as_ptr()));
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        }
        total += lanes.iter().map(|l| *l as f64).sum::<f64>()
            + tail.iter().map(|v| *v as f64).sum::<f64>();
    }
    total
}

/// [`squared_deviation_f64_by_lanes`] with the eight lanes in one AVX register (the
/// difference, then its square, then the sum: no fused multiply-add), so the same bits.
///
/// # Safety
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn squared_deviation_f64_avx(values: &[f32], mean: f64) -> f64 {
    use std::arch::x86_64::*;
    let mean = mean as f32;
    let mut total = 0.0f64;
    for block in values.chunks(512) {
        let (chunks, tail) = block.as_chunks::<8>();
        let mut lanes = [0.0f32; 8];
        // SAFETY: each load reads one whole chunk of 8; AVX is available (the caller's
        // contract).
        unsafe {
            let (mut sum, mean) = (_mm256_setzero_ps(), _mm256_set1_ps(mean));
            for chunk in chunks {
                let d = _mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), mean);
                sum = _mm256_add_ps(sum, _mm256_mul_ps(d, d));
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        }
        total += lanes.iter().map(|l| *l as f64).sum::<f64>()
            + tail.iter().map(|v| ((v - mean) * (v - mean)) as f64).sum::<f64>();
    }
    total
}

/// A plane's `[Σ g, Σ g·(x - mean)]` with `g = masked(x, grad)`: blocks of 512 summed in
/// eight f32 lanes (lane `l` adds values `l, l + 8, ...` in order, the tail after them into
/// lane 0), joined in f64. `terms` is the caller's room for 64 terms of each sum.
#[inline(always)]
fn plane_gradient_sums(
    terms: &mut ([f32; 64], [f32; 64]),
    x: &[f32],
    grad: &[f32],
    mean: f32,
    masked: impl Fn(f32, f32) -> f32,
) -> [f64; 2] {
    if x.len() < 8 {
        // A 2×2 plane: what the lanes compute for fewer than 8 values (each sum is lane 0,
        // which took the terms in order from +0.0, plus zeros), without them: the lanes'
        // set-up and chain of dependent additions made the last stage's gradient sums 2x
        // slower.
        let (mut g_sum, mut gx_sum) = (0.0f32, 0.0f32);
        for (&x, &grad) in x.iter().zip(grad) {
            let g = masked(x, grad);
            g_sum += g;
            gx_sum += g * (x - mean);
        }
        return [g_sum as f64, gx_sum as f64];
    }
    plane_gradient_sums_by_lanes(terms, x, grad, mean, masked)
}

/// [`plane_gradient_sums`] through the lanes, for any length. The masked terms are formed 64
/// at a time, then added to the lanes: plain loops that vectorise (one loop forming and
/// summing both compiled to scalar loads and shuffles, 2-3x slower than the input-gradient
/// pass over the same tensors).
#[inline(always)]
fn plane_gradient_sums_by_lanes(
    terms: &mut ([f32; 64], [f32; 64]),
    x: &[f32],
    grad: &[f32],
    mean: f32,
    masked: impl Fn(f32, f32) -> f32,
) -> [f64; 2] {
    let mut total = [0.0f64; 2];
    for (x, grad) in x.chunks(512).zip(grad.chunks(512)) {
        let (mut lanes_g, mut lanes_gx) = ([0.0f32; 8], [0.0f32; 8]);
        for (x, grad) in x.chunks(64).zip(grad.chunks(64)) {
            let (terms_g, terms_gx) = (&mut terms.0[..x.len()], &mut terms.1[..x.len()]);
            for (((g, gx), &x), &grad) in
                terms_g.iter_mut().zip(terms_gx.iter_mut()).zip(x).zip(grad)
            {
                *g = masked(x, grad);
                *gx = *g * (x - mean);
            }
            add_to_lanes(&mut lanes_g, terms_g);
            add_to_lanes(&mut lanes_gx, terms_gx);
        }
        total[0] += lanes_g.iter().map(|v| *v as f64).sum::<f64>();
        total[1] += lanes_gx.iter().map(|v| *v as f64).sum::<f64>();
    }
    total
}

/// Whether this CPU has the 8-lane f32 vectors of [`plane_gradient_sums_avx`] (AVX).
fn has_avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`plane_gradient_sums_by_lanes`] in AVX registers, the eight lanes one vector: the same
/// operations on each lane in the same order (the affine map's product then sum, no fused
/// multiply-add; the ReLU mask `!(y <= 0)`, NaN passing, as `relu_passes`), so the same
/// bits. `relu` is the channel's `(scale, shift)` when a ReLU follows the normalisation. The
/// plain loops compiled to a term buffer written and read back; this pass runs at the
/// input-gradient pass's speed.
///
/// # Safety
/// The CPU must have AVX; `grad` must be at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn plane_gradient_sums_avx(
    x: &[f32],
    grad: &[f32],
    mean: f32,
    relu: Option<(f32, f32)>,
) -> [f64; 2] {
    use std::arch::x86_64::*;
    let masked = |x: f32, grad: f32| match relu {
        Some((scale, shift)) if !relu_passes(x * scale + shift) => 0.0,
        _ => grad,
    };
    let mut total = [0.0f64; 2];
    for (x, grad) in x.chunks(512).zip(grad.chunks(512)) {
        let whole = x.len() / 8 * 8;
        let (mut lanes_g, mut lanes_gx) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: every load reads 8 values at `i < whole <= x.len() <= grad.len()`; AVX is
        // available (the caller's contract).
        unsafe {
            let (mut sum_g, mut sum_gx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mean_v = _mm256_set1_ps(mean);
            for i in (0..whole).step_by(8) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                let mut g = _mm256_loadu_ps(grad.as_ptr().add(i));
                if let Some((scale, shift)) = relu {
                    let y = _mm256_add_ps(
                        _mm256_mul_ps(xv, _mm256_set1_ps(scale)),
                        _mm256_set1_ps(shift),
                    );
                    g = _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(y, _mm256_setzero_ps()), g);
                }
                sum_g = _mm256_add_ps(sum_g, g);
                sum_gx = _mm256_add_ps(sum_gx, _mm256_mul_ps(g, _mm256_sub_ps(xv, mean_v)));
            }
            _mm256_storeu_ps(lanes_g.as_mut_ptr(), sum_g);
            _mm256_storeu_ps(lanes_gx.as_mut_ptr(), sum_gx);
        }
        for (&x, &grad) in x[whole..].iter().zip(&grad[whole..]) {
            let g = masked(x, grad);
            lanes_g[0] += g;
            lanes_gx[0] += g * (x - mean);
        }
        total[0] += lanes_g.iter().map(|v| *v as f64).sum::<f64>();
        total[1] += lanes_gx.iter().map(|v| *v as f64).sum::<f64>();
    }
    total
}

/// The fused forward: an op on `(xs, weight, bias)` holding the batch statistics.
#[derive(Debug, Clone)]
struct BatchNormOp {
    activation: BatchNormActivation,
    mean: PerChannel,
    inverse_std: PerChannel,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "wick-batch-norm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        weight_storage: &CpuStorage,
        weight_layout: &Layout,
        bias_storage: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let planes = Planes::of(x_layout, "batch_norm_train")?;
        let x = f32_row_major(x_storage, x_layout, "batch_norm_train")?;
        let weight = f32_row_major(weight_storage, weight_layout, "batch_norm_train")?;
        let bias = f32_row_major(bias_storage, bias_layout, "batch_norm_train")?;
        let relu = self.activation == BatchNormActivation::Relu;
        // SAFETY: every chunk is written through `write_values`, which counts what it writes.
        let out = unsafe {
            par_output(x.len(), planes.plane, |index, out_plane| {
                let c = index % planes.channels;
                let x_plane = &x[index * planes.plane..index * planes.plane + out_plane.len()];
                let (scale, shift) =
                    scale_shift(weight[c], bias[c], self.mean[c], self.inverse_std[c]);
                let y = x_plane.iter().map(|v| v * scale + shift);
                if relu {
                    write_values(out_plane, y.map(relu_value))
                } else {
                    write_values(out_plane, y)
                }
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let weight = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let channels =
            ChannelTransform::new(self.activation, &self.mean, &self.inverse_std, &weight, &bias);
        let (grad_input, sums) = batch_norm_backward(channels, xs, grad_output)?;
        Ok((Some(grad_input), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

/// The backward of the fused forward `y = γ·x̂ + β` (masked by `channels`' ReLU): the input
/// gradient `(B, C, H, W)` and the gradient sums `(2, C)`, rows `dβ = Σ g` and `dγ = Σ g·x̂`.
fn batch_norm_backward(
    channels: ChannelTransform,
    xs: &Tensor,
    grad_output: &Tensor,
) -> candle::Result<(Tensor, Tensor)> {
    let channels = Arc::new(channels);
    let sums_op = BatchNormGradientSumsOp { channels: channels.clone() };
    let sums = xs.apply_op2_no_bwd(grad_output, &sums_op)?;
    let values = sums.to_vec2::<f32>()?;
    let input_op = BatchNormGradientInputOp {
        channels,
        grad_bias: Arc::new(values[0].clone()),
        grad_weight: Arc::new(values[1].clone()),
    };
    Ok((xs.apply_op2_no_bwd(grad_output, &input_op)?, sums))
}

/// `relu(batch_norm(x) + shortcut)`: an op on `(xs, affine (2, C) rows β and γ, shortcut)`
/// holding the batch statistics (see [`batch_norm_add_relu_train`]).
#[derive(Debug, Clone)]
struct BatchNormAddReluOp {
    mean: PerChannel,
    inverse_std: PerChannel,
}

impl CustomOp3 for BatchNormAddReluOp {
    fn name(&self) -> &'static str {
        "wick-batch-norm-add-relu"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        affine_storage: &CpuStorage,
        affine_layout: &Layout,
        shortcut_storage: &CpuStorage,
        shortcut_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let op = "batch_norm_add_relu_train";
        let planes = Planes::of(x_layout, op)?;
        if shortcut_layout.dims() != x_layout.dims() {
            candle::bail!(
                "{op}: shapes {:?} and {:?} differ",
                x_layout.dims(),
                shortcut_layout.dims()
            );
        }
        let x = f32_row_major(x_storage, x_layout, op)?;
        if affine_layout.dims() != [2, planes.channels] {
            candle::bail!(
                "{op}: affine {:?}, expected [2, {}]",
                affine_layout.dims(),
                planes.channels
            );
        }
        let affine = f32_row_major(affine_storage, affine_layout, op)?;
        let shortcut = f32_row_major(shortcut_storage, shortcut_layout, op)?;
        let (bias, weight) = affine.split_at(planes.channels);
        // SAFETY: every chunk is written through `write_values`, which counts what it writes.
        let out = unsafe {
            par_output(x.len(), planes.plane, |index, out_plane| {
                let c = index % planes.channels;
                let range = index * planes.plane..index * planes.plane + out_plane.len();
                let (x_plane, shortcut_plane) = (&x[range.clone()], &shortcut[range]);
                // The arithmetic of `BatchNormOp` (identity) and then of `add_relu`.
                let (scale, shift) =
                    scale_shift(weight[c], bias[c], self.mean[c], self.inverse_std[c]);
                let y = x_plane.iter().zip(shortcut_plane);
                write_values(out_plane, y.map(|(v, s)| relu_value((v * scale + shift) + s)))
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        affine: &Tensor,
        _shortcut: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The ReLU's gradient from the output (as `add_relu`'s), which is also the shortcut's;
        // then the identity batch norm's backward of it.
        let grad = output.apply_op2_no_bwd(grad_output, &ReluBackward)?;
        let affine = affine.to_vec2::<f32>()?;
        let (bias, weight) = (&affine[0], &affine[1]);
        let channels = ChannelTransform::new(
            BatchNormActivation::Identity,
            &self.mean,
            &self.inverse_std,
            weight,
            bias,
        );
        let (grad_input, sums) = batch_norm_backward(channels, xs, &grad)?;
        Ok((Some(grad_input), Some(sums), Some(grad)))
    }
}

/// Per-channel constants of the backward: the batch statistics and the forward's affine
/// map `y = x·scale + shift` (recomputed exactly as the forward did, so that the ReLU mask
/// comes from `x` without reading the output).
#[derive(Debug)]
struct ChannelTransform {
    relu: bool,
    mean: Vec<f32>,
    inverse_std: Vec<f32>,
    weight: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl ChannelTransform {
    fn new(
        activation: BatchNormActivation,
        mean: &[f32],
        inverse_std: &[f32],
        weight: &[f32],
        bias: &[f32],
    ) -> Self {
        let (scale, shift) = (0..weight.len())
            .map(|c| scale_shift(weight[c], bias[c], mean[c], inverse_std[c]))
            .unzip();
        Self {
            relu: activation == BatchNormActivation::Relu,
            mean: mean.to_vec(),
            inverse_std: inverse_std.to_vec(),
            weight: weight.to_vec(),
            scale,
            shift,
        }
    }

    /// Channel `c`'s mask: a function giving the upstream gradient where the ReLU let it
    /// through (its output was positive). Branch-free so that the loops vectorise.
    #[inline(always)]
    fn mask(&self, c: usize) -> impl Fn(f32, f32) -> f32 + use<> {
        let (identity, scale, shift) = (!self.relu, self.scale[c], self.shift[c]);
        move |x: f32, grad: f32| {
            let passes = identity | relu_passes(x * scale + shift);
            if passes { grad } else { 0.0 }
        }
    }
}

/// Per-channel `Σ g` and `Σ g·x̂`: an op on `(xs, grad_output)` returning `(2, C)`.
#[derive(Debug, Clone)]
struct BatchNormGradientSumsOp {
    channels: Arc<ChannelTransform>,
}

impl CustomOp2 for BatchNormGradientSumsOp {
    fn name(&self) -> &'static str {
        "wick-batch-norm-gradient-sums"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let BackwardInputs { planes, x, grad } =
            BackwardInputs::read(x_storage, x_layout, grad_storage, grad_layout)?;
        let t = &*self.channels;
        // Each rayon task's buffers for the terms, reused over its planes.
        let init = || ([0.0f32; 64], [0.0f32; 64]);
        let vector = has_avx();
        let sums = channel_sums(planes, init, |terms, b, c| {
            let (x, grad) = (planes.plane_of(&x, b, c), planes.plane_of(&grad, b, c));
            if vector && x.len() >= 8 {
                let relu = t.relu.then_some((t.scale[c], t.shift[c]));
                // SAFETY: AVX is available (`has_avx`); x and grad are one plane's length.
                #[cfg(target_arch = "x86_64")]
                return unsafe { plane_gradient_sums_avx(x, grad, t.mean[c], relu) };
            }
            plane_gradient_sums(terms, x, grad, t.mean[c], t.mask(c))
        });
        let mut result: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
        result
            .extend(sums.iter().enumerate().map(|(c, s)| (s[1] * t.inverse_std[c] as f64) as f32));
        Ok((CpuStorage::F32(result), Shape::from((2, planes.channels))))
    }
}

/// `dx`: an op on `(xs, grad_output)` with the gradient sums in hand.
#[derive(Debug, Clone)]
struct BatchNormGradientInputOp {
    channels: Arc<ChannelTransform>,
    grad_bias: Arc<Vec<f32>>,
    grad_weight: Arc<Vec<f32>>,
}

impl CustomOp2 for BatchNormGradientInputOp {
    fn name(&self) -> &'static str {
        "wick-batch-norm-gradient-input"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let BackwardInputs { planes, x, grad } =
            BackwardInputs::read(x_storage, x_layout, grad_storage, grad_layout)?;
        let t = &*self.channels;
        let n = planes.count() as f32;
        // SAFETY: every chunk is written through `write_values`, which counts what it writes.
        let grad_input = unsafe {
            par_output(x.len(), planes.plane, |index, dx| {
                let (b, c) = (index / planes.channels, index % planes.channels);
                let (x, grad) = (planes.plane_of(&x, b, c), planes.plane_of(&grad, b, c));
                let inverse_std = t.inverse_std[c];
                // dx = γ·istd·(g - Σg/n - x̂·Σg·x̂/n), with x̂ = (x - μ)·istd.
                let scale = t.weight[c] * inverse_std;
                let mean_g = self.grad_bias[c] / n;
                let x_coefficient = self.grad_weight[c] / n * inverse_std;
                let (mean, masked) = (t.mean[c], t.mask(c));
                write_values(
                    dx,
                    x.iter().zip(grad).map(|(&x, &grad)| {
                        let g = masked(x, grad);
                        scale * (g - mean_g - (x - mean) * x_coefficient)
                    }),
                )
            })
        };
        Ok((CpuStorage::F32(grad_input), x_layout.shape().clone()))
    }
}

/// The `(xs, grad_output)` of a backward op: their planes (one shape for both) and their
/// elements, row-major.
struct BackwardInputs<'a> {
    planes: Planes,
    x: Cow<'a, [f32]>,
    grad: Cow<'a, [f32]>,
}

impl<'a> BackwardInputs<'a> {
    fn read(
        x_storage: &'a CpuStorage,
        x_layout: &Layout,
        grad_storage: &'a CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<Self> {
        let op = "batch_norm_train backward";
        let planes = Planes::of(x_layout, op)?;
        if x_layout.dims() != grad_layout.dims() {
            candle::bail!("{op}: shapes {:?} and {:?} differ", x_layout.dims(), grad_layout.dims());
        }
        let x = f32_row_major(x_storage, x_layout, op)?;
        let grad = f32_row_major(grad_storage, grad_layout, op)?;
        Ok(Self { planes, x, grad })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        has_avx, plane_gradient_sums, plane_gradient_sums_by_lanes, squared_deviation_f64,
        squared_deviation_f64_by_lanes, sum_f64, sum_f64_by_lanes,
    };
    #[cfg(target_arch = "x86_64")]
    use super::{plane_gradient_sums_avx, squared_deviation_f64_avx, sum_f64_avx};
    use crate::ops::activation::relu_passes;

    /// Planes of 0 to 7 values (2×2 and smaller) drawn from magnitudes 1e-8 to 1e8, both
    /// signed zeros and a NaN among them, by a fixed linear congruential walk.
    fn short_planes() -> Vec<Vec<f32>> {
        let pool = [0.0, -0.0, 1.5, -2.25, 1e-8, -3e8, 7.0e3, f32::NAN, 0.1, -0.3, 1e8, 2.5e-3];
        let mut state = 7u64;
        let mut planes = Vec::new();
        for len in 0..8 {
            for _ in 0..40 {
                let plane = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        pool[(state >> 33) as usize % pool.len()]
                    })
                    .collect();
                planes.push(plane);
            }
        }
        planes
    }

    fn same_bits(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// The short planes' paths give the lanes' results bit for bit (the statistics and the
    /// gradient sums of a training step do not depend on which path a plane takes).
    #[test]
    fn short_planes_sum_as_the_lanes_do() {
        let mut terms = ([0.0f32; 64], [0.0f32; 64]);
        let masked = |x: f32, grad: f32| if x * 1.5 - 0.25 > 0.0 { grad } else { 0.0 };
        for plane in short_planes() {
            let (a, b) = (sum_f64(&plane), sum_f64_by_lanes(&plane));
            assert!(same_bits(a, b), "sum of {plane:?}: {a:e} against {b:e}");
            for mean in [0.0, -0.0, 0.3, -1e7] {
                let (a, b) = (
                    squared_deviation_f64(&plane, mean),
                    squared_deviation_f64_by_lanes(&plane, mean),
                );
                assert!(same_bits(a, b), "deviation of {plane:?} from {mean}: {a:e} against {b:e}");
                let grad: Vec<f32> = plane.iter().rev().map(|v| v * 0.5 - 1.0).collect();
                let a = plane_gradient_sums(&mut terms, &plane, &grad, mean as f32, masked);
                let b =
                    plane_gradient_sums_by_lanes(&mut terms, &plane, &grad, mean as f32, masked);
                for (a, b) in a.into_iter().zip(b) {
                    assert!(same_bits(a, b), "gradient sums of {plane:?}: {a:e} against {b:e}");
                }
            }
        }
    }

    /// The statistics' AVX sums give the lanes' bits on planes of 8 to 1100 values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_statistics_sum_as_the_lanes_do() {
        assert!(has_avx(), "an x86-64 CPU without AVX");
        let value = |i: usize| match i % 97 {
            3 => -0.0,
            _ => ((i * 7919) % 1013) as f32 * 0.37 - 180.0,
        };
        for len in (8..40).chain([63, 64, 65, 100, 511, 512, 513, 1100]) {
            let plane: Vec<f32> = (0..len).map(value).collect();
            // SAFETY: AVX is available (asserted above).
            let (a, b) = (unsafe { sum_f64_avx(&plane) }, sum_f64_by_lanes(&plane));
            assert!(same_bits(a, b), "sum of {len}: {a:e} against {b:e}");
            for mean in [0.0, -3.25, 1e3 + 0.1] {
                let a = unsafe { squared_deviation_f64_avx(&plane, mean) };
                let b = squared_deviation_f64_by_lanes(&plane, mean);
                assert!(same_bits(a, b), "deviation of {len} from {mean}: {a:e} against {b:e}");
            }
        }
    }

    /// The gradient sums' order, spelled out value by value: in each block of 512, value `i`
    /// goes to lane `i % 8` while whole groups of 8 last, the rest to lane 0, in order; each
    /// block's lanes are joined in f64, lane 0 first. `plane_gradient_sums` and its AVX twin
    /// follow it bit for bit on planes of 1 to 1100 values (several blocks, every tail
    /// length).
    #[test]
    fn gradient_sums_add_each_value_to_its_lane_in_order() {
        let masked = |x: f32, grad: f32| if relu_passes(x * 0.75 + 0.5) { grad } else { 0.0 };
        let value = |i: usize| ((i * 7919) % 1013) as f32 * 0.013 - 6.5;
        for len in (1..40).chain([63, 64, 65, 100, 511, 512, 513, 1100]) {
            // A signed zero now and then; one plane with a NaN, which the ReLU lets through.
            let x: Vec<f32> = (0..len)
                .map(|i| match i {
                    _ if len == 100 && i == 50 => f32::NAN,
                    _ if i % 89 == 5 => -0.0,
                    _ => value(i),
                })
                .collect();
            let grad: Vec<f32> = (0..len).map(|i| value(i + 11) * 3.0).collect();
            let mean = 0.37f32;
            let mut expected = [0.0f64; 2];
            for (x, grad) in x.chunks(512).zip(grad.chunks(512)) {
                let (mut lanes_g, mut lanes_gx) = ([0.0f32; 8], [0.0f32; 8]);
                let whole = x.len() / 8 * 8;
                for (i, (&x, &grad)) in x.iter().zip(grad).enumerate() {
                    let lane = if i < whole { i % 8 } else { 0 };
                    let g = masked(x, grad);
                    lanes_g[lane] += g;
                    lanes_gx[lane] += g * (x - mean);
                }
                expected[0] += lanes_g.iter().map(|v| *v as f64).sum::<f64>();
                expected[1] += lanes_gx.iter().map(|v| *v as f64).sum::<f64>();
            }
            let sums =
                plane_gradient_sums(&mut ([0.0f32; 64], [0.0f32; 64]), &x, &grad, mean, masked);
            for (a, b) in sums.into_iter().zip(expected) {
                assert!(same_bits(a, b), "{len} values: {a:e} against {b:e}");
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx() {
                // SAFETY: AVX is available; `grad` is as long as `x`.
                let sums = unsafe { plane_gradient_sums_avx(&x, &grad, mean, Some((0.75, 0.5))) };
                for (a, b) in sums.into_iter().zip(expected) {
                    assert!(same_bits(a, b), "AVX, {len} values: {a:e} against {b:e}");
                }
                // Without the ReLU every value passes: the unmasked sums.
                let sums = unsafe { plane_gradient_sums_avx(&x, &grad, mean, None) };
                let plain = plane_gradient_sums(
                    &mut ([0.0f32; 64], [0.0f32; 64]),
                    &x,
                    &grad,
                    mean,
                    |_, grad| grad,
                );
                for (a, b) in sums.into_iter().zip(plain) {
                    assert!(same_bits(a, b), "AVX without ReLU, {len} values: {a:e} against {b:e}");
                }
            }
        }
        assert!(!cfg!(target_arch = "x86_64") || has_avx(), "an x86-64 CPU without AVX");
    }

    #[test]
    fn gradient_sums_mask_a_relu_output_of_exactly_zero() {
        // torch's ReLU gradient is `y > 0`: an output of +0.0 or -0.0 passes nothing. With
        // scale 0.5 and shift -1, x = 2 gives y = +0 exactly and x = 4 gives y = 1; with shift
        // -0.0, x = -0.0 gives y = -0 and x = +0.0 gives y = +0. Grads 1..=16, mean 0: every
        // third value (x = 4) passes, Σg = 1+4+7+10+13+16 = 51 and Σg·x = 4·51 = 204.
        let x: Vec<f32> = (0..16).map(|i| if i % 3 == 0 { 4.0 } else { 2.0 }).collect();
        let zeros: Vec<f32> = (0..16).map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }).collect();
        let grad: Vec<f32> = (1..=16).map(|i| i as f32).collect();
        for (x, (scale, shift), expected) in
            [(&x, (0.5f32, -1.0f32), [51.0, 204.0]), (&zeros, (0.5, -0.0), [0.0, 0.0])]
        {
            let masked =
                |x: f32, grad: f32| if relu_passes(x * scale + shift) { grad } else { 0.0 };
            let sums =
                plane_gradient_sums(&mut ([0.0f32; 64], [0.0f32; 64]), x, &grad, 0.0, masked);
            assert_eq!(sums, expected, "shift {shift}");
            #[cfg(target_arch = "x86_64")]
            if has_avx() {
                // SAFETY: AVX is available; `grad` is as long as `x`.
                let sums = unsafe { plane_gradient_sums_avx(x, &grad, 0.0, Some((scale, shift))) };
                assert_eq!(sums, expected, "AVX, shift {shift}");
            }
        }
    }
}
