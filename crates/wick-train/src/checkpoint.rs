//! Checkpoints: everything needed to continue a recipe exactly where it stopped, in one
//! safetensors file written atomically and durably.
//!
//! Contents (tensor names):
//! - `model.<name>`: every variable of the model's `VarMap`, parameters and BatchNorm running
//!   statistics alike;
//! - `state.<name>`: state the model keeps outside its `VarMap` that its arithmetic or its export
//!   depends on (for example PyTorch's BatchNorm `num_batches_tracked`): the model's
//!   [`ModelState`], saved and restored by the Learner with the variables;
//! - `optimizer.<key>`: the optimizer's `state_dict()` (hyper-parameters, moving averages, step
//!   counts);
//! - `position`: i64 `[fit_index, epoch, batch, data_epoch, n_epoch, n_train_batches]`, the next
//!   training batch to run and the shape of the fit it belongs to;
//! - `seed`: the run's seed (an i64 holding the u64's bits); `format_version`: 2;
//! - `recorder.*`: the smoothed-loss accumulator (f32 average and count, bit for bit), the
//!   seconds already spent in the current epoch and their time split, and the history
//!   (per-batch and per-epoch records, with each epoch's time split, as f64 tables; f32 values
//!   widen exactly). The time splits are optional on load (a file of an older wick has none).
//!
//! The header's `__metadata__` holds the caller's identity of the model
//! ([`CheckpointExtras::identity`], e.g. arch, n_out, widen; checked on resume with
//! [`Checkpoint::check_identity`]) and `wick.sha256`, a SHA-256 of every tensor's name, dtype,
//! shape and bytes in name order; [`Checkpoint::load`] refuses a file whose data does not match
//! it, and a model or optimizer tensor holding NaN or infinity (naming it).
//!
//! What is not in it: the callbacks' own state: wick's callbacks have none that a resume needs
//! (schedules are functions of the position; MixUp/CutMix draw from a stream derived from the
//! position).
//!
//! Never a non-finite state: [`save_checkpoint`] refuses to write when a model or optimizer
//! tensor holds NaN or infinity ([`TrainError::NonFiniteState`]), so the file on disk stays the
//! last finite state.
//!
//! A save is two steps: [`CheckpointSnapshot::take`] copies the state out of the fit (on the
//! training thread, between two steps) and [`CheckpointSnapshot::write`] writes it, which the
//! [`crate::CheckpointSaver`] does on a background thread while the next steps run.
//!
//! Atomicity: the file is written to a temporary sibling `.<name>.tmp-<pid>`, fsynced, renamed
//! over the target, then the folder is fsynced, so a crash mid-write leaves the previous
//! checkpoint intact (a killed process can leave its temporary file behind; whoever owns the
//! folder next may delete such files).

use candle::safetensors::Load;
use candle::{DType, Device, ModuleT, Tensor};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use wick_io::{
    Blob, CHECKSUM_KEY, checksum_of_views, non_finite, serialize_checked, write_durably,
};

use crate::callback::{EventContext, FitPosition};
use crate::error::TrainError;
use crate::learner::{Learner, PendingResume};
use crate::recorder::{BatchRecord, EpochRecord, FitRecord, TimeSplit, ValidRecord};
use wick_nn::ModelState;

const FORMAT_VERSION: i64 = 2;

/// What a checkpoint stores beyond the Learner's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointExtras {
    /// Written into the file's metadata and compared on resume (e.g. `arch`, `n_out`, `widen`).
    pub identity: BTreeMap<String, String>,
}
const BATCH_COLUMNS: usize = 6;
const EPOCH_COLUMNS: usize = 8;
/// A [`TimeSplit`] as f64s: `[has_split, data_wait, train_batches, valid_batches]`.
const SPLIT_COLUMNS: usize = 4;

fn split_row(split: Option<TimeSplit>) -> [f64; SPLIT_COLUMNS] {
    match split {
        Some(s) => [1.0, s.data_wait, s.train_batches, s.valid_batches],
        None => [0.0; SPLIT_COLUMNS],
    }
}

fn split_of(row: &[f64]) -> Option<TimeSplit> {
    match row {
        [has, data_wait, train_batches, valid_batches] if *has != 0.0 => Some(TimeSplit {
            data_wait: *data_wait,
            train_batches: *train_batches,
            valid_batches: *valid_batches,
        }),
        _ => None,
    }
}

