//! The fused train-mode BatchNorm(+ReLU) on CUDA: the same arithmetic as `../batch_norm.rs`
//! (two passes forward, two backward), with the per-channel statistics kept on the device so
//! that no layer waits for a device-to-host copy.
//!
//! - [`StatisticsOp`] on `x (B, C, H, W)` → `stats (3, C)` f32: mean, biased variance and
//!   `1/sqrt(var + eps)`, summed in double per (channel, segment) block, then per channel.
//! - [`ApplyOp`] on `(x, weight, bias)` holding `stats` → `y = x·scale + shift` (+ ReLU), with
//!   its backward: [`GradientSumsOp`] (`Σg`, `Σg·x̂` per channel) then [`GradientInputOp`].
//!
//! `x` and the output are f32, bf16 or f16; weight, bias, statistics and the weight and bias
//! gradients are always f32 (mixed precision keeps BatchNorm's parameters and statistics in
//! f32). These ops exist only on CUDA: their `cpu_fwd` is an error, and [`batch_norm_train`]
//! is only called for CUDA tensors.

use super::{dispatch, kernel, launch, output, plain_kernel, view, wrap};
use crate::ops::batch_norm::{BatchNormActivation, BatchNormOpConfig, BatchStatistics, Planes};
use candle::backend::BackendStorage;
use candle::cuda_backend::cudarc::driver::LaunchConfig;
use candle::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};

/// Threads per block of the reduction kernels (BN_THREADS in kernels.cu).
const REDUCE_THREADS: u32 = 256;

/// Train-mode batch norm of a CUDA tensor; see `ops::batch_norm_train`.
pub(crate) fn batch_norm_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    config: BatchNormOpConfig,
    count: usize,
) -> candle::Result<(Tensor, BatchStatistics)> {
    let xs = xs.contiguous()?;
    // f32 parameters whatever the activation dtype (a no-op, and no graph node, when they are).
    let weight = weight.to_dtype(DType::F32)?.contiguous()?;
    let bias = bias.to_dtype(DType::F32)?.contiguous()?;
    let stats = xs.apply_op1_no_bwd(&StatisticsOp { eps: config.eps })?;
    let output =
        xs.apply_op3(&weight, &bias, ApplyOp { relu: relu(config), stats: stats.clone() })?;
    let statistics = BatchStatistics { mean: stats.get(0)?, variance: stats.get(1)?, count };
    Ok((output, statistics))
}

fn relu(config: BatchNormOpConfig) -> bool {
    config.activation == BatchNormActivation::Relu
}

/// The launch geometry of the kernels over a `(B, C, H, W)` input.
impl Planes {
    fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Segments per channel for the reduction grid: enough blocks to fill the GPU, at least
    /// 8192 elements each.
    fn splits(&self) -> usize {
        const TARGET_BLOCKS: usize = 1024;
        TARGET_BLOCKS.div_ceil(self.channels.max(1)).min(self.count().div_ceil(8192)).max(1)
    }

