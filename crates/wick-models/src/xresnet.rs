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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use candle::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use wick_nn::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig, ModelState};

use crate::layers::{
    Activation, BnInit, ConvLayer, ConvLayerConfig, Dropout, SimpleSelfAttention, conv_layer,
    simple_self_attention,
};

/// The named depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// `xresnet18`: basic blocks, `[2, 2, 2, 2]`.
    D18,
    /// `xresnet34`: basic blocks, `[3, 4, 6, 3]`.
    D34,
    /// `xresnet50`: bottlenecks, `[3, 4, 6, 3]`.
    D50,
    /// `xresnet101`: bottlenecks, `[3, 4, 23, 3]`.
    D101,
    /// `xresnet152`: bottlenecks, `[3, 8, 36, 3]`.
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
    /// The activation of every `ConvLayer` and block (fastai's `act_cls`).
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

/// One `ConvLayer` of an xresnet, by its state-dict prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayerPlan {
    /// State-dict prefix, e.g. `4.0.convpath.1`: the convolution is `<name>.0.weight`, the
    /// BatchNorm `<name>.1.*`.
    pub name: String,
    /// C_in of the convolution.
    pub in_channels: usize,
    /// C_out of the convolution (and the BatchNorm's channels).
    pub out_channels: usize,
    /// Kernel, stride, BatchNorm init and activation.
    pub config: ConvLayerConfig,
}

/// One residual block (fastai's `ResBlock`): `act(convpath(x) + idpath(x))`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    /// State-dict prefix, e.g. `4.0`.
    pub name: String,
    /// The residual branch's `ConvLayer`s in order (2 for basic blocks, 3 for bottlenecks).
    pub convpath: Vec<ConvLayerPlan>,
    /// `Some(symmetric)`: a `SimpleSelfAttention` after the convolutions, named
    /// `<name>.convpath.<convpath.len()>`.
    pub attention: Option<bool>,
    /// The stride of the shortcut's `AvgPool2d(stride, ceil_mode=True)` (ResNet-D), if any.
    pub shortcut_pool: Option<usize>,
    /// The shortcut's 1x1 `ConvLayer` when the block changes the width.
    pub shortcut_conv: Option<ConvLayerPlan>,
    /// Applied to the sum of the two paths.
    pub activation: Activation,
}

/// The layout of a whole xresnet, derived from its [`XResNetConfig`]: what [`xresnet`] builds
/// and what an exporter walks (one description of the topology).
#[derive(Debug, Clone, PartialEq)]
pub struct XResNetPlan {
    /// The three stem `ConvLayer`s (`0`, `1`, `2`); `3` is `MaxPool2d(3, 2, padding 1)`.
    pub stem: Vec<ConvLayerPlan>,
    /// The stages (`4`, `5`, ...), each a list of blocks.
    pub stages: Vec<Vec<BlockPlan>>,
    /// State-dict prefix of the linear head (`11` for four stages), after global average
    /// pooling, flattening and dropout.
    pub head: String,
    /// Features into the head.
    pub head_in_features: usize,
}