/// A checkpoint read back from disk, ready for [`Learner::resume`].
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    position: FitPosition,
    n_epoch: usize,
    n_train_batches: usize,
    seed: u64,
    model: HashMap<String, Tensor>,
    model_state: HashMap<String, Tensor>,
    optimizer: HashMap<String, Tensor>,
    identity: BTreeMap<String, String>,
    fits: Vec<FitRecord>,
    smooth: (f32, u32),
    epoch_elapsed: f64,
    /// The current epoch's time split so far (`None` in a file of a wick that did not save it).
    epoch_split: Option<TimeSplit>,
    n_metrics: usize,
}

impl Checkpoint {
    /// Reads a checkpoint (tensors land on the CPU; resuming moves them to the model's device).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file and the reason: unreadable, another format
    /// version, a checksum that does not match the data, a model or optimizer tensor holding
    /// NaN or infinity (named), a missing or malformed entry.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let fail = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        let mut views = file.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let mut identity: BTreeMap<String, String> =
            header.metadata().clone().unwrap_or_default().into_iter().collect();
        let recorded = identity.remove(CHECKSUM_KEY);
        let mut tensors = HashMap::with_capacity(views.len());
        for (name, view) in &views {
            tensors.insert(name.clone(), view.load(&Device::Cpu).map_err(|e| fail(e.to_string()))?);
        }
        let reader = Reader { tensors: &tensors, path };
        let version = reader.i64_scalar("format_version")?;
        if version != FORMAT_VERSION {
            return Err(fail(format!(
                "format version {version}, this build reads {FORMAT_VERSION} (a checkpoint of \
                 another wick version: delete it to start the run over)"
            )));
        }
        for (name, view) in &views {
            if (name.starts_with("model.") || name.starts_with("optimizer."))
                && let Some((count, total)) = non_finite(view.dtype(), view.data())
            {
                return Err(fail(format!(
                    "tensor {name} has {count} non-finite values (NaN or infinity) of {total}"
                )));
            }
        }
        let actual = checksum_of_views(&views);
        match recorded {
            Some(recorded) if recorded == actual => {}
            Some(recorded) => {
                return Err(fail(format!(
                    "checksum mismatch: the tensor data hashes to {actual}, the file records \
                     {recorded} (the file is corrupted or was edited)"
                )));
            }
            None => return Err(fail(format!("no checksum ({CHECKSUM_KEY}) in its metadata"))),
        }
        let position = reader.i64_vector("position", 6)?;
        let to_usize = |value: i64, what: &str| {
            usize::try_from(value).map_err(|_| fail(format!("{what} is {value}")))
        };
        let mut model = HashMap::new();
        let mut model_state = HashMap::new();
        let mut optimizer = HashMap::new();
        for (key, tensor) in &tensors {
            if let Some(name) = key.strip_prefix("model.") {
                model.insert(name.to_string(), tensor.clone());
            } else if let Some(name) = key.strip_prefix("state.") {
                model_state.insert(name.to_string(), tensor.clone());
            } else if let Some(name) = key.strip_prefix("optimizer.") {
                optimizer.insert(name.to_string(), tensor.clone());
            }
        }
        let smooth_count = reader.i64_scalar("recorder.smooth_count")?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            position: FitPosition {
                fit_index: to_usize(position[0], "fit index")?,
                epoch: to_usize(position[1], "epoch")?,
                batch: to_usize(position[2], "batch")?,
                data_epoch: position[3] as u64,
            },
            n_epoch: to_usize(position[4], "n_epoch")?,
            n_train_batches: to_usize(position[5], "n_train_batches")?,
            seed: reader.i64_scalar("seed")? as u64,
            model,
            model_state,
            optimizer,
            identity,
            fits: reader.history()?,
            smooth: (
                reader.f64_scalar("recorder.smooth_average")? as f32,
                u32::try_from(smooth_count)
                    .map_err(|_| fail(format!("smooth count {smooth_count}")))?,
            ),
            epoch_elapsed: reader.f64_scalar("recorder.epoch_elapsed")?,
            epoch_split: reader.optional_split("recorder.epoch_split")?,
            n_metrics: to_usize(reader.i64_scalar("recorder.n_metrics")?, "n_metrics")?,
        })
    }

    /// Where training continues.
    pub fn position(&self) -> FitPosition {
        self.position
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The history up to the checkpoint.
    pub fn history(&self) -> &[FitRecord] {
        &self.fits
    }

    /// The model's variables as saved.
    pub fn model_tensors(&self) -> &HashMap<String, Tensor> {
        &self.model
    }

    /// The optimizer's state dict as saved.
    pub fn optimizer_state(&self) -> &HashMap<String, Tensor> {
        &self.optimizer
    }

    /// The model's identity recorded by the saver ([`CheckpointExtras::identity`]).
    pub fn identity(&self) -> &BTreeMap<String, String> {
        &self.identity
    }

    /// Checks that the checkpoint was taken of a model with identity `expected` (every key of
    /// either side must agree).
    ///
    /// # Errors
    /// [`TrainError::ResumeMismatch`] naming the first key that differs and both values.
    pub fn check_identity(&self, expected: &BTreeMap<String, String>) -> Result<(), TrainError> {
        let keys: std::collections::BTreeSet<&String> =
            self.identity.keys().chain(expected.keys()).collect();
        for key in keys {
            let (saved, current) = (self.identity.get(key), expected.get(key));
            if saved != current {
                let show =
                    |value: Option<&String>| value.cloned().unwrap_or_else(|| "(none)".into());
                return Err(TrainError::ResumeMismatch {
                    what: "model",
                    checkpoint: format!("{key} {}", show(saved)),
                    current: format!("{key} {}", show(current)),
                });
            }
        }
        Ok(())
    }

    /// The model's state outside its `VarMap` as saved (names without `state.`).
    pub fn model_state(&self) -> &HashMap<String, Tensor> {
        &self.model_state
    }
}

