//! Layers over the fast ops, in candle-nn's idiom: a struct of tensors plus its config, a
//! lowercase constructor that takes a `VarBuilder`, and `Module` (hence `ModuleT`).
//!
//! [`conv2d`] / [`conv2d_no_bias`] create the same variables as candle-nn's constructors of
//! the same names (`weight (O, C/groups, K, K)` with Kaiming-normal init, `bias (O)` uniform
//! in ±1/sqrt(C)), and [`batch_norm2d`] the same as candle-nn's `batch_norm` (`weight`,
//! `bias`, `running_mean`, `running_var`), so PyTorch state_dict entries load unchanged.

use crate::ops::{
    self, AvgPool2dConfig, BatchNormActivation, BatchNormOpConfig, Conv2dConfig, MaxPool2dConfig,
};
use candle::{Module, ModuleT, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// 2-D convolution layer: `(B, C, H, W) -> (B, O, OH, OW)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A layer over existing tensors: `weight (O, C/groups, K, K)`, `bias (O)`. Nothing is
    /// checked here; `forward` fails on mismatched shapes.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self { weight, bias, config }
    }

    /// The kernel, `(O, C/groups, K, K)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-output-channel bias, `(O)`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride, padding, dilation and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl Module for Conv2d {
    /// The weight and bias are cast to the input's dtype when they differ (mixed precision:
    /// f32 master weights, bf16 activations; the cast's backward returns f32 gradients).
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let ys = ops::conv2d(xs, &self.weight.to_dtype(xs.dtype())?, self.config)?;
        match &self.bias {
            None => Ok(ys),
            Some(bias) => {
                let channels = bias.dims1()?;
                ys.broadcast_add(&bias.to_dtype(xs.dtype())?.reshape((1, channels, 1, 1))?)
            }
        }
    }
}

fn conv2d_weight(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: &Conv2dConfig,
    vb: &VarBuilder,
) -> candle::Result<Tensor> {
    if config.groups == 0
        || !in_channels.is_multiple_of(config.groups)
        || !out_channels.is_multiple_of(config.groups)
    {
        candle::bail!(
            "conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible \
             by groups ({})",
            config.groups
        );
    }
    vb.get_with_hints(
        (out_channels, in_channels / config.groups, kernel_size, kernel_size),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )
}

/// A convolution with bias, variables `weight` and `bias` under `vb`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> candle::Result<Conv2d> {
    let weight = conv2d_weight(in_channels, out_channels, kernel_size, &config, &vb)?;
    let bound = 1. / (in_channels as f64).sqrt();
    let bias = vb.get_with_hints(
        out_channels,
        "bias",
        candle_nn::Init::Uniform { lo: -bound, up: bound },
    )?;
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// A convolution without bias, variable `weight` under `vb`.
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> candle::Result<Conv2d> {
    let weight = conv2d_weight(in_channels, out_channels, kernel_size, &config, &vb)?;
    Ok(Conv2d::new(weight, None, config))
}

/// Max pooling layer (no parameters): `(B, C, H, W) -> (B, C, OH, OW)`.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    config: MaxPool2dConfig,
}

impl MaxPool2d {
    /// A max-pooling layer with this window.
    pub fn new(config: MaxPool2dConfig) -> Self {
        Self { config }
    }

    /// The pooling window.
    pub fn config(&self) -> &MaxPool2dConfig {
        &self.config
    }
}

impl Module for MaxPool2d {
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        ops::max_pool2d(xs, self.config)
    }
}

/// Average pooling layer (no parameters): `(B, C, H, W) -> (B, C, OH, OW)`.
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    config: AvgPool2dConfig,
}

impl AvgPool2d {
    /// An average-pooling layer with this window.
    pub fn new(config: AvgPool2dConfig) -> Self {
        Self { config }
    }

    /// The pooling window.
    pub fn config(&self) -> &AvgPool2dConfig {
        &self.config
    }
}

impl Module for AvgPool2d {
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        ops::avg_pool2d(xs, self.config)
    }
}

