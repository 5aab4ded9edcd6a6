//! wick-nn: fast differentiable ops that candle 0.11 lacks on CPU, and the layers over them.
//!
//! - [`ops::conv2d`]: convolution whose forward and both gradients run as gemm
//!   (im2col / col2im, parallel over the batch), instead of candle's direct
//!   `conv_transpose2d` backward.
//! - [`ops::max_pool2d`] / [`ops::avg_pool2d`]: PyTorch pooling semantics (padding, ceil_mode)
//!   with a backward for any kernel and stride.
//! - [`ops::batch_norm_train`]: train-mode batch norm (+ ReLU) fused forward and backward;
//!   [`ops::batch_norm_eval`] the eval-mode forward in one pass.
//! - [`Conv2d`], [`MaxPool2d`], [`AvgPool2d`], [`BatchNorm2d`]: layers in candle-nn's idiom.
//! - [`gemm`]: the f32 matrix-multiply backends the convolutions run on.
//! - [`check`]: every op on a device compared with the CPU reference (the GPU check).
//! - [`ModelState`]: the state a model keeps outside its `VarMap` (BatchNorm's step counter),
//!   which checkpoints and snapshots save with the variables.
//!
//! Feature `cuda` adds CUDA implementations of the ops (`cuda_fwd` of each custom op: ReLU,
//! pooling and the fused BatchNorm as CUDA C kernels built into PTX); `cudnn` adds the
//! convolution and both of its gradients through cuDNN. See docs/cuda.md.
//!
//! Shape legend: B batch, C channels (O output channels), H, W height and width, KH, KW
//! kernel height and width.
//!
//! - [`allocator::retain_freed_memory`]: for binaries. Every op returns a freshly allocated
//!   tensor, and the first-touch page faults of large buffers that glibc maps and unmaps at
//!   every step cost as much as the arithmetic of a memory-bound op; this keeps freed memory
//!   for reuse (the `wick` CLI and the benches call it at start).

pub mod allocator;
pub mod check;
pub mod collective;
pub mod gemm;
mod layers;
pub mod ops;
pub mod profile;
mod scratch;
mod state;

pub use gemm::{GemmBackend, gemm_backend, set_gemm_backend};
pub use layers::{
    AvgPool2d, BatchNorm2d, BatchNorm2dConfig, Conv2d, MaxPool2d, batch_norm2d, conv2d,
    conv2d_no_bias, read_parameter,
};
pub use ops::{AvgPool2dConfig, BatchNormActivation, Conv2dConfig, MaxPool2dConfig};
pub use state::ModelState;