impl<M: ModuleT + ModelState> Learner<M> {
    /// Restores a checkpoint: the model's variables and its [`ModelState`], the optimizer state
    /// and the history now; the position on the next recipe call, which skips the fits already
    /// done (in a plan of stages, the stages already done, without building their data) and
    /// continues the interrupted one at its next training batch. The recipe must be the one the
    /// checkpoint was taken in (same seed, same fit lengths, same batches per epoch).
    ///
    /// # Errors
    /// [`TrainError::ResumeMismatch`] for another seed or number of metrics;
    /// [`TrainError::Checkpoint`] for a model tensor that is missing, extra or of another shape,
    /// or model state the model refuses.
    pub fn resume(&mut self, checkpoint: &Checkpoint) -> Result<(), TrainError> {
        let fail =
            |reason: String| TrainError::Checkpoint { path: checkpoint.path.clone(), reason };
        if checkpoint.seed != self.config().seed {
            return Err(TrainError::ResumeMismatch {
                what: "seed",
                checkpoint: checkpoint.seed.to_string(),
                current: self.config().seed.to_string(),
            });
        }
        if checkpoint.n_metrics != self.config().metrics.len() {
            return Err(TrainError::ResumeMismatch {
                what: "number of metrics",
                checkpoint: checkpoint.n_metrics.to_string(),
                current: self.config().metrics.len().to_string(),
            });
        }
        let vars = self.sorted_vars();
        if let Some(extra) = sorted_keys(&checkpoint.model)
            .into_iter()
            .find(|name| !vars.iter().any(|(n, _)| n == *name))
        {
            return Err(fail(format!("model tensor {extra} is not a variable of this model")));
        }
        for (name, var) in &vars {
            let tensor = checkpoint
                .model
                .get(name)
                .ok_or_else(|| fail(format!("model tensor {name} is missing")))?;
            if tensor.shape() != var.shape() {
                return Err(fail(format!(
                    "model tensor {name} has shape {:?}, the model has {:?}",
                    tensor.shape(),
                    var.shape()
                )));
            }
            let value = tensor
                .to_dtype(var.dtype())
                .and_then(|t| t.to_device(var.device()))
                .map_err(|e| fail(format!("model tensor {name}: {e}")))?;
            var.set(&value).map_err(|e| fail(format!("model tensor {name}: {e}")))?;
        }
        self.model()
            .load_state(&checkpoint.model_state)
            .map_err(|e| fail(format!("model state: {e}")))?;
        self.optimizer_mut().load_state_dict(&checkpoint.optimizer)?;
        self.recorder_mut().restore(
            checkpoint.fits.clone(),
            checkpoint.smooth,
            // An older wick saved the finished epoch's seconds in a checkpoint taken at its
            // end (batch 0 of the next): they are not the next epoch's.
            if checkpoint.epoch_split.is_none() && checkpoint.position.batch == 0 {
                0.0
            } else {
                checkpoint.epoch_elapsed
            },
            checkpoint.epoch_split,
        );
        self.set_pending_resume(PendingResume {
            position: checkpoint.position,
            n_epoch: checkpoint.n_epoch,
            n_train_batches: checkpoint.n_train_batches,
        });
        Ok(())
    }
}

