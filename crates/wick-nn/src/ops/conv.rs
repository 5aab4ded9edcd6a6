//! Differentiable 2-D convolution: [`conv2d`] and the three candle custom ops behind it
//! (forward, gradient of the input, gradient of the weight).
//!
//! Shapes: input `(B, C, H, W)`, weight `(O, C/groups, KH, KW)`, output `(B, O, OH, OW)` with
//! `OH = (H + 2·padding - dilation·(KH-1) - 1) / stride + 1` (likewise OW), as candle and
//! PyTorch compute it.
//!
//! On CPU with f32 every pass is a gemm (see `conv_cpu.rs`); bf16/f16 on CPU run the same f32
//! gemms and round the result once (what cuDNN does for those dtypes, so that CPU and GPU
//! mixed precision agree). With the `cudnn` feature, CUDA tensors run each pass through cuDNN
//! (`cuda/conv.rs`: forward, backward-data, backward-filter as the `cuda_fwd` of the three op
//! structs). Elsewhere [`conv2d`] calls candle's own `Tensor::conv2d`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::conv_cpu::{self, ConvGeometry};
use super::storage::f32_row_major;
use crate::gemm::gemm_backend;
use candle::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

static ALLOW_TF32: AtomicBool = AtomicBool::new(true);

/// Lets cuDNN run f32 convolutions on TF32 tensor cores (products of 10-bit mantissas summed
/// in f32), as PyTorch's `torch.backends.cudnn.allow_tf32` does by default. Process-wide,
/// read at every call; only the cuDNN path (feature `cudnn`) reads it. The GPU check turns it
/// off to compare f32 results with the CPU's.
pub fn set_cudnn_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

/// See [`set_cudnn_allow_tf32`] (default `true`).
pub fn cudnn_allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

/// Padding, stride, dilation and groups of a square 2-D convolution (the fields of
/// `candle_nn::Conv2dConfig` without the cuDNN algorithm choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Zero padding added on every side of the input.
    pub padding: usize,
    /// Step of the kernel over the input, in pixels.
    pub stride: usize,
    /// Spacing between kernel taps (1: a dense kernel).
    pub dilation: usize,
    /// Input and output channels are split into this many independent groups.
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self { padding: 0, stride: 1, dilation: 1, groups: 1 }
    }
}

impl From<candle_nn::Conv2dConfig> for Conv2dConfig {
    fn from(config: candle_nn::Conv2dConfig) -> Self {
        Self {
            padding: config.padding,
            stride: config.stride,
            dilation: config.dilation,
            groups: config.groups,
        }
    }
}

/// 2-D convolution of `xs (B, C, H, W)` with `weight (O, C/groups, KH, KW)`, differentiable
/// in both arguments. No bias (add it with `broadcast_add`, as [`crate::Conv2d`] does).
pub fn conv2d(xs: &Tensor, weight: &Tensor, config: Conv2dConfig) -> candle::Result<Tensor> {
    conv_geometry(xs.dims(), weight.dims(), config)?;
    if !xs.device().same_device(weight.device()) {
        candle::bail!(
            "conv2d: input is on {:?} but weight is on {:?}",
            xs.device().location(),
            weight.device().location()
        );
    }
    let same_dtype = xs.dtype() == weight.dtype();
    if xs.device().is_cpu() && same_dtype {
        match xs.dtype() {
            DType::F32 => return xs.apply_op2(weight, Conv2dOp { config }),
            DType::BF16 | DType::F16 => {
                let f32_weight = weight.to_dtype(DType::F32)?;
                let ys = xs.to_dtype(DType::F32)?.apply_op2(&f32_weight, Conv2dOp { config })?;
                return ys.to_dtype(xs.dtype());
            }
            _ => {}
        }
    }
    if cfg!(feature = "cudnn") && super::on_cuda(xs) && same_dtype {
        return xs.contiguous()?.apply_op2(&weight.contiguous()?, Conv2dOp { config });
    }
    xs.conv2d(weight, config.padding, config.stride, config.dilation, config.groups)
}

