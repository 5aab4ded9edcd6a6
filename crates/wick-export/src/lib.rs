//! wick-export: a trained xresnet as a model that runs without wick.
//!
//! - [`onnx::xresnet_to_onnx`]: a standard ONNX model (opset 17) of the network in eval mode,
//!   with the input layout and fastai's `IntToFloatTensor` + `Normalize` inside the graph, and
//!   the class names, input size and architecture in its metadata. Input `image`: `(N, S, S, 3)`
//!   `uint8` RGB (a decoded image already resized to the training size S); outputs `logits` and
//!   `probabilities`, both `(N, K)` `float32`.
//! - [`onnx::run_onnx`]: runs such a model with tract (a pure-Rust ONNX runtime), which is how
//!   `wick export` checks every file it writes against wick's own logits.
//!
//! The topology comes from [`wick_models::XResNetConfig::plan`], the same description
//! `wick_models::xresnet` builds from; the weights from a state dict under PyTorch's names
//! ([`wick_models::state_dict`]). Only the ReLU xresnets without self-attention are exported
//! (Mish and attention are refused with an error naming them).

pub mod onnx;

pub use onnx::{ExportError, OnnxExportConfig, Preprocessing, run_onnx, xresnet_to_onnx};