impl XResNetConfig {
    /// The network's layout (fastai's `XResNet.__init__` and `_make_layer`).
    pub fn plan(&self) -> XResNetPlan {
        let act = Some(self.activation);
        let conv =
            |name: String, in_channels, out_channels, kernel, stride, bn_init, activation| {
                ConvLayerPlan {
                    name,
                    in_channels,
                    out_channels,
                    config: ConvLayerConfig { kernel, stride, bn_init, activation },
                }
            };
        let widths = [self.c_in, self.stem_sizes[0], self.stem_sizes[1], self.stem_sizes[2]];
        let stem = (0..3)
            .map(|i| {
                let stride = if i == 0 { 2 } else { 1 };
                conv(i.to_string(), widths[i], widths[i + 1], 3, stride, BnInit::One, act)
            })
            .collect();
        let sizes = self.block_sizes();
        let attention_stage = self.layers.len().checked_sub(4);
        let mut stages = Vec::new();
        for (stage_idx, &n_blocks) in self.layers.iter().enumerate() {
            let mut blocks = Vec::new();
            for block_idx in 0..n_blocks {
                let name = format!("{}.{block_idx}", 4 + stage_idx);
                let in_width = if block_idx == 0 { sizes[stage_idx] } else { sizes[stage_idx + 1] };
                let width = sizes[stage_idx + 1];
                let stride = if block_idx == 0 && stage_idx > 0 { 2 } else { 1 };
                let (ni, nf) = (in_width * self.expansion, width * self.expansion);
                let path = |i: usize| format!("{name}.convpath.{i}");
                let convpath = if self.expansion == 1 {
                    vec![
                        conv(path(0), ni, width, 3, stride, BnInit::One, act),
                        conv(path(1), width, nf, 3, 1, BnInit::Zero, None),
                    ]
                } else {
                    vec![
                        conv(path(0), ni, width, 1, 1, BnInit::One, act),
                        conv(path(1), width, width, 3, stride, BnInit::One, act),
                        conv(path(2), width, nf, 1, 1, BnInit::Zero, None),
                    ]
                };
                // ResNet-D: the pool comes first in `idpath`, so the conv is `idpath.1` when
                // both exist.
                let shortcut_pool = (stride != 1).then_some(stride);
                let shortcut_conv = (ni != nf).then(|| {
                    let index = if shortcut_pool.is_some() { 1 } else { 0 };
                    conv(format!("{name}.idpath.{index}"), ni, nf, 1, 1, BnInit::One, None)
                });
                let attention = (self.self_attention
                    && Some(stage_idx) == attention_stage
                    && block_idx == n_blocks - 1)
                    .then_some(self.symmetric_attention);
                blocks.push(BlockPlan {
                    name,
                    convpath,
                    attention,
                    shortcut_pool,
                    shortcut_conv,
                    activation: self.activation,
                });
            }
            stages.push(blocks);
        }
        XResNetPlan {
            stem,
            stages,
            head: (4 + self.layers.len() + 3).to_string(),
            head_in_features: sizes[self.layers.len()] * self.expansion,
        }
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

fn plan_conv_layer(plan: &ConvLayerPlan, vb: &VarBuilder) -> candle::Result<ConvLayer> {
    conv_layer(plan.in_channels, plan.out_channels, plan.config, vb.pp(&plan.name))
}

fn res_block(plan: &BlockPlan, vb: &VarBuilder) -> candle::Result<ResBlock> {
    let convpath = plan
        .convpath
        .iter()
        .map(|layer| plan_conv_layer(layer, vb))
        .collect::<candle::Result<Vec<_>>>()?;
    let attention = match plan.attention {
        Some(symmetric) => {
            // Invariant: a convpath has at least one layer.
            let channels = plan.convpath.last().map_or(0, |layer| layer.out_channels);
            let name = format!("{}.convpath.{}", plan.name, plan.convpath.len());
            Some(simple_self_attention(channels, symmetric, vb.pp(name))?)
        }
        None => None,
    };
    let shortcut_pool = plan.shortcut_pool.map(|stride| {
        AvgPool2d::new(AvgPool2dConfig { kernel: stride, stride, padding: 0, ceil_mode: true })
    });
    let shortcut_conv =
        plan.shortcut_conv.as_ref().map(|layer| plan_conv_layer(layer, vb)).transpose()?;
    Ok(ResBlock { convpath, attention, shortcut_pool, shortcut_conv, activation: plan.activation })
}

impl ModuleT for ResBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        // With a ReLU after the sum and nothing between the branch's last BatchNorm and the
        // sum, the three are one op (docs/decisions/0008): in training the graph keeps no
        // tensor for the branch's output, as PyTorch frees it; in evaluation on the CPU in f32
        // they run over the last convolution's output in place. The branch stops before its
        // last layer, which then takes the shortcut. (Elsewhere evaluation keeps the plain
        // order: computed first, the shortcut would live beside the last layer's outputs.)
        let in_place = wick_nn::ops::eval_in_place_supported(xs);
        let last = self.convpath.last().filter(|last| {
            (train || in_place)
                && self.activation == Activation::Relu
                && self.attention.is_none()
                && last.ends_in_batch_norm()
        });
        let before_last = self.convpath.len() - usize::from(last.is_some());
        let mut branch = xs.clone();
        for layer in &self.convpath[..before_last] {
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
        if let Some(last) = last {
            return last.forward_add_relu(&branch, &shortcut, train);
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
    let plan = config.plan();
    let mut batch_norms = Vec::new();
    let mut stem = Vec::new();
    for layer in &plan.stem {
        stem.push(plan_conv_layer(layer, &vb)?);
        batch_norms.push(format!("{}.1", layer.name));
    }
    let pool =
        MaxPool2d::new(MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: false });
    let mut stages = Vec::new();
    for stage in &plan.stages {
        let mut blocks = Vec::new();
        for block in stage {
            for layer in block.convpath.iter().chain(&block.shortcut_conv) {
                batch_norms.push(format!("{}.1", layer.name));
            }
            blocks.push(res_block(block, &vb)?);
        }
        stages.push(blocks);
    }
    let head_vb = vb.pp(&plan.head);
    let in_features = plan.head_in_features;
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
    /// The module's output, e.g. (B, C, H, W) for a stage, (B, K) for the head's last layer.
    pub output: Tensor,
}

impl XResNet {
    /// The configuration the model was built from.
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
        let read = |tensor: &Tensor| wick_nn::read_parameter(tensor, train).to_dtype(xs.dtype());
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

/// The name of the step counter in [`ModelState::save_state`].
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// The BatchNorm step counter (PyTorch's `num_batches_tracked`, one count for every BatchNorm of
/// the network), kept outside the `VarMap`: `{"num_batches_tracked": i64 scalar}` on the CPU.
impl ModelState for XResNet {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        let count = i64::try_from(self.num_batches_tracked())
            .map_err(|_| candle::Error::Msg("num_batches_tracked overflows i64".to_string()))?;
        Ok(HashMap::from([(NUM_BATCHES_TRACKED.to_string(), Tensor::new(count, &Device::Cpu)?)]))
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        if let Some(other) = tensors.keys().find(|name| *name != NUM_BATCHES_TRACKED) {
            return Err(candle::Error::Msg(format!("{other} is not state of an xresnet")));
        }
        let count = tensors
            .get(NUM_BATCHES_TRACKED)
            .ok_or_else(|| candle::Error::Msg(format!("{NUM_BATCHES_TRACKED} is missing")))?
            .to_dtype(DType::I64)?
            .to_scalar::<i64>()?;
        let count = u64::try_from(count)
            .map_err(|_| candle::Error::Msg(format!("{NUM_BATCHES_TRACKED} is {count}")))?;
        self.set_num_batches_tracked(count);
        Ok(())
    }
}