/// Validates the shapes of a convolution and derives its output size.
pub(crate) fn conv_geometry(
    input_dims: &[usize],
    weight_dims: &[usize],
    config: Conv2dConfig,
) -> candle::Result<ConvGeometry> {
    let &[batch, in_channels, in_height, in_width] = input_dims else {
        candle::bail!("conv2d: input must be (B, C, H, W), got shape {input_dims:?}");
    };
    let &[out_channels, group_in_channels, kernel_height, kernel_width] = weight_dims else {
        candle::bail!("conv2d: weight must be (O, C/groups, KH, KW), got shape {weight_dims:?}");
    };
    let Conv2dConfig { padding, stride, dilation, groups } = config;
    if stride == 0 || dilation == 0 || groups == 0 {
        candle::bail!(
            "conv2d: stride ({stride}), dilation ({dilation}) and groups ({groups}) must be positive"
        );
    }
    if group_in_channels * groups != in_channels || !out_channels.is_multiple_of(groups) {
        candle::bail!(
            "conv2d: input {input_dims:?} and weight {weight_dims:?} do not fit groups = {groups} \
             (need C = weight.dim(1)·groups and O divisible by groups)"
        );
    }
    if kernel_height == 0 || kernel_width == 0 {
        candle::bail!("conv2d: empty kernel in weight {weight_dims:?}");
    }
    let span_h = dilation * (kernel_height - 1) + 1;
    let span_w = dilation * (kernel_width - 1) + 1;
    if in_height + 2 * padding < span_h || in_width + 2 * padding < span_w {
        candle::bail!(
            "conv2d: the dilated kernel ({span_h}x{span_w}) is larger than the padded input \
             {input_dims:?} with padding {padding}"
        );
    }
    Ok(ConvGeometry {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel_height,
        kernel_width,
        out_height: (in_height + 2 * padding - span_h) / stride + 1,
        out_width: (in_width + 2 * padding - span_w) / stride + 1,
        padding,
        stride,
        dilation,
        groups,
    })
}

/// `(B, O, OH, OW)`: the shape of the convolution's output.
fn output_shape(geometry: &ConvGeometry) -> Shape {
    Shape::from((geometry.batch, geometry.out_channels, geometry.out_height, geometry.out_width))
}

/// The forward convolution as a candle op on `(xs, weight)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2dOp {
    pub(crate) config: Conv2dConfig,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "wick-conv2d"
    }

    fn cpu_fwd(
        &self,
        input_storage: &CpuStorage,
        input_layout: &Layout,
        weight_storage: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let geometry = conv_geometry(input_layout.dims(), weight_layout.dims(), self.config)?;
        let _timer = crate::profile::Timer::start_for(self.name(), || geometry.case_name());
        let input = f32_row_major(input_storage, input_layout, "conv2d")?;
        let weight = f32_row_major(weight_storage, weight_layout, "conv2d")?;
        let output = conv_cpu::conv2d_forward(&geometry, &input, &weight, gemm_backend())?;
        // A forward pass's buffers go back to the allocator when its convolution is done: in
        // inference nothing else would reuse them before they add to the peak (the backward
        // pass keeps its buffers from call to call; docs/decisions/0006-scratch-buffers.md).
        crate::scratch::release_idle();
        Ok((CpuStorage::F32(output), output_shape(&geometry)))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        input_storage: &candle::CudaStorage,
        input_layout: &Layout,
        weight_storage: &candle::CudaStorage,
        weight_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let geometry = conv_geometry(input_layout.dims(), weight_layout.dims(), self.config)?;
        let output = super::cuda::conv::forward(
            input_storage,
            input_layout,
            weight_storage,
            weight_layout,
            &geometry,
        )?;
        Ok((output, output_shape(&geometry)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, input_height, input_width) = xs.dims4()?;
        let (_, _, kernel_height, kernel_width) = weight.dims4()?;
        // An argument that tracks no op (e.g. the input images of the first layer) never
        // needs its gradient: skip that pass.
        let grad_output = &super::for_kernel(grad_output)?;
        let grad_input = if xs.track_op() {
            let op = Conv2dBackwardInputOp { config: self.config, input_height, input_width };
            Some(grad_output.apply_op2_no_bwd(weight, &op)?)
        } else {
            None
        };
        let grad_weight = if weight.track_op() {
            let op = Conv2dBackwardWeightOp { config: self.config, kernel_height, kernel_width };
            Some(xs.apply_op2_no_bwd(grad_output, &op)?)
        } else {
            None
        };
        Ok((grad_input, grad_weight))
    }
}

/// Gradient of the convolution input: an op on `(grad_output (B, O, OH, OW), weight)`
/// returning `(B, C, H, W)`. H and W are stored because several input sizes give the same
/// output size when stride > 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2dBackwardInputOp {
    pub(crate) config: Conv2dConfig,
    pub(crate) input_height: usize,
    pub(crate) input_width: usize,
}