/// Writes a checkpoint of the fit seen by `context`, to continue at `position`, atomically and
/// durably, with `extras`' identity in the metadata and the model's state as `state.*`:
/// [`CheckpointSnapshot::take`], then [`CheckpointSnapshot::write`].
///
/// # Errors
/// [`TrainError::NonFiniteState`] (nothing is written: the previous checkpoint stays) if a model
/// or optimizer tensor holds NaN or infinity; [`TrainError::Checkpoint`] if writing fails.
pub fn save_checkpoint(
    path: &Path,
    context: &EventContext<'_>,
    position: FitPosition,
    extras: &CheckpointExtras,
) -> Result<(), TrainError> {
    CheckpointSnapshot::take(path, context, position, extras)?.write()
}

/// A checkpoint's tensors copied out of the fit, checked finite, not yet written: what the
/// training thread must do itself before the next step changes the weights. Writing it (the
/// checksum, the serialisation and the durable write, most of a save's time) can then run on
/// another thread while training goes on ([`crate::CheckpointSaver`]).
pub struct CheckpointSnapshot {
    path: PathBuf,
    blobs: Vec<(String, Blob)>,
    metadata: HashMap<String, String>,
}

impl CheckpointSnapshot {
    /// The state of the fit seen by `context`, to continue at `position` (see
    /// [`save_checkpoint`]).
    ///
    /// # Errors
    /// [`TrainError::NonFiniteState`] if a model or optimizer tensor holds NaN or infinity;
    /// [`TrainError::Checkpoint`] if a tensor cannot be read.
    pub fn take(
        path: &Path,
        context: &EventContext<'_>,
        position: FitPosition,
        extras: &CheckpointExtras,
    ) -> Result<Self, TrainError> {
        let blobs = checkpoint_blobs(path, context, position)?;
        let metadata = extras.identity.clone().into_iter().collect();
        Ok(CheckpointSnapshot { path: path.to_path_buf(), blobs, metadata })
    }

    /// Writes the snapshot atomically and durably (see the module docs).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] if serialising or writing fails; the previous checkpoint
    /// stays.
    pub fn write(self) -> Result<(), TrainError> {
        let CheckpointSnapshot { path, blobs, metadata } = self;
        let fail = |reason: String| TrainError::Checkpoint { path: path.clone(), reason };
        let bytes = serialize_checked(blobs, metadata).map_err(fail)?;
        write_durably(&path, &bytes).map_err(|e| fail(e.to_string()))
    }
}

impl std::fmt::Debug for CheckpointSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: usize = self.blobs.iter().map(|(_, blob)| blob.bytes.len()).sum();
        f.debug_struct("CheckpointSnapshot")
            .field("path", &self.path)
            .field("tensors", &self.blobs.len())
            .field("bytes", &bytes)
            .finish()
    }
}

/// Every tensor of a checkpoint as named blobs, model and optimizer tensors checked finite.
fn checkpoint_blobs(
    path: &Path,
    context: &EventContext<'_>,
    position: FitPosition,
) -> Result<Vec<(String, Blob)>, TrainError> {
    let fail = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
    let state = context.state;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    {
        // A poisoned lock only means another thread panicked while holding it; the map is intact.
        let data = context.varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, var) in data.iter() {
            tensors.insert(format!("model.{name}"), var.as_detached_tensor());
        }
    }
    for (key, tensor) in context.optimizer.state_dict()? {
        tensors.insert(format!("optimizer.{key}"), tensor);
    }
    for (key, tensor) in
        context.model_state.save_state().map_err(|e| fail(format!("model state: {e}")))?
    {
        tensors.insert(format!("state.{key}"), tensor);
    }
    let cpu = &Device::Cpu;
    let scalar_error = |e: candle::Error| fail(e.to_string());
    let position_values = [
        position.fit_index as i64,
        position.epoch as i64,
        position.batch as i64,
        position.data_epoch as i64,
        state.n_epoch as i64,
        state.n_train_batches as i64,
    ];
    tensors.insert("position".into(), Tensor::new(&position_values, cpu).map_err(scalar_error)?);
    tensors.insert("seed".into(), Tensor::new(state.seed as i64, cpu).map_err(scalar_error)?);
    tensors
        .insert("format_version".into(), Tensor::new(FORMAT_VERSION, cpu).map_err(scalar_error)?);
    let (average, count) = context.recorder.smooth_state();
    tensors.insert(
        "recorder.smooth_average".into(),
        Tensor::new(f64::from(average), cpu).map_err(scalar_error)?,
    );
    tensors.insert(
        "recorder.smooth_count".into(),
        Tensor::new(i64::from(count), cpu).map_err(scalar_error)?,
    );
    tensors.insert(
        "recorder.epoch_elapsed".into(),
        Tensor::new(context.recorder.epoch_elapsed(), cpu).map_err(scalar_error)?,
    );
    tensors.insert(
        "recorder.epoch_split".into(),
        Tensor::new(&split_row(context.recorder.epoch_split()), cpu).map_err(scalar_error)?,
    );
    insert_history(&mut tensors, context.recorder.fits(), context.recorder.metrics().len())
        .map_err(scalar_error)?;

    let mut blobs = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let blob = Blob::of(&tensor);
        if (name.starts_with("model.") || name.starts_with("optimizer."))
            && let Some((count, total)) = non_finite(blob.dtype, &blob.bytes)
        {
            return Err(TrainError::NonFiniteState {
                path: path.to_path_buf(),
                tensor: name,
                count,
                total,
            });
        }
        blobs.push((name, blob));
    }
    Ok(blobs)
}

