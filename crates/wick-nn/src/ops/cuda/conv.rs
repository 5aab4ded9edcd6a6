//! The 2-D convolution and both of its gradients through cuDNN (feature `cudnn`): the
//! `cuda_fwd` bodies of `Conv2dOp` (cudnnConvolutionForward), `Conv2dBackwardInputOp`
//! (cudnnConvolutionBackwardData) and `Conv2dBackwardWeightOp`
//! (cudnnConvolutionBackwardFilter). candle's own CUDA backward runs a naive
//! `conv_transpose2d` kernel even with its `cudnn` feature; this is why these exist.
//!
//! Tensors are NCHW and contiguous; f32, bf16 and f16 data all compute in f32 (cuDNN's
//! PSEUDO_BFLOAT16 / PSEUDO_HALF configurations). f32 convolutions may use TF32 tensor cores
//! when [`crate::ops::set_cudnn_allow_tf32`] allows it (the default, as PyTorch's
//! `torch.backends.cudnn.allow_tf32`). Algorithms come from cuDNN's heuristics
//! (`cudnnGet*Algorithm_v7`), cached per shape and thread; cuDNN handles are per thread and
//! device, as in candle, because they are neither `Send` nor `Sync`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::{Element, dispatch, output, same_dtype, view, wrap};
use crate::ops::conv_cpu::ConvGeometry;
use candle::backend::BackendStorage;
use candle::cuda_backend::DeviceId;
use candle::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle::cuda_backend::cudarc::cudnn::{CudnnDataType, sys};
use candle::cuda_backend::cudarc::driver::CudaSlice;
use candle::{CudaDevice, CudaStorage, DType, Layout, WithDType};

/// Which of the three cuDNN calls an algorithm is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// The algorithm cache key: the pass, the dtype, the TF32 setting and the geometry.
type AlgoKey = (Pass, DType, bool, [usize; 13]);

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static ALGOS: RefCell<HashMap<AlgoKey, u32>> = RefCell::new(HashMap::new());
}

fn handle(device: &CudaDevice) -> candle::Result<Arc<Cudnn>> {
    HANDLES.with(|handles| {
        if let Some(handle) = handles.borrow().get(&device.id()) {
            return Ok(handle.clone());
        }
        let handle = Cudnn::new(device.cuda_stream())?;
        handles.borrow_mut().insert(device.id(), handle.clone());
        Ok(handle)
    })
}

fn geometry_key(g: &ConvGeometry) -> [usize; 13] {
    [
        g.batch,
        g.in_channels,
        g.in_height,
        g.in_width,
        g.out_channels,
        g.kernel_height,
        g.kernel_width,
        g.out_height,
        g.out_width,
        g.padding,
        g.stride,
        g.dilation,
        g.groups,
    ]
}

/// The cached algorithm for `key`, or `pick()`'s choice, remembered.
fn algorithm(key: AlgoKey, pick: impl FnOnce() -> candle::Result<u32>) -> candle::Result<u32> {
    if let Some(algo) = ALGOS.with(|algos| algos.borrow().get(&key).copied()) {
        return Ok(algo);
    }
    let algo = pick()?;
    ALGOS.with(|algos| algos.borrow_mut().insert(key, algo));
    Ok(algo)
}

/// The four descriptors of one convolution.
struct Descriptors<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

fn int(value: usize) -> candle::Result<i32> {
    i32::try_from(value)
        .map_err(|_| candle::Error::Msg(format!("conv2d (cuDNN): size {value} exceeds i32")))
}

impl<T: Element + CudnnDataType> Descriptors<T> {
    fn new(cudnn: &Arc<Cudnn>, g: &ConvGeometry, tf32: bool) -> candle::Result<Self> {
        let (pad, stride, dilation) = (int(g.padding)?, int(g.stride)?, int(g.dilation)?);
        let mut conv = cudnn.create_conv2d::<f32>(
            [pad, pad],
            [stride, stride],
            [dilation, dilation],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_group_count(int(g.groups)?)?;
        let math = match (T::DTYPE, tf32) {
            (DType::F32, false) => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            (DType::F32, true) => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        conv.set_math_type(math)?;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let x = cudnn.create_4d_tensor::<T>(
            nchw,
            [int(g.batch)?, int(g.in_channels)?, int(g.in_height)?, int(g.in_width)?],
        )?;
        let w = cudnn.create_4d_filter::<T>(
            nchw,
            [
                int(g.out_channels)?,
                int(g.group_in_channels())?,
                int(g.kernel_height)?,
                int(g.kernel_width)?,
            ],
        )?;
        let y = cudnn.create_4d_tensor::<T>(
            nchw,
            [int(g.batch)?, int(g.out_channels)?, int(g.out_height)?, int(g.out_width)?],
        )?;
        Ok(Self { conv, x, w, y })
    }
}

/// A workspace of `bytes` on the device (none for 0).
fn workspace(device: &CudaDevice, bytes: usize) -> candle::Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: cuDNN uses the workspace as scratch memory and never reads what it did not write.
    Ok(Some(unsafe { device.alloc::<u8>(bytes) }?))
}

fn fwd_algo(algo: u32) -> candle::Result<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == algo)
    .ok_or_else(|| candle::Error::Msg(format!("cuDNN forward algorithm {algo} is unknown")))
}

