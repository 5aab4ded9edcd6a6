//! `wick summary`-style model inspection: each top-level module's output shape for an input
//! size and its number of trainable parameters (buffers, [`crate::is_buffer`], are not
//! parameters, as in PyTorch's `numel` over `parameters()`).

use candle::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::layers::is_buffer;
use crate::xresnet::XResNet;

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// fastai's index of the module (`"0"` ... `"11"`).
    pub index: String,
    /// What the module is: `ConvLayer`, `MaxPool2d`, `Stage`, `Dropout`, `Linear`, ...
    pub kind: &'static str,
    /// Output shape for a batch of one.
    pub output_shape: Vec<usize>,
    /// Trainable parameters under this index.
    pub params: usize,
}

/// Trainable parameters in `varmap` whose name starts with `prefix` followed by a dot (all of
/// them for an empty prefix).
pub fn count_params(varmap: &VarMap, prefix: &str) -> usize {
    let data = varmap
        .data()
        .lock()
        .map(|data| {
            data.iter().map(|(name, var)| (name.clone(), var.elem_count())).collect::<Vec<_>>()
        })
        .unwrap_or_default();
    data.into_iter()
        .filter(|(name, _)| !is_buffer(name))
        .filter(|(name, _)| {
            prefix.is_empty() || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
        })
        .map(|(_, count)| count)
        .sum()
}

/// Runs one image of `input_size` x `input_size` through the model in eval mode and reports
/// each top-level module's output shape and parameter count.
pub fn summary(
    model: &XResNet,
    varmap: &VarMap,
    input_size: usize,
    device: &Device,
) -> candle::Result<Vec<ModuleSummary>> {
    let xs = Tensor::zeros((1, model.config().c_in, input_size, input_size), DType::F32, device)?;
    let outputs = model.forward_modules(&xs, false)?;
    Ok(outputs
        .into_iter()
        .map(|output| ModuleSummary {
            params: count_params(varmap, &output.index),
            index: output.index,
            kind: output.kind,
            output_shape: output.output.dims().to_vec(),
        })
        .collect())
}
