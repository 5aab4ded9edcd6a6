//! The CUDA side of wick-nn's ops (feature `cuda`): the kernels of `kernels.cu` (compiled to
//! PTX by `build.rs`, embedded here, loaded once per device by candle), the launch and dtype
//! plumbing they share, and the `cuda_fwd` bodies that the op structs of `activation.rs`,
//! `pool.rs` and `batch_norm.rs` delegate to. With `cudnn`, `conv.rs` runs the convolution
//! and both of its gradients through cuDNN.
//!
//! Every kernel takes contiguous row-major inputs (the public ops make them contiguous before
//! applying a custom op) and works on f32, bf16 and f16 with float arithmetic.

pub(crate) mod activation;
pub(crate) mod batch_norm;
#[cfg(feature = "cudnn")]
pub(crate) mod conv;
pub(crate) mod pool;

use candle::backend::BackendStorage;
use candle::cuda_backend::CudaDType;
use candle::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle::{CudaDevice, CudaStorage, DType, Layout};

/// The PTX of `kernels.cu`, built for `compute_$CUDA_COMPUTE_CAP` (default 80).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/wick_nn_kernels.ptx"));
/// The module name the PTX is cached under in each `CudaDevice`.
const MODULE: &str = "wick_nn";
/// Threads per block of the element-wise and per-element kernels.
const THREADS: u32 = 256;

/// An element type the kernels are instantiated for.
pub(crate) trait Element: CudaDType + DeviceRepr + candle::WithDType {
    /// The suffix of the kernel instances (`wick_relu_fwd_f32`, ...).
    const SUFFIX: &'static str;
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Element for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl Element for half::f16 {
    const SUFFIX: &'static str = "f16";
}
/// For f64 scratch buffers (BatchNorm's partial sums); no kernel is instantiated for it.
impl Element for f64 {
    const SUFFIX: &'static str = "f64";
}

/// Runs `$body` with the type alias `$t` set to the Rust element type of `$dtype` (f32, bf16,
/// f16); any other dtype is an error naming `$op`.
macro_rules! dispatch {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle::DType::F32 => {
                type $t = f32;
                $body
            }
            candle::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            candle::DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => candle::bail!("{}: no CUDA kernel for dtype {other:?}", $op),
        }
    };
}
pub(crate) use dispatch;

/// Kernel `<name>_<suffix>` of wick-nn's PTX module on `device`.
pub(crate) fn kernel<T: Element>(
    device: &CudaDevice,
    name: &str,
) -> candle::Result<impl std::ops::Deref<Target = candle::cuda_backend::cudarc::driver::CudaFunction>>
{
    device.get_or_load_custom_func(&format!("{name}_{}", T::SUFFIX), MODULE, PTX)
}

/// An untyped kernel (no dtype suffix) of wick-nn's PTX module.
pub(crate) fn plain_kernel(
    device: &CudaDevice,
    name: &str,
) -> candle::Result<impl std::ops::Deref<Target = candle::cuda_backend::cudarc::driver::CudaFunction>>
{
    device.get_or_load_custom_func(name, MODULE, PTX)
}

/// Launches a kernel with `args` pushed in order on `device`'s stream.
macro_rules! launch {
    ($device:expr, $function:expr, $config:expr, $($arg:expr),+ $(,)?) => {{
        use candle::cuda_backend::WrapErr as _;
        use candle::cuda_backend::cudarc::driver::PushKernelArg;
        let stream = $device.cuda_stream();
        let mut builder = stream.launch_builder(&*$function);
        $( builder.arg($arg); )+
        // SAFETY: every call site passes exactly the arguments of the kernel's C signature in
        // kernels.cu, in order and with the matching types (u64 ↔ unsigned long long,
        // i32 ↔ int, f32 ↔ float, f64 ↔ double, device slices ↔ pointers of the element type),
        // and sizes the grid from the same element counts the kernel is given.
        unsafe { builder.launch($config) }.map(|_| ()).w()
    }};
}
pub(crate) use launch;

/// A one-dimensional grid for `n` elements; the kernels loop with a grid stride, so the grid
/// is capped.
pub(crate) fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The elements of a contiguous tensor on CUDA, from its layout's offset.
pub(crate) fn view<'a, T: Element>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> candle::Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle::bail!("{op}: the CUDA kernels take contiguous tensors, got strides {:?}", layout);
    };
    Ok(T::as_cuda_slice(storage)?.slice(start..end))
}

/// A device buffer of `len` elements that a kernel fills completely.
pub(crate) fn output<T: Element>(device: &CudaDevice, len: usize) -> candle::Result<CudaSlice<T>> {
    // SAFETY: the caller launches a kernel that writes every one of the `len` elements before
    // the buffer is read (each call site's kernel covers its whole output range).
    unsafe { device.alloc::<T>(len.max(1)) }
}

/// Wraps a kernel's output as candle storage.
pub(crate) fn wrap<T: Element>(slice: CudaSlice<T>, device: &CudaDevice) -> CudaStorage {
    T::wrap_cuda_slice(slice, device.clone())
}

/// Checks that two storages share a dtype (kernels take one element type).
pub(crate) fn same_dtype(a: &CudaStorage, b: &CudaStorage, op: &str) -> candle::Result<DType> {
    if a.dtype() != b.dtype() {
        candle::bail!("{op}: dtypes {:?} and {:?} differ", a.dtype(), b.dtype());
    }
    Ok(a.dtype())
}
