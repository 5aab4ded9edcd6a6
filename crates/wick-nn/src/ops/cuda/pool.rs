//! CUDA bodies of the pooling ops (`../pool.rs`): max and average pooling with PyTorch's
//! padding and ceil_mode, forward one thread per output, backward one thread per input
//! element that gathers from the windows covering it (deterministic, no atomics; the sums
//! run in the CPU kernels' order).

use super::{Element, dispatch, grid_for, kernel, output, same_dtype, view, wrap};
use candle::backend::BackendStorage;
use candle::cuda_backend::cudarc::driver::CudaView;
use candle::{CudaDevice, CudaStorage, Layout, Shape};

/// The validated geometry of one pooling call (computed by `pool.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolShape {
    pub(crate) batch: usize,
    pub(crate) channels: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) out_height: usize,
    pub(crate) out_width: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl PoolShape {
    fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_height * self.out_width
    }

    fn input_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.height, self.width))
    }

    fn output_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.out_height, self.out_width))
    }

    /// The kernels' leading int arguments, in their order.
    fn args(&self, op: &str) -> candle::Result<[i32; 8]> {
        let values = [
            self.batch * self.channels,
            self.height,
            self.width,
            self.out_height,
            self.out_width,
            self.kernel,
            self.stride,
            self.padding,
        ];
        let mut args = [0i32; 8];
        for (arg, value) in args.iter_mut().zip(values) {
            *arg = i32::try_from(value)
                .map_err(|_| candle::Error::Msg(format!("{op}: size {value} exceeds i32")))?;
        }
        Ok(args)
    }
}

/// Max pooling forward.
pub(crate) fn max_pool(
    x: &CudaStorage,
    layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<(CudaStorage, Shape)> {
    dispatch!(x.dtype(), "max_pool2d", |T| {
        forward::<T>("wick_max_pool_fwd", x, layout, shape).map(|s| (s, shape.output_shape()))
    })
}

/// Average pooling forward.
pub(crate) fn avg_pool(
    x: &CudaStorage,
    layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<(CudaStorage, Shape)> {
    dispatch!(x.dtype(), "avg_pool2d", |T| {
        forward::<T>("wick_avg_pool_fwd", x, layout, shape).map(|s| (s, shape.output_shape()))
    })
}

/// Max pooling backward from the input and the output gradient.
pub(crate) fn max_pool_backward(
    x: &CudaStorage,
    x_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<(CudaStorage, Shape)> {
    let op = "max_pool2d backward";
    dispatch!(same_dtype(x, grad, op)?, op, |T| {
        let input = view::<T>(x, x_layout, op)?;
        let dy = view::<T>(grad, grad_layout, op)?;
        let grad_input = run::<T>(
            x.device(),
            "wick_max_pool_bwd",
            op,
            shape,
            &[&input, &dy],
            shape.input_len(),
        )?;
        Ok((grad_input, shape.input_shape()))
    })
}

/// Average pooling backward from the output gradient.
pub(crate) fn avg_pool_backward(
    grad: &CudaStorage,
    grad_layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<(CudaStorage, Shape)> {
    let op = "avg_pool2d backward";
    dispatch!(grad.dtype(), op, |T| {
        let dy = view::<T>(grad, grad_layout, op)?;
        let grad_input =
            run::<T>(grad.device(), "wick_avg_pool_bwd", op, shape, &[&dy], shape.input_len())?;
        Ok((grad_input, shape.input_shape()))
    })
}

fn forward<T: Element>(
    name: &str,
    x: &CudaStorage,
    layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<CudaStorage> {
    let input = view::<T>(x, layout, name)?;
    run::<T>(x.device(), name, name, shape, &[&input], shape.output_len())
}

/// Runs pooling kernel `name` for `T` with the shape's int arguments, then `inputs`, then a
/// new output of `len` elements (the output for a forward kernel, the input gradient for a
/// backward one), one thread each. `op` names errors.
fn run<T: Element>(
    device: &CudaDevice,
    name: &str,
    op: &str,
    shape: &PoolShape,
    inputs: &[&CudaView<'_, T>],
    len: usize,
) -> candle::Result<CudaStorage> {
    use candle::cuda_backend::WrapErr as _;
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    let args = shape.args(op)?;
    let out = output::<T>(device, len)?;
    if len > 0 && shape.output_len() > 0 {
        let function = kernel::<T>(device, name)?;
        let stream = device.cuda_stream();
        let mut builder = stream.launch_builder(&function);
        for arg in &args {
            builder.arg(arg);
        }
        for input in inputs {
            builder.arg(*input);
        }
        builder.arg(&out);
        // SAFETY: the pooling kernels of kernels.cu all take the eight ints of
        // `PoolShape::args` (i32 ↔ int), then their input pointers of the element type in the
        // order the callers pass them, then the output pointer; the grid covers the `len`
        // elements the kernel writes, and `out` holds `len` of them.
        unsafe { builder.launch(grid_for(len)) }.map(|_| ()).w()?;
    }
    Ok(wrap(out, device))
}
