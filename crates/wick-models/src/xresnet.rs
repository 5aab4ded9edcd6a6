//! The xresnet family exactly as fastai builds it (`fastai.vision.models.xresnet`): the
//! "Bag of Tricks" ResNet (He et al. 2019, arXiv:1812.01187) with the ResNet-C stem (three
//! 3x3 convolutions 32/32/64, the first with stride 2), ResNet-B bottlenecks (stride on the
//! 3x3), ResNet-D shortcuts (AvgPool2d(2, ceil_mode) before the 1x1 convolution), and the
//! last BatchNorm of every residual branch starting at γ = 0.
//!
//! Every depth comes from one table ([`XResNetConfig::depth`]); parameter names mirror
//! fastai's `nn.Sequential` state-dict names (`0.0.weight`, `4.0.convpath.0.0.weight`,
//! `5.0.idpath.1.0.weight`, `11.weight`), so PyTorch weights load directly.
//!
//! Shapes: input `(B, C_in, H, W)` → logits `(B, K)` with `K = n_out`.
//!
//! Mixed precision: the forward pass runs in the input's dtype (bf16 under
//! `Precision::Bf16`) while every variable stays f32: convolutions and the head cast their
//! weights to the input's dtype (the casts' backward hands f32 gradients to the optimizer),
//! BatchNorm keeps f32 parameters and statistics, and the global average pool sums in f32.

use std::sync::atomic::{AtomicU64, Ordering};

use candle::{DType, Module, ModuleT, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use wick_nn::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};

use crate::layers::{
    Activation, BnInit, ConvLayer, ConvLayerConfig, Dropout, SimpleSelfAttention, conv_layer,
    simple_self_attention,
};

/// The named depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    D18,
    D34,
    D50,
    D101,
    D152,
}

/// The one table: block expansion and blocks per stage for each depth.
const DEPTHS: [(Depth, &str, usize, [usize; 4]); 5] = [
    (Depth::D18, "xresnet18", 1, [2, 2, 2, 2]),
    (Depth::D34, "xresnet34", 1, [3, 4, 6, 3]),
    (Depth::D50, "xresnet50", 4, [3, 4, 6, 3]),
    (Depth::D101, "xresnet101", 4, [3, 4, 23, 3]),
    (Depth::D152, "xresnet152", 4, [3, 8, 36, 3]),
];

/// Everything that defines an xresnet (fastai's `XResNet(...)` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct XResNetConfig {
    /// 1 (basic blocks) or 4 (bottlenecks).
    pub expansion: usize,
    /// Blocks per stage; more than 4 stages adds stages of width 256 (fastai's `_deep`).
    pub layers: Vec<usize>,
    /// Input channels.
    pub c_in: usize,
    /// Outputs of the head (fastai's default 1000; chapter 7's text uses the class count).
    pub n_out: usize,
    /// Widths of the three stem convolutions.
    pub stem_sizes: [usize; 3],
    /// Multiplier of the stage widths 64/128/256/512.
    pub widen: f64,
    /// Dropout before the head.
    pub dropout: f64,
    pub activation: Activation,
    /// A `SimpleSelfAttention` in the last block of stage `len(layers) - 4`.
    pub self_attention: bool,
    /// Symmetrise the attention weight.
    pub symmetric_attention: bool,
}

impl XResNetConfig {
    /// One of the named depths with fastai's defaults and `n_out` outputs.
    pub fn depth(depth: Depth, n_out: usize) -> Self {
        // Invariant: DEPTHS lists every Depth variant.
        let (_, _, expansion, layers) = DEPTHS
            .iter()
            .find(|(d, ..)| *d == depth)
            .copied()
            .expect("every depth is in the table");
        XResNetConfig {
            expansion,
            layers: layers.to_vec(),
            c_in: 3,
            n_out,
            stem_sizes: [32, 32, 64],
            widen: 1.0,
            dropout: 0.0,
            activation: Activation::Relu,
            self_attention: false,
            symmetric_attention: false,
        }
    }