/// Batch normalisation over (B, H, W) of a `(B, C, H, W)` tensor, optionally fused with the
/// ReLU that follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Running statistics move by this fraction of the batch statistics each training step:
    /// `running = running·(1 - momentum) + batch·momentum` (PyTorch's convention).
    pub momentum: f64,
    /// Applied after the affine transform, inside the fused op.
    pub activation: BatchNormActivation,
}

impl Default for BatchNorm2dConfig {
    fn default() -> Self {
        Self { eps: 1e-5, momentum: 0.1, activation: BatchNormActivation::Identity }
    }
}

/// Batch-norm layer with running statistics, `(B, C, H, W) -> (B, C, H, W)`.
///
/// Training (`forward_t(x, true)`) normalises with the batch statistics through the fused
/// op [`ops::batch_norm_train`] and updates `running_mean` and `running_var` in place
/// exactly as candle-nn's `BatchNorm::forward_t(x, true)` does (momentum, unbiased running
/// variance); evaluation uses the running statistics. [`BatchNorm2d::forward_add_relu`] does
/// the same, followed by a residual block's sum and ReLU.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    running_mean: Var,
    running_var: Var,
    weight: Tensor,
    bias: Tensor,
    config: BatchNorm2dConfig,
}

impl BatchNorm2d {
    /// PyTorch's buffer names of a BatchNorm layer: state the layer updates itself, saved with
    /// the weights but never optimised. `running_mean` and `running_var` are this layer's
    /// variables; `num_batches_tracked` is kept by the model that owns the layer.
    pub const BUFFERS: [&'static str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

    /// A layer over existing tensors, each of shape `(C)`.
    ///
    /// # Errors
    /// When the weight is not 1-D, when `bias`, `running_mean` or `running_var` is not `(C)`
    /// with C the weight's length, when `momentum` is outside `[0, 1]`, or when `eps` is negative.
    pub fn new(
        running_mean: Var,
        running_var: Var,
        weight: Tensor,
        bias: Tensor,
        config: BatchNorm2dConfig,
    ) -> candle::Result<Self> {
        let channels = weight.dims1()?;
        for (name, t) in [
            ("bias", &bias),
            ("running_mean", running_mean.as_tensor()),
            ("running_var", running_var.as_tensor()),
        ] {
            if t.dims() != [channels] {
                candle::bail!(
                    "batch_norm2d: {name} has shape {:?}, the weight has {channels} channels",
                    t.dims()
                );
            }
        }
        if !(0.0..=1.0).contains(&config.momentum) || config.eps < 0.0 {
            candle::bail!(
                "batch_norm2d: momentum must be in [0, 1] and eps non-negative, got {config:?}"
            );
        }
        Ok(Self { running_mean, running_var, weight, bias, config })
    }

    /// The affine scale γ, `(C)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The affine shift β, `(C)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The running mean, `(C)`, updated in place by training forwards.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running (unbiased) variance, `(C)`, updated in place by training forwards.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Eps, momentum and the fused activation.
    pub fn config(&self) -> &BatchNorm2dConfig {
        &self.config
    }

    /// The fused op's share of the layer's configuration.
    fn op_config(&self) -> BatchNormOpConfig {
        BatchNormOpConfig { eps: self.config.eps, activation: self.config.activation }
    }

    /// `relu(self(xs) + shortcut)` for `xs` and `shortcut` of one shape `(B, C, H, W)`, the end
    /// of a residual block; the layer's own activation must be the identity. In training,
    /// [`ops::batch_norm_add_relu_train`] (on the CPU in f32 one fused op, so the graph keeps
    /// no tensor for the normalised branch), updating the running statistics as `forward_t`
    /// does; in evaluation, the eval forward and [`ops::add_relu`]. The same values as
    /// `forward_t` followed by `add_relu`.
    ///
    /// # Errors
    /// When the layer fuses a ReLU of its own; when `shortcut`'s shape differs from `xs`'s;
    /// when `xs` is not `(B, C, H, W)` with `C` the layer's channels, or (in training) has
    /// fewer than 2 values per channel.
    pub fn forward_add_relu(
        &self,
        xs: &Tensor,
        shortcut: &Tensor,
        train: bool,
    ) -> candle::Result<Tensor> {
        if self.config.activation != BatchNormActivation::Identity {
            candle::bail!(
                "batch_norm2d: forward_add_relu needs a layer without its own activation"
            );
        }
        if !train {
            return ops::add_relu(&self.forward_eval(xs)?, shortcut);
        }
        let (ys, statistics) = ops::batch_norm_add_relu_train(
            xs,
            &self.weight,
            &self.bias,
            shortcut,
            self.config.eps,
        )?;
        self.update_running_statistics(&statistics)?;
        Ok(ys)
    }

    /// The evaluation forward written over `xs`'s own storage, and with `residual`, followed by
    /// `+ residual` and the ReLU (the layer's own activation must then be the identity): see
    /// [`ops::batch_norm_eval_in_place`]. `xs (B, C, H, W)` must be the only tensor that reads
    /// its storage (an op's fresh output, as a convolution's).
    ///
    /// # Errors
    /// As [`ops::batch_norm_eval_in_place`] (shapes; a residual for a layer with a ReLU).
    pub fn forward_eval_in_place(
        &self,
        xs: Tensor,
        residual: Option<&Tensor>,
    ) -> candle::Result<Tensor> {
        let [weight, bias, mean, var] = self.eval_parameters();
        ops::batch_norm_eval_in_place(xs, &weight, &bias, &mean, &var, self.op_config(), residual)
    }

    /// γ, β and the running mean and variance, read detached: evaluation builds no graph.
    fn eval_parameters(&self) -> [Tensor; 4] {
        [
            read_parameter(&self.weight, false),
            read_parameter(&self.bias, false),
            self.running_mean.as_detached_tensor(),
            self.running_var.as_detached_tensor(),
        ]
    }

    fn forward_train(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let (ys, statistics) =
            ops::batch_norm_train(xs, &self.weight, &self.bias, self.op_config())?;
        self.update_running_statistics(&statistics)?;
        Ok(ys)
    }

    /// `running = running·(1 - momentum) + batch·momentum`, the variance unbiased (PyTorch's).
    fn update_running_statistics(&self, statistics: &ops::BatchStatistics) -> candle::Result<()> {
        let momentum = self.config.momentum;
        let count = statistics.count as f64;
        let mean = (self.running_mean.as_detached_tensor() * (1.0 - momentum))?
            .add(&(statistics.mean.to_dtype(self.running_mean.dtype())? * momentum)?)?;
        self.running_mean.set(&mean)?;
        let variance_weight = momentum * count / (count - 1.0);
        let variance = (self.running_var.as_detached_tensor() * (1.0 - momentum))?
            .add(&(statistics.variance.to_dtype(self.running_var.dtype())? * variance_weight)?)?;
        self.running_var.set(&variance)
    }

    fn forward_eval(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let [weight, bias, mean, var] = self.eval_parameters();
        ops::batch_norm_eval(xs, &weight, &bias, &mean, &var, self.op_config())
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        if train { self.forward_train(xs) } else { self.forward_eval(xs) }
    }
}

/// A batch-norm layer with variables `weight` (init 1), `bias` (0), `running_mean` (0) and
/// `running_var` (1) under `vb`, as candle-nn's `batch_norm` creates them.
pub fn batch_norm2d(
    num_features: usize,
    config: BatchNorm2dConfig,
    vb: VarBuilder,
) -> candle::Result<BatchNorm2d> {
    let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.))?;
    let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.))?;
    BatchNorm2d::new(
        Var::from_tensor(&running_mean)?,
        Var::from_tensor(&running_var)?,
        weight,
        bias,
        config,
    )
}

/// A parameter as a layer's forward reads it: as is in training (autograd tracks it), detached
/// in evaluation, so that an eval-mode forward builds no autograd graph and frees each
/// activation as soon as the next layer has read it (PyTorch's `torch.no_grad()` for the
/// parameters). Every layer of wick-nn and wick-models reads its parameters through this.
pub fn read_parameter(parameter: &Tensor, train: bool) -> Tensor {
    if train { parameter.clone() } else { parameter.detach() }
}
