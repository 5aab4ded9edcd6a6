//! Saving and loading xresnet weights as safetensors with PyTorch's state-dict names, so a file
//! exported from a fastai/PyTorch `state_dict` loads directly and wick's files load in PyTorch
//! (`model.load_state_dict(safetensors.torch.load_file(path))`). BatchNorm running statistics
//! are included, and so is each BatchNorm's `num_batches_tracked` (an i64 scalar PyTorch
//! expects).
//!
//! Every file wick writes carries, in the safetensors header's `__metadata__`, the model's
//! identity (`arch`, `n_out`, `widen`, `activation`, `self_attention`: see [`weights_identity`])
//! and `wick.sha256`, a SHA-256 of the tensor data (names, dtypes, shapes and bytes, in name
//! order). Loading checks both, refuses a tensor the model does not have and a missing one
//! (naming them), and refuses NaN or infinite values (naming the tensor); saving refuses a
//! non-finite model, so a NaN is never written as a model. A file without wick's metadata (an
//! export from PyTorch) is still checked tensor by tensor, shape by shape and for finiteness.
//!
//! Writes are atomic and durable: a temporary sibling, fsynced, renamed over the target, then
//! the folder fsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle::safetensors::Load;
use candle::{DType, Tensor};
use candle_nn::VarMap;
use safetensors::SafeTensors;
use wick_io::{Blob, checksum_of_views, non_finite, serialize_checked};

use crate::layers::Activation;
use crate::xresnet::{XResNet, XResNetConfig};

/// The metadata key of the tensor-data checksum.
pub const CHECKSUM_KEY: &str = wick_io::CHECKSUM_KEY;
/// The metadata key marking a file written by wick (its value is the format's version).
pub const FORMAT_KEY: &str = "wick.format";
const FORMAT: &str = "weights-1";
/// How many names an error lists before "and N more".
const NAMES_SHOWN: usize = 8;

/// Why weights could not be saved or loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The weights file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable safetensors file.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Format {
        /// The weights file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The tensor data does not hash to the checksum the file records: it changed after it was
    /// written.
    #[error(
        "{}: checksum mismatch: the tensor data hashes to {actual}, the file records {recorded} \
         (the file is corrupted or was edited)",
        path.display()
    )]
    Checksum {
        /// The weights file.
        path: PathBuf,
        /// The checksum in the file's metadata.
        recorded: String,
        /// The checksum of the data read.
        actual: String,
    },
    /// The file was written for another architecture.
    #[error("{}: holds weights of {found}, but this model is {expected}", path.display())]
    Architecture {
        /// The weights file.
        path: PathBuf,
        /// The identity recorded in the file (the differing keys).
        found: String,
        /// This model's identity (the same keys).
        expected: String,
    },
    /// The file's tensors are not the model's: some are missing, or some are not the model's.
    #[error("{}: tensors do not match the model: {details}", path.display())]
    Tensors {
        /// The weights file.
        path: PathBuf,
        /// Tensors of the model absent from the file (sorted).
        missing: Vec<String>,
        /// Tensors of the file the model does not have (sorted).
        unexpected: Vec<String>,
        /// Both lists, in words.
        details: String,
    },
    /// A tensor's shape is not the model's.
    #[error("{}: tensor {name} has shape {found:?}, the model expects {expected:?}", path.display())]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The model's shape.
        expected: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    #[error(
        "{}: tensor {name} has {count} non-finite values (NaN or infinity) of {total}",
        path.display()
    )]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// How many values are not finite.
        count: usize,
        /// Values in the tensor.
        total: usize,
    },
    /// A tensor operation failed.
    #[error("{}: {source}", path.display())]
    Candle {
        /// The weights file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle::Error,
    },
}

/// The identity a weights file records: `arch` (`xresnet18` ... or `custom`), `n_out`,
/// `widen`, `activation` and `self_attention`.
pub fn weights_identity(config: &XResNetConfig) -> BTreeMap<String, String> {
    let arch = config.arch_name().map_or_else(
        || format!("custom(expansion {}, layers {:?})", config.expansion, config.layers),
        str::to_string,
    );
    let activation = match config.activation {
        Activation::Relu => "relu",
        Activation::Mish => "mish",
    };
    BTreeMap::from([
        ("arch".to_string(), arch),
        ("n_out".to_string(), config.n_out.to_string()),
        ("widen".to_string(), config.widen.to_string()),
        ("activation".to_string(), activation.to_string()),
        ("self_attention".to_string(), config.self_attention.to_string()),
    ])
}

/// Every tensor of the model under its PyTorch name.
///
/// # Errors
/// A poisoned variable map or a failed tensor operation.
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