fn bwd_data_algo(algo: u32) -> candle::Result<sys::cudnnConvolutionBwdDataAlgo_t> {
    use sys::cudnnConvolutionBwdDataAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == algo)
    .ok_or_else(|| candle::Error::Msg(format!("cuDNN backward-data algorithm {algo} is unknown")))
}

fn bwd_filter_algo(algo: u32) -> candle::Result<sys::cudnnConvolutionBwdFilterAlgo_t> {
    use sys::cudnnConvolutionBwdFilterAlgo_t as A;
    [
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
    .into_iter()
    .find(|a| *a as u32 == algo)
    .ok_or_else(|| candle::Error::Msg(format!("cuDNN backward-filter algorithm {algo} is unknown")))
}

/// `y = conv(x, w)`: `x (B, C, H, W)`, `w (O, C/groups, KH, KW)` → `(B, O, OH, OW)`.
pub(crate) fn forward(
    x: &CudaStorage,
    x_layout: &Layout,
    w: &CudaStorage,
    w_layout: &Layout,
    g: &ConvGeometry,
) -> candle::Result<CudaStorage> {
    let op = "conv2d (cuDNN)";
    dispatch!(same_dtype(x, w, op)?, op, |T| {
        let device = x.device();
        let cudnn = handle(device)?;
        let tf32 = crate::ops::cudnn_allow_tf32();
        let d = Descriptors::<T>::new(&cudnn, g, tf32)?;
        let call = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
        let key = (Pass::Forward, T::DTYPE, tf32, geometry_key(g));
        let algo = fwd_algo(algorithm(key, || Ok(call.pick_algorithm()? as u32))?)?;
        let mut scratch = workspace(device, call.get_workspace_size(algo)?)?;
        let (input, filter) = (view::<T>(x, x_layout, op)?, view::<T>(w, w_layout, op)?);
        let mut out = output::<T>(device, g.output_len())?;
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        // SAFETY: the descriptors describe exactly these buffers: contiguous NCHW tensors of
        // element type T with the geometry's shapes (checked by `view` and conv_geometry).
        unsafe { call.launch(algo, scratch.as_mut(), (one, zero), &input, &filter, &mut out) }?;
        Ok(wrap(out, device))
    })
}

/// `dx` from `dy (B, O, OH, OW)` and `w`: `(B, C, H, W)`.
pub(crate) fn backward_input(
    dy: &CudaStorage,
    dy_layout: &Layout,
    w: &CudaStorage,
    w_layout: &Layout,
    g: &ConvGeometry,
) -> candle::Result<CudaStorage> {
    let op = "conv2d backward (input, cuDNN)";
    dispatch!(same_dtype(dy, w, op)?, op, |T| {
        let device = dy.device();
        let cudnn = handle(device)?;
        let tf32 = crate::ops::cudnn_allow_tf32();
        let d = Descriptors::<T>::new(&cudnn, g, tf32)?;
        let call = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
        let key = (Pass::BackwardData, T::DTYPE, tf32, geometry_key(g));
        let algo = bwd_data_algo(algorithm(key, || Ok(call.pick_algorithm()? as u32))?)?;
        let mut scratch = workspace(device, call.get_workspace_size(algo)?)?;
        let (grad, filter) = (view::<T>(dy, dy_layout, op)?, view::<T>(w, w_layout, op)?);
        let mut out = output::<T>(device, g.input_len())?;
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        // SAFETY: as in `forward`; beta = 0, so dx is written, not accumulated.
        unsafe { call.launch(algo, scratch.as_mut(), (one, zero), &mut out, &filter, &grad) }?;
        Ok(wrap(out, device))
    })
}

/// `dw` from `x (B, C, H, W)` and `dy (B, O, OH, OW)`: `(O, C/groups, KH, KW)`.
pub(crate) fn backward_weight(
    x: &CudaStorage,
    x_layout: &Layout,
    dy: &CudaStorage,
    dy_layout: &Layout,
    g: &ConvGeometry,
) -> candle::Result<CudaStorage> {
    let op = "conv2d backward (weight, cuDNN)";
    dispatch!(same_dtype(x, dy, op)?, op, |T| {
        let device = x.device();
        let cudnn = handle(device)?;
        let tf32 = crate::ops::cudnn_allow_tf32();
        let d = Descriptors::<T>::new(&cudnn, g, tf32)?;
        let call = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
        let key = (Pass::BackwardFilter, T::DTYPE, tf32, geometry_key(g));
        let algo = bwd_filter_algo(algorithm(key, || Ok(call.pick_algorithm()? as u32))?)?;
        let mut scratch = workspace(device, call.get_workspace_size(algo)?)?;
        let (input, grad) = (view::<T>(x, x_layout, op)?, view::<T>(dy, dy_layout, op)?);
        let weight_len = g.out_channels * g.patch_len();
        let mut out = output::<T>(device, weight_len)?;
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        // SAFETY: as in `forward`; beta = 0, so dw is written, not accumulated.
        unsafe { call.launch(algo, scratch.as_mut(), (one, zero), &input, &mut out, &grad) }?;
        Ok(wrap(out, device))
    })
}
