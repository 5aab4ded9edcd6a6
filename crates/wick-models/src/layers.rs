//! The building blocks of xresnet in fastai's terms: `ConvLayer` (conv → BatchNorm →
//! activation), the activations (ReLU, Mish), seeded `Dropout`, and `SimpleSelfAttention`.
//! Each is a struct of tensors with a lowercase constructor taking a `VarBuilder`, and
//! `ModuleT::forward_t(xs, train)`, so train/eval is always explicit. [`is_buffer`] says which
//! variables are buffers, from the layers that own them.

use std::sync::Mutex;

use candle::{Module, ModuleT, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_nn::{
    BatchNorm2d, BatchNorm2dConfig, BatchNormActivation, Conv2d, Conv2dConfig, read_parameter,
};

/// The non-linearity used after convolutions and residual additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `max(x, 0)` (fastai's default).
    #[default]
    Relu,
    /// `x · tanh(softplus(x))` (Misra 2019), the imagenette training script's choice.
    Mish,
}

impl Activation {
    /// Applies the activation (ReLU with PyTorch's gradient rule: 0 at exactly 0).
    pub fn apply(self, xs: &Tensor) -> candle::Result<Tensor> {
        match self {
            Activation::Relu => wick_nn::ops::relu(xs),
            Activation::Mish => {
                // softplus(x) = max(x, 0) + ln(1 + e^{-|x|}), stable for large |x|.
                let softplus = (xs.relu()? + (xs.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                xs.mul(&softplus.tanh()?)
            }
        }
    }
}

/// BatchNorm's hyper-parameters (PyTorch's defaults, which fastai keeps).
pub const BN_EPS: f64 = 1e-5;
/// Weight of the current batch in the running statistics.
pub const BN_MOMENTUM: f64 = 0.1;

/// A BatchNorm over `channels` (wick-nn's fused op, optionally with the ReLU that follows)
/// whose γ starts at `gamma` (1, or 0 for fastai's `BatchZero`), β at 0, running mean 0 and
/// running variance 1; variables `weight`, `bias`, `running_mean`, `running_var` (PyTorch's
/// names).
pub fn batch_norm(
    channels: usize,
    gamma: f64,
    activation: BatchNormActivation,
    vb: VarBuilder,
) -> candle::Result<BatchNorm2d> {
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
    let weight = vb.get_with_hints(channels, "weight", Init::Const(gamma))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    let config = BatchNorm2dConfig { eps: BN_EPS, momentum: BN_MOMENTUM, activation };
    BatchNorm2d::new(
        Var::from_tensor(&running_mean)?,
        Var::from_tensor(&running_var)?,
        weight,
        bias,
        config,
    )
}

/// How the BatchNorm of a [`ConvLayer`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnInit {
    /// γ = 1 (fastai's `NormType.Batch`).
    One,
    /// γ = 0 (fastai's `NormType.BatchZero`): the last BN of a residual branch, so every block
    /// starts as the identity.
    Zero,
}

/// fastai's `ConvLayer`: a bias-free square convolution with padding `kernel / 2`, then
/// BatchNorm, then an optional activation. Variables `0.weight` (conv) and `1.*` (BN), as in
/// the `nn.Sequential` it mirrors.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    conv: Conv2d,
    bn: BatchNorm2d,
    /// An activation applied after the BatchNorm (ReLU is fused into the BatchNorm instead).
    activation: Option<Activation>,
}

/// What a [`ConvLayer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayerConfig {
    /// The square kernel's side in pixels (padding is `kernel / 2`).
    pub kernel: usize,
    /// The convolution's stride (2 halves H and W).
    pub stride: usize,
    /// The BatchNorm's γ initialisation.
    pub bn_init: BnInit,
    /// `None` for the last layer of a residual branch and for shortcut convolutions.
    pub activation: Option<Activation>,
}

/// Builds a [`ConvLayer`] from `in_channels` to `out_channels` under `vb`.
pub fn conv_layer(
    in_channels: usize,
    out_channels: usize,
    config: ConvLayerConfig,
    vb: VarBuilder,
) -> candle::Result<ConvLayer> {
    let conv_config =
        Conv2dConfig { padding: config.kernel / 2, stride: config.stride, dilation: 1, groups: 1 };
    let conv =
        wick_nn::conv2d_no_bias(in_channels, out_channels, config.kernel, conv_config, vb.pp("0"))?;
    let gamma = match config.bn_init {
        BnInit::One => 1.0,
        BnInit::Zero => 0.0,
    };
    // ReLU runs inside the fused BatchNorm (one pass forward and backward); Mish after it.
    let (fused, activation) = match config.activation {
        Some(Activation::Relu) => (BatchNormActivation::Relu, None),
        other => (BatchNormActivation::Identity, other),
    };
    let bn = batch_norm(out_channels, gamma, fused, vb.pp("1"))?;
    Ok(ConvLayer { conv, bn, activation })
}

