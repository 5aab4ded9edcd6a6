//! ReLU with PyTorch's gradient, alone and fused with the residual addition that precedes it
//! in every ResNet block: `relu(a + b)`.
//!
//! candle's `relu` passes the gradient where `x >= 0`; PyTorch (and so fastai) where `x > 0`.
//! The two differ exactly at 0, which xresnet hits on purpose: the last BatchNorm of each
//! residual branch starts with γ = 0, so at the first steps every identity block adds zeros and
//! candle's rule would send gradient through units PyTorch blocks. Fusing the addition also
//! saves a pass over a large activation and its gradient.
//!
//! NaN propagates as in PyTorch (`torch.relu(nan) = nan`, and `threshold_backward` passes the
//! gradient wherever the output is not `<= 0`): `f32::max(nan, 0)` would return 0 and hide a
//! diverged model from every finiteness check downstream.
//!
//! CPU kernels here; with the `cuda` feature the same ops run on CUDA (`cuda/activation.rs`).

use candle::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::storage::{f32_row_major, par_output, write_values};

/// `max(x, 0)` with gradient `1` where `x > 0` and `0` elsewhere (PyTorch's rule).
pub fn relu(xs: &Tensor) -> candle::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.apply_op1(Relu);
    }
    if super::on_cuda(xs) {
        return xs.contiguous()?.apply_op1(Relu);
    }
    // Elsewhere: the same function and gradient from stock ops (the mask is a constant).
    xs.mul(&xs.gt(0.0)?.to_dtype(xs.dtype())?)
}

/// `relu(a + b)` for two tensors of one shape, with PyTorch's gradient for both.
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle::Result<Tensor> {
    if a.shape() != b.shape() {
        candle::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return a.apply_op2(b, AddRelu);
    }
    if super::on_cuda(a) && a.dtype() == b.dtype() {
        return a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu);
    }
    relu(&(a + b)?)
}

/// Chunk length for parallel element-wise loops (large enough to amortise rayon).
const CHUNK: usize = 1 << 14;

/// `max(v, 0)` that keeps NaN, as `torch.relu` does (`f32::max(NaN, 0)` is 0).
#[inline(always)]
pub(crate) fn relu_value(v: f32) -> f32 {
    if v <= 0.0 { 0.0 } else { v }
}

/// Whether the ReLU lets the gradient through, from its output (or pre-activation):
/// PyTorch's `threshold_backward` zeroes it where `output <= 0`, so NaN passes.
#[inline(always)]
pub(crate) fn relu_passes(output: f32) -> bool {
    output > 0.0 || output.is_nan()
}

/// `relu(a + b)` element-wise (`relu(a)` without `b`), in parallel chunks. Iterators rather
/// than indices, so that the loops vectorise (indexing three slices kept bounds checks in the
/// loop and made the ReLU backward 3x slower than this).
fn relu_forward(a: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    // SAFETY: every chunk is written through `write_values`, which counts what it writes.
    unsafe {
        par_output(a.len(), CHUNK, |index, out| {
            let a = &a[index * CHUNK..index * CHUNK + out.len()];
            match b {
                None => write_values(out, a.iter().map(|&a| relu_value(a))),
                Some(b) => {
                    let b = &b[index * CHUNK..index * CHUNK + out.len()];
                    write_values(out, a.iter().zip(b).map(|(&a, &b)| relu_value(a + b)))
                }
            }
        })
    }
}

/// The ReLU forward as a candle op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "wick-relu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let xs = f32_row_major(storage, layout, "relu")?;
        Ok((CpuStorage::F32(relu_forward(&xs, None)), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle::CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        super::cuda::activation::relu(storage, layout)
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<Option<Tensor>> {
        // The output is positive exactly where the input is.
        let grad_output = super::for_kernel(grad_output)?;
        Ok(Some(output.apply_op2_no_bwd(&grad_output, &ReluBackward)?))
    }
}

/// `relu(a + b)` as a candle op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "wick-add-relu"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let a_values = f32_row_major(a, a_layout, "add_relu")?;
        let b_values = f32_row_major(b, b_layout, "add_relu")?;
        let output = relu_forward(&a_values, Some(&b_values));
        Ok((CpuStorage::F32(output), a_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle::CudaStorage,
        a_layout: &Layout,
        b: &candle::CudaStorage,
        b_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        super::cuda::activation::add_relu(a, a_layout, b, b_layout)
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_output = super::for_kernel(grad_output)?;
        let grad = output.apply_op2_no_bwd(&grad_output, &ReluBackward)?;
        Ok((Some(grad.clone()), Some(grad)))
    }
}

/// `grad · !(output <= 0)`: the backward of both ops, from the forward output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "wick-relu-backward"
    }

    fn cpu_fwd(
        &self,
        output: &CpuStorage,
        output_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        if output_layout.shape() != grad_layout.shape() {
            candle::bail!(
                "relu backward: output {:?} and gradient {:?} differ",
                output_layout.dims(),
                grad_layout.dims()
            );
        }
        let output_values = f32_row_major(output, output_layout, "relu backward")?;
        let grad_values = f32_row_major(grad, grad_layout, "relu backward")?;
        // SAFETY: every chunk is written through `write_values`, which counts what it writes.
        let result = unsafe {
            par_output(grad_values.len(), CHUNK, |index, chunk| {
                let range = index * CHUNK..index * CHUNK + chunk.len();
                let (output, grad) = (&output_values[range.clone()], &grad_values[range]);
                write_values(
                    chunk,
                    output
                        .iter()
                        .zip(grad)
                        .map(|(&output, &grad)| if relu_passes(output) { grad } else { 0.0 }),
                )
            })
        };
        Ok((CpuStorage::F32(result), grad_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        output: &candle::CudaStorage,
        output_layout: &Layout,
        grad: &candle::CudaStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        super::cuda::activation::relu_backward(output, output_layout, grad, grad_layout)
    }
}