    /// The configuration named `xresnet18` ... `xresnet152`.
    pub fn named(name: &str, n_out: usize) -> Option<Self> {
        DEPTHS
            .iter()
            .find(|(_, n, ..)| *n == name)
            .map(|(depth, ..)| XResNetConfig::depth(*depth, n_out))
    }

    /// The table name (`xresnet18` ... `xresnet152`) of this configuration's depth, if its
    /// blocks and stage lengths are one of the named ones.
    pub fn arch_name(&self) -> Option<&'static str> {
        DEPTHS
            .iter()
            .find(|(_, _, expansion, layers)| {
                *expansion == self.expansion && layers.as_slice() == self.layers.as_slice()
            })
            .map(|(_, name, ..)| *name)
    }

    /// The names [`XResNetConfig::named`] accepts.
    pub fn names() -> Vec<&'static str> {
        DEPTHS.iter().map(|(_, name, ..)| *name).collect()
    }

    /// Stage widths before expansion: `[64/expansion, 64w, 128w, 256w, 512w, 256w...]`
    /// (fastai's `block_szs`; the first entry is the stem's width divided back).
    fn block_sizes(&self) -> Vec<usize> {
        // Stages beyond the fourth are 256 wide (fastai's `_deep` variants).
        let base = [64usize, 128, 256, 512].into_iter().chain(std::iter::repeat(256));
        let mut sizes = vec![64 / self.expansion];
        sizes
            .extend(base.take(self.layers.len()).map(|width| (width as f64 * self.widen) as usize));
        sizes
    }
}

/// fastai's `ResBlock`: `act(convpath(x) + idpath(x))`.
#[derive(Debug, Clone)]
struct ResBlock {
    convpath: Vec<ConvLayer>,
    attention: Option<SimpleSelfAttention>,
    shortcut_pool: Option<AvgPool2d>,
    shortcut_conv: Option<ConvLayer>,
    activation: Activation,
}

struct BlockSpec {
    expansion: usize,
    in_width: usize,
    width: usize,
    stride: usize,
    activation: Activation,
    attention: Option<bool>,
}

fn res_block(spec: &BlockSpec, vb: VarBuilder) -> candle::Result<ResBlock> {
    let (ni, nf) = (spec.in_width * spec.expansion, spec.width * spec.expansion);
    let act = Some(spec.activation);
    let layer = |kernel, stride, bn_init, activation| ConvLayerConfig {
        kernel,
        stride,
        bn_init,
        activation,
    };
    let path = vb.pp("convpath");
    let mut convpath = Vec::new();
    if spec.expansion == 1 {
        convpath.push(conv_layer(
            ni,
            spec.width,
            layer(3, spec.stride, BnInit::One, act),
            path.pp("0"),
        )?);
        convpath.push(conv_layer(spec.width, nf, layer(3, 1, BnInit::Zero, None), path.pp("1"))?);
    } else {
        convpath.push(conv_layer(ni, spec.width, layer(1, 1, BnInit::One, act), path.pp("0"))?);
        convpath.push(conv_layer(
            spec.width,
            spec.width,
            layer(3, spec.stride, BnInit::One, act),
            path.pp("1"),
        )?);
        convpath.push(conv_layer(spec.width, nf, layer(1, 1, BnInit::Zero, None), path.pp("2"))?);
    }
    let attention = match spec.attention {
        Some(symmetric) => {
            Some(simple_self_attention(nf, symmetric, path.pp(convpath.len().to_string()))?)
        }
        None => None,
    };
    // ResNet-D: the pool comes first in `idpath`, so the conv is `idpath.1` when both exist.
    let id = vb.pp("idpath");
    let shortcut_pool = (spec.stride != 1).then(|| {
        AvgPool2d::new(AvgPool2dConfig {
            kernel: spec.stride,
            stride: spec.stride,
            padding: 0,
            ceil_mode: true,
        })
    });
    let shortcut_conv = if ni != nf {
        let index = if shortcut_pool.is_some() { "1" } else { "0" };
        Some(conv_layer(ni, nf, layer(1, 1, BnInit::One, None), id.pp(index))?)
    } else {
        None
    };
    Ok(ResBlock { convpath, attention, shortcut_pool, shortcut_conv, activation: spec.activation })
}

