//! Saving and loading xresnet weights as safetensors with PyTorch's state-dict names, so a file
//! exported from a fastai/PyTorch `state_dict` loads directly and wick's files load in PyTorch
//! (`model.load_state_dict(safetensors.torch.load_file(path))`). BatchNorm running statistics
//! are included, and so is each BatchNorm's `num_batches_tracked` (an i64 scalar PyTorch
//! expects). Writes are atomic: a temporary file renamed over the target.

use std::collections::HashMap;
use std::path::Path;

use candle::{DType, Tensor};
use candle_nn::VarMap;

use crate::xresnet::XResNet;

fn io_error(path: &Path, what: impl std::fmt::Display) -> candle::Error {
    candle::Error::Msg(format!("{}: {what}", path.display()))
}

/// Every tensor of the model under its PyTorch name.
pub fn state_dict(model: &XResNet, varmap: &VarMap) -> candle::Result<HashMap<String, Tensor>> {
    let data =
        varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".to_string()))?;
    let mut tensors: HashMap<String, Tensor> =
        data.iter().map(|(name, var)| (name.clone(), var.as_detached_tensor())).collect();
    let device =
        data.values().next().map(|var| var.device().clone()).unwrap_or(candle::Device::Cpu);
    let count = Tensor::new(model.num_batches_tracked() as i64, &device)?;
    for bn in model.batch_norm_names() {
        tensors.insert(format!("{bn}.num_batches_tracked"), count.clone());
    }
    Ok(tensors)
}

/// Writes the model's weights, running statistics and `num_batches_tracked` to `path`.
pub fn save_weights(model: &XResNet, varmap: &VarMap, path: &Path) -> candle::Result<()> {
    let tensors = state_dict(model, varmap)?;
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle::safetensors::save(&tensors, &temporary).map_err(|error| io_error(path, error))?;
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        io_error(path, error)
    })
}

/// Loads every variable of `varmap` from the safetensors file at `path` (extra tensors in the
/// file are ignored; a missing or mis-shaped one is an error naming it).
pub fn load_weights(model: &XResNet, varmap: &VarMap, path: &Path) -> candle::Result<()> {
    let data =
        varmap.data().lock().map_err(|_| candle::Error::Msg("varmap lock poisoned".to_string()))?;
    let device =
        data.values().next().map(|var| var.device().clone()).unwrap_or(candle::Device::Cpu);
    let tensors =
        candle::safetensors::load(path, &device).map_err(|error| io_error(path, error))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let tensor = tensors
            .get(name.as_str())
            .ok_or_else(|| io_error(path, format!("tensor {name} is missing")))?;
        if tensor.shape() != var.shape() {
            return Err(io_error(
                path,
                format!(
                    "tensor {name} has shape {:?}, the model expects {:?}",
                    tensor.shape(),
                    var.shape()
                ),
            ));
        }
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    if let Some(first) = model.batch_norm_names().first()
        && let Some(count) = tensors.get(&format!("{first}.num_batches_tracked"))
    {
        let count = count.to_dtype(DType::I64)?.to_scalar::<i64>()?;
        model.set_num_batches_tracked(count.max(0) as u64);
    }
    Ok(())
}