/// The history as f64 tables. Batches: `[fit, iteration, lr, mom, loss, smooth_loss]`.
/// Epochs: `[fit, epoch, has_train, train_loss, has_valid, valid_loss, seconds, train_iter,
/// metric…]`, and their time splits row for row in `recorder.epoch_splits`
/// (`[has_split, data_wait, train_batches, valid_batches]`). Plus `recorder.n_fits`.
fn insert_history(
    tensors: &mut HashMap<String, Tensor>,
    fits: &[FitRecord],
    n_metrics: usize,
) -> candle::Result<()> {
    let mut batch_rows = Vec::new();
    let mut epoch_rows = Vec::new();
    let mut split_rows = Vec::new();
    for (fit_index, fit) in fits.iter().enumerate() {
        for b in &fit.batches {
            batch_rows.extend([
                fit_index as f64,
                b.iteration as f64,
                b.lr,
                b.mom,
                f64::from(b.loss),
                f64::from(b.smooth_loss),
            ]);
        }
        for e in &fit.epochs {
            let valid_loss = e.valid.as_ref().map_or(0.0, |v| v.loss);
            epoch_rows.extend([
                fit_index as f64,
                e.epoch as f64,
                f64::from(u8::from(e.train_loss.is_some())),
                e.train_loss.map_or(0.0, f64::from),
                f64::from(u8::from(e.valid.is_some())),
                valid_loss,
                e.seconds,
                e.train_iter as f64,
            ]);
            split_rows.extend(split_row(e.split));
            for index in 0..n_metrics {
                epoch_rows.push(
                    e.valid.as_ref().and_then(|v| v.metrics.get(index).copied()).unwrap_or(0.0),
                );
            }
        }
    }
    let cpu = &Device::Cpu;
    let n_batches = batch_rows.len() / BATCH_COLUMNS;
    let epoch_columns = EPOCH_COLUMNS + n_metrics;
    let n_epochs = epoch_rows.len() / epoch_columns;
    tensors.insert("recorder.n_fits".into(), Tensor::new(fits.len() as i64, cpu)?);
    tensors.insert("recorder.n_metrics".into(), Tensor::new(n_metrics as i64, cpu)?);
    tensors.insert(
        "recorder.batches".into(),
        Tensor::from_vec(batch_rows, (n_batches, BATCH_COLUMNS), cpu)?,
    );
    tensors.insert(
        "recorder.epochs".into(),
        Tensor::from_vec(epoch_rows, (n_epochs, epoch_columns), cpu)?,
    );
    tensors.insert(
        "recorder.epoch_splits".into(),
        Tensor::from_vec(split_rows, (n_epochs, SPLIT_COLUMNS), cpu)?,
    );
    Ok(())
}

fn sorted_keys(map: &HashMap<String, Tensor>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys
}

/// Typed access to a loaded checkpoint's tensors, with errors naming the key.
struct Reader<'a> {
    tensors: &'a HashMap<String, Tensor>,
    path: &'a Path,
}

