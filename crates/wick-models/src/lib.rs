//! wick-models: the xresnet family (18/34/50/101/152 and variants), exactly as fastai builds
//! it, from wick-nn's fast layers and candle-nn's BatchNorm.
//!
//! - [`xresnet`] and [`XResNetConfig`]: the architecture, from one table of depths.
//! - [`layers`]: `ConvLayer`, activations, seeded dropout, `SimpleSelfAttention`.
//! - [`seeded_var_builder`]: reproducible initialisation (fastai's `init_cnn`).
//! - [`summary`]: per-module output shapes and parameter counts.
//! - [`save_weights`] / [`load_weights`]: safetensors with PyTorch state-dict names.
//!
//! This crate knows nothing about data, training, files other than weights, or config
//! formats: a model is built from a config and a `VarBuilder`.
//! Shapes: images `(B, C, H, W)` → logits `(B, K)`.

mod init;
mod io;
pub mod layers;
mod summary;
mod xresnet;

pub use init::{draw_init, seeded_var_builder};
pub use io::{
    CHECKSUM_KEY, FORMAT_KEY, WeightsError, load_weights, save_weights, state_dict,
    weights_identity,
};
pub use layers::{Activation, is_buffer};
pub use summary::{ModuleSummary, count_params, summary};
pub use xresnet::{
    BlockPlan, ConvLayerPlan, Depth, ModuleOutput, XResNet, XResNetConfig, XResNetPlan, xresnet,
};
