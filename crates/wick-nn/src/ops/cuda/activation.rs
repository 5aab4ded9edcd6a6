//! CUDA bodies of the ReLU ops (`../activation.rs`): `max(x, 0)`, `max(a + b, 0)` and the
//! backward `grad · (output > 0)` (PyTorch's rule), one element per thread.

use super::{Element, dispatch, grid_for, kernel, launch, output, same_dtype, view, wrap};
use candle::backend::BackendStorage;
use candle::{CudaStorage, Layout, Shape};

/// `max(x, 0)`.
pub(crate) fn relu(x: &CudaStorage, layout: &Layout) -> candle::Result<(CudaStorage, Shape)> {
    dispatch!(x.dtype(), "relu", |T| unary::<T>("wick_relu_fwd", x, layout))
}

/// `max(a + b, 0)` for two tensors of one shape.
pub(crate) fn add_relu(
    a: &CudaStorage,
    a_layout: &Layout,
    b: &CudaStorage,
    b_layout: &Layout,
) -> candle::Result<(CudaStorage, Shape)> {
    check_shapes(a_layout, b_layout, "add_relu")?;
    dispatch!(same_dtype(a, b, "add_relu")?, "add_relu", |T| {
        binary::<T>("wick_add_relu_fwd", a, a_layout, b, b_layout)
    })
}

/// `grad · (output > 0)`.
pub(crate) fn relu_backward(
    output: &CudaStorage,
    output_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
) -> candle::Result<(CudaStorage, Shape)> {
    check_shapes(output_layout, grad_layout, "relu backward")?;
    dispatch!(same_dtype(output, grad, "relu backward")?, "relu backward", |T| {
        binary::<T>("wick_relu_bwd", output, output_layout, grad, grad_layout)
    })
}

fn check_shapes(a: &Layout, b: &Layout, op: &str) -> candle::Result<()> {
    if a.shape() != b.shape() {
        candle::bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

fn unary<T: Element>(
    name: &str,
    x: &CudaStorage,
    layout: &Layout,
) -> candle::Result<(CudaStorage, Shape)> {
    let device = x.device();
    let input = view::<T>(x, layout, name)?;
    let n = input.len();
    let out = output::<T>(device, n)?;
    if n > 0 {
        let function = kernel::<T>(device, name)?;
        let count = n as u64;
        launch!(device, function, grid_for(n), &count, &input, &out)?;
    }
    Ok((wrap(out, device), layout.shape().clone()))
}

fn binary<T: Element>(
    name: &str,
    a: &CudaStorage,
    a_layout: &Layout,
    b: &CudaStorage,
    b_layout: &Layout,
) -> candle::Result<(CudaStorage, Shape)> {
    let device = a.device();
    let (first, second) = (view::<T>(a, a_layout, name)?, view::<T>(b, b_layout, name)?);
    let n = first.len();
    let out = output::<T>(device, n)?;
    if n > 0 {
        let function = kernel::<T>(device, name)?;
        let count = n as u64;
        launch!(device, function, grid_for(n), &count, &first, &second, &out)?;
    }
    Ok((wrap(out, device), a_layout.shape().clone()))
}