    fn reduce_grid(&self) -> candle::Result<LaunchConfig> {
        let channels = u32::try_from(self.channels)
            .ok()
            .filter(|c| *c <= 65_535)
            .ok_or_else(|| candle::Error::Msg(format!("batch norm: {} channels", self.channels)))?;
        Ok(LaunchConfig {
            grid_dim: (self.splits() as u32, channels, 1),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn per_channel_grid(&self) -> LaunchConfig {
        let blocks = self.channels.div_ceil(REDUCE_THREADS as usize).max(1) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The kernels' `(batch, channels, plane, splits)` arguments.
    fn args(&self, op: &str) -> candle::Result<(i32, i32, u64, i32)> {
        let int = |value: usize| {
            i32::try_from(value)
                .map_err(|_| candle::Error::Msg(format!("{op}: size {value} exceeds i32")))
        };
        Ok((int(self.batch)?, int(self.channels)?, self.plane as u64, int(self.splits())?))
    }
}

fn cuda_only(op: &str) -> candle::Error {
    candle::Error::Msg(format!(
        "{op} is the CUDA implementation of batch_norm_train; CPU tensors use the CPU op"
    ))
}

/// An f32 CUDA tensor's elements (held by an op, read inside another op's `cuda_fwd`).
fn held_view<'a>(
    storage: &'a Storage,
    layout: &Layout,
    op: &str,
) -> candle::Result<candle::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    match storage {
        Storage::Cuda(cuda) => view::<f32>(cuda, layout, op),
        _ => candle::bail!("{op}: the batch statistics must be on the CUDA device"),
    }
}

/// Per-channel mean, biased variance and inverse standard deviation: `(B, C, H, W)` →
/// `(3, C)` f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatisticsOp {
    eps: f64,
}

impl CustomOp1 for StatisticsOp {
    fn name(&self) -> &'static str {
        "wick-cuda-batch-norm-statistics"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> candle::Result<(CudaStorage, Shape)> {
        let op = "batch_norm_train";
        let planes = Planes::of(layout, op)?;
        let device = x.device();
        let partial = output::<f64>(device, 2 * planes.channels * planes.splits())?;
        let stats = output::<f32>(device, 3 * planes.channels)?;
        dispatch!(x.dtype(), op, |T| {
            let input = view::<T>(x, layout, op)?;
            let (batch, channels, plane, splits) = planes.args(op)?;
            let function = kernel::<T>(device, "wick_bn_partial_stats")?;
            launch!(
                device,
                function,
                planes.reduce_grid()?,
                &batch,
                &channels,
                &plane,
                &splits,
                &input,
                &partial
            )?;
        });
        let (channels, splits) = (planes.channels as i32, planes.splits() as i32);
        let (count, eps) = (planes.count() as f64, self.eps);
        let function = plain_kernel(device, "wick_bn_finalize_stats")?;
        launch!(
            device,
            function,
            planes.per_channel_grid(),
            &channels,
            &splits,
            &count,
            &eps,
            &partial,
            &stats
        )?;
        Ok((wrap(stats, device), Shape::from((3, planes.channels))))
    }
}

/// `y = x·scale + shift` (+ ReLU) on `(x, weight, bias)`, with the statistics held.
#[derive(Debug, Clone)]
pub(crate) struct ApplyOp {
    relu: bool,
    stats: Tensor,
}

impl CustomOp3 for ApplyOp {
    fn name(&self) -> &'static str {
        "wick-cuda-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        weight: &CudaStorage,
        weight_layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let op = "batch_norm_train";
        let planes = Planes::of(x_layout, op)?;
        let device = x.device();
        let (stats_storage, stats_layout) = self.stats.storage_and_layout();
        let stats = held_view(&stats_storage, stats_layout, op)?;
        let weight = view::<f32>(weight, weight_layout, op)?;
        let bias = view::<f32>(bias, bias_layout, op)?;
        let n = planes.len();
        let (count, channels, plane) = (n as u64, planes.channels as i32, planes.plane as u64);
        let relu = i32::from(self.relu);
        dispatch!(x.dtype(), op, |T| {
            let input = view::<T>(x, x_layout, op)?;
            let out = output::<T>(device, n)?;
            if n > 0 {
                let function = kernel::<T>(device, "wick_bn_apply")?;
                launch!(
                    device,
                    function,
                    super::grid_for(n),
                    &count,
                    &channels,
                    &plane,
                    &relu,
                    &input,
                    &stats,
                    &weight,
                    &bias,
                    &out
                )?;
            }
            Ok((wrap(out, device), x_layout.shape().clone()))
        })
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_output.contiguous()?;
        // (5, C): mean, variance, 1/std, weight, bias.
        let params = Tensor::cat(
            &[&self.stats, &weight.detach().unsqueeze(0)?, &bias.detach().unsqueeze(0)?],
            0,
        )?;
        let sums = xs.apply_op3_no_bwd(&grad, &params, &GradientSumsOp { relu: self.relu })?;
        // (7, C): the above, then Σg and Σg·x̂.
        let all = Tensor::cat(&[&params, &sums], 0)?;
        let grad_input = xs.apply_op3_no_bwd(&grad, &all, &GradientInputOp { relu: self.relu })?;
        Ok((Some(grad_input), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

/// Per-channel `Σg` and `Σg·x̂` on `(x, grad, params (5, C))` → `(2, C)` f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradientSumsOp {
    relu: bool,
}

impl CustomOp3 for GradientSumsOp {
    fn name(&self) -> &'static str {
        "wick-cuda-batch-norm-gradient-sums"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        grad: &CudaStorage,
        grad_layout: &Layout,
        params: &CudaStorage,
        params_layout: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let op = "batch_norm_train backward";
        let planes = Planes::of(x_layout, op)?;
        if grad_layout.dims() != x_layout.dims() {
            candle::bail!(
                "{op}: gradient {:?} and input {:?} differ",
                grad_layout.dims(),
                x_layout.dims()
            );
        }
        let c = planes.channels;
        let device = x.device();
        let params = view::<f32>(params, params_layout, op)?;
        let (stats, weight, bias) =
            (params.slice(0..3 * c), params.slice(3 * c..4 * c), params.slice(4 * c..5 * c));
        let partial = output::<f64>(device, 2 * c * planes.splits())?;
        let sums = output::<f32>(device, 2 * c)?;
        let relu = i32::from(self.relu);
        dispatch!(x.dtype(), op, |T| {
            let input = view::<T>(x, x_layout, op)?;
            let dy = view::<T>(grad, grad_layout, op)?;
            let (batch, channels, plane, splits) = planes.args(op)?;
            let function = kernel::<T>(device, "wick_bn_partial_grad")?;
            launch!(
                device,
                function,
                planes.reduce_grid()?,
                &batch,
                &channels,
                &plane,
                &splits,
                &relu,
                &input,
                &dy,
                &stats,
                &weight,
                &bias,
                &partial
            )?;
        });
        let (channels, splits) = (c as i32, planes.splits() as i32);
        let function = plain_kernel(device, "wick_bn_finalize_grad")?;
        launch!(
            device,
            function,
            planes.per_channel_grid(),
            &channels,
            &splits,
            &partial,
            &stats,
            &sums
        )?;
        Ok((wrap(sums, device), Shape::from((2, c))))
    }
}

/// `dx` on `(x, grad, all (7, C))`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradientInputOp {
    relu: bool,
}

impl CustomOp3 for GradientInputOp {
    fn name(&self) -> &'static str {
        "wick-cuda-batch-norm-gradient-input"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        grad: &CudaStorage,
        grad_layout: &Layout,
        all: &CudaStorage,
        all_layout: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let op = "batch_norm_train backward";
        let planes = Planes::of(x_layout, op)?;
        let c = planes.channels;
        let device = x.device();
        let all = view::<f32>(all, all_layout, op)?;
        let (stats, weight, bias, sums) = (
            all.slice(0..3 * c),
            all.slice(3 * c..4 * c),
            all.slice(4 * c..5 * c),
            all.slice(5 * c..7 * c),
        );
        let n = planes.len();
        let (count, channels, plane) = (n as u64, c as i32, planes.plane as u64);
        let relu = i32::from(self.relu);
        let per_channel = planes.count() as f32;
        dispatch!(x.dtype(), op, |T| {
            let input = view::<T>(x, x_layout, op)?;
            let dy = view::<T>(grad, grad_layout, op)?;
            let out = output::<T>(device, n)?;
            if n > 0 {
                let function = kernel::<T>(device, "wick_bn_grad_input")?;
                launch!(
                    device,
                    function,
                    super::grid_for(n),
                    &count,
                    &channels,
                    &plane,
                    &relu,
                    &per_channel,
                    &input,
                    &dy,
                    &stats,
                    &weight,
                    &bias,
                    &sums,
                    &out
                )?;
            }
            Ok((wrap(out, device), x_layout.shape().clone()))
        })
    }
}