impl ConvLayer {
    /// Whether the layer ends in its BatchNorm (no activation of its own, fused or not): the
    /// last layer of a residual branch, which [`ConvLayer::forward_add_relu`] can end.
    pub fn ends_in_batch_norm(&self) -> bool {
        self.activation.is_none() && self.bn.config().activation == BatchNormActivation::Identity
    }

    /// `relu(self(xs) + shortcut)`, shortcut `(B, O, H', W')` as the layer's output: the end
    /// of fastai's `ResBlock` for a layer that
    /// [`ends_in_batch_norm`](ConvLayer::ends_in_batch_norm), with the BatchNorm, the sum and
    /// the ReLU one op on the CPU in f32: in training
    /// ([`wick_nn::BatchNorm2d::forward_add_relu`]), and in evaluation written over the
    /// convolution's output ([`wick_nn::BatchNorm2d::forward_eval_in_place`]). The same values
    /// as `forward_t` followed by [`wick_nn::ops::add_relu`].
    ///
    /// # Errors
    /// When the layer does not end in its BatchNorm; when `xs` is not `(B, C, H, W)` with the
    /// layer's input channels; when `shortcut`'s shape differs from the layer's output.
    pub fn forward_add_relu(
        &self,
        xs: &Tensor,
        shortcut: &Tensor,
        train: bool,
    ) -> candle::Result<Tensor> {
        if !self.ends_in_batch_norm() {
            candle::bail!("conv layer: forward_add_relu needs a layer without an activation");
        }
        let convolved = self.convolve(xs, train)?;
        if train {
            self.bn.forward_add_relu(&convolved, shortcut, true)
        } else {
            // The convolution's output is this layer's alone: normalised in place.
            self.bn.forward_eval_in_place(convolved, Some(shortcut))
        }
    }

    fn convolve(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        // In evaluation the weights are read detached, so no autograd graph is built and each
        // activation is freed as soon as the next layer has read it. Under mixed precision the
        // f32 weight is cast to the activations' dtype (in training, Conv2d::forward does it).
        if train {
            self.conv.forward(xs)
        } else {
            let weight = read_parameter(self.conv.weight(), false).to_dtype(xs.dtype())?;
            wick_nn::ops::conv2d(xs, &weight, *self.conv.config())
        }
    }
}

impl ModuleT for ConvLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let convolved = self.convolve(xs, train)?;
        // In evaluation the convolution's output is this layer's alone: normalised in place,
        // so the forward holds one activation fewer at a time.
        let ys = if train {
            self.bn.forward_t(&convolved, true)?
        } else {
            self.bn.forward_eval_in_place(convolved, None)?
        };
        match self.activation {
            Some(activation) => activation.apply(&ys),
            None => Ok(ys),
        }
    }
}

/// Dropout with its own seeded random generator (candle's `Dropout` draws from an unseeded
/// one). In training, each element is zeroed with probability `p` and the rest scaled by
/// `1 / (1 - p)`; in evaluation it is the identity.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1) and a generator seeded with `seed`.
    pub fn new(p: f64, seed: u64) -> candle::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle::bail!("dropout probability {p} is not in [0, 1)");
        }
        Ok(Dropout { p, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) })
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let scale = (1.0 / (1.0 - self.p)) as f32;
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle::Error::Msg("dropout rng lock poisoned".to_string()))?;
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| if rng.random::<f64>() < self.p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(mask, xs.shape(), &candle::Device::Cpu)?
            .to_dtype(xs.dtype())?
            .to_device(xs.device())?;
        xs.mul(&mask)
    }
}

/// fastai's `SimpleSelfAttention(n_in, ks=1, sym)`: with `x` flattened to `(B, C, L)`,
/// `out = γ · (x xᵀ) · conv(x) + x`, where `conv` is a spectrally normalised 1x1 `Conv1d`
/// without bias and γ a learnable scalar starting at 0. `sym` symmetrises the conv's `C x C`
/// weight on every forward. Spectral normalisation follows PyTorch's `spectral_norm` (one
/// power iteration per training forward; variables `conv.weight_orig`, `conv.weight_u`,
/// `conv.weight_v`, and `gamma`).
#[derive(Debug, Clone)]
pub struct SimpleSelfAttention {
    weight_orig: Tensor,
    weight_u: candle::Var,
    weight_v: candle::Var,
    gamma: Tensor,
    symmetric: bool,
    channels: usize,
}