/// Writes the model's weights, running statistics and `num_batches_tracked` to `path`, with the
/// model's identity and the data's checksum in the metadata.
///
/// # Errors
/// [`WeightsError::NonFinite`] (nothing is written) if a tensor holds NaN or infinity; I/O
/// errors naming the file.
pub fn save_weights(model: &XResNet, varmap: &VarMap, path: &Path) -> Result<(), WeightsError> {
    let candle_error = |source| WeightsError::Candle { path: path.to_path_buf(), source };
    let tensors = state_dict(model, varmap).map_err(candle_error)?;
    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let blob = Blob::of(&tensor);
        if let Some((count, total)) = blob.non_finite() {
            return Err(WeightsError::NonFinite { path: path.to_path_buf(), name, count, total });
        }
        blobs.push((name, blob));
    }
    let mut metadata: HashMap<String, String> =
        weights_identity(model.config()).into_iter().collect();
    metadata.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    let bytes = serialize_checked(blobs, metadata)
        .map_err(|reason| WeightsError::Format { path: path.to_path_buf(), reason })?;
    write_durably(path, &bytes)
}

/// Loads every variable of `varmap` (and the BatchNorm step counter) from the safetensors file at
/// `path`, after checking the file's checksum and identity against the model.
///
/// # Errors
/// [`WeightsError::Checksum`], [`WeightsError::Architecture`], [`WeightsError::Tensors`] (a
/// missing tensor, or one the model does not have), [`WeightsError::Shape`],
/// [`WeightsError::NonFinite`]; I/O and format errors naming the file. The model is unchanged
/// unless every check passed.
pub fn load_weights(model: &XResNet, varmap: &VarMap, path: &Path) -> Result<(), WeightsError> {
    let fail_format = |reason: String| WeightsError::Format { path: path.to_path_buf(), reason };
    let candle_error = |source| WeightsError::Candle { path: path.to_path_buf(), source };
    let bytes = std::fs::read(path)
        .map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail_format(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| fail_format(e.to_string()))?;
    let mut views = file.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = header.metadata().clone().unwrap_or_default();

    // A NaN or infinity is named first: it is the most specific thing to say about a file.
    for (name, view) in &views {
        if let Some((count, total)) = non_finite(view.dtype(), view.data()) {
            return Err(WeightsError::NonFinite {
                path: path.to_path_buf(),
                name: name.clone(),
                count,
                total,
            });
        }
    }
    if metadata.contains_key(FORMAT_KEY) {
        let recorded = metadata.get(CHECKSUM_KEY).ok_or_else(|| {
            fail_format(format!("written by wick but without its checksum ({CHECKSUM_KEY})"))
        })?;
        let actual = checksum_of_views(&views);
        if &actual != recorded {
            return Err(WeightsError::Checksum {
                path: path.to_path_buf(),
                recorded: recorded.clone(),
                actual,
            });
        }
    }
    let identity = weights_identity(model.config());
    let differing: Vec<&String> = identity
        .keys()
        .filter(|key| metadata.get(*key).is_some_and(|value| value != &identity[*key]))
        .collect();
    if !differing.is_empty() {
        let describe = |values: &dyn Fn(&String) -> String| {
            differing
                .iter()
                .map(|key| format!("{key} {}", values(key)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(WeightsError::Architecture {
            path: path.to_path_buf(),
            found: describe(&|key| metadata[key].clone()),
            expected: describe(&|key| identity[key].clone()),
        });
    }

    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_error(candle::Error::Msg("varmap lock poisoned".into())))?;
    let counters: BTreeSet<String> =
        model.batch_norm_names().iter().map(|bn| format!("{bn}.num_batches_tracked")).collect();
    let in_file: BTreeSet<&str> = views.iter().map(|(name, _)| name.as_str()).collect();
    let missing: Vec<String> = data
        .keys()
        .filter(|name| !in_file.contains(name.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unexpected: Vec<String> = in_file
        .iter()
        .filter(|name| !data.contains_key(**name) && !counters.contains(**name))
        .map(|name| name.to_string())
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("{} missing ({})", missing.len(), shown(&missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("{} not in this model ({})", unexpected.len(), shown(&unexpected)));
        }
        return Err(WeightsError::Tensors {
            path: path.to_path_buf(),
            details: parts.join("; "),
            missing,
            unexpected,
        });
    }

    let mut values = Vec::with_capacity(data.len());
    let mut count = None;
    for (name, view) in &views {
        if counters.contains(name) {
            if count.is_none() {
                let tensor = view.load(&candle::Device::Cpu).map_err(candle_error)?;
                let value = tensor
                    .to_dtype(DType::I64)
                    .and_then(|t| t.to_scalar::<i64>())
                    .map_err(candle_error)?;
                count = Some(value.max(0) as u64);
            }
            continue;
        }
        let var = &data[name];
        if view.shape() != var.shape().dims() {
            return Err(WeightsError::Shape {
                path: path.to_path_buf(),
                name: name.clone(),
                found: view.shape().to_vec(),
                expected: var.shape().dims().to_vec(),
            });
        }
        let tensor =
            view.load(var.device()).and_then(|t| t.to_dtype(var.dtype())).map_err(candle_error)?;
        values.push((var, tensor));
    }
    for (var, tensor) in values {
        var.set(&tensor).map_err(candle_error)?;
    }
    if let Some(count) = count {
        model.set_num_batches_tracked(count);
    }
    Ok(())
}

/// The first few names of a list, and how many more.
fn shown(names: &[String]) -> String {
    let mut text = names.iter().take(NAMES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(", and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// [`wick_io::write_durably`], its error naming the file.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    wick_io::write_durably(path, bytes)
        .map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })
}
