//! Differentiable tensor ops that candle 0.11 lacks or runs slowly on CPU: a gemm-based
//! [`conv2d`] with gemm-based gradients, pooling with PyTorch's padding / ceil_mode
//! semantics and a backward for any kernel and stride, and a fused train-mode batch norm
//! (+ ReLU) with a fused backward; plus the fused in-place optimizer updates
//! ([`adam_step`], [`sgd_step`]) that wick-train's optimizers run on CPU parameters.
//!
//! Each op is a candle custom op (`CustomOp1`/`2`/`3`) whose `bwd` applies further
//! custom ops without tracking (no second-order gradients). With the `cuda` feature the same
//! op structs also run on CUDA (`cuda/`); the CPU kernels stay the reference.

mod activation;
mod batch_norm;
mod conv;
mod conv_cpu;
mod conv_pointwise;
mod conv_regions;
mod conv_winograd;
#[cfg(feature = "cuda")]
mod cuda;
mod optim;
mod pool;
mod storage;

pub use activation::{add_relu, relu};
pub use batch_norm::{
    BatchNormActivation, BatchNormOpConfig, BatchStatistics, batch_norm_add_relu_train,
    batch_norm_eval, batch_norm_eval_in_place, batch_norm_train, eval_in_place_supported,
};
pub use conv::{Conv2dConfig, conv2d, cudnn_allow_tf32, set_cudnn_allow_tf32};
pub use optim::{AdamStep, SgdStep, adam_step, fused_step_supported, sgd_step};
pub use pool::{AvgPool2dConfig, MaxPool2dConfig, avg_pool2d, max_pool2d};

/// Whether `t` is on a CUDA device in a dtype this build has kernels for (f32, bf16, f16).
/// Always false without the `cuda` feature.
pub(crate) fn on_cuda(t: &candle::Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), candle::DType::F32 | candle::DType::BF16 | candle::DType::F16)
}

/// `t` as a custom op's kernel takes it: contiguous on CUDA (the CUDA kernels read dense
/// row-major buffers), unchanged on the CPU (whose kernels read any layout).
pub(crate) fn for_kernel(t: &candle::Tensor) -> candle::Result<candle::Tensor> {
    if t.device().is_cuda() { t.contiguous() } else { Ok(t.clone()) }
}