impl CustomOp2 for Conv2dBackwardInputOp {
    fn name(&self) -> &'static str {
        "wick-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
        weight_storage: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (geometry, input_dims) = self.geometry(grad_layout, weight_layout)?;
        let _timer = crate::profile::Timer::start_for(self.name(), || geometry.case_name());
        let grad = f32_row_major(grad_storage, grad_layout, "conv2d backward (input)")?;
        let weight = f32_row_major(weight_storage, weight_layout, "conv2d backward (input)")?;
        let grad_input =
            conv_cpu::conv2d_backward_input(&geometry, &grad, &weight, gemm_backend())?;
        Ok((CpuStorage::F32(grad_input), Shape::from(input_dims.to_vec())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        grad_storage: &candle::CudaStorage,
        grad_layout: &Layout,
        weight_storage: &candle::CudaStorage,
        weight_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let (geometry, input_dims) = self.geometry(grad_layout, weight_layout)?;
        let grad_input = super::cuda::conv::backward_input(
            grad_storage,
            grad_layout,
            weight_storage,
            weight_layout,
            &geometry,
        )?;
        Ok((grad_input, Shape::from(input_dims.to_vec())))
    }
}

impl Conv2dBackwardInputOp {
    /// The convolution whose output gradient is `grad_layout`, and its input's dims.
    fn geometry(
        &self,
        grad_layout: &Layout,
        weight_layout: &Layout,
    ) -> candle::Result<(ConvGeometry, [usize; 4])> {
        let &[batch, out_channels, grad_height, grad_width] = grad_layout.dims() else {
            candle::bail!(
                "conv2d backward (input): grad must be (B, O, OH, OW), got {:?}",
                grad_layout.dims()
            );
        };
        let weight_dims = weight_layout.dims();
        let in_channels = weight_dims.get(1).copied().unwrap_or(0) * self.config.groups;
        let input_dims = [batch, in_channels, self.input_height, self.input_width];
        let geometry = conv_geometry(&input_dims, weight_dims, self.config)?;
        if geometry.out_channels != out_channels
            || geometry.out_height != grad_height
            || geometry.out_width != grad_width
        {
            candle::bail!(
                "conv2d backward (input): grad {:?} does not match the output of input {input_dims:?} \
                 and weight {weight_dims:?}",
                grad_layout.dims()
            );
        }
        Ok((geometry, input_dims))
    }
}

/// Gradient of the convolution weight: an op on `(xs (B, C, H, W), grad_output (B, O, OH, OW))`
/// returning `(O, C/groups, KH, KW)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv2dBackwardWeightOp {
    pub(crate) config: Conv2dConfig,
    pub(crate) kernel_height: usize,
    pub(crate) kernel_width: usize,
}

impl CustomOp2 for Conv2dBackwardWeightOp {
    fn name(&self) -> &'static str {
        "wick-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        input_storage: &CpuStorage,
        input_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let (geometry, weight_dims) = self.geometry(input_layout, grad_layout)?;
        let _timer = crate::profile::Timer::start_for(self.name(), || geometry.case_name());
        let input = f32_row_major(input_storage, input_layout, "conv2d backward (weight)")?;
        let grad = f32_row_major(grad_storage, grad_layout, "conv2d backward (weight)")?;
        let grad_weight =
            conv_cpu::conv2d_backward_weight(&geometry, &input, &grad, gemm_backend())?;
        Ok((CpuStorage::F32(grad_weight), Shape::from(weight_dims.to_vec())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        input_storage: &candle::CudaStorage,
        input_layout: &Layout,
        grad_storage: &candle::CudaStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let (geometry, weight_dims) = self.geometry(input_layout, grad_layout)?;
        let grad_weight = super::cuda::conv::backward_weight(
            input_storage,
            input_layout,
            grad_storage,
            grad_layout,
            &geometry,
        )?;
        Ok((grad_weight, Shape::from(weight_dims.to_vec())))
    }
}

impl Conv2dBackwardWeightOp {
    /// The convolution of input `input_layout` whose output gradient is `grad_layout`, and the
    /// weight's dims.
    fn geometry(
        &self,
        input_layout: &Layout,
        grad_layout: &Layout,
    ) -> candle::Result<(ConvGeometry, [usize; 4])> {
        let input_dims = input_layout.dims();
        let &[_, out_channels, grad_height, grad_width] = grad_layout.dims() else {
            candle::bail!(
                "conv2d backward (weight): grad must be (B, O, OH, OW), got {:?}",
                grad_layout.dims()
            );
        };
        let group_in_channels = input_dims.get(1).copied().unwrap_or(0) / self.config.groups.max(1);
        let weight_dims = [out_channels, group_in_channels, self.kernel_height, self.kernel_width];
        let geometry = conv_geometry(input_dims, &weight_dims, self.config)?;
        if geometry.batch != grad_layout.dims()[0]
            || geometry.out_height != grad_height
            || geometry.out_width != grad_width
        {
            candle::bail!(
                "conv2d backward (weight): grad {:?} does not match the output of input {input_dims:?} \
                 and weight {weight_dims:?}",
                grad_layout.dims()
            );
        }
        Ok((geometry, weight_dims))
    }
}
