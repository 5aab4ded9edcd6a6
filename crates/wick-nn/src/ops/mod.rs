//! Differentiable tensor ops that candle 0.11 lacks or runs slowly on CPU: a gemm-based
//! [`conv2d`] with gemm-based gradients, pooling with PyTorch's padding / ceil_mode
//! semantics and a backward for any kernel and stride, and a fused train-mode batch norm
//! (+ ReLU) with a fused backward.
//!
//! Each op is a candle custom op (`CustomOp1`/`2`/`3`) whose `bwd` applies further
//! custom ops without tracking (no second-order gradients).

mod activation;
mod batch_norm;
mod conv;
mod conv_cpu;
mod pool;
mod storage;

pub use activation::{AddRelu, Relu, ReluBackward, add_relu, relu};
pub use batch_norm::{
    BatchNormActivation, BatchNormTrainConfig, BatchStatistics, batch_norm_train,
};
pub use conv::{Conv2dBackwardInputOp, Conv2dBackwardWeightOp, Conv2dConfig, Conv2dOp, conv2d};
pub use pool::{
    AvgPool2dBackwardOp, AvgPool2dConfig, AvgPool2dOp, MaxPool2dBackwardOp, MaxPool2dConfig,
    MaxPool2dOp, avg_pool2d, max_pool2d,
};