impl ModuleT for ResBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut branch = xs.clone();
        for layer in &self.convpath {
            branch = layer.forward_t(&branch, train)?;
        }
        if let Some(attention) = &self.attention {
            branch = attention.forward_t(&branch, train)?;
        }
        let mut shortcut = xs.clone();
        if let Some(pool) = &self.shortcut_pool {
            shortcut = pool.forward(&shortcut)?;
        }
        if let Some(conv) = &self.shortcut_conv {
            shortcut = conv.forward_t(&shortcut, train)?;
        }
        match self.activation {
            // One fused pass: the residual addition and its ReLU (PyTorch's gradient rule).
            Activation::Relu => wick_nn::ops::add_relu(&branch, &shortcut),
            activation => activation.apply(&(branch + shortcut)?),
        }
    }
}

/// An xresnet: stem (`0`, `1`, `2`), max pool (`3`), stages (`4`...), global average pool,
/// flatten, dropout, linear head (index `8 + extra stages`... `11` for 4 stages).
#[derive(Debug)]
pub struct XResNet {
    config: XResNetConfig,
    stem: Vec<ConvLayer>,
    pool: MaxPool2d,
    stages: Vec<Vec<ResBlock>>,
    dropout: Dropout,
    head: Linear,
    /// Names of every BatchNorm (e.g. `4.0.convpath.0.1`), for `num_batches_tracked`.
    batch_norms: Vec<String>,
    /// Training forwards so far: PyTorch's `num_batches_tracked` of every BatchNorm.
    train_forwards: AtomicU64,
}

/// Builds an xresnet under `vb` (variables are created with fastai's initialisation; use a
/// [`crate::seeded_var_builder`] for reproducible draws). `dropout_seed` seeds the head
/// dropout's mask generator (unused when `config.dropout` is 0).
pub fn xresnet(
    config: &XResNetConfig,
    dropout_seed: u64,
    vb: VarBuilder,
) -> candle::Result<XResNet> {
    if config.layers.is_empty() || config.expansion == 0 || config.n_out == 0 || config.c_in == 0 {
        candle::bail!("xresnet: invalid configuration {config:?}");
    }
    let mut batch_norms = Vec::new();
    let act = Some(config.activation);
    let mut stem = Vec::new();
    let widths = [config.c_in, config.stem_sizes[0], config.stem_sizes[1], config.stem_sizes[2]];
    for i in 0..3 {
        let stride = if i == 0 { 2 } else { 1 };
        let layer_config =
            ConvLayerConfig { kernel: 3, stride, bn_init: BnInit::One, activation: act };
        stem.push(conv_layer(widths[i], widths[i + 1], layer_config, vb.pp(i.to_string()))?);
        batch_norms.push(format!("{i}.1"));
    }
    let pool =
        MaxPool2d::new(MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: false });
    let sizes = config.block_sizes();
    let attention_stage = config.layers.len().checked_sub(4);
    let mut stages = Vec::new();
    for (stage_idx, &n_blocks) in config.layers.iter().enumerate() {
        let module_idx = 4 + stage_idx;
        let mut blocks = Vec::new();
        for block_idx in 0..n_blocks {
            let spec = BlockSpec {
                expansion: config.expansion,
                in_width: if block_idx == 0 { sizes[stage_idx] } else { sizes[stage_idx + 1] },
                width: sizes[stage_idx + 1],
                stride: if block_idx == 0 && stage_idx > 0 { 2 } else { 1 },
                activation: config.activation,
                attention: (config.self_attention
                    && Some(stage_idx) == attention_stage
                    && block_idx == n_blocks - 1)
                    .then_some(config.symmetric_attention),
            };
            let name = format!("{module_idx}.{block_idx}");
            let block = res_block(&spec, vb.pp(&name))?;
            for layer_idx in 0..block.convpath.len() {
                batch_norms.push(format!("{name}.convpath.{layer_idx}.1"));
            }
            if block.shortcut_conv.is_some() {
                let index = if block.shortcut_pool.is_some() { 1 } else { 0 };
                batch_norms.push(format!("{name}.idpath.{index}.1"));
            }
            blocks.push(block);
        }
        stages.push(blocks);
    }
    let head_idx = 4 + config.layers.len() + 3;
    let head_vb = vb.pp(head_idx.to_string());
    let in_features = sizes[config.layers.len()] * config.expansion;
    let weight = head_vb.get_with_hints(
        (config.n_out, in_features),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = head_vb.get_with_hints(config.n_out, "bias", Init::Const(0.0))?;
    Ok(XResNet {
        config: config.clone(),
        stem,
        pool,
        stages,
        dropout: Dropout::new(config.dropout, dropout_seed)?,
        head: Linear::new(weight, Some(bias)),
        batch_norms,
        train_forwards: AtomicU64::new(0),
    })
}