impl Reader<'_> {
    fn fail(&self, key: &str, reason: impl std::fmt::Display) -> TrainError {
        TrainError::Checkpoint { path: self.path.to_path_buf(), reason: format!("{key}: {reason}") }
    }

    fn get(&self, key: &str) -> Result<&Tensor, TrainError> {
        self.tensors.get(key).ok_or_else(|| self.fail(key, "missing"))
    }

    fn i64_scalar(&self, key: &str) -> Result<i64, TrainError> {
        self.get(key)?
            .to_dtype(DType::I64)
            .and_then(|t| t.to_scalar::<i64>())
            .map_err(|e| self.fail(key, e))
    }

    fn f64_scalar(&self, key: &str) -> Result<f64, TrainError> {
        self.get(key)?
            .to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .map_err(|e| self.fail(key, e))
    }

    fn i64_vector(&self, key: &str, len: usize) -> Result<Vec<i64>, TrainError> {
        let values: Vec<i64> = self
            .get(key)?
            .to_dtype(DType::I64)
            .and_then(|t| t.to_vec1())
            .map_err(|e| self.fail(key, e))?;
        if values.len() != len {
            return Err(self.fail(key, format!("{} values, expected {len}", values.len())));
        }
        Ok(values)
    }

    /// A [`split_row`] vector, or `None` if the file has no such key (an older wick's).
    fn optional_split(&self, key: &str) -> Result<Option<TimeSplit>, TrainError> {
        let Some(tensor) = self.tensors.get(key) else { return Ok(None) };
        let row: Vec<f64> =
            tensor.to_dtype(DType::F64).and_then(|t| t.to_vec1()).map_err(|e| self.fail(key, e))?;
        if row.len() != SPLIT_COLUMNS {
            return Err(self.fail(key, format!("{} values, expected {SPLIT_COLUMNS}", row.len())));
        }
        Ok(split_of(&row))
    }

    fn table(&self, key: &str, columns: usize) -> Result<Vec<Vec<f64>>, TrainError> {
        let tensor = self.get(key)?;
        if tensor.rank() != 2 || tensor.dim(1).ok() != Some(columns) {
            return Err(
                self.fail(key, format!("shape {:?}, expected (N, {columns})", tensor.shape()))
            );
        }
        tensor.to_dtype(DType::F64).and_then(|t| t.to_vec2()).map_err(|e| self.fail(key, e))
    }

    fn history(&self) -> Result<Vec<FitRecord>, TrainError> {
        let n_fits = usize::try_from(self.i64_scalar("recorder.n_fits")?)
            .map_err(|e| self.fail("recorder.n_fits", e))?;
        let n_metrics = usize::try_from(self.i64_scalar("recorder.n_metrics")?)
            .map_err(|e| self.fail("recorder.n_metrics", e))?;
        let mut fits = vec![FitRecord::default(); n_fits];
        let fit_of = |value: f64, key: &str| -> Result<usize, TrainError> {
            let index = value as usize;
            if index < n_fits {
                Ok(index)
            } else {
                Err(self.fail(key, format!("fit index {value} of {n_fits}")))
            }
        };
        for row in self.table("recorder.batches", BATCH_COLUMNS)? {
            fits[fit_of(row[0], "recorder.batches")?].batches.push(BatchRecord {
                iteration: row[1] as usize,
                lr: row[2],
                mom: row[3],
                loss: row[4] as f32,
                smooth_loss: row[5] as f32,
            });
        }
        for row in self.table("recorder.epochs", EPOCH_COLUMNS + n_metrics)? {
            fits[fit_of(row[0], "recorder.epochs")?].epochs.push(EpochRecord {
                epoch: row[1] as usize,
                train_loss: (row[2] != 0.0).then_some(row[3] as f32),
                valid: (row[4] != 0.0)
                    .then(|| ValidRecord { loss: row[5], metrics: row[EPOCH_COLUMNS..].to_vec() }),
                seconds: row[6],
                split: None,
                train_iter: row[7] as usize,
            });
        }
        // The splits, row for row with the epochs (absent in an older wick's files).
        if self.tensors.contains_key("recorder.epoch_splits") {
            let rows = self.table("recorder.epoch_splits", SPLIT_COLUMNS)?;
            let n_epochs: usize = fits.iter().map(|fit| fit.epochs.len()).sum();
            if rows.len() != n_epochs {
                let reason = format!("{} rows for {n_epochs} epochs", rows.len());
                return Err(self.fail("recorder.epoch_splits", reason));
            }
            let epochs = fits.iter_mut().flat_map(|fit| fit.epochs.iter_mut());
            for (epoch, row) in epochs.zip(&rows) {
                epoch.split = split_of(row);
            }
        }
        Ok(fits)
    }
}