impl SimpleSelfAttention {
    /// The spectral norm's power-iteration vectors: buffers, not parameters (PyTorch's
    /// `spectral_norm` registers them with `register_buffer`; they get no gradient and are
    /// updated by the layer's own training forward).
    pub const BUFFERS: [&'static str; 2] = ["weight_u", "weight_v"];
}

/// Whether a `VarMap` entry of a wick-models network is a buffer (state a layer updates itself:
/// BatchNorm's running statistics, self-attention's spectral-norm vectors) rather than a
/// trainable parameter: its last path segment is one of [`BatchNorm2d::BUFFERS`] or
/// [`SimpleSelfAttention::BUFFERS`]. PyTorch's `parameters()` is every other variable.
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BatchNorm2d::BUFFERS.contains(&last) || SimpleSelfAttention::BUFFERS.contains(&last)
}

/// Builds a [`SimpleSelfAttention`] over `channels` under `vb`.
pub fn simple_self_attention(
    channels: usize,
    symmetric: bool,
    vb: VarBuilder,
) -> candle::Result<SimpleSelfAttention> {
    let conv = vb.pp("conv");
    let weight_orig = conv.get_with_hints(
        (channels, channels, 1),
        "weight_orig",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    // PyTorch draws u and v from N(0, 1) and normalises them.
    let u = conv.get_with_hints(channels, "weight_u", Init::Randn { mean: 0.0, stdev: 1.0 })?;
    let v = conv.get_with_hints(channels, "weight_v", Init::Randn { mean: 0.0, stdev: 1.0 })?;
    let normalise = |t: &Tensor| -> candle::Result<Tensor> {
        t.broadcast_div(&(t.sqr()?.sum_all()?.sqrt()? + 1e-12)?)
    };
    let weight_u = candle::Var::from_tensor(&u)?;
    weight_u.set(&normalise(&u)?)?;
    let weight_v = candle::Var::from_tensor(&v)?;
    weight_v.set(&normalise(&v)?)?;
    let gamma = vb.get_with_hints(1, "gamma", Init::Const(0.0))?;
    Ok(SimpleSelfAttention { weight_orig, weight_u, weight_v, gamma, symmetric, channels })
}

impl ModuleT for SimpleSelfAttention {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let c = self.channels;
        let mut weight = self.weight_orig.reshape((c, c))?;
        if self.symmetric {
            weight = ((&weight + weight.t()?)? * 0.5)?;
        }
        let normalise = |t: &Tensor| -> candle::Result<Tensor> {
            t.broadcast_div(&(t.sqr()?.sum_all()?.sqrt()? + 1e-12)?)
        };
        if train {
            // One power iteration on the detached weight: v = W^T u / |.|, u = W v / |.|.
            let detached = weight.detach();
            let v = normalise(
                &detached.t()?.matmul(&self.weight_u.as_tensor().unsqueeze(1)?)?.squeeze(1)?,
            )?;
            let u = normalise(&detached.matmul(&v.unsqueeze(1)?)?.squeeze(1)?)?;
            self.weight_v.set(&v)?;
            self.weight_u.set(&u)?;
        }
        let (weight, gamma) = (read_parameter(&weight, train), read_parameter(&self.gamma, train));
        let u = self.weight_u.as_detached_tensor().unsqueeze(0)?;
        let v = self.weight_v.as_detached_tensor().unsqueeze(1)?;
        let sigma = u.matmul(&weight.matmul(&v)?)?.reshape(())?;
        // The spectral norm runs in f32 (its u, v are f32 variables); the products run in the
        // activations' dtype.
        let weight = weight.broadcast_div(&sigma)?.to_dtype(xs.dtype())?;
        let (b, channels, h, w) = xs.dims4()?;
        let flat = xs.reshape((b, channels, h * w))?;
        // conv(x) with a 1x1 kernel is W · x for every position: (C, C) x (B, C, L).
        let convx = weight.unsqueeze(0)?.broadcast_as((b, c, c))?.contiguous()?.matmul(&flat)?;
        let xxt = flat.matmul(&flat.transpose(1, 2)?.contiguous()?)?;
        let attention = xxt.matmul(&convx)?;
        let out = attention.broadcast_mul(&gamma.to_dtype(xs.dtype())?)?.add(&flat)?;
        out.reshape((b, channels, h, w))
    }
}