/// One top-level module's output, for [`XResNet::forward_modules`].
#[derive(Debug, Clone)]
pub struct ModuleOutput {
    /// fastai's index of the module in the `nn.Sequential` (`"0"` ... `"11"`).
    pub index: String,
    /// What it is.
    pub kind: &'static str,
    pub output: Tensor,
}

impl XResNet {
    pub fn config(&self) -> &XResNetConfig {
        &self.config
    }

    /// Names of every BatchNorm, e.g. `4.0.convpath.0.1`.
    pub fn batch_norm_names(&self) -> &[String] {
        &self.batch_norms
    }

    /// Training forwards so far (PyTorch's `num_batches_tracked`).
    pub fn num_batches_tracked(&self) -> u64 {
        self.train_forwards.load(Ordering::Relaxed)
    }

    /// Sets the count, e.g. after loading weights.
    pub fn set_num_batches_tracked(&self, count: u64) {
        self.train_forwards.store(count, Ordering::Relaxed);
    }

    /// The forward pass one top-level module at a time, keeping every output (for summaries
    /// and per-stage inspection).
    pub fn forward_modules(&self, xs: &Tensor, train: bool) -> candle::Result<Vec<ModuleOutput>> {
        if train {
            self.train_forwards.fetch_add(1, Ordering::Relaxed);
        }
        let mut outputs = Vec::new();
        let mut current = xs.clone();
        let mut push = |index: usize, kind: &'static str, tensor: &Tensor| {
            outputs.push(ModuleOutput { index: index.to_string(), kind, output: tensor.clone() });
        };
        for (i, layer) in self.stem.iter().enumerate() {
            current = layer.forward_t(&current, train)?;
            push(i, "ConvLayer", &current);
        }
        current = self.pool.forward(&current)?;
        push(3, "MaxPool2d", &current);
        for (stage_idx, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                current = block.forward_t(&current, train)?;
            }
            push(4 + stage_idx, "Stage", &current);
        }
        let after = 4 + self.stages.len();
        let dtype = current.dtype();
        current = current.to_dtype(DType::F32)?.flatten_from(2)?.mean(2)?.to_dtype(dtype)?;
        push(after, "AdaptiveAvgPool2d+Flatten", &current);
        current = self.dropout.forward_t(&current, train)?;
        push(after + 2, "Dropout", &current);
        current = self.head_forward(&current, train)?;
        push(after + 3, "Linear", &current);
        Ok(outputs)
    }
}

impl XResNet {
    /// The linear head in the activations' dtype (read detached in evaluation, so no graph
    /// is built).
    fn head_forward(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let read = |tensor: &Tensor| {
            let tensor = if train { tensor.clone() } else { tensor.detach() };
            tensor.to_dtype(xs.dtype())
        };
        let ys = xs.matmul(&read(self.head.weight())?.t()?)?;
        match self.head.bias() {
            Some(bias) => ys.broadcast_add(&read(bias)?),
            None => Ok(ys),
        }
    }
}

impl ModuleT for XResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let mut outputs = self.forward_modules(xs, train)?;
        // Invariant: forward_modules always ends with the head's output.
        Ok(outputs.pop().expect("the head output is always present").output)
    }
}
