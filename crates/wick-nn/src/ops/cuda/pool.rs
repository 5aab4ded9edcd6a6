//! CUDA bodies of the pooling ops (`../pool.rs`): max and average pooling with PyTorch's
//! padding and ceil_mode, forward one thread per output, backward one thread per input
//! element that gathers from the windows covering it (deterministic, no atomics; the sums
//! run in the CPU kernels' order).

use super::{Element, dispatch, grid_for, kernel, launch, output, same_dtype, view, wrap};
use candle::backend::BackendStorage;
use candle::{CudaStorage, Layout, Shape};

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
        let device = x.device();
        let input = view::<T>(x, x_layout, op)?;
        let dy = view::<T>(grad, grad_layout, op)?;
        let [planes, height, width, out_h, out_w, k, stride, pad] = shape.args(op)?;
        let n = shape.input_len();
        let out = output::<T>(device, n)?;
        if n > 0 && shape.output_len() > 0 {
            let function = kernel::<T>(device, "wick_max_pool_bwd")?;
            launch!(
                device,
                function,
                grid_for(n),
                &planes,
                &height,
                &width,
                &out_h,
                &out_w,
                &k,
                &stride,
                &pad,
                &input,
                &dy,
                &out
            )?;
        }
        Ok((wrap(out, device), shape.input_shape()))
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
        let device = grad.device();
        let dy = view::<T>(grad, grad_layout, op)?;
        let [planes, height, width, out_h, out_w, k, stride, pad] = shape.args(op)?;
        let n = shape.input_len();
        let out = output::<T>(device, n)?;
        if n > 0 && shape.output_len() > 0 {
            let function = kernel::<T>(device, "wick_avg_pool_bwd")?;
            launch!(
                device,
                function,
                grid_for(n),
                &planes,
                &height,
                &width,
                &out_h,
                &out_w,
                &k,
                &stride,
                &pad,
                &dy,
                &out
            )?;
        }
        Ok((wrap(out, device), shape.input_shape()))
    })
}

fn forward<T: Element>(
    name: &str,
    x: &CudaStorage,
    layout: &Layout,
    shape: &PoolShape,
) -> candle::Result<CudaStorage> {
    let device = x.device();
    let input = view::<T>(x, layout, name)?;
    let [planes, height, width, out_h, out_w, k, stride, pad] = shape.args(name)?;
    let n = shape.output_len();
    let out = output::<T>(device, n)?;
    if n > 0 {
        let function = kernel::<T>(device, name)?;
        launch!(
            device,
            function,
            grid_for(n),
            &planes,
            &height,
            &width,
            &out_h,
            &out_w,
            &k,
            &stride,
            &pad,
            &input,
            &out
        )?;
    }
    Ok(wrap(out, device))
}
